"""Dates and times of the files: the date grammar (ISO, ``d/d/yyyy`` under ``date_order``, month
names, times and offsets), New York days and UTC instants, and when a date-only text or
release counts (``published``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import polars as pl

from finnex_ml.calendar import CALENDAR_START, assign_session, calendar_end
from finnex_ml.data.files.mapping import DEFAULT_PUBLISHED, NEW_YORK, ROW, FileEntry
from finnex_ml.errors import DataInputError

_MONTHS = {m: i + 1 for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())}

# Date grammar. Every pattern yields (a subset of) the same named groups.
_TIME = (
    r"(?:(?:T|\s+)(?P<H>\d{1,2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:[.,](?P<f>\d{1,9}))?)?"
    r"\s*(?P<ampm>[AaPp]\.?[Mm]\.?)?\s*(?P<tz>Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)?)?"
)
_DATE_PATTERNS = (
    rf"^(?P<y>\d{{4}})[-/.](?P<m>\d{{1,2}})[-/.](?P<d>\d{{1,2}}){_TIME}$",
    rf"^(?P<m>\d{{1,2}})/(?P<d>\d{{1,2}})/(?P<y>\d{{4}}){_TIME}$",
    r"^(?P<y>\d{4})(?P<m>\d{2})(?P<d>\d{2})$",
    rf"^(?:[A-Za-z]{{3,9}},?\s+)?(?P<mon>[A-Za-z]{{3,9}})\.?\s+(?P<d>\d{{1,2}})(?:st|nd|rd|th)?,?\s+(?P<y>\d{{4}}){_TIME}$",
    rf"^(?:[A-Za-z]{{3,9}},?\s+)?(?P<d>\d{{1,2}})\s+(?P<mon>[A-Za-z]{{3,9}})\.?,?\s+(?P<y>\d{{4}}){_TIME}$",
)
_DATE_FIELDS = ("y", "m", "mon", "d", "H", "M", "S", "f", "ampm", "tz")


def _parse_when_frame(s: pl.Series, default_hour: int) -> pl.DataFrame:
    """Parse strings to ``wall`` (naive wall-clock Datetime), ``utc`` offset-aware or null,
    ``has_time``. ``wall`` is null where nothing matched."""
    text = s.cast(pl.String).str.strip_chars()
    frame = pl.DataFrame({"s": text})
    parts = []
    for i, pattern in enumerate(_DATE_PATTERNS):
        groups = frame.select(pl.col("s").str.extract_groups(pattern).alias("g")).unnest("g")
        parts.append(groups.rename({c: f"{c}{i}" for c in groups.columns}))
    wide = pl.concat(parts, how="horizontal")

    def field_(name: str) -> pl.Expr:
        cols = [pl.col(f"{name}{i}") for i in range(len(_DATE_PATTERNS)) if f"{name}{i}" in wide.columns]
        return pl.coalesce(cols) if cols else pl.lit(None, dtype=pl.String)

    g = wide.select([field_(n).alias(n) for n in _DATE_FIELDS])
    month_by_name = pl.col("mon").str.slice(0, 3).str.to_lowercase().replace_strict(_MONTHS, default=None)
    ampm = pl.col("ampm").str.slice(0, 1).str.to_lowercase()
    hour = pl.col("H").cast(pl.Int32)
    hour = (
        pl.when(hour.is_null())
        .then(pl.lit(default_hour, pl.Int32))
        .when((ampm == "p") & (hour < 12))
        .then(hour + 12)
        .when((ampm == "a") & (hour == 12))
        .then(pl.lit(0, pl.Int32))
        .otherwise(hour)
    )
    pad = lambda e, n=2: e.cast(pl.String).str.zfill(n)  # noqa: E731
    stamp = pl.concat_str(
        pad(pl.col("y"), 4), pl.lit("-"), pad(pl.coalesce(pl.col("m").cast(pl.Int32), month_by_name)),
        pl.lit("-"), pad(pl.col("d")), pl.lit(" "), pad(hour), pl.lit(":"),
        pad(pl.col("M").fill_null("0")), pl.lit(":"), pad(pl.col("S").fill_null("0")),
    )  # fmt: skip
    micros = pl.col("f").fill_null("0").str.pad_end(6, "0").str.slice(0, 6).cast(pl.Int64)
    tz = pl.col("tz")
    tzp = tz.str.extract_groups(r"^(?P<sign>[+-])(?P<hh>\d{2}):?(?P<mm>\d{2})?$")
    offset_min = (
        pl.when(tz.is_in(["Z", "UTC", "GMT"]))
        .then(pl.lit(0, pl.Int64))
        .otherwise(
            (tzp.struct.field("hh").cast(pl.Int64) * 60 + tzp.struct.field("mm").fill_null("0").cast(pl.Int64))
            * pl.when(tzp.struct.field("sign") == "-").then(-1).otherwise(1)
        )
    )
    out = g.select(
        (
            stamp.str.strptime(pl.Datetime("us"), "%Y-%m-%d %H:%M:%S", strict=False) + pl.duration(microseconds=micros)
        ).alias("wall"),
        offset_min.alias("offset"),
        tz.is_not_null().alias("aware"),
        pl.col("H").is_not_null().alias("has_time"),
    )
    # a zone offset with no recognisable offset value (e.g. '+5') does not parse
    out = out.with_columns(
        pl.when(pl.col("aware") & pl.col("offset").is_null()).then(None).otherwise(pl.col("wall")).alias("wall")
    )
    return out


def _when(frame: pl.DataFrame, col: str, entry: FileEntry, default_hour: int = 0) -> pl.DataFrame:
    """``day`` (New York date), ``utc`` (instant) and ``has_time`` for each row of ``col``.

    Raises on a missing or unparsable value, naming file, column, row and value; on d/d/yyyy
    dates whose day/month order the file does not settle (see :func:`_slash_order`); on
    midnight-UTC timestamps in a dated (non-text) file; and on dates after today."""
    s = frame[col]
    if s.dtype == pl.String:
        s = _slash_order(frame, col, entry)
    if s.dtype == pl.Date:
        wall = s.cast(pl.Datetime("us")) + timedelta(hours=default_hour)
        parsed = pl.DataFrame({"wall": wall, "offset": pl.Series([None] * len(s), dtype=pl.Int64)})
        parsed = parsed.with_columns(aware=pl.lit(False), has_time=pl.lit(False))
    elif isinstance(s.dtype, pl.Datetime):
        if s.dtype.time_zone is None:
            parsed = pl.DataFrame(
                {"wall": s.cast(pl.Datetime("us")), "offset": pl.Series([None] * len(s), dtype=pl.Int64)}
            )
            parsed = parsed.with_columns(aware=pl.lit(False), has_time=pl.lit(True))
        else:
            wall = s.dt.convert_time_zone("UTC").dt.replace_time_zone(None).cast(pl.Datetime("us"))
            parsed = pl.DataFrame({"wall": wall, "offset": pl.Series([0] * len(s), dtype=pl.Int64)})
            parsed = parsed.with_columns(aware=pl.lit(True), has_time=pl.lit(True))
    else:
        parsed = _parse_when_frame(s, default_hour)
    text = s.cast(pl.String)
    bad = parsed["wall"].is_null()
    if bad.any():
        i = int(bad.arg_true()[0])
        value = text[i]
        row = int(frame[ROW][i])
        if value is None or not value.strip():
            raise DataInputError("missing date", file=entry.rel, column=col, row=row)
        raise DataInputError(f"cannot parse {value!r} as a date", file=entry.rel, column=col, row=row)
    aware_utc = (pl.col("wall") - pl.duration(minutes=pl.col("offset"))).dt.replace_time_zone("UTC")
    local = pl.col("wall").dt.replace_time_zone(NEW_YORK, ambiguous="earliest", non_existent="null")
    # a wall time inside the spring-forward gap is read one hour later (what the clock showed)
    shifted = (pl.col("wall") + pl.duration(hours=1)).dt.replace_time_zone(
        NEW_YORK, ambiguous="earliest", non_existent="null"
    )
    naive_utc = pl.coalesce(local, shifted).dt.convert_time_zone("UTC")
    out = parsed.select(
        pl.when(pl.col("aware")).then(aware_utc).otherwise(naive_utc).alias("utc"),
        pl.when(pl.col("aware"))
        .then(aware_utc.dt.convert_time_zone(NEW_YORK).dt.date())
        .otherwise(pl.col("wall").dt.date())
        .alias("day"),
        pl.col("has_time"),
        pl.col("aware"),
    )
    if entry.modality != "texts" and out.height and out["aware"].all():
        utc = out["utc"]
        if (utc.dt.hour() == 0).all() and (utc.dt.minute() == 0).all() and (utc.dt.second() == 0).all():
            first = out.row(0, named=True)
            raise DataInputError(
                f"the dates are timestamps at midnight UTC ({first['utc']:%Y-%m-%d %H:%M} UTC), which is the evening "
                f"before in New York ({first['day']}), so every row would land on the previous day; store plain "
                "dates (a Date column, or text like 2024-01-02) or timestamps without a zone",
                file=entry.rel,
                column=col,
                row=int(frame[ROW][0]),
                date=str(first["day"]),
            )
    today = datetime.now(ZoneInfo(NEW_YORK)).date()
    future = out.with_row_index("i").filter(pl.col("day") > today)
    if future.height:
        i = int(future["i"][0])
        d = future["day"][0]
        raise DataInputError(
            f"{d} is in the future (today is {today} in New York; {future.height} such row(s)); "
            "a date past today is a typo or a forecast, neither of which can feed point-in-time features",
            file=entry.rel,
            column=col,
            row=int(frame[ROW][i]),
            date=str(d),
        )
    return out.drop("aware")


_SLASH = r"^\s*(\d{1,2})/(\d{1,2})/(\d{4})\b"


def _slash_order(frame: pl.DataFrame, col: str, entry: FileEntry) -> pl.Series:
    """``d/d/yyyy`` dates in month/day order (what the parser reads).

    The file settles the order when some value has a first part over 12 (day first) or a
    second part over 12 (month first); ``date_order`` in the mapping settles it otherwise.
    Without either, ``03/04/2024`` could be March 4 or April 3: an error, never a guess (a
    day-first monthly file read month-first puts December's value into January)."""
    s = frame[col].cast(pl.String)
    parts = s.str.extract_groups(_SLASH).struct.unnest()
    a, b = parts[parts.columns[0]].cast(pl.Int32), parts[parts.columns[1]].cast(pl.Int32)
    used = a.is_not_null()
    if not used.any():
        return s
    order = entry.date_order
    if order is None:
        day_first, month_first = (a > 12).fill_null(False), (b > 12).fill_null(False)
        if day_first.any() and month_first.any():
            i, j = int(day_first.arg_true()[0]), int(month_first.arg_true()[0])
            raise DataInputError(
                f"mixed date orders: {s[i]!r} (row {frame[ROW][i]}) is day/month, {s[j]!r} (row {frame[ROW][j]}) "
                "is month/day; write ISO dates (YYYY-MM-DD)",
                file=entry.rel,
                column=col,
                row=int(frame[ROW][j]),
            )
        if day_first.any():
            order = "dmy"
            i = int(day_first.arg_true()[0])
            entry.warn(
                f"dates read as day/month/year, as {s[i]!r} shows; set date_order: dmy in the mapping to say so",
                column=col,
                row=int(frame[ROW][i]),
            )
        elif month_first.any():
            order = "mdy"
        else:
            unclear = (used & (a != b)).fill_null(False)
            if unclear.any():
                i = int(unclear.arg_true()[0])
                raise DataInputError(
                    f"ambiguous date {s[i]!r}: day/month or month/day? No date in the column has a part over 12 "
                    f"to tell; set date_order: mdy (US) or dmy in {entry.where}, or write ISO dates (YYYY-MM-DD)",
                    file=entry.rel,
                    column=col,
                    row=int(frame[ROW][i]),
                )
            return s
    if order == "dmy":
        return s.str.replace(_SLASH, "${2}/${1}/${3}")
    return s


def _naive_times(s: pl.Series) -> pl.Series:
    """Rows holding a time of day but no zone (read as New York time)."""
    if isinstance(s.dtype, pl.Datetime):
        return pl.Series([s.dtype.time_zone is None] * len(s))
    if s.dtype != pl.String:
        return pl.Series([False] * len(s))
    parsed = _parse_when_frame(s, 12)
    return (parsed["has_time"] & ~parsed["aware"] & parsed["wall"].is_not_null()).fill_null(False)


def _published(entry: FileEntry, frequency: str | None = None) -> str:
    """The entry's ``published`` policy, or its default: a *daily* macro value dated d is that
    day's close or fixing, published at or after the equity close (the VIX at 16:15, Treasury
    yields later still), so it counts from the next session; lower-frequency macro releases
    keep the date their ``release_lag_days`` gives."""
    if entry.published:
        return entry.published
    if entry.modality == "macro" and frequency == "daily":
        return "next_session"
    return DEFAULT_PUBLISHED[entry.modality]


def _date_only_instant(day: pl.Expr, policy: str, noon: bool = False) -> pl.Expr:
    """The UTC instant a date-only value counts from under ``policy``: ``next_session`` the end
    of that New York day (so the first session after it), ``same_session`` that day's noon (texts)
    or midnight (releases, which then count at that date), ``HH:MM`` that New York time."""
    if policy == "next_session":
        offset = timedelta(hours=23, minutes=59, seconds=59)
    elif policy == "same_session":
        offset = timedelta(hours=12 if noon else 0)
    else:
        hh, mm = policy.split(":")
        offset = timedelta(hours=int(hh), minutes=int(mm))
    wall = day.cast(pl.Datetime("us")) + offset
    local = wall.dt.replace_time_zone(NEW_YORK, ambiguous="earliest", non_existent="null")
    shifted = (wall + timedelta(hours=1)).dt.replace_time_zone(NEW_YORK, ambiguous="earliest", non_existent="null")
    return pl.coalesce(local, shifted).dt.convert_time_zone("UTC")  # a time in the spring-forward gap: an hour on


def _date_only_release(day: pl.Series, policy: str) -> pl.Series:
    """Release dates of date-only rows under ``policy`` (see :func:`_date_only_instant`):
    ``same_session`` keeps the date; otherwise the session whose close comes after the instant
    (outside the calendar's range: the next day for next_session, or a time after 16:00)."""
    if policy == "same_session" or day.len() == 0:
        return day
    frame = (
        pl.DataFrame({"day": day})
        .with_row_index("i")
        .with_columns(
            utc=_date_only_instant(pl.col("day"), policy),
            use=pl.col("day").is_between(CALENDAR_START, calendar_end() - timedelta(days=7)),
        )
    )
    late = policy == "next_session" or tuple(map(int, policy.split(":"))) >= (16, 0)
    fallback = pl.col("day") + timedelta(days=1) if late else pl.col("day")
    inside = frame.filter(pl.col("use") & pl.col("utc").is_not_null())
    if inside.height:
        inside = inside.select("i", assign_session(pl.col("utc")).alias("session"))
        frame = frame.join(inside, on="i", how="left").sort("i")
    else:
        frame = frame.with_columns(session=pl.lit(None, pl.Date))
    return frame.select(pl.coalesce("session", fallback).alias("day")).to_series().alias(day.name)


def _release_day(when: pl.DataFrame) -> pl.Series:
    """The release date of each row: the New York date, except that a timestamp counts from
    the first session whose close comes after it (a filing at 16:05 enters the next session).
    """
    indexed = when.with_row_index("i").with_columns(
        use=pl.col("has_time") & pl.col("day").is_between(CALENDAR_START, calendar_end() - timedelta(days=7))
    )
    timed = indexed.filter(pl.col("use"))
    if timed.height == 0:
        return when["day"]
    timed = timed.select("i", assign_session(pl.col("utc")).alias("session"))
    out = indexed.join(timed, on="i", how="left").sort("i")
    return out.select(pl.coalesce("session", "day").alias("day")).to_series()
