"""Release files (``macro``, ``fundamental``, ``sentiment``): frequency and period ends, release
dates, series names and roles, and the load window.
"""

from __future__ import annotations

from datetime import date, timedelta

import polars as pl

from finnex_ml.data.base import RELEASE_SCHEMA, empty_frame
from finnex_ml.data.files.dates import _date_only_release, _published, _release_day, _when
from finnex_ml.data.files.mapping import DEFAULT_RELEASE_LAG_DAYS, KNOWN_SERIES, ROW, FileEntry, _norm, _sanitise
from finnex_ml.data.files.readers import (
    _TICKER_NAMES,
    _by_name,
    _column,
    _date_column,
    _keep_drop,
    _numbers,
    _resolve_names,
)
from finnex_ml.errors import ConfigError, DataInputError

RELEASE_LOOKBACK_YEARS = 2  # releases before ``start`` kept for history, as the synthetic source does
_VINTAGE_START, _VINTAGE_END = "realtime_start", "realtime_end"  # ALFRED vintage files
_RELEASE_NAMES = ("filing_date", "filed", "filed_date", "release_date", "released", "publication_date")


def _infer_frequency(days: pl.Series) -> str | None:
    uniq = days.unique().sort()
    if uniq.len() < 2:
        return None
    gap = uniq.diff().drop_nulls().dt.total_days().median()
    for freq, limit in (("daily", 4), ("weekly", 10), ("monthly", 45), ("quarterly", 120)):
        if gap <= limit:
            return freq
    return "annual"


def _period_end(days: pl.Series, frequency: str | None) -> pl.Series:
    """Move FRED-style period-start dates (all on the 1st) to the end of their period."""
    if frequency not in ("monthly", "quarterly", "annual") or days.len() == 0:
        return days
    if not (days.dt.day() == 1).all():
        return days
    months = {"monthly": 1, "quarterly": 3, "annual": 12}[frequency]
    if frequency == "quarterly" and not days.dt.month().is_in([1, 4, 7, 10]).all():
        return days
    if frequency == "annual" and not (days.dt.month() == 1).all():
        return days
    return days.dt.offset_by(f"{months}mo").dt.offset_by("-1d")


def _one_per_period(entry: FileEntry, frame: pl.DataFrame, col: str, day: pl.Series, frequency: str | None) -> None:
    """A monthly (quarterly) series has one date per month (quarter): two different dates in
    one period mean misread dates (day/month swapped) or a wrong frequency. Revisions repeat
    the same date, which is fine."""
    if frequency not in ("monthly", "quarterly"):
        return
    months = 1 if frequency == "monthly" else 3
    frame = pl.DataFrame({"day": day, ROW: frame[ROW]}).with_columns(
        period=pl.col("day").dt.year() * 12 + (pl.col("day").dt.month() - 1) // months
    )
    firsts = frame.unique("day", keep="first", maintain_order=True)
    dup = firsts.filter(pl.col("period").is_duplicated())
    if dup.height:
        dup = dup.filter(pl.col("period") == dup["period"][0])
        a, b = dup.row(0, named=True), dup.row(1, named=True)
        raise DataInputError(
            f"a {frequency} series with two dates in one period: {a['day']} (row {a[ROW]}) and {b['day']} "
            f"(row {b[ROW]}); are day and month swapped (set date_order in {entry.where}) or is the "
            "frequency wrong?",
            file=entry.rel,
            column=col,
            row=b[ROW],
            date=str(b["day"]),
        )


def _vintage_columns(entry: FileEntry, frame: pl.DataFrame) -> tuple[str | None, str | None]:
    """An ALFRED vintage file's ``realtime_start`` (``vintage_column``, else by name,
    case-insensitively) and ``realtime_end`` (by name; never a value, whatever the file)."""
    if entry.vintage_column:
        start: str | None = _column(frame, entry.vintage_column, entry, "vintage_column")
    else:
        hits = _by_name(frame, (_VINTAGE_START,), set())
        start = hits[0] if hits else None
    ends = _by_name(frame, (_VINTAGE_END,), {start} if start else set())
    return start, (ends[0] if ends else None)


def _release_dating(entry: FileEntry, frame: pl.DataFrame) -> tuple[str | None, str | None, str | None]:
    """``(release column, vintage column, realtime_end column)`` of a release file: the vintage
    column (ALFRED ``realtime_start``) is the release column when there is one."""
    vintage_col, end_col = _vintage_columns(entry, frame)
    if vintage_col is not None:
        if entry.release_column:
            raise ConfigError(
                f"{entry.where}: the file is a vintage file ({vintage_col!r} dates each row's release); "
                "remove release_column"
            )
        return vintage_col, vintage_col, end_col
    if entry.release_column:
        return _column(frame, entry.release_column, entry, "release_column"), None, end_col
    hits = _by_name(frame, _RELEASE_NAMES, set())
    return (hits[0] if len(hits) == 1 else None), None, end_col


