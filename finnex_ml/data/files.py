"""The ``files`` data source: the user's own CSV / Parquet exports, tied together by a mapping.

A mapping file (YAML, or TOML when it ends in ``.toml``) lists the files and what each holds.
Paths are relative to the mapping file's folder and may not leave it.

.. code-block:: yaml

    ticker: ACME                  # optional, informational
    files:
      - path: prices.csv
        modality: prices          # prices | market | peers | texts | macro | fundamental | sentiment
        date_column: Date         # optional, see date_column below
        columns: {Open: open, High: high, Low: low, Close: close, Volume: volume}
      - path: market_wide.csv
        modality: market          # every other numeric column becomes prices.market__<name>
      - path: fred_DGS10.csv
        modality: macro           # FRED style DATE,<SERIES_ID>: nothing else needed
      - path: cpi_monthly.csv
        modality: macro
        frequency: monthly        # optional, inferred from the median spacing of the dates
        release_lag_days: 14      # optional, default by frequency (table below)
      - path: fundamentals.csv
        modality: fundamental
        date_column: period_end
        release_column: filing_date
        columns: {revenue: revenue, eps: eps}
      - path: tweets.csv
        modality: texts
        source: social            # texts: news | social (required)
        text_column: Text         # optional: Text/text/tweet/title/headline/content/body
      - path: peers.csv
        modality: peers           # long (date,ticker,close,volume) or wide ({AMZN_Close: AMZN.close})

Keys of an entry (anything else is a ``ConfigError``, and so is a key that does not apply to
the entry's modality):

``path``, ``modality``
    Required. ``.csv``, ``.tsv``, ``.parquet`` / ``.pq``.
``date_column``
    Optional everywhere. Without it the column is found by name (``date``, ``Date``, ``DATE``,
    ``Datetime``, ``timestamp``, ``period_end``, ``observation_date``, ``published_at`` ...,
    then any name containing ``date``/``time``/``period``), and failing that by content. Two
    equally good candidates are an error: name one.
``columns``
    ``{source column: target name}``. Source names match exactly, else case-insensitively.

    * prices: targets are ``open high low close volume``; fields not listed are found by
      name, case-insensitively (``Open``, ``CLOSE`` ...). ``Adj Close`` is ignored unless
      mapped. All five are required.
    * market: targets ``open``...``volume`` give price fields (used only when there is no
      prices file); any other target becomes ``market__<target>``. Numeric columns not listed
      are taken too, as ``market__<sanitised column name>`` (lower case, runs of anything
      but ``[a-z0-9]`` become ``_``: ``Gold ($/oz)`` -> ``market__gold_oz``); non-numeric
      ones are skipped, and so are columns named open/high/low/close/volume/adj close.
    * peers: long format (a ``ticker_column``, or a column named ``ticker``/``symbol``):
      targets ``close``/``volume``. Wide format: ``{AMZN_Close: AMZN.close, AMZN_Volume:
      AMZN.volume}``; without ``columns`` wide columns named ``<TICKER>_Close`` /
      ``<TICKER> Volume`` are found.
    * macro / fundamental / sentiment: when given, only the listed columns are series,
      named by their targets; otherwise every numeric column is a series named by its
      sanitised column name (``Gold ($/oz)`` -> ``gold_oz``), or for macro by its role when
      the name is a known FRED ID / Yahoo ticker (FRED ``DGS10`` -> ``rate_10y``).
``frequency``
    ``daily | weekly | monthly | quarterly | annual``; releases only (prices, market and
    peers accept only ``daily``). Inferred from the median spacing of the dates when absent.
``release_lag_days``
    Calendar days from period end to publication for series without a release column.
    Defaults: daily 0, weekly 5, monthly 14, quarterly 45, annual 90. With a release column
    it defaults to 0 and is added to the release date.
``release_column``
    A column with each row's publication date (fundamentals: the filing date). Found by
    name when absent (``filing_date``, ``filed``, ``release_date``, ``released``,
    ``publication_date``).
``ticker_column``
    peers, long format.
``source``, ``text_column``
    texts.
``date_order``
    ``mdy`` (US) or ``dmy``, for ``d/d/yyyy`` dates. Without it the file must settle the order
    itself (a first part over 12 means day first, a second part over 12 month first);
    otherwise ``03/04/2024`` is an error, never a guess.
``keep`` / ``drop`` (market, macro, fundamental, sentiment)
    Lists of value columns to keep (only these become features / series) or to leave out,
    named after any rename under ``columns`` (exactly, else case-insensitively, else by the
    sanitised form: ``Stock Splits`` = ``stock_splits``). ``columns: [a, b]`` (a list) is
    ``keep: [a, b]``. A name that is not a column of the file is a ``DataInputError`` listing
    the file's columns; a kept column that is not a value column (the date, a price field of a
    market file) or holds text is an error too.
``ticker`` (peers)
    The file holds one peer without a ticker column (a Yahoo OHLCV export): its ``Close`` and
    ``Volume`` (found by name, or mapped under ``columns``) are that ticker's.
``role`` / ``roles`` (macro)
    The semantic role of a series, one of :data:`ROLES`; the role becomes the series name, which
    places it in its image tile and feeds the cross-features (VIX: ``rvol_minus_vix``; ``rate_2y``
    + ``rate_10y``: ``term_spread``; ``aaa_yield`` + ``baa_yield``: ``credit_spread``;
    ``market_index`` / ``sector_etf``: beta, return and relative strength). ``role`` makes the
    whole file one series: its only value column, else its ``Close`` column. ``roles`` maps
    columns (after renames) to roles. Without either, :data:`KNOWN_SERIES` (common FRED IDs and
    Yahoo tickers) gives the role of a column named like ``VIXCLS`` / ``^VIX`` that is not
    renamed, or of a whole file named like ``XLK.csv`` / ``VIXCLS.csv``.
``published`` (texts, macro, fundamental, sentiment)
    When a *date-only* timestamp (no time of day) became public: ``next_session`` (from the
    first session after that date; the default for texts, fundamental and sentiment),
    ``same_session`` (at that date: texts at 12:00 New York time, releases on the date; the
    default for macro, whose ``release_lag_days`` already covers publication), or a New York
    time of day ``"16:30"`` (quoted in YAML), which counts from the first session whose close
    comes after it (a daily VIX close at ``"16:15"`` counts from the next session). For
    releases it applies to the release date (release column, or period end plus
    ``release_lag_days``); timestamps with a time are read by their time.

What ``load(start, end)`` returns (canonical schemas of :mod:`finnex_ml.data.base`):

* ``prices``: one row per session with Float64 OHLCV and ``market__*`` columns from market
  files, left-joined on date. Rows with ``start <= date <= end``.
* ``peers``: long ``date, ticker, close, volume``; rows with an empty close are dropped
  (wide files before a listing), volume may be null or absent. Rows with
  ``start <= date <= end``.
* ``texts``: ``published_at`` (UTC), ``source``, ``text``; rows whose session under
  :func:`finnex_ml.calendar.assign_session` lies in ``[start, end]``. Empty texts are dropped.
* ``releases``: ``modality, series, period_end, released, value``; rows released by ``end``
  whose period ends at most two years before ``start`` (history for changes, year-over-year
  and trailing sums), plus, per series, the latest release before ``start`` however old (the
  value in force on ``start``). Empty / ``.`` cells are missing and their rows are dropped.
* ``provenance``: ``{modality: "file:<path>[,file:<path>]"}``.

Parsing rules:

* Dates: ``2015-04-01``, ``2015/04/01``, ``20150401``, ``4/13/2015`` (see ``date_order``),
  ``Mar 5, 2024``, ``05 Mar 2024``, each optionally followed by a time (``16:00``,
  ``4:00:00 PM``, fractional seconds) and an offset (``Z``, ``UTC``, ``GMT``, ``+00:00``,
  ``-0500``). A time without an offset is New York time. For daily files the session is the
  New York date. A text or release dated without a time follows the entry's ``published``
  (by default news and filings count from the next session).
* Monthly / quarterly / annual series dated on the first day of the period (the FRED
  convention: ``2023-01-01`` is January) are moved to the last day of the period, so
  ``released = period_end + lag`` never predates the period's end.
* Numbers: ``$21,454`` -> 21454.0; ``(1,234)`` -> -1234.0; ``12.5%`` -> 0.125 (the percent
  sign divides by 100; FRED-style percent series without a ``%`` sign stay as written);
  ``1.2M`` -> 1.2e6 (suffixes K, M, B, T). Empty, ``.``, ``-``, ``NA``, ``N/A``, ``NaN``,
  ``null``, ``#N/A`` are missing. Thousands separators are commas (no European decimals).

Checks, on the whole file whatever the window (each raises
:class:`~finnex_ml.errors.DataInputError` naming the file, column, row -- 1 is the first record
after the header -- and/or date): missing required columns, empty
files, unparsable dates or numbers in used columns, duplicate dates in daily prices / market
/ peers files (both rows named), daily rows on dates that are not NYSE sessions (checked
within the calendar's range, 1995 on), prices
``<= 0``, negative volumes, high below low or open / close outside [low, high], partially
empty price rows (fully empty ones such as Yahoo's ``null`` rows are dropped), missing or
pre-period release dates, duplicate releases, dates after today, ambiguous day/month order,
two dates in one period of a monthly / quarterly series, midnight-UTC timestamps in dated
files, texts over ``MAX_TEXT_CHARS``, binary files, and ``;`` / tab / ``|`` delimited ``.csv``.
Accepted input worth a look (non-UTF-8 text, ``inf`` cells in optional columns, skipped
columns, day-first dates, naive tweet times, market columns with one value in every row) is logged as a warning and listed in
:attr:`FilesSource.warnings`, which the ingestion asset logs to the run.
Bad mappings raise :class:`~finnex_ml.errors.ConfigError` naming the mapping file and entry.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import tomllib
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl
import yaml

from finnex_ml.calendar import CALENDAR_START, all_sessions, assign_session, calendar_end
from finnex_ml.data.base import (
    PEER_SCHEMA,
    PRICE_SCHEMA,
    RELEASE_SCHEMA,
    TEXT_SCHEMA,
    TEXT_SOURCES,
    RawData,
    empty_frame,
)
from finnex_ml.errors import ConfigError, DataInputError
from finnex_ml.paths import resolve_under

__all__ = [
    "FilesSource",
    "FileEntry",
    "MODALITIES",
    "FREQUENCIES",
    "DEFAULT_RELEASE_LAG_DAYS",
    "ROLES",
    "KNOWN_SERIES",
    "DEFAULT_PUBLISHED",
]

MODALITIES = ("prices", "market", "peers", "texts", "macro", "fundamental", "sentiment")
RELEASE_KINDS = ("macro", "fundamental", "sentiment")
FREQUENCIES = ("daily", "weekly", "monthly", "quarterly", "annual")
DEFAULT_RELEASE_LAG_DAYS = {"daily": 0, "weekly": 5, "monthly": 14, "quarterly": 45, "annual": 90}
RELEASE_LOOKBACK_YEARS = 2  # releases before ``start`` kept for history, as the synthetic source does
OHLCV = ("open", "high", "low", "close", "volume")
NEW_YORK = "America/New_York"
ROW = "__row__"  # 1-based data row, kept through parsing for messages
MAX_MAPPING_BYTES = 1_000_000  # a mapping lists files; anything bigger is not one
MAX_TEXT_CHARS = 100_000  # one text cell (a long article is ~50k characters)
DATE_ORDERS = ("mdy", "dmy")

log = logging.getLogger(__name__)

_DAILY = ("prices", "market", "peers")
_ENTRY_KEYS: dict[str, tuple[str, ...]] = {
    "path": MODALITIES,
    "modality": MODALITIES,
    "date_column": MODALITIES,
    "columns": ("prices", "market", "peers", *RELEASE_KINDS),
    "frequency": (*_DAILY, *RELEASE_KINDS),
    "release_lag_days": RELEASE_KINDS,
    "release_column": RELEASE_KINDS,
    "ticker_column": ("peers",),
    "source": ("texts",),
    "text_column": ("texts",),
    "date_order": MODALITIES,
    "keep": ("market", *RELEASE_KINDS),
    "drop": ("market", *RELEASE_KINDS),
    "ticker": ("peers",),
    "role": ("macro",),
    "roles": ("macro",),
    "published": ("texts", *RELEASE_KINDS),
}
# Semantic roles of macro series: the role is the series name, which places it in its image
# tile (finnex_ml.encoding.layout.DEFAULT_ASSIGNMENT) and feeds the cross-features
# (finnex_ml.features._cross_features), the names the synthetic and packaged sources use.
ROLES = (
    "vix",
    "rate_2y",
    "rate_10y",
    "term_spread",
    "aaa_yield",
    "baa_yield",
    "cpi",
    "unemployment",
    "market_index",
    "sector_etf",
)
# Common FRED IDs and Yahoo / yfinance tickers -> role. Matched case-insensitively against a
# macro file's column names (FRED: DATE,VIXCLS) and its file name stem (yfinance: XLK.csv).
KNOWN_SERIES: dict[str, str] = {
    "VIXCLS": "vix", "^VIX": "vix",
    "DGS10": "rate_10y", "DGS2": "rate_2y", "T10Y2Y": "term_spread",
    "BAA": "baa_yield", "DBAA": "baa_yield", "AAA": "aaa_yield", "DAAA": "aaa_yield",
    "CPIAUCSL": "cpi", "CPIAUCNS": "cpi", "UNRATE": "unemployment",
    "SP500": "market_index", "^GSPC": "market_index", "SPY": "market_index",
    **{etf: "sector_etf" for etf in ("XLB", "XLC", "XLE", "XLF", "XLI", "XLK", "XLP", "XLRE", "XLU", "XLV", "XLY")},
}  # fmt: skip
PUBLISHED = ("next_session", "same_session")  # or "HH:MM", New York time
# published default per modality, for date-only timestamps: news, filings and survey releases
# without a time count from the next session; macro keeps its date (release_lag_days covers it)
DEFAULT_PUBLISHED = {
    "texts": "next_session",
    "fundamental": "next_session",
    "sentiment": "next_session",
    "macro": "same_session",
}
_TOP_KEYS = ("ticker", "files")
_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}

_DATE_NAMES = {
    "date", "datetime", "date_time", "timestamp", "time", "period", "period_end", "periodend",
    "observation_date", "published_at", "published", "publish_date", "pubdate", "pub_date",
    "created_at", "day", "trade_date", "fiscal_date_ending", "quarter_end", "month_end",
}  # fmt: skip
_RELEASE_NAMES = ("filing_date", "filed", "filed_date", "release_date", "released", "publication_date")
_TICKER_NAMES = ("ticker", "symbol")
_TEXT_NAMES = ("text", "tweet", "title", "headline", "content", "body")
_MISSING = ["", ".", "-", "--", "—", "–", "na", "n/a", "nan", "null", "none", "#n/a", "nd"]
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
_WIDE_PEER = re.compile(r"^(?P<t>.+?)[\s_.\-]+(?P<f>close|volume)$", re.IGNORECASE)


@dataclass(frozen=True)
class FileEntry:
    """One validated ``files:`` entry of a mapping."""

    index: int
    path: Path  # resolved, under the mapping folder
    rel: str  # as reported in messages and provenance
    modality: str
    where: str  # "<mapping> files[i] (<rel>)"
    date_column: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    frequency: str | None = None
    release_lag_days: int | None = None
    release_column: str | None = None
    ticker_column: str | None = None
    source: str | None = None
    text_column: str | None = None
    date_order: str | None = None  # for d/d/yyyy dates: mdy or dmy; None: inferred, error if ambiguous
    keep: tuple[str, ...] | None = None  # value columns to keep (names after any rename); None: all
    drop: tuple[str, ...] = ()  # value columns to leave out (names after any rename)
    ticker: str | None = None  # peers: the one peer of a file without a ticker column
    role: str | None = None  # macro: the file is this one series (see ROLES)
    roles: dict[str, str] = field(default_factory=dict)  # macro: column (after rename) -> role
    published: str | None = None  # date-only timestamps: next_session | same_session | HH:MM
    notes: list[str] = field(default_factory=list, compare=False)  # warnings of the last parse

    def warn(self, message: str, **where: Any) -> None:
        """Record and log a warning about this file (accepted, but the user should know)."""
        parts = [f"{k}={v}" for k, v in (("file", self.rel), *where.items()) if v is not None]
        text = f"{message} [{', '.join(parts)}]"
        self.notes.append(text)
        log.warning(text)


class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without anchors and aliases: a mapping never needs them, and an alias bomb
    (a few hundred bytes expanding to billions of nodes) is refused at the first ``*``."""

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None,
                None,
                "YAML aliases (*name) are not supported in a mapping file; write the value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)


