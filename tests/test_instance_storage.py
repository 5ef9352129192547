"""The project's SQLite event log (finnex_assets/instance_storage.py) writes what Dagster's stock
storage writes, per partition, so the UI's per-partition status is unchanged (issue 18)."""

import shutil
import sqlite3
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest
import yaml
from watchdog.events import FileModifiedEvent

from finnex_assets.assets.features import daily_features
from finnex_assets.assets.ingestion import modalities
from finnex_assets.instance_storage import (
    FinnexInstance,
    FinnexSqliteEventLogStorage,
    _WalAwareWatchdog,
    local_instance,
)
from finnex_assets.io_managers import PartitionedParquetIOManager
from finnex_assets.partitions import trading_days
from finnex_assets.resources import DataSourceResource
from finnex_assets.storage import FinnexStorage
from finnex_ml import modalities as md

REPO = Path(__file__).resolve().parents[1]
RANGE = {"dagster/asset_partition_range_start": "2024-03-04", "dagster/asset_partition_range_end": "2024-03-06"}
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _run(instance: dg.DagsterInstance, data: Path) -> dg.ExecuteInProcessResult:
    storage = FinnexStorage(root=str(data))
    resources = {
        "data_source": DataSourceResource(kind="synthetic"),
        "storage": storage,
        "io_manager": PartitionedParquetIOManager(storage=storage),
    }
    return dg.materialize(
        [modalities, daily_features], resources=resources, instance=instance, tags=RANGE, run_config=QUIET
    )


def _rows(db: Path, sql: str) -> Counter:
    with sqlite3.connect(db) as conn:
        return Counter(conn.execute(sql).fetchall())


