"""Point-in-time alignment: as-of joins on release dates, and trailing snapshots per date.

A value enters the table on the session of its release (never its period end), is carried
forward with its age in days, and is never filled backward.
"""

from __future__ import annotations

import bisect
from datetime import date

import numpy as np
import polars as pl

# Fundamental flow series: year-over-year growth and a trailing-twelve-month sum make sense.
FLOW_SERIES = ("revenue", "eps", "free_cash_flow")
DERIVED_SUFFIXES = ("_chg", "_age", "_yoy", "_ttm")


def align_releases(releases: pl.DataFrame, sessions: list[date], modality: str) -> pl.DataFrame:
    """Wide as-of table for one modality: ``date`` plus ``{series}``, ``{series}_chg``
    (against the previous period), ``{series}_age`` (days since the value shown was released)
    and, for fundamental flow series, ``{series}_yoy`` and ``{series}_ttm`` (trailing four periods).

    A series whose periods are each released once takes one row per release. A *revised*
    series (some ``period_end`` released more than once: vintage files, restated filings)
    takes, at each session, the vintage of the series known then (see :func:`_vintage_rows`).
    """
    grid = pl.DataFrame({"date": sessions}, schema={"date": pl.Date}).sort("date")
    rel = releases.filter(pl.col("modality") == modality)
    out = grid
    for series in sorted(rel["series"].unique().to_list()):
        rows = rel.filter(pl.col("series") == series)
        if rows["period_end"].is_duplicated().any():
            s = _vintage_rows(rows)
        else:  # every period released once: one row per release date, as always (same bytes)
            s = (
                rows.sort("released", "period_end")
                .unique(subset="released", keep="last", maintain_order=True)
                .with_columns(
                    pl.col("value").shift(1).alias("v1"),
                    pl.col("value").shift(2).alias("v2"),
                    pl.col("value").shift(3).alias("v3"),
                    pl.col("value").shift(4).alias("v4"),
                    pl.col("released").alias("value_released"),
                )
            )
        s = s.with_columns(
            (pl.col("value") - pl.col("v1")).alias("chg"),
            (pl.col("value") / pl.col("v4") - 1.0).alias("yoy"),
            # Explicit sum of four lags, not rolling_sum: a rolling sum carries float error
            # from wherever the series starts, so the same date would differ by window.
            (pl.col("value") + pl.col("v1") + pl.col("v2") + pl.col("v3")).alias("ttm"),
        )
        cols = [
            pl.col("value").alias(series),
            pl.col("chg").alias(f"{series}_chg"),
            pl.col("value_released").alias(f"_{series}_released"),
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


def _vintage_rows(rows: pl.DataFrame) -> pl.DataFrame:
    """One row per release date of a revised series, as known at that date: ``released``,
    ``value`` (the latest vintage of the latest period released so far), ``value_released``
    (when that vintage was released, for ``_age``) and ``v1`` .. ``v4``, the latest vintages
    of the four periods before it (for ``_chg``, ``_yoy``, ``_ttm``).

    A revision of an older period updates that period only: it never becomes the current
    value. The previous periods are taken at their latest vintage known at the date, not at
    the value that was headline when they were current. Both use only what was public then;
    the latest vintage is the vector a user downloading the series that day got (ALFRED's
    vintage of that date), so the change is measured within one vintage, as the agency
    reports it (a GDP release states Q2 growth against the revised Q1 it publishes with it),
    and not across vintages, where a level change from re-basing would show as growth.
    """
    ordered = rows.sort("released", "period_end").select("period_end", "released", "value").rows()
    latest: dict[date, tuple[float, date]] = {}  # period_end -> (latest vintage, its release)
    periods: list[date] = []  # the periods known so far, sorted
    out: list[tuple] = []
    i = 0
    while i < len(ordered):
        day = ordered[i][1]
        while i < len(ordered) and ordered[i][1] == day:  # everything released on ``day``
            period, released, value = ordered[i]
            if period not in latest:
                bisect.insort(periods, period)
            latest[period] = (value, released)
            i += 1
        value, value_released = latest[periods[-1]]
        lags = [latest[p][0] for p in reversed(periods[-5:-1])]
        lags += [None] * (4 - len(lags))
        out.append((day, value, value_released, *lags))
    return pl.DataFrame(
        out,
        schema={
            "released": pl.Date,
            "value": pl.Float64,
            "value_released": pl.Date,
            **{f"v{k}": pl.Float64 for k in range(1, 5)},
        },
        orient="row",
    )


def snapshots(frame: pl.DataFrame, asof: list[date], history: int) -> pl.DataFrame:
    """Stack, for every date in ``asof``, the last ``history`` sessions of ``frame`` up to it.

    ``frame`` holds one row per session (or several per session for long tables) and must
    be sorted by ``date``. The result carries an ``asof`` column: the partition it belongs to.
    Each window is a contiguous run of the sorted frame: a zero-copy slice, so the stack shares
    the frame's memory (a filter per date cost ~0.1 ms x modalities x dates, seconds per
    ticker-year; a gather of the rows held a copy of every window, +100 MB for two years).
    """
    dates = frame["date"]
    if not dates.is_sorted():
        raise ValueError("snapshots: frame must be sorted by date (rows of one session stay in their order)")
    d_arr = dates.unique(maintain_order=True).to_numpy().astype("datetime64[D]")
    col = dates.to_numpy().astype("datetime64[D]")
    t_arr = np.asarray(asof, dtype="datetime64[D]")
    j = np.searchsorted(d_arr, t_arr, side="right")
    t_arr, j = t_arr[j > 0], j[j > 0]  # a date before the first session has no window
    if not len(t_arr):
        return frame.clear().with_columns(pl.lit(None, dtype=pl.Date).alias("asof")).select("asof", *frame.columns)
    start = np.searchsorted(col, d_arr[np.maximum(0, j - history)], side="left")
    length = np.searchsorted(col, t_arr, side="right") - start
    stacked = pl.concat([frame.slice(int(s), int(n)) for s, n in zip(start, length)], rechunk=False)
    return stacked.select(pl.Series("asof", np.repeat(t_arr, length)).cast(pl.Date), *frame.columns)