def _parse_releases(entry: FileEntry, frame: pl.DataFrame) -> pl.DataFrame:
    release_col, vintage_col, end_col = _release_dating(entry, frame)
    mapped = {_column(frame, s, entry): d for s, d in entry.columns.items()}
    exclude = set(mapped) | {c for c in (release_col, end_col) if c}
    date_col = _date_column(frame, entry, exclude)
    if date_col == release_col:
        what = "vintage_column" if vintage_col else "release_column"
        raise ConfigError(f"{entry.where}: date_column and {what} are the same column {date_col!r}")
    day = _when(frame, date_col, entry)["day"]
    frequency = entry.frequency or _infer_frequency(day)
    _one_per_period(entry, frame, date_col, day, frequency)
    period_end = _period_end(day, frequency)

    policy = _published(entry, frequency)
    if vintage_col is not None and entry.published is None:
        # ALFRED's realtime_start is the day the value entered FRED, with no time: the release
        # may come after the close (or FRED may take it in later that day), so by default a
        # vintage counts from the next session, whatever the modality ("08:30" to say otherwise).
        policy = "next_session"
    if release_col is not None:
        rwhen = _when(frame, release_col, entry)
        lag = timedelta(days=entry.release_lag_days or 0)
        timed = _release_day(rwhen) + lag
        stated = rwhen["day"] + lag  # the release date as the file states it
        dated = _date_only_release(stated, policy)  # a date-only filing, see published
        released = pl.select(pl.when(rwhen["has_time"]).then(timed).otherwise(dated)).to_series()
    else:
        if entry.release_lag_days is None and frequency is None:
            raise DataInputError(
                f"cannot infer the frequency from a single date; set frequency or release_lag_days in {entry.where}",
                file=entry.rel,
                column=date_col,
            )
        lag = entry.release_lag_days if entry.release_lag_days is not None else DEFAULT_RELEASE_LAG_DAYS[frequency]
        stated = period_end + timedelta(days=lag)
        released = _date_only_release(stated, policy)
    early = (stated < period_end).fill_null(False)
    if early.any():
        i = int(early.arg_true()[0])
        hint = (
            f"a vintage ({release_col}) cannot start before its observation's period ends; is {date_col!r} "
            "the observation date?"
            if vintage_col
            else "are the date and release columns swapped?"
        )
        raise DataInputError(
            f"released {stated[i]} before the period ends ({period_end[i]}); {hint} (see {entry.where})",
            file=entry.rel,
            column=release_col,
            row=int(frame[ROW][i]),
            date=str(day[i]),
        )

    skip = {date_col, release_col, end_col, *_by_name(frame, _TICKER_NAMES, set())}
    every = [c for c in frame.columns if c not in skip and c != ROW]
    kept, dropped = _keep_drop(frame, entry, mapped, every)
    strict = bool(kept or mapped)
    cols = kept or list(mapped) or every
    cols = [c for c in cols if c not in dropped]
    role = entry.role
    if role is None and not (mapped or entry.roles or entry.keep) and entry.modality == "macro":
        role = _known_role(entry.path.stem)  # yfinance XLK.csv, FRED VIXCLS.csv
    if role is not None:  # the file is one series: its only value column, or Close of an OHLCV export
        cols = _role_column(frame, entry, cols, role, mapped)
    values, _ = _numbers(frame, cols, entry, strict=strict or role is not None, days=day)
    names = {c: _sanitise(mapped.get(c, c)) or f"col{frame.columns.index(c)}" for c in values.columns}
    if entry.modality == "macro":
        by_role = dict(zip(_resolve_names(frame, entry, tuple(entry.roles), mapped, "roles"), entry.roles.values()))
        for c in names:
            known = role or by_role.get(c) or (None if c in mapped else _known_role(c))
            if known:
                names[c] = known
    if not names:
        raise DataInputError(
            f"no numeric value column found; map the value columns under columns in {entry.where}",
            file=entry.rel,
        )
    clash = [n for n in names.values() if list(names.values()).count(n) > 1]
    if clash:
        cols = [c for c, n in names.items() if n == clash[0]]
        raise DataInputError(
            f"columns {cols[0]!r} and {cols[1]!r} both become series {clash[0]!r}", file=entry.rel, column=cols[1]
        )
    base = pl.DataFrame({"period_end": period_end, "released": released, ROW: frame[ROW]})
    long = pl.concat(
        [
            base.with_columns(
                pl.lit(entry.modality).alias("modality"),
                pl.lit(name).alias("series"),
                values[col].alias("value"),
            )
            for col, name in names.items()
        ],
        how="vertical",
    ).filter(pl.col("value").is_not_null())
    dup = long.filter(pl.struct("series", "period_end", "released").is_duplicated())
    if dup.height:
        first = dup.row(0, named=True)
        rows = dup.filter(
            (pl.col("series") == first["series"])
            & (pl.col("period_end") == first["period_end"])
            & (pl.col("released") == first["released"])
        )[ROW].to_list()
        raise DataInputError(
            f"series {first['series']} has two values for period {first['period_end']} released "
            f"{first['released']} (rows {rows[0]} and {rows[1]})",
            file=entry.rel,
            column=date_col,
            row=rows[1],
            date=str(first["period_end"]),
        )
    return long.select(*RELEASE_SCHEMA).cast(RELEASE_SCHEMA)