def _home(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return path


def test_same_rows_as_the_stock_storage(tmp_path):
    """A 3-date backfill of ingestion + features: the run shard, the cross-run index, the
    per-partition check executions and each asset's record hold the same rows (ids, run ids and
    timestamps aside) with the project storage as with Dagster's stock SQLite storage."""
    stock_home, ours_home = _home(tmp_path / "stock"), _home(tmp_path / "ours")
    stock = dg.DagsterInstance.local_temp(str(stock_home))
    ours = local_instance(str(ours_home))
    assert isinstance(ours.event_log_storage, FinnexSqliteEventLogStorage)
    assert not isinstance(stock.event_log_storage, FinnexSqliteEventLogStorage)
    runs = {}
    for name, instance in (("stock", stock), ("ours", ours)):
        result = _run(instance, tmp_path / f"data_{name}")
        assert result.success
        runs[name] = result.run_id
    assets = [*md.asset_names(), "daily_features"]
    for key in assets:
        want = stock.get_materialized_partitions(dg.AssetKey(key))
        assert want == {"2024-03-04", "2024-03-05", "2024-03-06"}
        assert ours.get_materialized_partitions(dg.AssetKey(key)) == want
        (record,) = ours.get_asset_records([dg.AssetKey(key)])
        last = record.asset_entry.last_materialization_record.event_log_entry
        assert record.asset_entry.last_run_id == runs["ours"] and last.dagster_event.partition == "2024-03-06"
    ours.dispose()
    stock.dispose()

    events = "select dagster_event_type, asset_key, partition, step_key from event_logs"
    index = _rows(stock_home / "history" / "runs" / "index.db", events)
    assert index == _rows(ours_home / "history" / "runs" / "index.db", events)
    planned = [k for k in index if k[0] == "ASSET_MATERIALIZATION_PLANNED" and k[1] == '["daily_features"]']
    assert sorted(k[2] for k in planned) == ["2024-03-04", "2024-03-05", "2024-03-06"]  # one per partition
    shard = _rows(stock_home / "history" / "runs" / f"{runs['stock']}.db", events)
    assert shard == _rows(ours_home / "history" / "runs" / f"{runs['ours']}.db", events)
    assert sum(n for (kind, *_), n in shard.items() if kind == "ASSET_MATERIALIZATION") == 3 * len(assets)
    checks = "select asset_key, check_name, partition, execution_status from asset_check_executions"
    a = _rows(stock_home / "history" / "runs" / "index.db", checks)
    assert a and a == _rows(ours_home / "history" / "runs" / "index.db", checks)
    # tag values hold data versions, which hash the run id (no code versions here): keys only
    tags = "select asset_key, key from asset_event_tags"
    assert _rows(stock_home / "history" / "runs" / "index.db", tags) == _rows(
        ours_home / "history" / "runs" / "index.db", tags
    )


def test_a_failed_run_marks_its_partitions_failed(tmp_path):
    """The planned events stay one per partition, so the UI still shows each partition of a
    failed backfill as failed (Dagster's one-event-per-range option would lose that)."""
    days = dg.DailyPartitionsDefinition(start_date="2024-03-01")

    @dg.asset(partitions_def=days, backfill_policy=dg.BackfillPolicy.single_run())
    def doomed(context: dg.AssetExecutionContext) -> None:
        raise RuntimeError("fails on purpose")

    instance = local_instance(str(_home(tmp_path / "dh")))
    tags = {"dagster/asset_partition_range_start": "2024-03-02", "dagster/asset_partition_range_end": "2024-03-04"}
    assert not dg.materialize([doomed], instance=instance, tags=tags, raise_on_error=False, run_config=QUIET).success
    status = instance.get_status_by_partition(
        dg.AssetKey("doomed"), ["2024-03-01", "2024-03-02", "2024-03-03", "2024-03-04"], days
    )
    assert status == {
        "2024-03-01": None,  # not in the run
        "2024-03-02": dg.AssetPartitionStatus.FAILED,
        "2024-03-03": dg.AssetPartitionStatus.FAILED,
        "2024-03-04": dg.AssetPartitionStatus.FAILED,
    }
    instance.dispose()


def test_the_live_run_log_wakes_on_the_wal_file(tmp_path):
    """Writes stay in {run}.db-wal while the connection is kept open: the run-log watcher must
    react to that file too, and then hands the new events to the UI's callback."""
    storage = FinnexSqliteEventLogStorage(str(tmp_path / "runs"))
    entry = dg.EventLogEntry(
        error_info=None,
        level=20,
        user_message="hello",
        run_id="r1",
        timestamp=1.0,
        step_key=None,
        job_name="j",
        dagster_event=None,
    )
    storage.store_event(entry)
    seen = []
    watcher = _WalAwareWatchdog(storage, "r1", lambda e, cursor: seen.append(e.user_message), None)
    wal = storage.path_for_shard("r1") + "-wal"
    assert wal in watcher.patterns and Path(wal).exists()  # the write went to the WAL
    watcher.on_modified(FileModifiedEvent(wal))
    assert seen == ["hello"]
    storage.dispose()


def test_synchronous_setting(tmp_path):
    storage = FinnexSqliteEventLogStorage(str(tmp_path / "a"))
    with storage.index_connection() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    storage.dispose()
    full = FinnexSqliteEventLogStorage(str(tmp_path / "b"), synchronous="FULL")
    with full.index_connection() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
    full.dispose()
    with pytest.raises(ValueError, match="synchronous must be one of"):
        FinnexSqliteEventLogStorage(str(tmp_path / "c"), synchronous="OFF")


def test_the_embedded_home_uses_the_project_storage(tmp_path):
    """dagster_home/dagster.yaml names FinnexInstance; an instance loaded from a copy of it keeps
    the stock file layout under that home (history/runs/index.db)."""
    config = yaml.safe_load((REPO / "dagster_home" / "dagster.yaml").read_text())
    assert config["instance_class"] == {"module": "finnex_assets.instance_storage", "class": "FinnexInstance"}
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance, FinnexInstance)
        assert isinstance(instance.event_log_storage, FinnexSqliteEventLogStorage)
    assert (home / "history" / "runs" / "index.db").exists() and (home / "history" / "runs.db").exists()


def test_kept_connections_are_bounded_and_lose_nothing(tmp_path):
    """At most OPEN_SHARDS engines stay open per process (a webserver reads many runs); a shard
    whose connection was closed reads back every event written through it."""
    from finnex_assets.instance_storage import OPEN_SHARDS

    storage = FinnexSqliteEventLogStorage(str(tmp_path / "runs"))
    runs = [f"run{i}" for i in range(OPEN_SHARDS + 3)]
    for run in runs:
        for n in range(2):
            storage.store_event(
                dg.EventLogEntry(
                    error_info=None,
                    level=20,
                    user_message=f"{run}-{n}",
                    run_id=run,
                    timestamp=1.0 + n,
                    step_key=None,
                    job_name="j",
                    dagster_event=None,
                )
            )
        assert len(storage._engines) <= OPEN_SHARDS
    assert "run0" not in storage._engines  # the oldest was closed
    for run in runs:
        assert [r.event_log_entry.user_message for r in storage.get_records_for_run(run).records] == [
            f"{run}-0",
            f"{run}-1",
        ]
    storage.dispose()
    assert not storage._engines


