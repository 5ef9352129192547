"""Daily files: ``prices``, ``market`` (``market__*`` features) and ``peers`` (long or wide),
with their session, duplicate-date and OHLCV checks.
"""

from __future__ import annotations

import re
from datetime import date
from functools import lru_cache

import polars as pl

from finnex_ml.calendar import CALENDAR_START, all_sessions, calendar_end
from finnex_ml.data.base import PEER_SCHEMA, empty_frame
from finnex_ml.data.files.dates import _when
from finnex_ml.data.files.mapping import OHLCV, ROW, FileEntry, _norm, _sanitise
from finnex_ml.data.files.readers import _TICKER_NAMES, _by_name, _column, _date_column, _keep_drop, _numbers
from finnex_ml.errors import ConfigError, DataInputError

_WIDE_PEER = re.compile(r"^(?P<t>.+?)[\s_.\-]+(?P<f>close|volume)$", re.IGNORECASE)


def _daily_checks(entry: FileEntry, frame: pl.DataFrame, date_col: str, keys: list[str] | None = None) -> None:
    """Duplicate dates (per key) and non-session dates, on a frame with ``date`` and ROW."""
    by = ["date", *(keys or [])]
    dup = frame.filter(pl.struct(by).is_duplicated())
    if dup.height:
        first = dup.row(0, named=True)
        same = dup.filter(pl.all_horizontal([pl.col(k) == first[k] for k in by]))
        rows = same[ROW].to_list()
        extra = "".join(f" for {k} {first[k]}" for k in keys or [])
        raise DataInputError(
            f"duplicate date {first['date']}{extra} in rows {rows[0]} and {rows[1]}",
            file=entry.rel,
            column=date_col,
            row=rows[1],
            date=str(first["date"]),
        )
    inside = frame.filter(pl.col("date").is_between(CALENDAR_START, calendar_end()))
    off = inside.filter(~pl.col("date").is_in(_session_series().implode()))
    if off.height:
        d: date = off["date"][0]
        raise DataInputError(
            f"{d} ({d.strftime('%A')}) is not an NYSE trading session; daily {entry.modality} rows "
            "must fall on sessions",
            file=entry.rel,
            column=date_col,
            row=int(off[ROW][0]),
            date=str(d),
        )


@lru_cache(maxsize=1)
def _session_series() -> pl.Series:
    return pl.Series("session", all_sessions(), dtype=pl.Date)


def _price_fields(frame: pl.DataFrame, entry: FileEntry, exclude: set[str]) -> dict[str, str]:
    """canonical field -> source column, from the mapping first, then by name."""
    found: dict[str, str] = {}
    for src, dst in entry.columns.items():
        if dst in OHLCV:
            found[dst] = _column(frame, src, entry)
    used = set(found.values()) | exclude
    for fld in OHLCV:
        if fld not in found:
            hits = [c for c in frame.columns if c not in used and c != ROW and _norm(c) == fld]
            if len(hits) == 1:
                found[fld] = hits[0]
    return found


def _price_values(entry: FileEntry, frame: pl.DataFrame, fields: dict[str, str], day: pl.Series) -> pl.DataFrame:
    """Validated OHLCV frame (date, open..volume, ROW) with fully empty rows dropped."""
    missing = [f for f in OHLCV if f not in fields]
    if missing:
        raise DataInputError(
            f"missing required column {missing[0]!r} (no column named like it; map one under columns in {entry.where})",
            file=entry.rel,
            column=missing[0],
        )
    src = [fields[f] for f in OHLCV]
    values, _ = _numbers(frame, src, entry, strict=True, days=day)
    out = pl.DataFrame({"date": day, ROW: frame[ROW]}).hstack(values.rename({fields[f]: f for f in OHLCV}))
    out = out.filter(~pl.all_horizontal(pl.col(list(OHLCV)).is_null()))
    for fld in OHLCV:
        hole = out.filter(pl.col(fld).is_null())
        if hole.height:
            raise DataInputError(
                "missing value in a price row (fill it or remove the row)",
                file=entry.rel,
                column=fields[fld],
                row=int(hole[ROW][0]),
                date=str(hole["date"][0]),
            )
        bad = out.filter(pl.col(fld) < 0) if fld == "volume" else out.filter(pl.col(fld) <= 0)
        if bad.height:
            what = "negative volume" if fld == "volume" else "non-positive price"
            raise DataInputError(
                f"{what} {bad[fld][0]!r}",
                file=entry.rel,
                column=fields[fld],
                row=int(bad[ROW][0]),
                date=str(bad["date"][0]),
            )
    # OHLC coherence, the rule of the market_data check, here so the file and row get named
    for fld, test, what in (
        ("high", pl.col("high") < pl.col("low"), "high {high!r} is below low {low!r}"),
        (
            "open",
            ~pl.col("open").is_between(pl.col("low"), pl.col("high")),
            "open {open!r} is outside [low {low!r}, high {high!r}]",
        ),
        (
            "close",
            ~pl.col("close").is_between(pl.col("low"), pl.col("high")),
            "close {close!r} is outside [low {low!r}, high {high!r}]",
        ),
    ):
        bad = out.filter(test)
        if bad.height:
            first = bad.row(0, named=True)
            raise DataInputError(
                what.format(**first) + f" ({bad.height} such row(s)); are the columns mapped to the right "
                f"fields in {entry.where}?",
                file=entry.rel,
                column=fields[fld],
                row=int(first[ROW]),
                date=str(first["date"]),
            )
    return out


