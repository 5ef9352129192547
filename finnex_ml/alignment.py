"""Point-in-time alignment: as-of joins on release dates, and trailing snapshots per date.

A value enters the table on the session of its release (never its period end), is carried
forward with its age in days, and is never filled backward.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl

# Fundamental flow series: year-over-year growth and a trailing-twelve-month sum make sense.
FLOW_SERIES = ("revenue", "eps", "free_cash_flow")
DERIVED_SUFFIXES = ("_chg", "_age", "_yoy", "_ttm")


def align_releases(releases: pl.DataFrame, sessions: list[date], modality: str) -> pl.DataFrame:
    """Wide as-of table for one modality: ``date`` plus ``{series}``, ``{series}_chg``
    (against the previous release), ``{series}_age`` (days since release) and, for
    fundamental flow series, ``{series}_yoy`` and ``{series}_ttm`` (trailing four releases).
    """
    grid = pl.DataFrame({"date": sessions}, schema={"date": pl.Date}).sort("date")
    rel = releases.filter(pl.col("modality") == modality)
    out = grid
    for series in sorted(rel["series"].unique().to_list()):
        s = (
            rel.filter(pl.col("series") == series)
            .sort("released", "period_end")
            .unique(subset="released", keep="last", maintain_order=True)
            .with_columns(
                (pl.col("value") - pl.col("value").shift(1)).alias("chg"),
                (pl.col("value") / pl.col("value").shift(4) - 1.0).alias("yoy"),
                # Explicit sum of four lags, not rolling_sum: a rolling sum carries float error
                # from wherever the series starts, so the same date would differ by window.
                (
                    pl.col("value") + pl.col("value").shift(1) + pl.col("value").shift(2) + pl.col("value").shift(3)
                ).alias("ttm"),
            )
        )
        cols = [
            pl.col("value").alias(series),
            pl.col("chg").alias(f"{series}_chg"),
            pl.col("released").alias(f"_{series}_released"),
        ]
        if modality == "fundamental" and series in FLOW_SERIES:
            cols += [pl.col("yoy").alias(f"{series}_yoy"), pl.col("ttm").alias(f"{series}_ttm")]
        joined = grid.join_asof(s.select(pl.col("released").alias("date"), *cols), on="date", strategy="backward")
        out = (
            out.join(joined, on="date", how="left")
            .with_columns(
                (pl.col("date") - pl.col(f"_{series}_released")).dt.total_days().cast(pl.Float64).alias(f"{series}_age")
            )
            .drop(f"_{series}_released")
        )
    return out


def snapshots(frame: pl.DataFrame, asof: list[date], history: int) -> pl.DataFrame:
    """Stack, for every date in ``asof``, the last ``history`` rows of ``frame`` up to it.

    ``frame`` holds one row per session (or several per session for long tables) and must
    be sorted by ``date``. The result carries an ``asof`` column: the partition it belongs to.
    """
    dates = frame["date"].unique(maintain_order=True).sort()
    d_arr = dates.to_numpy().astype("datetime64[D]")
    parts = []
    for t in asof:
        j = int(np.searchsorted(d_arr, np.datetime64(t, "D"), side="right"))
        if j == 0:
            continue
        lo = d_arr[max(0, j - history)]
        window = frame.filter((pl.col("date") >= lo) & (pl.col("date") <= t))
        parts.append(window.with_columns(pl.lit(t, dtype=pl.Date).alias("asof")))
    if not parts:
        return frame.clear().with_columns(pl.lit(None, dtype=pl.Date).alias("asof"))
    return pl.concat(parts).select("asof", *frame.columns)
