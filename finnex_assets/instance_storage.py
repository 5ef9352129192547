"""The embedded instance's SQLite event log, made cheap per event (issue 18).

Profiling ingestion + features through Dagster on the stock SQLite storage (a quarter, 61
sessions, on-disk instance, this 2-core machine): over half of the run's wall time was the
event log's commits and closes, not the work. Each event opened a fresh engine and connection,
committed with an fsync of the WAL, and closed the connection, which checkpoints the WAL into
the database with more fsyncs; an asset event does that twice (the run's shard and the cross-run index), and a single-run
backfill stores one planned and one materialisation event per asset and partition. Measured:
1,656 commits at 13 ms and 2,045 closes at 9 ms for 791 events.

:class:`FinnexSqliteEventLogStorage` keeps the stock layout and schema (``history/runs/{run}.db``
and ``index.db``, read by an unmodified webserver) and changes only how it writes:

* one engine per shard and process, kept open (small LRU), so no per-event connect and close;
* ``PRAGMA synchronous=NORMAL`` (WAL): a commit is ordered, not flushed; the database stays
  consistent on power loss but may lose the last events before it. The Parquet files
  themselves are fsynced by the table store, so the worst case is a partition on disk that the
  UI shows as not materialised; re-running it writes the same bytes. ``synchronous: FULL``
  (config) keeps the stock guarantee;
* a batch of asset events (Dagster's planned events of a run, a step output's per-partition
  materialisations) in one transaction and one ``executemany`` per shard instead of several
  statements per event; the process that opens this storage turns Dagster's event batching on
  (``DAGSTER_EVENT_BATCH_SIZE``, unless set);
* the UI's live run log still updates: the file watcher also reacts to the ``-wal`` file, which
  is where writes land while the connection stays open.

:class:`FinnexInstance` (``instance_class`` in ``dagster_home/dagster.yaml``) makes this storage
the default of the instance's home; a ``storage:`` section in dagster.yaml still wins (the
Docker deployment's Postgres).
"""

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import dagster as dg
import yaml
from dagster._config import Field, StringSource
from dagster._core.events import ASSET_EVENTS
from dagster._core.events.log import EventLogEntry
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable, SqlEventLogStorageTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    SqliteEventLogStorage,
    SqliteEventLogStorageWatchdog,
)
from dagster._core.storage.sql import create_engine
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage, _event_logs_directory
from dagster._serdes import ConfigurableClassData
from dagster_shared.serdes import serialize_value
from sqlalchemy import event as sa_event
from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine

SYNCHRONOUS = ("NORMAL", "FULL")
OPEN_SHARDS = 4  # index + the few runs a process writes or the UI reads at once
EVENT_BATCH_SIZE = "10000"  # a step output's partitions; Dagster flushes at each batch's end anyway


def _config_type() -> dict[str, Any]:
    """The dagster.yaml config of both storages below: their folder and the SQLite durability."""
    return {"base_dir": StringSource, "synchronous": Field(str, is_required=False, default_value="NORMAL")}


