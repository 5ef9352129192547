"""From a data source to per-date modality snapshots and the daily feature table."""

from __future__ import annotations

from datetime import date

import polars as pl

from finnex_ml import calendar
from finnex_ml import modalities as md
from finnex_ml.alignment import snapshots
from finnex_ml.data.base import DataSource, RawData
from finnex_ml.errors import DataInputError
from finnex_ml.features import HISTORY_SESSIONS, build_daily_features


def __getattr__(name: str) -> tuple[str, ...]:
    # MODALITIES: the ingestion assets of the modality table as it is now (an added modality too)
    if name == "MODALITIES":
        return md.asset_names()
    raise AttributeError(name)


def load_window(source: DataSource, asof: list[date], history: int = HISTORY_SESSIONS) -> tuple[RawData, list[date]]:
    """Everything the snapshots of ``asof`` need: ``history`` sessions before the first date."""
    for d in asof:
        if not calendar.is_session(d):
            raise DataInputError(f"{d} is not an NYSE session", date=d.isoformat())
    start = calendar.sessions_back(min(asof), history)
    raw = source.load(start, max(asof))
    missing = sorted(set(asof) - set(raw.prices["date"].to_list()))
    if missing:
        raise DataInputError(
            f"source {source.name!r} has no price row for {len(missing)} requested session(s), first {missing[0]}",
            date=missing[0].isoformat(),
        )
    return raw, calendar.sessions(start, max(asof))


def modality_snapshots(
    source: DataSource,
    asof: list[date],
    history: int = HISTORY_SESSIONS,
    mods: tuple[md.Modality, ...] | None = None,
) -> tuple[dict[str, pl.DataFrame], dict[str, str]]:
    """One trailing snapshot per date and modality (default: the whole modality table), as
    known at that date's close, keyed by ingestion asset."""
    raw, sess = load_window(source, asof, history)
    tables = {m.asset: m.load(source, raw, sess) for m in (md.current() if mods is None else mods)}
    return {k: snapshots(v, asof, history) for k, v in tables.items()}, raw.provenance


# asof dates whose features are computed together: the joined window is ~300 rows x ~300 columns
# per date, so a whole run at once held ~1 MB per session (+0.26 GB of peak memory a year); 64
# dates: about 60 MB whatever the range, no slower than all at once (32 was slower)
FEATURE_CHUNK = 64


def daily_features_from_snapshots(
    snaps: dict[str, pl.DataFrame], mods: tuple[md.Modality, ...] | None = None
) -> pl.DataFrame:
    """The built-in modalities' features (``build_daily_features``), then each added modality's
    ``{prefix}__*`` columns (its features hook) for those of ``mods`` (default: the modality
    table) that ``snaps`` holds; :data:`FEATURE_CHUNK` asof dates at a time, so memory does not
    grow with the dates (each date's row depends on its own snapshots only)."""
    asofs = snaps[md.BUILTIN_ASSETS[0]]["asof"].unique().sort()
    if asofs.len() <= FEATURE_CHUNK:
        return _features_of(snaps, mods)
    parts = [
        _features_of({k: _asof_rows(v, asofs.slice(i, FEATURE_CHUNK)) for k, v in snaps.items()}, mods)
        for i in range(0, asofs.len(), FEATURE_CHUNK)
    ]
    # relaxed: an added modality's hook that infers dtypes from its rows may type an all-null chunk apart
    return pl.concat(parts, how="vertical_relaxed")


def _asof_rows(snap: pl.DataFrame, chunk: pl.Series) -> pl.DataFrame:
    """The rows of ``snap`` whose ``asof`` is in ``chunk`` (sorted). ``snapshots`` stacks dates in
    order, so they lie in one slice: a filter of that slice, where a filter of the whole stack per
    chunk grew with the square of the dates."""
    col = snap["asof"]
    if col.is_sorted():
        lo = int(col.search_sorted(chunk[0], side="left"))
        snap = snap.slice(lo, int(col.search_sorted(chunk[-1], side="right")) - lo)
    return snap.filter(pl.col("asof").is_in(chunk.implode()))


def _features_of(snaps: dict[str, pl.DataFrame], mods: tuple[md.Modality, ...] | None) -> pl.DataFrame:
    table = build_daily_features(*(snaps[a] for a in md.BUILTIN_ASSETS))
    for mod in md.current() if mods is None else mods:
        if mod.features is None or mod.asset not in snaps:
            continue
        extra = md.extra_features(mod, snaps[mod.asset])
        missing = sorted(set(table["date"].to_list()) - set(extra["date"].to_list()))
        if missing:
            raise DataInputError(
                f"modality {mod.name!r}: its features have no row for {len(missing)} date(s), first {missing[0]}; "
                "its parser must cover every session of the window",
                date=missing[0].isoformat(),
            )
        table = table.join(extra, on="date", how="left")
    return table


def checked_features(source: DataSource, asof: list[date]) -> pl.DataFrame:
    """The daily feature rows of ``asof`` straight from ``source``, with the same QA rules the
    ingestion and ``daily_features`` checks apply; a failing rule raises, naming it and its dates.

    For the sessions a stage needs before its first date (the images' lookback) when they were
    never materialised: the rows are byte-for-byte what ``daily_features`` would store for them,
    since both are the same deterministic computation on data known at each date's close.
    """
    from finnex_ml.schemas import FEATURE_CHECKS, MARKET_CHECKS

    snaps, _ = modality_snapshots(source, asof)
    table = daily_features_from_snapshots(snaps)
    for frame, rules, column in ((snaps["market_data"], MARKET_CHECKS, "asof"), (table, FEATURE_CHECKS, "date")):
        for name, (desc, run) in rules.items():
            outcome = run(frame)
            if not outcome.passed:
                days = sorted({str(frame[column][i]) for i in outcome.failing_rows if i < frame.height})
                raise DataInputError(
                    f"source {source.name!r}, lookback sessions {asof[0]}..{asof[-1]}: QA rule {name} ({desc}) "
                    f"fails on {len(days)} date(s), first {days[0] if days else '?'}; fix the source rows or "
                    "materialise daily_features over those dates to see the failing cases in the UI",
                    date=days[0] if days else None,
                )
    return table
