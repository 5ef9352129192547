"""Production mode against the real local services: Dagster on PostgreSQL, MLflow on
PostgreSQL, and the Celery executor with a Redis broker and two worker processes.

Each test skips with the reason when its service is not reachable on 127.0.0.1.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from finnex_assets.assets.images import LOOKBACK
from finnex_ml import calendar

PG_HOST, PG_PORT, REDIS_PORT = "127.0.0.1", 5432, 6379
FIRST, LAST = "2024-05-01", "2024-05-29"  # 20 sessions (Memorial Day 05-27 excluded)
TESTS = Path(__file__).resolve().parent


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection((PG_HOST, port), timeout=1):
            return True
    except OSError:
        return False


def _pg_user() -> str | None:
    import psycopg2

    for user in ("postgres", "root"):
        try:
            psycopg2.connect(host=PG_HOST, port=PG_PORT, user=user, dbname="postgres").close()
            return user
        except psycopg2.Error:
            continue
    return None


needs_pg = pytest.mark.skipif(not _reachable(PG_PORT), reason="PostgreSQL is not reachable on 127.0.0.1:5432")
needs_redis = pytest.mark.skipif(not _reachable(REDIS_PORT), reason="Redis is not reachable on 127.0.0.1:6379")


@pytest.fixture(scope="module")
def pg_database():
    import psycopg2

    user = _pg_user()
    if user is None:
        pytest.skip("PostgreSQL refused a trust-auth login as postgres or root")
    name = f"finnex_test_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=user, dbname="postgres")
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql://{user}@{PG_HOST}:{PG_PORT}/{name}"
    admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


def _instance_home(tmp: Path, url: str) -> Path:
    home = tmp / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        f"storage:\n  postgres:\n    postgres_url: {url}\ntelemetry:\n  enabled: false\n"
    )
    return home


def _range_tags(a: str, b: str) -> dict[str, str]:
    return {"dagster/asset_partition_range_start": a, "dagster/asset_partition_range_end": b}


def _run(job_fn, instance, tags, selection=None):
    from dagster._core.definitions.reconstruct import ReconstructableJob

    recon = ReconstructableJob.for_file(str(TESTS / "prod_jobs.py"), job_fn)
    if selection:
        recon = recon.get_subset(asset_selection={dg.AssetKey(k) for k in selection})
    return dg.execute_job(recon, instance=instance, tags=tags)


def _write_feature_lookback(data: Path) -> None:
    """The images' 306-session feature lookback before FIRST, written straight from the library
    in the IO manager's layout: the backfill under test is the 20 sessions, not its history."""
    from finnex_ml.data.synthetic import SyntheticSource
    from finnex_ml.pipeline import daily_features_from_snapshots, modality_snapshots

    first = calendar.sessions(FIRST, FIRST)[0]
    dates = calendar.sessions(calendar.sessions_back(first, LOOKBACK), calendar.sessions_back(first, 2))
    snaps, _ = modality_snapshots(SyntheticSource(7), dates)
    table = daily_features_from_snapshots(snaps)
    for d in dates:
        path = data / "tables" / "daily_features" / f"{d.year:04d}" / f"{d.isoformat()}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        table.filter(table["date"] == d).write_parquet(path, statistics=True)