class FinnexSqliteEventLogStorage(SqliteEventLogStorage):
    """Stock SQLite event log layout, written through kept-open connections (module docstring)."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None, synchronous: str = "NORMAL"):
        if synchronous not in SYNCHRONOUS:
            raise ValueError(
                f"event log storage: synchronous must be one of {SYNCHRONOUS}, got {synchronous!r} "
                "(the storage's config in dagster.yaml)"
            )
        self._synchronous = synchronous
        self._engines: OrderedDict[str, tuple[int, Engine]] = OrderedDict()
        self._tables_seen: set[str] = set()
        self._engines_lock = threading.Lock()
        super().__init__(base_dir, inst_data=inst_data)
        os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", EVENT_BATCH_SIZE)

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return _config_type()

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> "FinnexSqliteEventLogStorage":
        return cls(inst_data=inst_data, **config_value)

    def _engine(self, shard: str) -> Engine:
        """The shard's engine for this process (a forked child opens its own)."""
        with self._engines_lock:
            held = self._engines.get(shard)
            if held is not None and held[0] == os.getpid():
                self._engines.move_to_end(shard)
                return held[1]
            if held is not None:  # inherited across fork: drop it without touching the parent's connection
                held[1].dispose(close=False)
            engine = create_engine(
                self.conn_string_for_shard(shard),
                pool_size=1,
                max_overflow=4,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
            )
            synchronous = self._synchronous

            @sa_event.listens_for(engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                dbapi_conn.execute(f"PRAGMA synchronous={synchronous}")

            self._engines[shard] = (os.getpid(), engine)
            while len(self._engines) > OPEN_SHARDS:
                _, (pid, old) = self._engines.popitem(last=False)
                old.dispose(close=pid == os.getpid())
            return engine

    def _forget(self, shard: str | None = None) -> None:
        """Close the kept connections (of one shard, or all): before its file is deleted."""
        with self._engines_lock:
            for name in [shard] if shard else list(self._engines):
                held = self._engines.pop(name, None)
                if held is not None:
                    held[1].dispose(close=held[0] == os.getpid())

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def has_table(self, table_name: str) -> bool:
        # the stock check opens a new engine each call (per asset event with tags); tables are never dropped
        if table_name not in self._tables_seen and super().has_table(table_name):
            self._tables_seen.add(table_name)
        return table_name in self._tables_seen

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """Runs of consecutive asset events of one run in one transaction per shard (the rows the
        stock per-event ``store_event`` writes); any other event (check planned, ...) alone."""
        group: list[EventLogEntry] = []
        for e in events:
            if group and (e.run_id != group[0].run_id or not _mirrored(e)):
                self._store_asset_events(group)
                group = []
            if _mirrored(e):
                group.append(e)
            else:
                self.store_event(e)
        if group:
            self._store_asset_events(group)

    def _store_asset_events(self, events: list[EventLogEntry]) -> None:
        if len(events) == 1:
            self.store_event(events[0])
            return
        # the stock rows, inserted as one executemany per shard instead of one compiled INSERT
        # per event: a 2,000-date range stores 4,000+ planned events and as many materialisations
        rows = [self._event_to_row(e) for e in events]
        with self.run_connection(events[0].run_id) as conn:
            conn.execute(SqlEventLogStorageTable.insert(), rows)
        # the asset's row (last materialisation, last run) ends as the last event of each type
        # sets it: write only those, in order, instead of one update per partition
        last = {(e.dagster_event.asset_key, e.dagster_event_type): i for i, e in enumerate(events)}
        with self.index_transaction() as conn:
            ids = _insert_ids(conn, rows)
            self._store_asset_event_tags(conn, events, ids)
            for i in sorted(last.values()):
                self._store_asset_event(conn, events[i], ids[i])

    def _store_asset_check_evaluation_planned(self, event: EventLogEntry, event_id: int | None) -> None:
        # the stock method serialises the whole event once per partition row; the rows are the same
        planned = event.get_dagster_event().event_specific_data
        keys = planned.partitions_subset.get_partition_keys() if planned.partitions_subset else [None]
        payload, stamp = serialize_value(event), self._event_insert_timestamp(event)
        rows = [
            {
                "asset_key": planned.asset_key.to_string(),
                "check_name": planned.check_name,
                "partition": key,
                "run_id": event.run_id,
                "execution_status": AssetCheckExecutionRecordStatus.PLANNED.value,
                "evaluation_event": payload,
                "evaluation_event_timestamp": stamp,
                "evaluation_event_storage_id": event_id,
            }
            for key in keys
        ]
        with self.index_connection() as conn:
            conn.execute(AssetCheckExecutionsTable.insert(), rows)

    def watch(self, run_id: str, cursor: str | None, callback: Any) -> None:
        # the stock watcher reacts to {run}.db only; with kept-open connections writes land in
        # {run}.db-wal until a checkpoint, so the live run log would stall
        from watchdog.observers import Observer

        if not self._obs:
            self._obs = Observer()
            self._obs.start()
        handler = _WalAwareWatchdog(self, run_id, callback, cursor)
        self._watchers[run_id][callback] = (handler, self._obs.schedule(handler, self._base_dir, recursive=True))

    def delete_events(self, run_id: str) -> None:
        super().delete_events(run_id)
        self._forget(run_id)

    def wipe(self) -> None:
        self._forget()  # the run shards' files are deleted: no connection may outlive them
        super().wipe()

    def upgrade(self) -> None:
        self._forget()
        super().upgrade()

    def dispose(self) -> None:
        self._forget()
        super().dispose()


def _insert_ids(conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
    """Insert ``rows`` into the index shard's event table (one executemany); their ids in row
    order. From its first insert the transaction holds SQLite's write lock, so no other writer's
    row can fall between ours, and each row takes the largest id + 1 (the id is the rowid): the
    ids are the last ``len(rows)`` up to the largest after the insert."""
    table = SqlEventLogStorageTable
    conn.execute(table.insert(), rows)
    last = conn.execute(select(func.max(table.c.id))).scalar_one()
    return list(range(last - len(rows) + 1, last + 1))


def _mirrored(e: EventLogEntry) -> bool:
    """An event the stock storage also writes to the index shard with the asset's row."""
    return bool(e.is_dagster_event and e.dagster_event_type in ASSET_EVENTS and e.dagster_event.asset_key)


class _WalAwareWatchdog(SqliteEventLogStorageWatchdog):
    """The stock run-log watcher, also woken by the run shard's ``-wal`` file."""

    @property
    def patterns(self) -> list[str]:
        return [self._log_path, self._log_path + "-wal"]

    def on_modified(self, event: Any) -> None:
        self._process_log()


class FinnexSqliteStorage(DagsterSqliteStorage):
    """``DagsterSqliteStorage`` (same files under ``base_dir``) with the event log above."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None, synchronous: str = "NORMAL"):
        super().__init__(base_dir, inst_data=inst_data)
        self._event_log_storage.dispose()
        self._event_log_storage = FinnexSqliteEventLogStorage(_event_logs_directory(base_dir), synchronous=synchronous)
        self._synchronous = synchronous

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return _config_type()

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> "FinnexSqliteStorage":
        os.makedirs(config_value["base_dir"], exist_ok=True)
        return cls(inst_data=inst_data, **config_value)

    @property
    def event_storage_data(self) -> ConfigurableClassData | None:
        return ConfigurableClassData(
            __name__,
            FinnexSqliteEventLogStorage.__name__,
            yaml.dump(
                {"base_dir": _event_logs_directory(self.base_dir), "synchronous": self._synchronous},
                default_flow_style=False,
            ),
        )


def storage_data(base_dir: str, synchronous: str = "NORMAL") -> ConfigurableClassData:
    """The instance's ``storage`` entry for :class:`FinnexSqliteStorage` under ``base_dir``."""
    return ConfigurableClassData(
        __name__,
        FinnexSqliteStorage.__name__,
        yaml.dump({"base_dir": base_dir, "synchronous": synchronous}, default_flow_style=False),
    )


class FinnexInstance(dg.DagsterInstance):
    """The embedded instance (``instance_class`` in dagster_home/dagster.yaml): the stock
    defaults of a home, with :class:`FinnexSqliteStorage` as its default storage."""

    @classmethod
    def config_schema(cls) -> dict[str, Any]:
        return {}

    @staticmethod
    def config_defaults(base_dir: str) -> Mapping[str, ConfigurableClassData | None]:
        return {**InstanceRef.config_defaults(base_dir), "storage": storage_data(base_dir)}


def local_instance(home: str) -> dg.DagsterInstance:
    """A persistent instance under ``home`` with the project's storage (benchmarks, tests)."""
    os.makedirs(home, exist_ok=True)
    ref = InstanceRef.from_dir(home, overrides={"instance_class": {"module": __name__, "class": "FinnexInstance"}})
    return dg.DagsterInstance.from_ref(ref)