VINTAGES = "point-in-time vintages"
CURRENT_VINTAGE = "current vintage: revised data, not as first published"


def _vintage_marker(entry: FileEntry, frame: pl.DataFrame, parsed: pl.DataFrame) -> str:
    """What a release file's provenance says about revisions: `` (point-in-time vintages)`` for
    an ALFRED vintage file; `` (current vintage: ...)`` for a file of weekly or lower frequency
    without release dates (a FRED download: each period at its latest revision, released at
    ``release_lag_days``, which is not what was known then); nothing for a file with a release
    column (each row dated as published) or a daily file (a market close or yield is observed
    on its date and, in practice, never revised)."""
    release_col, vintage_col, _ = _release_dating(entry, frame)
    if vintage_col is not None:
        return f" ({VINTAGES})"
    if release_col is not None:
        return ""
    frequency = entry.frequency or _infer_frequency(parsed["period_end"])
    return "" if frequency == "daily" else f" ({CURRENT_VINTAGE})"


def _known_role(name: str) -> str | None:
    """The role of a common FRED ID / Yahoo ticker (KNOWN_SERIES), by exact case-insensitive name."""
    return KNOWN_SERIES.get(name.strip().upper())


def _role_column(
    frame: pl.DataFrame, entry: FileEntry, cols: list[str], role: str, mapped: dict[str, str]
) -> list[str]:
    if len(cols) == 1:
        return cols
    close = [c for c in cols if _norm(mapped.get(c, c)) == "close"]
    if len(close) == 1:
        return close
    raise DataInputError(
        f"role {role!r} makes the file one series, but it has {len(cols)} value columns "
        f"({', '.join(repr(c) for c in cols[:8])}) and no single Close column; keep one with columns: [...] or "
        f"give roles per column in {entry.where}",
        file=entry.rel,
    )


def _concat_releases(frames: list[pl.DataFrame]) -> pl.DataFrame:
    if not frames:
        return empty_frame(RELEASE_SCHEMA).with_columns(pl.lit(None, pl.String).alias("__file__"))
    both = pl.concat(frames, how="vertical")
    per_file = both.select("modality", "series", "__file__").unique()
    clash = per_file.filter(pl.struct("modality", "series").is_duplicated()).sort("modality", "series", "__file__")
    if clash.height:
        first = clash.row(0, named=True)
        files = clash.filter((pl.col("modality") == first["modality"]) & (pl.col("series") == first["series"]))[
            "__file__"
        ]
        raise DataInputError(
            f"{first['modality']} series {first['series']!r} comes from both {files[0]} and {files[1]}; "
            "rename one under columns",
            file=files[1],
            column=first["series"],
        )
    return both


def _window_releases(releases: pl.DataFrame, start: date, end: date) -> pl.DataFrame:
    """Rows released by ``end`` whose period ends at most RELEASE_LOOKBACK_YEARS before
    ``start`` (history for changes, year-over-year and trailing sums), plus per series the
    latest release before ``start`` whatever its age (the value in force on ``start``).

    A period taken keeps every vintage released by ``end``, so a revision in the window is
    never alone (which would make it look like a new period, see
    :func:`finnex_ml.alignment.align_releases`); and a revised series also keeps its latest
    period before ``start``, however old (its value in force, where the latest release may
    revise an older period). Series without revisions: one row per period, nothing changes."""
    known = releases.filter(pl.col("released") <= end)
    horizon = date(start.year - RELEASE_LOOKBACK_YEARS, start.month, min(start.day, 28))
    before = known.filter(pl.col("released") < start)
    carry = before.filter(pl.col("released") == pl.col("released").max().over("modality", "series"))
    revised = known.group_by("modality", "series").agg(pl.col("period_end").is_duplicated().any().alias("r"))
    current = before.join(revised.filter(pl.col("r")).drop("r"), on=["modality", "series"], how="semi").filter(
        pl.col("period_end") == pl.col("period_end").max().over("modality", "series")
    )
    recent = known.filter((pl.col("released") >= start) | (pl.col("period_end") >= horizon))
    key = ["modality", "series", "period_end"]
    taken = pl.concat([carry.select(key), current.select(key), recent.select(key)], how="vertical").unique()
    out = known.join(taken, on=key, how="semi").select(list(RELEASE_SCHEMA)).unique(maintain_order=True)
    return out.sort("modality", "series", "period_end", "released")