def _parse_prices(entry: FileEntry, frame: pl.DataFrame) -> pl.DataFrame:
    mapped = {_column(frame, s, entry) for s in entry.columns}
    date_col = _date_column(frame, entry, mapped)
    day = _when(frame, date_col, entry)["day"]
    fields = _price_fields(frame, entry, {date_col})
    out = _price_values(entry, frame, fields, day)
    _daily_checks(entry, out, date_col)
    return out.drop(ROW).sort("date")


def _parse_market(entry: FileEntry, frame: pl.DataFrame) -> tuple[pl.DataFrame | None, pl.DataFrame]:
    """(prices from the file's OHLCV columns or None, date + market__* features)."""
    mapped = {_column(frame, s, entry): d for s, d in entry.columns.items()}
    date_col = _date_column(frame, entry, set(mapped))
    day = _when(frame, date_col, entry)["day"]
    dates = pl.DataFrame({"date": day, ROW: frame[ROW]})
    _daily_checks(entry, dates, date_col)

    fields = _price_fields(frame, entry, {date_col})
    prices = None
    if all(f in fields for f in OHLCV):
        prices = _price_values(entry, frame, fields, day).drop(ROW).sort("date")
    taken = {date_col, *fields.values()}
    explicit = [c for c, d in mapped.items() if d not in OHLCV]
    auto = [c for c in frame.columns if c not in taken and c not in mapped and c != ROW and _norm(c) != "adj_close"]
    kept, dropped = _keep_drop(frame, entry, mapped, [*explicit, *auto])
    if entry.keep is not None:  # kept columns are asked for: a text cell in them is an error
        explicit, auto = kept, []
    explicit = [c for c in explicit if c not in dropped]
    auto = [c for c in auto if c not in dropped]
    strict_vals, _ = _numbers(frame, explicit, entry, strict=True, days=day)
    loose_vals, _skipped = _numbers(frame, auto, entry, strict=False, days=day)
    for col in loose_vals.columns:  # e.g. yfinance's Stock Splits / Capital Gains: all zeros
        values = loose_vals[col].drop_nulls()
        if frame.height > 1 and values.len() == frame.height and values.n_unique() == 1:
            entry.warn(
                f"column {col!r} holds {values[0]!r} in every row, a feature without information; leave it "
                f"out with drop: [{col}] in {entry.where}",
                column=col,
            )
    names: dict[str, str] = {}
    for col in [*explicit, *[c for c in auto if c in loose_vals.columns]]:
        name = "market__" + _sanitise(re.sub(r"^market__", "", mapped.get(col, col)))
        if name == "market__":
            name = f"market__col{frame.columns.index(col)}"
        if name in names.values():
            other = next(k for k, v in names.items() if v == name)
            raise DataInputError(
                f"columns {other!r} and {col!r} both become {name}; rename one under columns in {entry.where}",
                file=entry.rel,
                column=col,
            )
        names[col] = name
    feats = pl.concat([strict_vals, loose_vals], how="horizontal") if names else pl.DataFrame()
    features = pl.DataFrame({"date": day}).hstack(feats.select(list(names)).rename(names) if names else pl.DataFrame())
    return prices, features.sort("date")