def test_batched_events_keep_their_ids_across_runs_and_other_writers(tmp_path):
    """The batch path inserts many events in one statement and derives their ids: every tag row
    and each asset's record must point at the right event, also when the index already holds
    another writer's rows (ids do not start at 1, with a gap). Checked against the stock storage,
    which inserts one event at a time and reads each id back: two backfills of the same dates with
    a foreign row between them; then each partition reads as materialised by the second run."""
    stock_home, ours_home = _home(tmp_path / "stock"), _home(tmp_path / "ours")
    homes = {"stock": stock_home, "ours": ours_home}
    instances = {"stock": dg.DagsterInstance.local_temp(str(stock_home)), "ours": local_instance(str(ours_home))}
    last_run = {}
    for name, instance in instances.items():
        assert _run(instance, tmp_path / f"data_{name}").success
        with sqlite3.connect(homes[name] / "history" / "runs" / "index.db") as conn:  # another process's row
            conn.execute(
                "insert into event_logs (run_id, event, dagster_event_type, timestamp) "
                "values ('other', '{}', 'ENGINE_EVENT', '2024-01-01 00:00:00')"
            )
        result = _run(instance, tmp_path / f"data_{name}")
        assert result.success
        last_run[name] = result.run_id
    for key in [*md.asset_names(), "daily_features"]:
        status = instances["ours"].get_status_by_partition(
            dg.AssetKey(key), ["2024-03-01", "2024-03-04", "2024-03-05", "2024-03-06"], trading_days
        )
        assert status["2024-03-01"] is None
        assert {status[k] for k in ("2024-03-04", "2024-03-05", "2024-03-06")} == {dg.AssetPartitionStatus.MATERIALIZED}
        (record,) = instances["ours"].get_asset_records([dg.AssetKey(key)])
        last = record.asset_entry.last_materialization_record
        assert last.event_log_entry.run_id == last_run["ours"]
        assert last.event_log_entry.dagster_event.partition == "2024-03-06"
        with sqlite3.connect(ours_home / "history" / "runs" / "index.db") as conn:
            (newest,) = conn.execute(
                "select max(id) from event_logs where dagster_event_type = 'ASSET_MATERIALIZATION' and asset_key = ?",
                (dg.AssetKey(key).to_string(),),
            ).fetchone()
        assert last.storage_id == newest
    for instance in instances.values():
        instance.dispose()
    # each tag row joined to the event its id names: the same (asset, tag, partition, type, run order)
    joined = (
        "select t.asset_key, t.key, e.asset_key, e.partition, e.dagster_event_type from asset_event_tags t "
        "join event_logs e on e.id = t.event_id"
    )
    stock_rows = _rows(stock_home / "history" / "runs" / "index.db", joined)
    ours_rows = _rows(ours_home / "history" / "runs" / "index.db", joined)
    assert stock_rows and ours_rows == stock_rows
    assert all(tag_asset == event_asset for tag_asset, _, event_asset, _, _ in ours_rows)
    assert sum(ours_rows.values()) == sum(
        _rows(ours_home / "history" / "runs" / "index.db", "select event_id from asset_event_tags").values()
    )


def test_a_batch_of_a_real_runs_asset_events_is_stored_as_given(tmp_path):
    """The batch path (one executemany per shard) must not raise, since Dagster would fall back
    to one event at a time silently; the rows read back equal the events, in order."""
    instance = local_instance(str(_home(tmp_path / "dh")))
    result = _run(instance, tmp_path / "data")
    events = instance.all_logs(result.run_id)
    storage = instance.event_log_storage
    again = [e._replace(run_id="batch-run") for e in events if e.dagster_event and e.dagster_event.asset_key]
    storage.store_event_batch(again)
    stored = [r.event_log_entry for r in storage.get_records_for_run("batch-run").records]
    assert stored == again
    instance.dispose()