@pytest.fixture(scope="module")
def reference(pg_database, tmp_path_factory):
    """The in-process 20-session backfill (ingestion -> features -> images) on PostgreSQL."""
    tmp = tmp_path_factory.mktemp("prod")
    home = _instance_home(tmp, pg_database)
    data = tmp / "data_in_process"
    _write_feature_lookback(data)
    lookback = tmp / "lookback"
    shutil.copytree(data / "tables", lookback)
    env = {"DAGSTER_HOME": str(home), "FINNEX_DATA_DIR": str(data), "FINNEX_SOURCE": "synthetic"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with dg.DagsterInstance.get() as instance:
            result = _run("in_process_job", instance, _range_tags(FIRST, LAST))
            assert result.success
            runs = instance.get_runs()
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return tmp, home, data, runs, lookback


def _images(root: Path) -> dict[str, np.ndarray]:
    import h5py

    out = {}
    for path in sorted((root / "mega_images").rglob("*.h5")):
        with h5py.File(path, "r") as f:
            out[path.stem] = f["image"][...]
    return out


@needs_pg
def test_postgres_instance_runs_a_20_session_backfill(reference, pg_database):
    import psycopg2

    _, _, data, runs, _ = reference
    assert len(calendar.sessions(FIRST, LAST)) == 20
    assert len(runs) == 1 and runs[0].status == dg.DagsterRunStatus.SUCCESS
    images = _images(data)
    assert sorted(images) == [d.isoformat() for d in calendar.sessions(FIRST, LAST)]
    # the event log really is in PostgreSQL
    with psycopg2.connect(pg_database) as conn, conn.cursor() as cur:
        cur.execute("select count(*) from event_logs where dagster_event_type = 'ASSET_MATERIALIZATION'")
        (n,) = cur.fetchone()
    assert n == 20 * 7  # 5 modalities + features + images, per session


@needs_pg
def test_multiprocess_executor_with_two_workers_is_byte_identical(reference):
    tmp, home, data, _, lookback = reference
    other = tmp / "data_multiprocess"
    shutil.copytree(lookback, other / "tables")
    env = {"DAGSTER_HOME": str(home), "FINNEX_DATA_DIR": str(other)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with dg.DagsterInstance.get() as instance:
            result = _run("multiprocess_job", instance, _range_tags(FIRST, LAST))
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    assert result.success
    _assert_identical(data, other)


def _assert_identical(a: Path, b: Path) -> None:
    ia, ib = _images(a), _images(b)
    assert sorted(ia) == sorted(ib) and len(ia) == 20
    for key in ia:
        assert ia[key].tobytes() == ib[key].tobytes(), key
    for f in (a / "tables" / "daily_features").rglob("*.parquet"):
        assert (
            f.read_bytes()
            == (b / "tables" / "daily_features" / f.relative_to(a / "tables" / "daily_features")).read_bytes()
        )


@needs_pg
@needs_redis
def test_celery_executor_with_two_workers_is_byte_identical(reference):
    tmp, home, data, _, lookback = reference
    other = tmp / "data_celery"
    shutil.copytree(lookback, other / "tables")
    broker = f"redis://{PG_HOST}:{REDIS_PORT}/0"
    # A key prefix of its own isolates this run's queue from any other worker on the same Redis.
    isolation = {"global_keyprefix": f"finnex-test-{uuid.uuid4().hex[:8]}:"}
    conf = {"broker_transport_options": isolation, "result_backend_transport_options": isolation}
    conf_dir = tmp / "celery_conf"
    conf_dir.mkdir()
    (conf_dir / "dagster_celery_config.py").write_text(
        f"broker_url = {broker!r}\nresult_backend = {broker!r}\n" + "".join(f"{k} = {v!r}\n" for k, v in conf.items())
    )
    bin_dir = Path(sys.executable).parent
    env = dict(
        os.environ,
        DAGSTER_HOME=str(home),
        FINNEX_DATA_DIR=str(other),
        FINNEX_SOURCE="synthetic",
        PYTHONPATH=f"{conf_dir}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    )
    # `celery` itself in its own session, so teardown can kill the worker and its pool children.
    workers = [
        subprocess.Popen(
            [
                str(bin_dir / "celery"),
                "-A",
                "dagster_celery.app",
                "worker",
                "--prefetch-multiplier=1",
                "--concurrency=1",
                "--loglevel=INFO",
                "-n",
                f"finnex{i}-{uuid.uuid4().hex[:6]}@%h",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(tmp / f"worker{i}.log", "w"),
            start_new_session=True,
        )
        for i in range(2)
    ]
    old = {k: os.environ.get(k) for k in ("DAGSTER_HOME", "FINNEX_DATA_DIR")}
    os.environ.update(DAGSTER_HOME=str(home), FINNEX_DATA_DIR=str(other))
    try:
        _wait_for_workers(broker, conf, 2)
        with dg.DagsterInstance.get() as instance:
            from dagster._core.definitions.reconstruct import ReconstructableJob

            recon = ReconstructableJob.for_file(str(TESTS / "prod_jobs.py"), "celery_job")
            result = dg.execute_job(
                recon,
                instance=instance,
                tags=_range_tags(FIRST, LAST),
                run_config={"execution": {"config": {"broker": broker, "backend": broker, "config_source": conf}}},
            )
            engine = [e.message for e in result.all_events if e.is_engine_event]
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        for w in workers:
            _kill_group(w)
    assert result.success, (tmp / "worker0.log").read_text()[-3000:]
    assert any("celery" in (m or "").lower() for m in engine)
    _assert_identical(data, other)


def _kill_group(proc: subprocess.Popen) -> None:
    import signal

    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_for_workers(broker: str, conf: dict, n: int, timeout: float = 90.0) -> None:
    from celery import Celery

    app = Celery(broker=broker, backend=broker)
    app.conf.update(conf)
    deadline = time.time() + timeout
    while time.time() < deadline:
        replies = app.control.ping(timeout=1.0) or []
        if len(replies) >= n:
            return
    pytest.fail(f"{n} celery workers did not come up on {broker} within {timeout:.0f}s")


@needs_pg
def test_mlflow_tracks_into_postgres(pg_database):
    import mlflow
    import psycopg2

    base, _, _ = pg_database.rpartition("/")
    name = f"finnex_mlflow_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(pg_database)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    uri = f"{base}/{name}"
    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        exp = client.create_experiment("finnex-prod-test")
        run = client.create_run(exp)
        client.log_param(run.info.run_id, "model", "MultiScaleCNN")
        for step, value in enumerate([1.0, 0.8, 0.7]):
            client.log_metric(run.info.run_id, "val_loss", value, step=step)
        client.set_terminated(run.info.run_id)
        got = mlflow.MlflowClient(tracking_uri=uri).get_run(run.info.run_id)
        assert got.data.params == {"model": "MultiScaleCNN"}
        assert [
            m.value for m in mlflow.MlflowClient(tracking_uri=uri).get_metric_history(run.info.run_id, "val_loss")
        ] == [1.0, 0.8, 0.7]
        with psycopg2.connect(uri) as conn, conn.cursor() as cur:
            cur.execute("select count(*) from metrics")
            assert cur.fetchone()[0] == 3
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
