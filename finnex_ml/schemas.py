"""Pandera schemas behind the QA asset checks. Each returns the failing rows, not just a verdict."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandera.polars as pa
import polars as pl

from finnex_ml.features import META_COLUMNS
from finnex_ml.modalities import DAILY_STALENESS_LIMIT, staleness_limits


@dataclass(frozen=True)
class CheckOutcome:
    passed: bool
    failures: pl.DataFrame  # pandera's failure cases: column, check, failure_case, index
    rows_checked: int

    @property
    def failing_rows(self) -> list[int]:
        return sorted({int(i) for i in self.failures["index"].drop_nulls().to_list()})


def run_schema(schema: pa.DataFrameSchema, frame: pl.DataFrame) -> CheckOutcome:
    try:
        schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        return CheckOutcome(False, exc.failure_cases, frame.height)
    return CheckOutcome(True, pl.DataFrame(), frame.height)


def frame_check(expr: pl.Expr, name: str) -> pa.Check:
    """A dataframe-level pandera check from a boolean polars expression (one value per row)."""
    return pa.Check(lambda data: data.lazyframe.select(expr), name=name)


OHLC_CONSISTENCY = pa.DataFrameSchema(
    checks=[
        frame_check(pl.col("low") <= pl.min_horizontal("open", "close"), "low_le_open_close"),
        frame_check(pl.col("high") >= pl.max_horizontal("open", "close"), "high_ge_open_close"),
    ],
)
PRICES_POSITIVE = pa.DataFrameSchema(
    {
        "open": pa.Column(pl.Float64, pa.Check.gt(0)),
        "high": pa.Column(pl.Float64, pa.Check.gt(0)),
        "low": pa.Column(pl.Float64, pa.Check.gt(0)),
        "close": pa.Column(pl.Float64, pa.Check.gt(0)),
        "volume": pa.Column(pl.Float64, pa.Check.ge(0)),
    }
)
UNIQUE_SNAPSHOT_ROWS = pa.DataFrameSchema(unique=["asof", "date"])
UNIQUE_SESSIONS = pa.DataFrameSchema({"date": pa.Column(pl.Date, unique=True, nullable=False)})


def finite_after_warmup(feature_columns: list[str]) -> pa.DataFrameSchema:
    """Every feature is non-null and finite on rows whose warm-up is complete."""
    warm = pl.col("warmup_complete")
    return pa.DataFrameSchema(
        checks=[frame_check(~warm | (pl.col(c).is_not_null() & pl.col(c).is_finite()), c) for c in feature_columns]
    )


def staleness_within_bounds(frame: pl.DataFrame) -> pa.DataFrameSchema:
    """Each ``*_age`` column stays within its modality's limit (after warm-up)."""
    checks = []
    limits = staleness_limits()  # days a carried-forward value may age, per feature group (modality table)
    for c in frame.columns:
        if not c.endswith("_age") or "__" not in c:
            continue
        group = c.split("__", 1)[0]
        limit = limits.get(group, DAILY_STALENESS_LIMIT)
        checks.append(frame_check(~pl.col("warmup_complete") | (pl.col(c) <= limit), f"{c}<= {limit}d"))
    return pa.DataFrameSchema(checks=checks)


def feature_columns(frame: pl.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in META_COLUMNS]


# The QA rules of ingestion (market snapshots) and daily_features: name -> (description, run).
# The Dagster layer turns them into blocking asset checks; the library applies the same rules
# where it computes features outside those assets (pipeline.checked_features).
MARKET_CHECKS: dict[str, tuple[str, Callable[[pl.DataFrame], CheckOutcome]]] = {
    "ohlc_consistency": (
        "low <= open, close <= high on every row",
        lambda f: run_schema(OHLC_CONSISTENCY, f),
    ),
    "prices_positive_volume_nonnegative": (
        "prices > 0 and volume >= 0",
        lambda f: run_schema(PRICES_POSITIVE, f),
    ),
    "unique_sessions": (
        "one row per (partition, session)",
        lambda f: run_schema(UNIQUE_SNAPSHOT_ROWS, f),
    ),
}
FEATURE_CHECKS: dict[str, tuple[str, Callable[[pl.DataFrame], CheckOutcome]]] = {
    "unique_sessions": ("one row per trading date", lambda f: run_schema(UNIQUE_SESSIONS, f)),
    "finite_after_warmup": (
        "no null, NaN or inf in any feature once warm-up is complete",
        lambda f: run_schema(finite_after_warmup(feature_columns(f)), f),
    ),
    "staleness_within_bounds": (
        "carried-forward values are younger than their modality's limit",
        lambda f: run_schema(staleness_within_bounds(f), f),
    ),
}
