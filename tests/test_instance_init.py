"""One-time instance set-up under concurrency, and the sweep of runs whose process was killed."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg

REPO = Path(__file__).resolve().parent.parent


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    return home


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "PYTHONPATH": str(REPO), "DAGSTER_HOME": str(home)}


def _spawn(code: str, home: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=_env(home),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(procs: list[subprocess.Popen]) -> list[str]:
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        outs.append(out.strip().splitlines()[-1])
    return outs


def test_two_concurrent_first_inits_leave_one_schema_each(tmp_path):
    """Two set-ups at once on a fresh home: both succeed, runs.db has one alembic head, MLflow's
    store one experiment; a third run changes nothing."""
    home = _home(tmp_path)
    code = f"""
        from finnex_assets.home import init_home
        print(init_home({str(home)!r})["experiment_id"])
    """
    ids = _finish([_spawn(code, home), _spawn(code, home)])
    assert ids[0] == ids[1]
    with sqlite3.connect(home / "history" / "runs.db") as db:
        heads = db.execute("select version_num from alembic_version").fetchall()
    assert len(heads) == 1
    with sqlite3.connect(home / "mlflow.db") as db:
        names = [r[0] for r in db.execute("select name from experiments where name = 'finnex'")]
        mlflow_heads = db.execute("select version_num from alembic_version").fetchall()
    assert names == ["finnex"] and len(mlflow_heads) == 1
    assert _finish([_spawn(code, home)]) == ids[:1]


def test_concurrent_first_mlflow_use_without_init_is_serialised(tmp_path):
    """What cnn_model and vit_model do in one multiprocess run on a fresh home: two processes ask
    the resource for the experiment at once. Without the lock, MLflow's migrations collide."""
    home = _home(tmp_path)
    code = """
        from finnex_assets.resources import MlflowTracking
        print(MlflowTracking().experiment_id())
    """
    ids = _finish([_spawn(code, home), _spawn(code, home)])
    assert ids[0] == ids[1]
    with sqlite3.connect(home / "mlflow.db") as db:
        assert db.execute("select count(*) from experiments where name = 'finnex'").fetchone() == (1,)


def test_sweep_fails_a_run_whose_process_was_killed(tmp_path):
    """A run killed with -9 stays STARTED in storage; the sweep marks it FAILED (freeing its
    run-queue slot) and leaves nothing for a second sweep."""
    from finnex_assets.home import _alive, sweep_orphaned_runs

    home = _home(tmp_path)
    code = """
        import os, signal
        import dagster as dg

        @dg.op
        def die():
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9 mid-run

        @dg.job
        def doomed():
            die()

        doomed.execute_in_process(instance=dg.DagsterInstance.get())
    """
    proc = _spawn(code, home)
    proc.communicate(timeout=300)
    assert proc.returncode == -9
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        assert [r.status for r in runs] == [dg.DagsterRunStatus.STARTED]
        assert sweep_orphaned_runs(instance, dry_run=True)[0].run_id == runs[0].run_id
        assert instance.get_run_by_id(runs[0].run_id).status == dg.DagsterRunStatus.STARTED  # dry run
        orphans = sweep_orphaned_runs(instance)
        assert [o.run_id for o in orphans] == [runs[0].run_id] and orphans[0].pid == proc.pid
        assert instance.get_run_by_id(runs[0].run_id).status == dg.DagsterRunStatus.FAILURE
        assert sweep_orphaned_runs(instance) == []
    assert _alive(os.getpid()) and not _alive(proc.pid)


def test_project_instance_config_has_run_monitoring(tmp_path):
    with dg.DagsterInstance.from_config(str(_home(tmp_path))) as instance:
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_start_timeout_seconds == 180
        assert instance.run_monitoring_max_runtime_seconds == 43200


def test_setup_initialises_the_instance_once():
    lines = (REPO / "scripts" / "setup.sh").read_text(encoding="utf-8").splitlines()
    # a command of its own (bytecode writing on), after the install
    init = [i for i, line in enumerate(lines) if line.endswith(".venv/bin/finnex init") and not line.startswith("#")]
    assert len(init) == 1 and lines[init[0]] in (
        ".venv/bin/finnex init",
        "env -u PYTHONDONTWRITEBYTECODE .venv/bin/finnex init",
    )
    assert init[0] > next(i for i, line in enumerate(lines) if "pip install" in line)


DEFS = """
import os
from pathlib import Path

import dagster as dg

from finnex_assets.assets.training import TRAINING_ASSETS
from finnex_assets.resources import MlflowTracking
from finnex_assets.storage import FinnexStorage

root = Path(os.environ["FINNEX_TEST_ROOT"])
defs = dg.Definitions(assets=TRAINING_ASSETS, resources={
    "storage": FinnexStorage(root=str(root)),
    "mlflow_tracking": MlflowTracking(),  # the default store: sqlite under the fresh DAGSTER_HOME
})
"""


def test_both_models_in_one_multiprocess_run_on_a_fresh_home(tmp_path):
    """The issue's case: cnn_model and vit_model in one run (two step processes, started at
    once by the multiprocess executor) on a home whose MLflow store does not exist yet."""
    import json

    from test_training_assets import _fake_sets

    home = _home(tmp_path)  # no finnex init: the run itself creates MLflow's store
    _fake_sets(tmp_path)
    (tmp_path / "defs.py").write_text(DEFS, encoding="utf-8")
    cfg = {"epochs": 1, "batch_size": 128, "patience": 5, "lr": 2e-3, "input_mode": "patch", "seeds": [0]}
    run_config = {"ops": {"cnn_model": {"config": cfg}, "vit_model": {"config": cfg}}}
    env = {**_env(home), "FINNEX_TEST_ROOT": str(tmp_path)}
    dagster = Path(sys.executable).parent / "dagster"
    proc = subprocess.run(
        [
            str(dagster),
            "asset",
            "materialize",
            "-f",
            str(tmp_path / "defs.py"),
            "--select",
            "cnn_model,vit_model",
            "--config-json",
            json.dumps(run_config),
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    with sqlite3.connect(home / "mlflow.db") as db:
        runs = db.execute(
            "select r.name from runs r join experiments e using (experiment_id) where e.name = 'finnex'"
        ).fetchall()
    assert len(runs) == 2
    with dg.DagsterInstance.from_config(str(home)) as instance:
        run = instance.get_runs()[0]
        assert run.status == dg.DagsterRunStatus.SUCCESS
        steps = {e.step_key for e in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)}
        assert steps == {"cnn_model", "vit_model"}
        starts = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)
        assert len({e.dagster_event.pid for e in starts}) == 2  # two processes: the concurrent case
