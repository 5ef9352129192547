"""Ingestion + features through Dagster for a year of synthetic sessions, as a ratio to the bare
``pipeline.checked_features`` compute of the same rows, both measured in this run.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_ingestion.py [--start 2024-01-01 --end 2024-12-31]
        [--repeat 1] [--quick] [--stock-storage] [--summary-json]

The Dagster run is the ``modalities`` multi-asset (5 outputs) plus ``daily_features`` over the
range as one run (``BackfillPolicy.single_run``), with Parquet tables in a temp folder, on an
on-disk SQLite instance in a temp folder with the project's storage (``FinnexInstance``, what
``dagster_home/dagster.yaml`` gives a user's DAGSTER_HOME) and on an in-memory one;
``--stock-storage`` also runs Dagster's stock on-disk SQLite storage, for comparison. Its parts: time inside the table store (split, Parquet writes, flush, renames; reads), and a
one-partition run (the fixed cost). Issue 18's target: the year within 10x the bare compute plus
at most 15 s of fixed Dagster cost.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg

from finnex_assets.assets.features import daily_features
from finnex_assets.assets.ingestion import modalities
from finnex_assets.instance_storage import local_instance
from finnex_assets.io_managers import PartitionedParquetIOManager
from finnex_assets.resources import DataSourceResource
from finnex_assets.storage import FinnexStorage
from finnex_ml import calendar, pipeline
from finnex_ml.data.synthetic import SyntheticSource

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _summary import emit, row  # noqa: E402

RANGE_TAGS = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
TIMED: dict[str, float] = {"write": 0.0, "read": 0.0}


def _timed(name: str, fn):
    """Wrap a table_store function so the run's time inside it is added to TIMED[name]."""

    def wrapper(*a, **kw):
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            TIMED[name] += time.perf_counter() - t0

    return wrapper


def bare(asof) -> float:
    t0 = time.perf_counter()
    table = pipeline.checked_features(SyntheticSource(7), asof)
    dt = time.perf_counter() - t0
    assert table.height == len(asof)
    return dt


def _instance(home: Path, kind: str) -> dg.DagsterInstance:
    if kind == "project":
        return local_instance(str(home))
    if kind == "stock":
        return dg.DagsterInstance.local_temp(str(home))
    return dg.DagsterInstance.ephemeral()


def dagster_run(start: str, end: str, kind: str) -> tuple[float, float, float]:
    """(wall s, s in table_store writes, s in reads) for one Dagster run over start..end on an
    instance of ``kind``: "project" (on disk, FinnexInstance), "stock" (on disk) or "memory"."""
    for k in TIMED:
        TIMED[k] = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "dh").mkdir()
        (Path(tmp) / "dh" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        instance = _instance(Path(tmp) / "dh", kind)
        storage = FinnexStorage(root=tmp)
        resources = {
            "data_source": DataSourceResource(kind="synthetic"),
            "storage": storage,
            "io_manager": PartitionedParquetIOManager(storage=storage),
        }
        kw = {"partition_key": start} if start == end else {"tags": {RANGE_TAGS[0]: start, RANGE_TAGS[1]: end}}
        t0 = time.perf_counter()
        # console at WARNING: printing ~4,600 DEBUG event lines is not the stage's work (the
        # events are still stored in the instance, which is)
        quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
        result = dg.materialize(
            [modalities, daily_features], resources=resources, instance=instance, run_config=quiet, **kw
        )
        dt = time.perf_counter() - t0
        assert result.success
        instance.dispose()
    return dt, TIMED["write"], TIMED["read"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--start", default="2024-01-01")
    ap.add_argument("--end", default="2024-12-31")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="one repeat, on-disk project instance only")
    ap.add_argument("--stock-storage", action="store_true", help="also Dagster's stock on-disk SQLite storage")
    ap.add_argument("--summary-json", action="store_true", help="also print one SUMMARY {json} line")
    args = ap.parse_args()
    if args.quick:
        args.repeat = 1
    try:
        from finnex_ml import table_store

        table_store.write_partitions = _timed("write", table_store.write_partitions)
        table_store.read_partitions = _timed("read", table_store.read_partitions)
    except ImportError:  # a tree from before table_store (to compare against): no breakdown
        pass
    asof = calendar.sessions(args.start, args.end)
    first = asof[0].isoformat()
    span = f"{len(asof)} sessions {asof[0]}..{asof[-1]}, 6 assets"
    bare(asof[:5])  # imports and caches, untimed
    dagster_run(first, first, "memory")
    modes = ["project"] if args.quick else ["project", "memory"]
    if args.stock_storage:
        modes.append("stock")
    labels = {
        "project": "on-disk SQLite instance",
        "stock": "on-disk SQLite instance, Dagster's stock storage",
        "memory": "in-memory instance",
    }
    rows = []
    base = []
    for kind in modes:
        label = labels[kind]
        runs, fixed = [], []
        for _ in range(args.repeat):
            base.append(bare(asof))  # interleaved with the runs it is compared to
            runs.append(dagster_run(first, asof[-1].isoformat(), kind))
            fixed.append(dagster_run(first, first, kind)[0])
        b = min(base)
        wall, write, read = min(runs)
        one = min(fixed)
        target = 10 * b + 15
        print(
            f"{label}: bare {b:.2f} s, Dagster {wall:.2f} s ({wall / b:.1f}x; writes {write:.2f} s, reads "
            f"{read:.2f} s), one-partition run {one:.2f} s; target 10x bare + 15 s = {target:.1f} s: "
            f"{'met' if wall <= target else 'NOT met'}"
        )
        work = f"{span}, best of {args.repeat}"
        rows += [
            row(
                f"ingestion + features (Dagster, {label})",
                work,
                wall,
                "bare pipeline.checked_features",
                b,
                wall / b,
                "x the time of the bare compute (higher = slower; target <= 10x + 15 s fixed)",
                target_s=target,
            ),
            row(
                f"of which table_store writes + reads ({label})",
                work,
                write + read,
                "bare pipeline.checked_features",
                b,
                (write + read) / b,
                "x the time of the bare compute (higher = slower)",
            ),
            row(
                f"one-partition Dagster run, the fixed cost ({label})",
                f"1 session {first}, 6 assets",
                one,
                None,
                None,
                None,
                "no baseline",
            ),
        ]
    if args.summary_json:
        emit(rows)


if __name__ == "__main__":
    main()