# --------------------------------------------------------------------------- mapping


def _load_mapping_document(path: Path, shown: str) -> Any:
    try:
        size = path.stat().st_size
        if size > MAX_MAPPING_BYTES:
            raise ConfigError(
                f"mapping file {shown} is {size:,} bytes; a mapping is at most "
                f"{MAX_MAPPING_BYTES:,} (is it the right file?)"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read mapping file {shown}: {exc}") from exc
    if b"\x00" in data:
        raise ConfigError(f"mapping file {shown} is binary (it holds NUL bytes), not YAML or TOML text")
    try:
        raw = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"mapping file {shown} is not UTF-8 text (byte {exc.start}: {data[exc.start : exc.start + 1]!r}); "
            "save it as UTF-8"
        ) from exc
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            return tomllib.loads(raw)
        if suffix in (".yaml", ".yml"):
            return yaml.load(raw, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader without aliases
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        text = str(exc)  # a hostile document must not make a giant message
        raise ConfigError(
            f"mapping file {shown} is not valid {suffix[1:].upper()}: "
            f"{text[:500] + ' ...' if len(text) > 500 else text}"
        ) from exc
    raise ConfigError(f"mapping file {shown} must end in .yaml, .yml or .toml")


def _opt_str(raw: dict, key: str, where: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: {key} must be a non-empty string, got {value!r}")
    return value


def _parse_entry(index: int, raw: Any, root: Path, shown: str) -> FileEntry:
    where = f"{shown} files[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: each entry must be a mapping with path and modality, got {raw!r}")
    raw = {str(k): v for k, v in raw.items()}
    if "path" in raw and isinstance(raw["path"], str):
        where = f"{where} ({raw['path']})"
    unknown = sorted(set(raw) - set(_ENTRY_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(_ENTRY_KEYS)}")
    for key in ("path", "modality"):
        if key not in raw:
            raise ConfigError(f"{where}: missing required key {key!r}")
    modality = raw["modality"]
    if modality not in MODALITIES:
        raise ConfigError(f"{where}: unknown modality {modality!r}; use one of {', '.join(MODALITIES)}")
    for key in raw:
        if modality not in _ENTRY_KEYS[key]:
            raise ConfigError(f"{where}: key {key!r} does not apply to modality {modality!r}")

    rel_raw = raw["path"]
    if not isinstance(rel_raw, str) or not rel_raw.strip():
        raise ConfigError(f"{where}: path must be a non-empty string")
    try:
        target = resolve_under(root, rel_raw)
    except ConfigError as exc:
        raise ConfigError(f"{where}: path {rel_raw!r} escapes the mapping folder {root}") from exc
    if not target.is_file():
        raise ConfigError(f"{where}: file {rel_raw!r} does not exist (looked for {target})")
    if target.suffix.lower() not in _SUFFIXES:
        raise ConfigError(f"{where}: unsupported file type {target.suffix!r}; use .csv, .tsv or .parquet")
    rel = target.relative_to(root).as_posix()

    columns_raw = raw.get("columns") or {}
    keep = _name_list(raw, "keep", where)
    if isinstance(columns_raw, list):  # columns: [a, b] is keep: [a, b]
        if modality not in ("market", *RELEASE_KINDS):
            raise ConfigError(f"{where}: columns must be a mapping of source column -> name for {modality} files")
        if keep is not None:
            raise ConfigError(f"{where}: give the columns to keep once, as columns: [...] or keep: [...]")
        keep = _name_list(raw, "columns", where)
        columns_raw = {}
    if not isinstance(columns_raw, dict):
        raise ConfigError(f"{where}: columns must be a mapping of source column -> name (or a list to keep)")
    columns: dict[str, str] = {}
    for src, dst in columns_raw.items():
        if not isinstance(dst, str) or not dst.strip():
            raise ConfigError(f"{where}: columns[{src!r}] must name a target, got {dst!r}")
        dst = dst.strip()
        if modality == "prices" and dst.lower() not in OHLCV:
            raise ConfigError(f"{where}: columns[{src!r}] -> {dst!r}: prices targets are {', '.join(OHLCV)}")
        if modality == "peers":
            head, _, tail = dst.rpartition(".")
            if tail.lower() not in ("close", "volume"):
                raise ConfigError(
                    f"{where}: columns[{src!r}] -> {dst!r}: peers targets are close, volume "
                    "(long format) or TICKER.close, TICKER.volume (wide format)"
                )
        if modality in ("market", *RELEASE_KINDS) and not _sanitise(dst):
            raise ConfigError(f"{where}: columns[{src!r}] -> {dst!r} has no usable characters")
        if modality in ("prices", "market") and dst.lower() in OHLCV:
            dst = dst.lower()
        columns[str(src)] = dst
    if modality in ("prices", "market"):
        targets = [t for t in columns.values() if t in OHLCV]
        dupes = sorted({t for t in targets if targets.count(t) > 1})
        if dupes:
            raise ConfigError(f"{where}: several columns map to {dupes[0]!r}")

    frequency = raw.get("frequency")
    if frequency is not None:
        if frequency not in FREQUENCIES:
            raise ConfigError(f"{where}: frequency {frequency!r} is not one of {', '.join(FREQUENCIES)}")
        if modality in _DAILY and frequency != "daily":
            raise ConfigError(f"{where}: {modality} files must be daily, not {frequency!r}")
    lag = raw.get("release_lag_days")
    if lag is not None and (isinstance(lag, bool) or not isinstance(lag, int) or lag < 0):
        raise ConfigError(f"{where}: release_lag_days must be a whole number of days >= 0, got {lag!r}")
    order = raw.get("date_order")
    if order is not None and order not in DATE_ORDERS:
        raise ConfigError(f"{where}: date_order {order!r} is not one of {', '.join(DATE_ORDERS)}")
    published = raw.get("published")
    if published is not None:
        if isinstance(published, int) and not isinstance(published, bool):
            raise ConfigError(
                f'{where}: published {published!r}: quote a time of day (published: "16:30"); '
                "YAML reads an unquoted 16:30 as a number"
            )
        m = re.fullmatch(r"(\d{1,2}):(\d{2})", str(published).strip())
        if published not in PUBLISHED and not (m and int(m[1]) < 24 and int(m[2]) < 60):
            raise ConfigError(
                f"{where}: published {published!r} is not one of {', '.join(PUBLISHED)} "
                'or a New York time of day like "16:30"'
            )
        published = str(published).strip()
    role = raw.get("role")
    if role is not None and role not in ROLES:
        raise ConfigError(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
    roles_raw = raw.get("roles") or {}
    if not isinstance(roles_raw, dict):
        raise ConfigError(f"{where}: roles must be a mapping of column -> role")
    for col, r in roles_raw.items():
        if r not in ROLES:
            raise ConfigError(f"{where}: roles[{col!r}] {r!r} is not one of {', '.join(ROLES)}")
    if role is not None and roles_raw:
        raise ConfigError(f"{where}: give role (the file is one series) or roles (per column), not both")
    ticker = _opt_str(raw, "ticker", where)
    if ticker is not None and raw.get("ticker_column") is not None:
        raise ConfigError(f"{where}: ticker (one peer per file) and ticker_column (a long file) exclude each other")
    source = raw.get("source")
    if modality == "texts":
        if source is None:
            raise ConfigError(f"{where}: texts need source: {' or '.join(TEXT_SOURCES)}")
        if source not in TEXT_SOURCES:
            raise ConfigError(f"{where}: source {source!r} is not one of {', '.join(TEXT_SOURCES)}")

    return FileEntry(
        index=index,
        path=target,
        rel=rel,
        modality=modality,
        where=where,
        date_column=_opt_str(raw, "date_column", where),
        columns=columns,
        frequency=frequency,
        release_lag_days=lag,
        release_column=_opt_str(raw, "release_column", where),
        ticker_column=_opt_str(raw, "ticker_column", where),
        source=source,
        text_column=_opt_str(raw, "text_column", where),
        date_order=order,
        keep=keep,
        drop=_name_list(raw, "drop", where) or (),
        ticker=ticker.strip() if ticker else None,
        role=role,
        roles={str(k): v for k, v in roles_raw.items()},
        published=published,
    )


def _name_list(raw: dict, key: str, where: str) -> tuple[str, ...] | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"{where}: {key} must be a non-empty list of column names, got {value!r}")
    return tuple(v.strip() for v in value)


# --------------------------------------------------------------------------- source


class FilesSource:
    """A :class:`~finnex_ml.data.base.DataSource` over local files described by a mapping."""

    name = "files"

    def __init__(self, entries: list[FileEntry], mapping_path: str | Path, ticker: str | None = None):
        self.entries = list(entries)
        self.mapping_path = Path(mapping_path)
        self.ticker = ticker
        self._cache: dict[int, tuple[tuple[int, int], Any]] = {}
        prices = [e for e in self.entries if e.modality == "prices"]
        if len(prices) > 1:
            raise ConfigError(
                f"{mapping_path}: more than one prices file ({', '.join(e.rel for e in prices)}); "
                "list additional daily columns as modality: market"
            )

    @property
    def warnings(self) -> list[str]:
        """Warnings of the files parsed so far (accepted input the user should look at)."""
        return [note for e in self.entries for note in e.notes]

    @classmethod
    def from_mapping(cls, path: str | Path) -> FilesSource:
        shown = str(path)
        mapping_path = Path(path)
        if not mapping_path.is_file():
            raise ConfigError(f"mapping file {shown} does not exist")
        doc = _load_mapping_document(mapping_path, shown)
        if not isinstance(doc, dict):
            raise ConfigError(f"{shown}: expected a mapping with a 'files' list at the top level")
        unknown = sorted(set(map(str, doc)) - set(_TOP_KEYS))
        if unknown:
            raise ConfigError(f"{shown}: unknown top-level key {unknown[0]!r}; known keys: ticker, files")
        files = doc.get("files")
        if not isinstance(files, list) or not files:
            raise ConfigError(f"{shown}: 'files' must be a non-empty list of entries")
        ticker = doc.get("ticker")
        if ticker is not None and not isinstance(ticker, str):
            raise ConfigError(f"{shown}: ticker must be a string, got {ticker!r}")
        root = mapping_path.resolve().parent
        entries = [_parse_entry(i, raw, root, shown) for i, raw in enumerate(files)]
        return cls(entries, mapping_path, ticker)

    # -- loading

    def load(self, start: date, end: date) -> RawData:
        if start > end:
            raise ConfigError(f"load window start {start} is after end {end}")
        provenance: dict[str, list[str]] = {}

        def note(modality: str, entry: FileEntry) -> None:
            provenance.setdefault(modality, []).append(f"file:{entry.rel}")

        price_entry = next((e for e in self.entries if e.modality == "prices"), None)
        markets = [(e, self._parsed(e)) for e in self.entries if e.modality == "market"]
        prices: pl.DataFrame | None = None
        if price_entry is not None:
            prices = self._parsed(price_entry)
            note("prices", price_entry)
        else:
            for entry, (mprices, _features) in markets:
                if mprices is not None:
                    prices = mprices
                    note("prices", entry)
                    break
            if prices is None and markets:
                entry = markets[0][0]
                raise DataInputError(
                    "no prices file in the mapping and the market file lacks open/high/low/close/volume "
                    f"columns; add a prices entry or map them under columns in {entry.where}",
                    file=entry.rel,
                )
        if prices is None:
            price_frame = empty_frame(PRICE_SCHEMA)
        else:
            price_frame = prices.filter(pl.col("date").is_between(start, end))
            seen: dict[str, str] = {}
            for entry, (_p, features) in markets:
                note("market", entry)
                for col in features.columns:
                    if col == "date":
                        continue
                    if col in seen:
                        raise DataInputError(
                            f"market column {col} comes from both {seen[col]} and {entry.rel}; rename one "
                            f"under columns in {entry.where}",
                            file=entry.rel,
                            column=col,
                        )
                    seen[col] = entry.rel
                price_frame = price_frame.join(features, on="date", how="left")
            price_frame = price_frame.sort("date")

        peer_frames = []
        for entry in self.entries:
            if entry.modality == "peers":
                peer_frames.append(self._parsed(entry).with_columns(pl.lit(entry.rel).alias("__file__")))
                note("peers", entry)
        peers = _concat_peers(peer_frames).filter(pl.col("date").is_between(start, end))

        text_frames = []
        for entry in self.entries:
            if entry.modality == "texts":
                text_frames.append(self._parsed(entry))
                note("texts", entry)
        texts = _window_texts(pl.concat(text_frames) if text_frames else empty_frame(TEXT_SCHEMA), start, end)

        release_frames = []
        for entry in self.entries:
            if entry.modality in RELEASE_KINDS:
                release_frames.append(self._parsed(entry).with_columns(pl.lit(entry.rel).alias("__file__")))
                note(entry.modality, entry)
        releases = _window_releases(_concat_releases(release_frames), start, end)

        return RawData(
            prices=price_frame,
            peers=peers,
            texts=texts,
            releases=releases,
            provenance={k: ",".join(v) for k, v in provenance.items()},
        )

    def _parsed(self, entry: FileEntry) -> Any:
        """Parse one file (whole file, all checks), cached while its size and mtime hold."""
        try:
            st = os.stat(entry.path)
        except OSError as exc:
            raise DataInputError(f"cannot read file: {exc}", file=entry.rel) from exc
        stamp = (st.st_mtime_ns, st.st_size)
        hit = self._cache.get(entry.index)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        entry.notes.clear()
        frame = _read(entry)
        parser = {
            "prices": _parse_prices,
            "market": _parse_market,
            "peers": _parse_peers,
            "texts": _parse_texts,
        }.get(entry.modality, _parse_releases)
        result = parser(entry, frame)
        self._cache[entry.index] = (stamp, result)
        return result


# --------------------------------------------------------------------------- reading


def _read(entry: FileEntry) -> pl.DataFrame:
    kind = _SUFFIXES[entry.path.suffix.lower()]
    if entry.path.stat().st_size == 0:
        raise DataInputError("file is empty (zero bytes)", file=entry.rel)
    separator = "\t" if kind == "tsv" else ","
    text = None if kind == "parquet" else _decode_text(entry)
    try:
        if kind == "parquet":
            frame = pl.read_parquet(entry.path)
        else:
            assert text is not None
            _check_delimiter(entry, text, separator)
            frame = pl.read_csv(io.BytesIO(text.encode("utf-8")), infer_schema=False, separator=separator)
    except pl.exceptions.NoDataError as exc:
        raise DataInputError("file is empty", file=entry.rel) from exc
    except pl.exceptions.ComputeError as exc:
        if text is not None and "truncate_ragged_lines" in str(exc):
            _ragged(entry, text, separator)
        raise DataInputError(f"cannot read file: {_short(exc)}", file=entry.rel) from exc
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataInputError(f"cannot read file: {_short(exc)}", file=entry.rel) from exc
    dupes = [c for c in frame.columns if "_duplicated_" in c]
    if dupes:
        original = dupes[0].split("_duplicated_")[0]
        raise DataInputError(
            f"column name {original!r} appears more than once in the header", file=entry.rel, column=original
        )
    if ROW in frame.columns:
        raise DataInputError(f"column name {ROW!r} is reserved", file=entry.rel, column=ROW)
    frame = frame.with_row_index(ROW, offset=1).with_columns(pl.col(ROW).cast(pl.Int64))
    if frame.width > 1:  # blank lines read as all-null rows
        frame = frame.filter(~pl.all_horizontal(pl.exclude(ROW).is_null()))
    if frame.height == 0:
        raise DataInputError("file has a header but no data rows", file=entry.rel)
    return frame


def _short(exc: Exception, limit: int = 400) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:limit] + (" ..." if len(text) > limit else "")


def _decode_text(entry: FileEntry) -> str:
    """The file as text: UTF-8 (a BOM is dropped), else Windows-1252 / Latin-1 with a warning
    naming the first undecodable line, never a silent replacement character. NUL bytes mean
    a binary file, an error."""
    data = entry.path.read_bytes()
    if b"\x00" in data[:65536]:
        raise DataInputError(
            f"file is binary (NUL bytes), not {entry.path.suffix} text; export it as CSV or Parquet", file=entry.rel
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n")  # 0 is the header, as rows count records
        try:
            text, codec = data.decode("cp1252"), "Windows-1252"
        except UnicodeDecodeError:
            text, codec = data.decode("latin-1"), "Latin-1"
        bad = text.splitlines()[line] if line < len(text.splitlines()) else ""
        entry.warn(
            f"file is not UTF-8 (byte {data[exc.start : exc.start + 1]!r}); decoded as {codec}, "
            f"e.g. {bad[:80]!r}; save it as UTF-8 to be sure of the text",
            row=line or None,
        )
        return text


def _check_delimiter(entry: FileEntry, text: str, separator: str) -> None:
    """A ';'-delimited export (European locale, decimal commas) read as CSV gives one column or
    ragged rows; say so with the fix instead."""
    header = text.lstrip("\ufeff").split("\n", 1)[0]
    if separator in header:
        return
    for other, name in ((";", "';'"), ("\t", "tab"), ("|", "'|'")):
        if other in header:
            fix = (
                "name the file .tsv"
                if other == "\t"
                else "re-export with ',' as the delimiter and '.' as the decimal point"
            )
            raise DataInputError(
                f"the header {header[:80]!r} is {name}-delimited; FinNeX reads comma-separated .csv and "
                f"tab-separated .tsv with '.' as the decimal point: {fix}",
                file=entry.rel,
            )


def _ragged(entry: FileEntry, text: str, separator: str) -> None:
    """Name the first record whose field count differs from the header's."""
    rows = csv.reader(io.StringIO(text), delimiter=separator)
    try:
        width = len(next(rows))
        for i, fields in enumerate(rows, start=1):
            if fields and len(fields) != width:
                hint = (
                    " (decimal commas? quote them or use '.' as the decimal point)"
                    if len(fields) > width and any(re.fullmatch(r"-?\d+", f.strip()) for f in fields)
                    else ""
                )
                raise DataInputError(
                    f"row has {len(fields)} fields, the header has {width}{hint}; check the delimiter and quoting",
                    file=entry.rel,
                    row=i,
                )
    except csv.Error as exc:
        raise DataInputError(f"cannot read file: {exc}", file=entry.rel) from exc


def _column(frame: pl.DataFrame, name: str, entry: FileEntry, what: str = "column") -> str:
    """The frame's column called ``name`` (exactly, else unique case-insensitive match)."""
    if name in frame.columns and name != ROW:
        return name
    matches = [c for c in frame.columns if c != ROW and c.strip().lower() == name.strip().lower()]
    if len(matches) == 1:
        return matches[0]
    have = ", ".join(repr(c) for c in frame.columns if c != ROW)
    raise DataInputError(
        f"{what} {name!r} named in {entry.where} is not in the file (it has {have})",
        file=entry.rel,
        column=name,
    )


def _by_name(frame: pl.DataFrame, names: tuple[str, ...] | set[str], exclude: set[str]) -> list[str]:
    return [c for c in frame.columns if c != ROW and c not in exclude and _norm(c) in names]


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def _sanitise(name: str) -> str:
    return _norm(name)


def _resolve_names(
    frame: pl.DataFrame, entry: FileEntry, names: tuple[str, ...], renamed: dict[str, str], key: str
) -> list[str]:
    """The file columns that ``names`` (from the entry's ``key``) refer to. A name is a column's
    name after any rename under ``columns`` (exactly, else case-insensitively, else by its
    sanitised form: ``Stock Splits``, ``stock splits``, ``stock_splits``). Unknown names are an
    error naming the file and its columns."""
    shown = {c: renamed.get(c, c) for c in frame.columns if c != ROW}
    out: list[str] = []
    for name in names:
        bare = re.sub(r"^(market|macro|fundamental|sentiment)__", "", name)
        hits = (
            [c for c, v in shown.items() if v == name]
            or [c for c, v in shown.items() if v.casefold() == name.casefold()]
            or [c for c, v in shown.items() if _norm(v) and _norm(v) == _norm(bare)]
        )
        if len(hits) != 1:
            have = ", ".join(repr(v) for v in shown.values())
            what = "is not a column of" if not hits else "matches several columns of"
            raise DataInputError(
                f"{key}: {name!r} {what} the file (its columns, after renames: {have}); see {entry.where}",
                file=entry.rel,
                column=name,
            )
        out.append(hits[0])
    return out


def _keep_drop(
    frame: pl.DataFrame,
    entry: FileEntry,
    renamed: dict[str, str],
    candidates: list[str],
) -> tuple[list[str], set[str]]:
    """(kept value columns, or [] without ``keep``; dropped columns) of the entry's keep / drop."""
    kept: list[str] = []
    if entry.keep is not None:
        kept = _resolve_names(frame, entry, entry.keep, renamed, "keep")
        odd = [c for c in kept if c not in candidates]
        if odd:
            raise DataInputError(
                f"keep: {renamed.get(odd[0], odd[0])!r} is not a value column of this {entry.modality} file (it is "
                "the date, release, ticker or a price field); rename it under columns to make it a series",
                file=entry.rel,
                column=odd[0],
            )
    dropped = set(_resolve_names(frame, entry, entry.drop, renamed, "drop"))
    both = [c for c in kept if c in dropped]
    if both:
        raise ConfigError(f"{entry.where}: column {both[0]!r} is both kept and dropped")
    return kept, dropped


def _date_column(frame: pl.DataFrame, entry: FileEntry, exclude: set[str]) -> str:
    if entry.date_column:
        return _column(frame, entry.date_column, entry, "date_column")
    pool = [c for c in frame.columns if c != ROW and c not in exclude]
    strong = [c for c in pool if _norm(c) in _DATE_NAMES]
    weak = [c for c in pool if re.search(r"date|time|period|(^|_)at$", _norm(c))]
    for stage in (strong, weak):
        if len(stage) == 1:
            return stage[0]
        if len(stage) > 1:
            _ambiguous(entry, stage)
    by_content = [c for c in pool if _looks_like_dates(frame[c])]
    if len(by_content) == 1:
        return by_content[0]
    if len(by_content) > 1:
        _ambiguous(entry, by_content)
    raise DataInputError(f"no date column found; set date_column for this file in {entry.where}", file=entry.rel)


def _ambiguous(entry: FileEntry, candidates: list[str]) -> None:
    raise DataInputError(
        f"ambiguous date column: {', '.join(repr(c) for c in candidates)} all look like dates; "
        f"set date_column for this file in {entry.where}",
        file=entry.rel,
        column=candidates[0],
    )


def _looks_like_dates(s: pl.Series) -> bool:
    if s.dtype in (pl.Date,) or isinstance(s.dtype, pl.Datetime):
        return True
    if s.dtype != pl.String:
        return False
    sample = s.drop_nulls().head(20)
    if sample.len() == 0 or sample.str.contains(r"^\s*[\d.+-]+\s*$").all():
        return False
    return _parse_when_frame(sample, 0)["wall"].null_count() == 0


# --------------------------------------------------------------------------- dates


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


# --------------------------------------------------------------------------- numbers


def _parse_number(frame: pl.DataFrame, col: str) -> pl.DataFrame:
    """``value`` (Float64, null where missing) and ``bad`` (a non-missing cell that is not a
    number) for the String column ``col``. Step by step so no sub-expression runs twice."""
    s = pl.col("s")
    steps = frame.select(pl.col(col).str.strip_chars().alias("s")).with_columns(
        missing=s.is_null() | s.str.to_lowercase().is_in(_MISSING),
        negative=s.str.contains(r"^\(.*\)$"),
        percent=s.str.contains(r"%\)?$"),
        body=s.str.replace_all(r"[\s$€£¥,()%]", ""),
    )
    steps = steps.with_columns(
        scale=pl.col("body")
        .str.extract(r"\d([KkMmBbTt])$")
        .str.to_lowercase()
        .replace_strict({"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}, default=1.0, return_dtype=pl.Float64),
        raw=pl.col("body").str.replace(r"(\d)[KkMmBbTt]$", "${1}").cast(pl.Float64, strict=False),
    )
    steps = steps.with_columns(
        v=pl.col("raw") * pl.col("scale") * pl.when(pl.col("negative")).then(-1.0).otherwise(1.0)
    ).with_columns(v=pl.when(pl.col("percent")).then(pl.col("v") / 100.0).otherwise(pl.col("v")))
    return steps.select(
        pl.when(pl.col("missing")).then(None).otherwise(pl.col("v")).alias("value"),
        (~pl.col("missing") & (pl.col("v").is_null() | pl.col("v").is_nan() | pl.col("v").is_infinite()))
        .fill_null(False)
        .alias("bad"),
        (~pl.col("missing") & (pl.col("v").is_nan() | pl.col("v").is_infinite())).fill_null(False).alias("nonfinite"),
    )


def _numbers(
    frame: pl.DataFrame,
    cols: list[str],
    entry: FileEntry,
    *,
    strict: bool,
    days: pl.Series | None = None,
) -> tuple[pl.DataFrame, list[str]]:
    """Parse ``cols`` to Float64. Strict: raise on the first bad cell. Otherwise columns with a
    bad cell (non-numeric columns) or without any value are skipped and returned as such, with
    a warning when the column holds numbers too; an ``inf`` / ``NaN`` cell in an otherwise
    numeric column becomes missing, with a warning (one bad cell must not drop a whole column).

    Plain numeric text takes a cast; only columns where that fails go through the full
    grammar, all at once in long format (a 270-column file stays one pass)."""
    if not cols:
        return pl.DataFrame(), []
    n = frame.height
    values: dict[str, pl.Series] = {}
    bad_at: dict[str, int] = {}  # column -> first bad row index
    nonfinite_at: dict[str, pl.Series] = {}  # column -> mask of inf / NaN cells (loose mode: made missing)
    schema = frame.schema
    numeric = [c for c in cols if schema[c].is_numeric()]
    for c in numeric:
        v = frame[c].cast(pl.Float64).fill_nan(None)
        inf = v.is_infinite().fill_null(False)
        if inf.any():
            bad_at[c] = int(inf.arg_true()[0])
            nonfinite_at[c] = inf
        values[c] = v
    text = [c for c in cols if c not in values]
    if text:
        stripped = frame.select([pl.col(c).cast(pl.String).str.strip_chars() for c in text])
        fast = stripped.select([pl.col(c).cast(pl.Float64, strict=False) for c in text])
        before, after = stripped.null_count().row(0), fast.null_count().row(0)
        odd = fast.select([(pl.col(c).is_nan() | pl.col(c).is_infinite()).any() for c in text]).row(0)
        slow = []
        for c, nb, na, o in zip(text, before, after, odd):
            if nb == na and not o:
                values[c] = fast[c]
            else:
                slow.append(c)
        if slow:
            long = stripped.select(slow).unpivot(on=slow, variable_name="c", value_name="v")
            parsed = _parse_number(long, "v")
            for k, c in enumerate(slow):  # unpivot stacks column after column
                part = parsed.slice(k * n, n)
                values[c] = part["value"].alias(c)
                if part["bad"].any():
                    bad_at[c] = int(part["bad"].arg_true()[0])
                    if (part["bad"] == part["nonfinite"]).all():
                        nonfinite_at[c] = part["nonfinite"]
    if not strict:
        for c, mask in nonfinite_at.items():
            i = int(mask.arg_true()[0])
            entry.warn(
                f"{int(mask.sum())} non-finite cell(s) ({frame[c].cast(pl.String)[i]!r}) read as missing",
                column=c,
                row=int(frame[ROW][i]),
                date=None if days is None else str(days[i]),
            )
            values[c] = pl.Series(c, values[c]).set(mask, None)
            del bad_at[c]
        for c in bad_at:
            if values[c].drop_nulls().filter(values[c].drop_nulls().is_finite()).len():
                i = bad_at[c]
                entry.warn(
                    f"column skipped: {frame[c].cast(pl.String)[i]!r} is not a number, though other cells are",
                    column=c,
                    row=int(frame[ROW][i]),
                    date=None if days is None else str(days[i]),
                )
    bad_cols = [c for c in cols if c in bad_at]
    if strict and bad_cols:
        col = min(bad_cols, key=lambda c: (bad_at[c], cols.index(c)))
        i = bad_at[col]
        raise DataInputError(
            f"cannot parse {frame[col].cast(pl.String)[i]!r} as a number",
            file=entry.rel,
            column=col,
            row=int(frame[ROW][i]),
            date=None if days is None else str(days[i]),
        )
    empty = [c for c in cols if c not in bad_at and values[c].null_count() == n]
    skipped = bad_cols + ([] if strict else empty)
    return pl.DataFrame([values[c].alias(c) for c in cols if c not in skipped]), skipped


# --------------------------------------------------------------------------- daily files


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


# --------------------------------------------------------------------------- texts


def _parse_texts(entry: FileEntry, frame: pl.DataFrame) -> pl.DataFrame:
    if entry.text_column:
        text_col = _column(frame, entry.text_column, entry, "text_column")
    else:
        text_col = next((c for name in _TEXT_NAMES for c in frame.columns if c != ROW and _norm(c) == name), None)
        if text_col is None:
            raise DataInputError(
                f"no text column found (looked for {', '.join(_TEXT_NAMES)}); set text_column in {entry.where}",
                file=entry.rel,
                column="text",
            )
    date_col = _date_column(frame, entry, {text_col})
    lengths = frame[text_col].cast(pl.String).str.len_chars().fill_null(0)
    if lengths.max() > MAX_TEXT_CHARS:
        i = int(lengths.arg_max())
        raise DataInputError(
            f"text of {lengths[i]:,} characters; the limit is {MAX_TEXT_CHARS:,} per text (a headline, post or "
            "article); is a delimiter or quote missing so that several records ran together?",
            file=entry.rel,
            column=text_col,
            row=int(frame[ROW][i]),
        )
    when = _when(frame, date_col, entry)
    when = when.with_columns(
        utc=pl.when(pl.col("has_time"))
        .then(pl.col("utc"))
        .otherwise(_date_only_instant(pl.col("day"), _published(entry), noon=True))
    )
    naive = _naive_times(frame[date_col])
    if naive.any():
        i = int(naive.arg_true()[0])
        entry.warn(
            f"{int(naive.sum())} timestamp(s) without a timezone (e.g. {frame[date_col].cast(pl.String)[i]!r}) "
            "read as New York time; add an offset (Z, +00:00) if they are UTC",
            column=date_col,
            row=int(frame[ROW][i]),
        )
    out = pl.DataFrame(
        {
            "published_at": when["utc"],
            "source": pl.Series([entry.source] * frame.height, dtype=pl.String),
            "text": frame[text_col].cast(pl.String).str.strip_chars(),
        }
    )
    return out.filter(pl.col("text").is_not_null() & (pl.col("text") != "")).cast(TEXT_SCHEMA)


def _naive_times(s: pl.Series) -> pl.Series:
    """Rows holding a time of day but no zone (read as New York time)."""
    if isinstance(s.dtype, pl.Datetime):
        return pl.Series([s.dtype.time_zone is None] * len(s))
    if s.dtype != pl.String:
        return pl.Series([False] * len(s))
    parsed = _parse_when_frame(s, 12)
    return (parsed["has_time"] & ~parsed["aware"] & parsed["wall"].is_not_null()).fill_null(False)


def _window_texts(texts: pl.DataFrame, start: date, end: date) -> pl.DataFrame:
    lo, hi = start - timedelta(days=10), end + timedelta(days=2)
    near = texts.filter(pl.col("published_at").dt.date().is_between(lo, hi))
    if near.height == 0:
        return empty_frame(TEXT_SCHEMA)
    sess = near.select(assign_session(pl.col("published_at")).alias("s"))["s"]
    return near.filter(sess.is_between(start, end)).sort("published_at", maintain_order=True)


# --------------------------------------------------------------------------- releases


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


def _published(entry: FileEntry) -> str:
    return entry.published or DEFAULT_PUBLISHED[entry.modality]


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


def _parse_releases(entry: FileEntry, frame: pl.DataFrame) -> pl.DataFrame:
    if entry.release_column:
        release_col: str | None = _column(frame, entry.release_column, entry, "release_column")
    else:
        hits = _by_name(frame, _RELEASE_NAMES, set())
        release_col = hits[0] if len(hits) == 1 else None
    mapped = {_column(frame, s, entry): d for s, d in entry.columns.items()}
    exclude = set(mapped) | ({release_col} if release_col else set())
    date_col = _date_column(frame, entry, exclude)
    if date_col == release_col:
        raise ConfigError(f"{entry.where}: date_column and release_column are the same column {date_col!r}")
    day = _when(frame, date_col, entry)["day"]
    frequency = entry.frequency or _infer_frequency(day)
    _one_per_period(entry, frame, date_col, day, frequency)
    period_end = _period_end(day, frequency)

    policy = _published(entry)
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
        raise DataInputError(
            f"released {stated[i]} before the period ends ({period_end[i]}); are the date and release "
            f"columns swapped? (see {entry.where})",
            file=entry.rel,
            column=release_col,
            row=int(frame[ROW][i]),
            date=str(day[i]),
        )

    skip = {date_col, release_col, *_by_name(frame, _TICKER_NAMES, set())}
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
    latest release before ``start`` whatever its age (the value in force on ``start``)."""
    known = releases.filter(pl.col("released") <= end)
    horizon = date(start.year - RELEASE_LOOKBACK_YEARS, start.month, min(start.day, 28))
    carry = known.filter(pl.col("released") < start).filter(
        pl.col("released") == pl.col("released").max().over("modality", "series")
    )
    recent = known.filter((pl.col("released") >= start) | (pl.col("period_end") >= horizon))
    out = pl.concat([carry, recent], how="vertical").select(list(RELEASE_SCHEMA)).unique(maintain_order=True)
    return out.sort("modality", "series", "period_end", "released")
