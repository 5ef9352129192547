"""Time to build the daily feature table for 252 sessions, as a ratio to a bare polars read
of the same raw data, both measured in this run.

    .venv/bin/python benchmarks/bench_features.py [--repeat 3] [--quick] [--summary-json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import polars as pl

from finnex_ml import calendar
from finnex_ml.data.base import RawData
from finnex_ml.data.synthetic import SyntheticSource
from finnex_ml.features import HISTORY_SESSIONS
from finnex_ml.pipeline import daily_features_from_snapshots, modality_snapshots

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _summary import emit, row  # noqa: E402

TABLES = ("prices", "peers", "texts", "releases")


@dataclass
class ParquetSource:
    """Serves RawData straight from Parquet files, so both timings start from the same bytes."""

    folder: Path
    name: str = "parquet"

    def read(self) -> RawData:
        return RawData(**{t: pl.read_parquet(self.folder / f"{t}.parquet") for t in TABLES})

    def load(self, start: date, end: date) -> RawData:
        return self.read()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="best of 1 instead of --repeat")
    parser.add_argument("--summary-json", action="store_true", help="also print one SUMMARY {json} line")
    args = parser.parse_args()
    if args.quick:
        args.repeat = 1
    asof = calendar.sessions("2024-01-01", "2024-12-31")
    start = calendar.sessions_back(asof[0], HISTORY_SESSIONS)
    raw = SyntheticSource(7).load(start, asof[-1])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for t in TABLES:
            getattr(raw, t).write_parquet(folder / f"{t}.parquet")
        size = sum(p.stat().st_size for p in folder.iterdir())
        src = ParquetSource(folder)
        base, full = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            src.read()
            base.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            snaps, _ = modality_snapshots(src, asof)
            table = daily_features_from_snapshots(snaps)
            full.append(time.perf_counter() - t0)
    b, f = min(base), min(full)
    print(f"raw data: {size / 1e6:.2f} MB parquet, {raw.texts.height} texts, {len(asof)} sessions")
    print(f"bare polars read        : {b * 1e3:8.1f} ms")
    print(f"feature table (252 x {table.width - 3}): {f * 1e3:8.1f} ms")
    print(f"ratio feature_table / bare_read = {f / b:.1f}x  (best of {args.repeat})")
    if args.summary_json:
        emit(
            [
                row(
                    "feature table (modality_snapshots + daily_features_from_snapshots)",
                    f"{len(asof)} sessions x {table.width - 3} features ({size / 1e6:.1f} MB parquet), "
                    f"best of {args.repeat}",
                    f,
                    "bare polars read of the same parquet",
                    b,
                    f / b,
                    "x the time of a bare polars read (higher = slower)",
                )
            ]
        )


if __name__ == "__main__":
    main()
