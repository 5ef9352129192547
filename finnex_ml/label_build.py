"""Labels for a list of dates from per-date market_data snapshots (the ``labels`` asset's work).

Label t needs close(t+h), read from the snapshot of t+h as published then; sigma(t) uses the
snapshot of t alone. ``market_path(d)`` says where the snapshot of ``d`` is stored (a Parquet
file with ``asof``, ``date`` and ``close``); a missing snapshot of t is an error. Where the
snapshot of t+h was never materialised, ``source_closes`` (the data source's closes, the same
numbers its snapshot would hold) supplies close(t+h) for sessions before today; a close that
exists in neither leaves horizon h unlabeled (null, never Hold). Besides the label columns the
table carries QA helper columns (``QA_COLUMNS``) that the checks read and that are not stored.

The series to label are ``SeriesKey``s (or plain dates: the single-stock series); the market
snapshots and the table hold that one series, so its rows stay indexed by date (``label_keys``
gives them back as keys).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from finnex_ml import calendar
from finnex_ml import labels as lb
from finnex_ml.errors import DataInputError
from finnex_ml.schemas import CheckOutcome, run_schema
from finnex_ml.series import SeriesKey, single_date

QA_COLUMNS = ("sigma_check", "expected_fwd_", "fwd_available_")
MarketPath = Callable[[date], Path]
SourceCloses = Callable[[list[date]], dict[date, float]]  # the closes the source has among those sessions


def load_snapshots(market_path: MarketPath, days: list[date]) -> dict[date, pl.DataFrame]:
    """market_data snapshots among ``days`` that are stored (missing ones are skipped)."""
    out = {}
    for d in days:
        path = market_path(d)
        if path.exists():
            out[d] = pl.read_parquet(path, columns=["asof", "date", "close"])
    return out


def future_sessions(t: date, n: int) -> list[date]:
    """The n sessions after t (fewer at the calendar's end); the same calendar as the partitions."""
    if not calendar.is_session(t):
        raise DataInputError(f"{t} is not an NYSE session", date=t.isoformat())
    return calendar.sessions(t + timedelta(days=1), t + timedelta(days=2 * n + 10))[:n]


def build_labels(
    market_path: MarketPath,
    keys: Sequence[SeriesKey | date],
    cfg: lb.LabelConfig,
    source_closes: SourceCloses | None = None,
    today: date | None = None,
) -> pl.DataFrame:
    """Labels for the series ``keys`` (single-stock: a date is its key) from the stored
    market_data snapshots (future closes also from ``source_closes`` where a snapshot is
    missing), with the QA helper columns ``sigma_check``, ``expected_fwd_{h}d`` and
    ``fwd_available_{h}d``; one row per key, in order, indexed by its date."""
    days = [single_date(k, "labels") for k in keys]
    hmax = max(cfg.horizons)
    future = {t: future_sessions(t, hmax) for t in days}
    need = sorted(set(days) | {s for f in future.values() for s in f})
    snaps = load_snapshots(market_path, need)
    today = today or date.today()
    ask = sorted({s for f in future.values() for s in f if s not in snaps and s < today})
    from_source = source_closes(ask) if ask and source_closes is not None else {}
    frames = []
    for t in days:
        snap = snaps.get(t)
        if snap is None:
            raise DataInputError(
                f"labels for {t} need market_data for {t}; materialise it first",
                file=str(market_path(t)),
                date=t.isoformat(),
            )
        late = snap.filter(pl.col("date") > t)
        if late.height:
            raise DataInputError(
                f"market_data snapshot {t} holds rows after its date ({late['date'][0]})",
                file=str(market_path(t)),
                date=t.isoformat(),
            )
        hist = snap.select("date", "close").sort("date").tail(cfg.vol_window + 1)
        fut_rows, avail = [], {}
        for s in future[t]:
            if s in snaps:
                row = snaps[s].filter(pl.col("date") == s).select("date", "close")
            elif from_source.get(s) is not None:
                row = pl.DataFrame({"date": [s], "close": [float(from_source[s])]}, schema=hist.schema)
            else:
                row = None
            avail[s] = row is not None and row.height == 1 and row["close"][0] is not None
            if avail[s]:
                fut_rows.append(row)
        series = pl.concat([hist, *fut_rows], how="vertical")
        cal = calendar.sessions(hist["date"][0], future[t][-1]) if future[t] else calendar.sessions(hist["date"][0], t)
        row = lb.compute_labels(series, [t], cfg, sessions=cal)
        closes = hist["close"].to_numpy()
        # independent recomputation for QA: numpy on partition t's own rows (dates <= t only)
        tail = closes[-(cfg.vol_window + 1) :]
        check = float(np.std(np.diff(tail) / tail[:-1], ddof=1)) if tail.size == cfg.vol_window + 1 else None
        check = check if check is not None and np.isfinite(check) else None
        extra: dict[str, Any] = {"sigma_check": check}
        for h in cfg.horizons:
            exp = future[t][h - 1] if h <= len(future[t]) else None
            extra[f"expected_fwd_{h}d"] = exp
            extra[f"fwd_available_{h}d"] = bool(exp is not None and avail.get(exp, False))
        frames.append(row.with_columns(**{k: pl.lit(v) for k, v in extra.items()}))
    out = pl.concat(frames, how="vertical_relaxed")
    casts = {"sigma_check": pl.Float64} | {f"expected_fwd_{h}d": pl.Date for h in cfg.horizons}
    return out.with_columns(
        [pl.col(c).cast(t) for c, t in casts.items()] + [pl.lit(cfg.config_hash()).alias("config_hash")]
    )


def label_keys(table: pl.DataFrame) -> list[SeriesKey]:
    """The series key of each row of a (single-stock) labels table, in row order."""
    return [SeriesKey.of(d) for d in table["date"].to_list()]


def stored_columns(frame: pl.DataFrame) -> list[str]:
    """The columns of ``build_labels``' table that are stored (all but the QA helpers)."""
    return [c for c in frame.columns if not c.startswith(QA_COLUMNS)]


def pending_dates(table: pl.DataFrame, horizons: list[int] | tuple[int, ...]) -> pl.DataFrame:
    """Rows with at least one unlabeled horizon (their future price is not stored yet)."""
    return table.filter(pl.any_horizontal([pl.col(lb.class_col(h)).is_null() for h in horizons]))


def past_volatility_outcome(cfg: lb.LabelConfig, full: pl.DataFrame) -> CheckOutcome:
    """sigma(t) from the snapshot of t alone equals the stored one; thresholds follow from it."""
    return run_schema(lb.past_volatility_schema(cfg.horizons, cfg), full)


def future_price_outcome(cfg: lb.LabelConfig, full: pl.DataFrame) -> CheckOutcome:
    """A class/return exists only where close(t+h) was read from the snapshot of t+h."""
    return run_schema(lb.future_price_schema(cfg.horizons, needs_sigma=cfg.threshold == "volatility"), full)


def class_bounds_outcome(
    cfg: lb.LabelConfig, dist: dict, min_labeled: int, bounds: tuple[float, float]
) -> tuple[CheckOutcome, pl.DataFrame]:
    """Class shares within ``bounds`` per horizon with at least ``min_labeled`` labeled dates;
    the outcome and the share frame it assessed."""
    shares = lb.class_share_frame(dist).filter(pl.col("labeled") >= min_labeled)
    return run_schema(lb.class_bounds_schema(cfg.horizons, *bounds), shares), shares


__all__ = [
    "QA_COLUMNS",
    "build_labels",
    "class_bounds_outcome",
    "future_price_outcome",
    "future_sessions",
    "load_snapshots",
    "past_volatility_outcome",
    "pending_dates",
    "stored_columns",
]