def _parse_peers(entry: FileEntry, frame: pl.DataFrame) -> pl.DataFrame:
    if entry.ticker:  # one peer per file (a Yahoo OHLCV export): a long file of one ticker
        ticker_col: str | None = "__ticker__"
        frame = frame.with_columns(pl.lit(entry.ticker).alias(ticker_col))
    elif entry.ticker_column:
        ticker_col = _column(frame, entry.ticker_column, entry, "ticker_column")
    else:
        hits = _by_name(frame, _TICKER_NAMES, set())
        ticker_col = hits[0] if len(hits) == 1 else None
    mapped = {_column(frame, s, entry): d for s, d in entry.columns.items()}
    date_col = _date_column(frame, entry, set(mapped) | ({ticker_col} if ticker_col else set()))
    day = _when(frame, date_col, entry)["day"]

    if ticker_col is not None:  # long
        if any("." in d for d in mapped.values()):
            what = f"ticker {entry.ticker!r}" if entry.ticker else f"ticker column {ticker_col!r}"
            raise ConfigError(f"{entry.where}: a long peers file ({what}) maps to close/volume, not TICKER.close")
        fields = {d.lower(): c for c, d in mapped.items()}
        for fld in ("close", "volume"):
            if fld not in fields:
                hits = [c for c in frame.columns if c not in (date_col, ticker_col, ROW) and _norm(c) == fld]
                if len(hits) == 1:
                    fields[fld] = hits[0]
        if "close" not in fields:
            raise DataInputError(
                f"missing required column 'close' (map one under columns in {entry.where})",
                file=entry.rel,
                column="close",
            )
        vals, _ = _numbers(frame, list(fields.values()), entry, strict=True, days=day)
        tickers = frame[ticker_col].cast(pl.String).str.strip_chars()
        long = pl.DataFrame({"date": day, "ticker": tickers, ROW: frame[ROW]}).with_columns(
            vals[fields["close"]].alias("close"),
            (vals[fields["volume"]] if "volume" in fields else pl.lit(None, pl.Float64)).alias("volume"),
            pl.lit(fields["close"]).alias("__close_col__"),
            pl.lit(fields.get("volume", "volume")).alias("__volume_col__"),
        )
        no_ticker = long.filter(pl.col("ticker").is_null() | (pl.col("ticker") == ""))
        if no_ticker.height:
            raise DataInputError("missing ticker", file=entry.rel, column=ticker_col, row=int(no_ticker[ROW][0]))
    else:  # wide
        pairs: list[tuple[str, str, str]] = []  # (column, ticker, field)
        if mapped:
            for col, dst in mapped.items():
                tick, _, fld = dst.rpartition(".")
                if not tick:
                    raise ConfigError(
                        f"{entry.where}: {col!r} -> {dst!r}: a wide peers file maps to TICKER.close / "
                        "TICKER.volume (or set ticker_column for a long file)"
                    )
                pairs.append((col, tick, fld.lower()))
        else:
            for col in frame.columns:
                m = _WIDE_PEER.match(col) if col not in (date_col, ROW) else None
                if m and not re.search(r"adj$", m["t"], re.IGNORECASE):
                    pairs.append((col, m["t"].strip(), m["f"].lower()))
        if not any(f == "close" for _c, _t, f in pairs):
            plain = [c for c in frame.columns if c not in (date_col, ROW) and _norm(c) in ("close", "volume")]
            if plain:  # long layout without its ticker column
                raise DataInputError(
                    f"missing ticker column: the file has {plain[0]!r} like a long peers file (date,ticker,close,volume) "
                    f"but no {'ticker_column' if entry.ticker_column else 'ticker or symbol column'}; add it, or use "
                    f"wide columns like AMZN_Close (see {entry.where})",
                    file=entry.rel,
                    column="ticker",
                )
            raise DataInputError(
                "no peer close column found: use a long file with date,ticker,close,volume or wide "
                f"columns like AMZN_Close, or map them under columns in {entry.where}",
                file=entry.rel,
                column="close",
            )
        vals, _ = _numbers(frame, [c for c, _t, _f in pairs], entry, strict=True, days=day)
        parts = []
        for tick in dict.fromkeys(t for _c, t, _f in pairs):
            cols = {f: c for c, t, f in pairs if t == tick}
            if "close" not in cols:
                raise DataInputError(
                    f"peer {tick} has a volume column but no close column", file=entry.rel, column=cols.get("volume")
                )
            parts.append(
                pl.DataFrame({"date": day, ROW: frame[ROW]}).with_columns(
                    pl.lit(tick).alias("ticker"),
                    vals[cols["close"]].alias("close"),
                    (vals[cols["volume"]] if "volume" in cols else pl.lit(None, pl.Float64)).alias("volume"),
                    pl.lit(cols["close"]).alias("__close_col__"),
                    pl.lit(cols.get("volume", "volume")).alias("__volume_col__"),
                )
            )
        long = pl.concat(parts, how="vertical")
    long = long.filter(pl.col("close").is_not_null())
    for fld, test, what in (
        ("close", pl.col("close") <= 0, "non-positive price"),
        ("volume", pl.col("volume") < 0, "negative volume"),
    ):
        bad = long.filter(test)
        if bad.height:
            raise DataInputError(
                f"{what} {bad[fld][0]!r} for peer {bad['ticker'][0]}",
                file=entry.rel,
                column=bad[f"__{fld}_col__"][0],
                row=int(bad[ROW][0]),
                date=str(bad["date"][0]),
            )
    _daily_checks(entry, long, date_col, ["ticker"])
    return long.select(*PEER_SCHEMA, ROW)


def _concat_peers(frames: list[pl.DataFrame]) -> pl.DataFrame:
    if not frames:
        return empty_frame(PEER_SCHEMA)
    both = pl.concat(frames, how="vertical")
    dup = both.filter(pl.struct("date", "ticker").is_duplicated())
    if dup.height:
        first = dup.row(0, named=True)
        files = dup.filter((pl.col("date") == first["date"]) & (pl.col("ticker") == first["ticker"]))["__file__"]
        raise DataInputError(
            f"peer {first['ticker']} on {first['date']} appears in {' and '.join(files.to_list())}",
            file=files[0],
            date=str(first["date"]),
        )
    return both.select(list(PEER_SCHEMA)).cast(PEER_SCHEMA).sort("date", "ticker")
