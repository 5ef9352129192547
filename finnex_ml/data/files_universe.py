"""The ``files`` universe: many tickers from the user's own CSV / Parquet exports.

A mapping (YAML, or TOML when it ends in ``.toml``) like the single-stock ``files`` source's
(:mod:`finnex_ml.data.files`, which documents every parsing rule and entry key), with a
top-level ``universe:`` section and per-ticker files. Paths are relative to the mapping file's
folder and may not leave it.

.. code-block:: yaml

    universe:
      name: my-universe           # optional, default "files-universe"
      sectors: sectors.csv        # optional: a ticker,sector file, or an inline {AAA: Tech, ...}
      unknown_tickers: error      # error (default) | ignore: texts/fundamentals of a ticker
                                  # without prices are an error, or dropped with a warning
    files:
      - path: "prices/*.csv"      # a glob: one file per ticker, the ticker is the file stem
        modality: prices
        ticker_from: stem         # or a regex on the stem: "^(?P<ticker>[A-Z]+)_daily$"
      - path: panel_prices.csv    # or a long file: one row per (date, ticker)
        modality: prices
        ticker_column: Symbol
        columns: {Open: open, High: high, Low: low, Close: close, Volume: volume}
      - path: news.csv            # per-ticker texts: a ticker column (or a glob by file)
        modality: texts
        source: news
        ticker_column: ticker
      - path: fundamentals.csv    # per-ticker releases, ticker column
        modality: fundamental
        ticker_column: ticker
        release_column: filing_date
      - path: fred_DGS10.csv      # no ticker: shared macro, the same for every ticker
        modality: macro

Keys of an entry: every key of the single-stock source's entries (``columns``, ``date_column``,
``published``, ``keep`` / ``drop``, ``role`` ...: same meaning, same checks), plus:

``path``
    A file, or a glob (``*``, ``?``, ``[...]``; ``**`` for sub-folders) that expands to one entry
    per matched file, sorted by path. A glob matching no file is a ``ConfigError``.
``ticker_column``
    The file is long: the column holding each row's ticker (cells are stripped; an empty cell
    is an error naming the row). Without it, a non-glob prices / texts / fundamental /
    sentiment file's column named ``ticker`` or ``symbol`` (any case) is used. A long file's
    ``d/d/yyyy`` day/month order (``date_order`` unset) is settled by the whole file, so every
    ticker reads its dates the same way.
``ticker``
    The whole file is this one ticker's (not with a glob or ``ticker_column``).
``ticker_from``
    Glob entries without ``ticker_column``: ``stem`` (default: ``prices/AAPL.csv`` is ``AAPL``) or
    a regular expression matched against the file stem, whose group ``ticker`` (or only group)
    is the ticker. A stem it does not match is a ``ConfigError``.

Modalities: ``prices`` (required: one prices source per ticker; the set of tickers with prices
is the universe), ``texts``, ``fundamental`` and ``sentiment`` are per ticker (they need a ticker:
column, ``ticker``, or glob); ``macro`` is shared by every ticker (ticker keys are an error);
``market`` is per ticker with ``ticker_column``, ``ticker`` or a glob, and otherwise shared
(joined to every ticker's prices).
``peers`` is refused: in universe mode a ticker's peers are the universe.

Per ticker, :meth:`FilesUniverse.load_ticker` returns exactly what a single-stock
:class:`~finnex_ml.data.files.FilesSource` returns for a mapping of that ticker's rows (its
prices, its rows of the long texts / fundamentals files, the shared macro): the same canonical
schemas, windowing and point-in-time ``published`` rules. Long files are split by ticker before
parsing; messages keep the file's own row numbers. ``members()`` gives each ticker's listing
span: its first and last session with a price.

Bad input (:class:`~finnex_ml.errors.DataInputError` naming file, ticker, date / row):

* duplicate (ticker, date) rows: an error naming file, ticker, date and both rows;
* a row on a date that is not an NYSE session (a holiday or weekend row): an error naming file,
  ticker, row and date, with a hint. Not dropped: a calendar that disagrees with NYSE usually
  means another exchange's data or shifted dates, which dropping rows would hide;
* gaps (sessions missing inside a ticker's span): accepted; the ticker is absent on those
  sessions (nothing is imputed); a warning gives the count and the first gap;
* a ticker listed after others: its span starts at its first price (no error);
* a ticker in a texts / fundamental / sentiment / market file without prices: an error naming
  file, ticker, its first row and that row's date cell, listing the known tickers (and a
  different-case match: ``aapl`` / ``AAPL``); ``unknown_tickers: ignore`` drops its rows with a
  warning instead;
* any single-stock check inside a ticker's rows (bad numbers, high below low, a future date ...):
  the single-stock message with ``ticker X:`` in front;
* two prices files for one ticker, a missing ticker column or cell, a prices file without a
  row: errors naming the files and ticker; a glob matching no file, ``peers`` entries and ticker
  keys on macro entries: ``ConfigError`` naming the mapping entry.

Sectors (``universe.sectors``): tickers not listed get the sector ``""`` (one group for the
sector-relative features) with a warning; listed tickers without prices are ignored with a
warning; a ticker listed twice is an error.

Warnings (accepted input worth a look) are logged and listed in :attr:`FilesUniverse.warnings`.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl

from finnex_ml import calendar
from finnex_ml.data.base import RawData
from finnex_ml.data.files import FileEntry, FilesSource
from finnex_ml.data.files.daily import _parse_market, _parse_prices
from finnex_ml.data.files.dates import _SLASH
from finnex_ml.data.files.mapping import ROW, _load_mapping_document, _parse_entry
from finnex_ml.data.files.readers import _TICKER_NAMES, _by_name, _column, _date_column, _read
from finnex_ml.data.files.releases import _parse_releases
from finnex_ml.data.files.texts import _parse_texts
from finnex_ml.data.universe import MEMBER_SCHEMA, _unknown_ticker
from finnex_ml.errors import ConfigError, DataInputError
from finnex_ml.paths import resolve_under

__all__ = ["FilesUniverse", "UNIVERSE_KEYS", "TICKER_KEYS"]

log = logging.getLogger(__name__)

UNIVERSE_KEYS = ("name", "sectors", "unknown_tickers")
TICKER_KEYS = ("ticker_column", "ticker", "ticker_from")
UNKNOWN_TICKERS = ("error", "ignore")
_PER_TICKER = ("prices", "texts", "fundamental", "sentiment")
_TOP_KEYS = ("universe", "files")
_GLOB = re.compile(r"[*?\[]")
_NOT_SESSION = "is not an NYSE trading session"


@dataclass
class _Spec:
    """One ``files:`` item after glob expansion: a concrete file and how it names tickers."""

    entry: FileEntry
    seq: int  # position after expansion (mapping order, then path order)
    ticker: str | None = None  # the whole file is this ticker's
    ticker_column: str | None = None  # long file
    auto_ticker: bool = False  # look for a column named ticker / symbol


@dataclass
class _Part:
    """One ticker's share of a file: its own FileEntry (own warnings) and the parsed result."""

    entry: FileEntry
    seq: int
    ticker: str | None  # None: shared by every ticker
    parsed: Any


def _tagged(exc: DataInputError, ticker: str, hint: str = "") -> DataInputError:
    """``exc`` with ``ticker {ticker}:`` in front (and ``hint`` after its message), same fields."""
    text = str(exc)
    fields = (("file", exc.file), ("column", exc.column), ("row", exc.row), ("date", exc.date))
    suffix = " [" + ", ".join(f"{k}={v}" for k, v in fields if v is not None) + "]"
    if suffix != " []" and text.endswith(suffix):
        text = text[: -len(suffix)]
    if not hint and _NOT_SESSION in text:
        hint = (
            "; the universe follows the NYSE calendar: remove holiday / weekend rows, or check that the file is "
            "a US listing with dates in New York time"
        )
    return DataInputError(
        f"ticker {ticker}: {text}{hint}", file=exc.file, column=exc.column, row=exc.row, date=exc.date
    )


def _first_date(entry: FileEntry, frame: pl.DataFrame) -> str | None:
    """The first row's date cell as written (for messages), if the date column is clear."""
    exclude = {c for c in (entry.text_column, entry.release_column) if c}
    try:
        col = _date_column(frame, entry, {c for c in frame.columns if c in exclude})
    except DataInputError:
        return None
    value = frame[col].cast(pl.String)[0]
    return value.strip() if value else None


def _shown_tickers(tickers: list[str], limit: int = 12) -> str:
    return ", ".join(tickers[:limit]) + (f", ... ({len(tickers)} in all)" if len(tickers) > limit else "")


class _TickerFiles(FilesSource):
    """A single-stock FilesSource over one ticker's already parsed parts."""

    def __init__(self, parts: list[_Part], mapping_path: Path, ticker: str):
        super().__init__([p.entry for p in parts], mapping_path, ticker)
        self._parts = {id(p.entry): p.parsed for p in parts}

    def _parsed(self, entry: FileEntry) -> Any:
        return self._parts[id(entry)]


class FilesUniverse:
    """Many tickers from files described by a mapping (module docstring)."""

    benchmark = "equal-weight universe of the mapping's tickers"

    def __init__(
        self,
        specs: list[_Spec],
        mapping_path: str | Path,
        *,
        name: str = "files-universe",
        sectors: dict[str, str] | Path | None = None,
        unknown_tickers: str = "error",
    ) -> None:
        self.specs = list(specs)
        self.mapping_path = Path(mapping_path)
        self.name = name
        self.sectors = sectors
        self.unknown_tickers = unknown_tickers
        self._notes: list[str] = []
        self._parts: list[_Part] | None = None
        self._members: pl.DataFrame | None = None
        self._stamp: tuple[tuple[int, int], ...] | None = None

    # ------------------------------------------------------------------ mapping

    @classmethod
    def from_mapping(cls, path: str | Path) -> FilesUniverse:
        shown = str(path)
        mapping_path = Path(path)
        if not mapping_path.is_file():
            raise ConfigError(f"mapping file {shown} does not exist")
        doc = _load_mapping_document(mapping_path, shown)
        if not isinstance(doc, dict):
            raise ConfigError(f"{shown}: expected a mapping with 'universe' and 'files' at the top level")
        unknown = sorted(set(map(str, doc)) - set(_TOP_KEYS))
        if unknown:
            raise ConfigError(f"{shown}: unknown top-level key {unknown[0]!r}; known keys: {', '.join(_TOP_KEYS)}")
        uni = doc.get("universe") or {}
        if not isinstance(uni, dict):
            raise ConfigError(f"{shown}: universe must be a mapping with keys {', '.join(UNIVERSE_KEYS)}")
        bad = sorted(set(map(str, uni)) - set(UNIVERSE_KEYS))
        if bad:
            raise ConfigError(f"{shown}: unknown key universe.{bad[0]}; known keys: {', '.join(UNIVERSE_KEYS)}")
        name = uni.get("name", "files-universe")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{shown}: universe.name must be a non-empty string, got {name!r}")
        policy = uni.get("unknown_tickers", "error")
        if policy not in UNKNOWN_TICKERS:
            raise ConfigError(
                f"{shown}: universe.unknown_tickers {policy!r} is not one of {', '.join(UNKNOWN_TICKERS)}"
            )
        root = mapping_path.resolve().parent
        sectors = _sectors_option(uni.get("sectors"), root, shown)
        files = doc.get("files")
        if not isinstance(files, list) or not files:
            raise ConfigError(f"{shown}: 'files' must be a non-empty list of entries")
        specs: list[_Spec] = []
        for i, raw in enumerate(files):
            specs.extend(_expand(i, raw, root, shown, len(specs)))
        if not any(s.entry.modality == "prices" for s in specs):
            raise ConfigError(f"{shown}: a universe needs at least one prices entry (the tickers with prices)")
        return cls(specs, mapping_path, name=name.strip(), sectors=sectors, unknown_tickers=policy)

    # ------------------------------------------------------------------ parsing

    @property
    def warnings(self) -> list[str]:
        """Warnings so far: the universe's (gaps, dropped tickers, sectors) and each file's, by ticker."""
        notes = list(self._notes)
        for p in self._parts or []:
            notes += [n if p.ticker is None else f"ticker {p.ticker}: {n}" for n in p.entry.notes]
        return notes

    def _warn(self, message: str) -> None:
        self._notes.append(message)
        log.warning(message)

    def _stamps(self) -> tuple[tuple[int, int], ...]:
        """(mtime, size) of every file: a long-lived instance (the Dagster resource's) must see
        an export replaced on disk, as the single-stock FilesSource does."""
        out = []
        for spec in self.specs:
            try:
                st = os.stat(spec.entry.path)
            except OSError as exc:
                raise DataInputError(f"cannot read file: {exc}", file=spec.entry.rel) from exc
            out.append((st.st_mtime_ns, st.st_size))
        return tuple(out)

    def _all(self) -> list[_Part]:
        """Every file parsed (whole files, all checks), split by ticker; again only when a file
        changed on disk."""
        stamp = self._stamps()
        if self._parts is not None and stamp == self._stamp:
            return self._parts
        self._parts, self._members, self._stamp = None, None, stamp
        self._notes.clear()
        parts: list[_Part] = []
        price_file: dict[str, str] = {}
        for spec in (s for s in self.specs if s.entry.modality == "prices"):
            for part in self._parse(spec):
                assert part.ticker is not None
                if part.ticker in price_file:
                    raise DataInputError(
                        f"ticker {part.ticker} has prices in both {price_file[part.ticker]} and {part.entry.rel}; "
                        "give each ticker one prices file (or merge the files)",
                        file=part.entry.rel,
                    )
                price_file[part.ticker] = part.entry.rel
                if part.parsed.height == 0:
                    raise DataInputError(
                        f"ticker {part.ticker} has no price row (every row is empty)", file=part.entry.rel
                    )
                parts.append(part)
        known = sorted(price_file)
        for spec in (s for s in self.specs if s.entry.modality != "prices"):
            for part in self._parse(spec, known):
                parts.append(part)
        parts.sort(key=lambda p: p.seq)
        self._parts = parts
        for p in parts:
            if p.entry.modality == "prices":
                self._gaps(p)
        return parts

    def _parse(self, spec: _Spec, known: list[str] | None = None) -> list[_Part]:
        entry = spec.entry
        parser = {
            "prices": _parse_prices,
            "market": _parse_market,
            "texts": _parse_texts,
        }.get(entry.modality, _parse_releases)
        shared = spec.ticker is None and spec.ticker_column is None and not spec.auto_ticker
        if shared:  # macro, or market without a ticker
            e = replace(entry, notes=[])
            return [_Part(e, spec.seq, None, parser(e, _read(e)))]
        frame = _read(entry)
        if spec.ticker is not None:
            groups = [(spec.ticker, frame)]
        else:
            entry = self._settle_date_order(entry, frame)
            groups = self._split(spec, frame)
        if known is not None:
            groups = self._known_only(entry, groups, known)
        out = []
        for ticker, part in groups:
            e = replace(entry, notes=[])
            try:
                parsed = parser(e, part)
            except DataInputError as exc:
                raise _tagged(exc, ticker) from exc
            out.append(_Part(e, spec.seq, ticker, parsed))
        return out

    def _settle_date_order(self, entry: FileEntry, frame: pl.DataFrame) -> FileEntry:
        """A long file's d/d/yyyy day/month order, settled by the whole file (a ticker with only
        early-month dates would be ambiguous alone, and every ticker must read the same way)."""
        if entry.date_order is not None:
            return entry
        for col in frame.columns:
            if col == ROW or frame.schema[col] != pl.String:
                continue
            parts = frame[col].str.extract_groups(_SLASH).struct.unnest()
            a, b = (parts[c].cast(pl.Int32) for c in parts.columns[:2])
            day_first, month_first = bool((a > 12).any()), bool((b > 12).any())
            if day_first != month_first:
                if day_first:
                    i = int((a > 12).fill_null(False).arg_true()[0])
                    self._warn(
                        f"dates read as day/month/year, as {frame[col][i]!r} shows; set date_order: dmy in the "
                        f"mapping to say so [file={entry.rel}, column={col}, row={int(frame[ROW][i])}]"
                    )
                return replace(entry, date_order="dmy" if day_first else "mdy")
        return entry

    def _split(self, spec: _Spec, frame: pl.DataFrame) -> list[tuple[str, pl.DataFrame]]:
        """A long file's rows per ticker (file order, ROW kept), the ticker column dropped."""
        entry = spec.entry
        if spec.ticker_column is not None:
            col = _column(frame, spec.ticker_column, entry, "ticker_column")
        else:
            hits = _by_name(frame, _TICKER_NAMES, set())
            if len(hits) != 1:
                have = ", ".join(repr(c) for c in frame.columns if c != ROW)
                raise DataInputError(
                    f"no ticker column found (looked for a column named ticker or symbol; the file has {have}); "
                    f"set ticker_column, or ticker for a one-ticker file, in {entry.where}",
                    file=entry.rel,
                    column="ticker",
                )
            col = hits[0]
        tickers = frame[col].cast(pl.String).str.strip_chars()
        empty = (tickers.is_null() | (tickers == "")).arg_true()
        if empty.len():
            raise DataInputError(
                "missing ticker (an empty ticker cell)", file=entry.rel, column=col, row=int(frame[ROW][empty[0]])
            )
        frame = frame.drop(col).with_columns(tickers.alias("__ticker__"))
        return [(str(tk), part.drop("__ticker__")) for (tk,), part in frame.group_by("__ticker__", maintain_order=True)]

    def _known_only(
        self, entry: FileEntry, groups: list[tuple[str, pl.DataFrame]], known: list[str]
    ) -> list[tuple[str, pl.DataFrame]]:
        """Rows of tickers with prices; an unknown ticker is an error or (``ignore``) dropped with a warning."""
        have = set(known)
        unknown = [(tk, part) for tk, part in groups if tk not in have]
        if not unknown:
            return groups
        if self.unknown_tickers == "error":
            tk, part = unknown[0]
            row = int(part[ROW][0])
            near = [k for k in known if k.casefold() == tk.casefold()]
            hint = f"did you mean {near[0]}? " if near else ""
            raise DataInputError(
                f"ticker {tk} has no prices in the universe (first at row {row}, {part.height} row(s); "
                f"{len(unknown)} such ticker(s)); {hint}known tickers: {_shown_tickers(known)}. Fix the ticker, "
                "add its prices, or set universe.unknown_tickers: ignore to drop such rows",
                file=entry.rel,
                row=row,
                date=_first_date(entry, part),
            )
        for tk, part in unknown:
            self._warn(
                f"ticker {tk} has no prices in the universe: its {part.height} row(s) are dropped "
                f"(universe.unknown_tickers: ignore) [file={entry.rel}, row={int(part[ROW][0])}]"
            )
        return [(tk, part) for tk, part in groups if tk in have]

    def _gaps(self, part: _Part) -> None:
        dates = part.parsed["date"]
        first, last = dates.min(), dates.max()
        lo, hi = max(first, calendar.CALENDAR_START), min(last, calendar.calendar_end())
        if lo > hi:
            return
        have = set(dates.to_list())
        missing = [d for d in calendar.sessions(lo, hi) if d not in have]
        if missing:
            self._warn(
                f"ticker {part.ticker}: {len(missing)} NYSE session(s) inside its listing span {first}..{last} "
                f"have no price row (first gap: {missing[0]}); the ticker is absent on those sessions, nothing "
                f"is imputed [file={part.entry.rel}, date={missing[0]}]"
            )

    # ------------------------------------------------------------------ UniverseSource

    def members(self) -> pl.DataFrame:
        parts = self._all()  # first: a changed file drops the cached members
        if self._members is not None:
            return self._members
        spans = {
            p.ticker: (p.parsed["date"].min(), p.parsed["date"].max()) for p in parts if p.entry.modality == "prices"
        }
        tickers = sorted(spans)
        sector = self._sector_map(tickers)
        self._members = pl.DataFrame(
            {
                "ticker": tickers,
                "sector": [sector.get(t, "") for t in tickers],
                "first": [spans[t][0] for t in tickers],
                "last": [spans[t][1] for t in tickers],
            },
            schema=MEMBER_SCHEMA,
        )
        return self._members

    def _sector_map(self, tickers: list[str]) -> dict[str, str]:
        if self.sectors is None:
            return {}
        sector = (
            _read_sectors(self.sectors, self.mapping_path.resolve().parent)
            if isinstance(self.sectors, Path)
            else dict(self.sectors)
        )
        where = self.sectors.name if isinstance(self.sectors, Path) else "universe.sectors"
        extra = sorted(set(sector) - set(tickers))
        if extra:
            self._warn(f"{len(extra)} ticker(s) in {where} have no prices and are ignored: {_shown_tickers(extra)}")
        missing = [t for t in tickers if t not in sector]
        if missing:
            self._warn(
                f"{len(missing)} ticker(s) have no sector in {where} (sector left empty, they form one group for "
                f"sector-relative features): {_shown_tickers(missing)}"
            )
        return sector

    def load_ticker(self, ticker: str, start: date, end: date) -> RawData:
        parts = self._all()
        mine = [p for p in parts if p.ticker == ticker]
        if not any(p.entry.modality == "prices" for p in mine):
            raise _unknown_ticker(ticker, sorted(self.members()["ticker"].to_list()), self.name)
        chosen = [p for p in parts if p.ticker == ticker or p.ticker is None]
        try:
            raw = _TickerFiles(chosen, self.mapping_path, ticker).load(start, end)
        except DataInputError as exc:
            raise _tagged(exc, ticker) from exc
        provenance = {**raw.provenance, "peers": "none: universe mode has no peer tickers per stock"}
        return replace(raw, provenance=provenance)

    def oracle_scores(self, start: date, end: date, horizons: tuple[int, ...]) -> pl.DataFrame:
        raise ValueError("oracle_scores needs a planted signal; a files universe has none")


# ---------------------------------------------------------------------- mapping helpers


def _expand(index: int, raw: Any, root: Path, shown: str, seq0: int) -> list[_Spec]:
    """One ``files:`` item -> its concrete files (a glob gives one per match)."""
    where = f"{shown} files[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: each entry must be a mapping with path and modality, got {raw!r}")
    raw = {str(k): v for k, v in raw.items()}
    path = raw.get("path")
    if isinstance(path, str):
        where = f"{where} ({path})"
    modality = raw.get("modality")
    if modality == "peers":
        raise ConfigError(
            f"{where}: peers files do not apply to a universe (each ticker's peers are the universe); "
            "list the peers' prices as tickers of the universe instead"
        )
    ticker_keys = {k: raw.pop(k) for k in TICKER_KEYS if k in raw}
    for key in ("ticker_column", "ticker", "ticker_from"):
        value = ticker_keys.get(key)
        if key in ticker_keys and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"{where}: {key} must be a non-empty string, got {value!r}")
    is_glob = isinstance(path, str) and bool(_GLOB.search(path))
    ticker_column = ticker_keys.get("ticker_column")
    ticker = ticker_keys.get("ticker")
    ticker_from = ticker_keys.get("ticker_from")
    if modality == "macro" and ticker_keys:
        raise ConfigError(
            f"{where}: macro series are shared by every ticker; remove {next(iter(ticker_keys))} "
            "(per-ticker series are modality: fundamental or sentiment)"
        )
    if ticker is not None and (ticker_column is not None or is_glob):
        raise ConfigError(f"{where}: ticker (a one-ticker file) excludes ticker_column and a glob path")
    if ticker_from is not None and (not is_glob or ticker_column is not None):
        raise ConfigError(f"{where}: ticker_from names the ticker by file, for a glob path without ticker_column")
    pattern = None
    if ticker_from is not None and ticker_from != "stem":
        try:
            pattern = re.compile(ticker_from)
        except re.error as exc:
            raise ConfigError(f"{where}: ticker_from {ticker_from!r} is not a regular expression: {exc}") from exc
        if "ticker" not in pattern.groupindex and pattern.groups != 1:
            raise ConfigError(f"{where}: ticker_from {ticker_from!r} needs a group (?P<ticker>...) or one group")

    if is_glob:
        assert isinstance(path, str)
        if Path(path).is_absolute() or ".." in Path(path).parts:
            raise ConfigError(f"{where}: glob {path!r} must stay inside the mapping folder {root}")
        matches = sorted(p for p in root.glob(path) if p.is_file())
        if not matches:
            raise ConfigError(f"{where}: glob {path!r} matches no file under {root}")
        paths = [m.relative_to(root).as_posix() for m in matches]
    else:
        paths = [path]  # type: ignore[list-item]

    out = []
    for k, rel in enumerate(paths):
        entry = _parse_entry(index, {**raw, "path": rel}, root, shown)
        spec = _Spec(entry, seq0 + k)
        if ticker is not None:
            spec.ticker = ticker.strip()
        elif ticker_column is not None:
            spec.ticker_column = ticker_column
        elif is_glob and entry.modality != "macro":
            stem = entry.path.stem
            if pattern is None:
                spec.ticker = stem.strip()
            else:
                m = pattern.search(stem)
                if not m:
                    raise ConfigError(
                        f"{where}: ticker_from {ticker_from!r} does not match file {rel!r} (stem {stem!r})"
                    )
                spec.ticker = (m["ticker"] if "ticker" in pattern.groupindex else m[1]).strip()
            if not spec.ticker:
                raise ConfigError(f"{where}: file {rel!r} gives an empty ticker")
        elif entry.modality in _PER_TICKER:
            spec.auto_ticker = True
        out.append(spec)
    return out


def _sectors_option(value: Any, root: Path, shown: str) -> dict[str, str] | Path | None:
    if value is None:
        return None
    if isinstance(value, dict):
        bad = [k for k, v in value.items() if not isinstance(v, str) or not v.strip()]
        if bad:
            raise ConfigError(f"{shown}: universe.sectors[{bad[0]!r}] must be a sector name")
        return {str(k).strip(): v.strip() for k, v in value.items()}
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{shown}: universe.sectors must be a ticker,sector file or a {{ticker: sector}} mapping")
    try:
        target = resolve_under(root, value)
    except ConfigError as exc:
        raise ConfigError(f"{shown}: universe.sectors {value!r} escapes the mapping folder {root}") from exc
    if not target.is_file():
        raise ConfigError(f"{shown}: universe.sectors file {value!r} does not exist (looked for {target})")
    return target


def _read_sectors(path: Path, root: Path) -> dict[str, str]:
    """ticker -> sector from a CSV with a ticker (or symbol) and a sector column."""
    rel = path.relative_to(root).as_posix() if root in path.parents else path.name
    entry = FileEntry(index=-1, path=path, rel=rel, modality="prices", where=f"universe.sectors ({rel})")
    frame = _read(entry)
    tick = _by_name(frame, _TICKER_NAMES, set())
    sect = _by_name(frame, ("sector", "gics_sector", "industry"), set())
    if len(tick) != 1 or len(sect) != 1:
        have = ", ".join(repr(c) for c in frame.columns if c != ROW)
        raise DataInputError(f"a sectors file needs a ticker and a sector column (it has {have})", file=rel)
    frame = frame.select(
        pl.col(tick[0]).cast(pl.String).str.strip_chars().alias("ticker"),
        pl.col(sect[0]).cast(pl.String).str.strip_chars().alias("sector"),
        ROW,
    )
    empty = frame.filter(pl.col("ticker").is_null() | (pl.col("ticker") == ""))
    if empty.height:
        raise DataInputError("missing ticker", file=rel, column=tick[0], row=int(empty[ROW][0]))
    dup = frame.filter(pl.col("ticker").is_duplicated())
    if dup.height:
        tk = dup["ticker"][0]
        rows = dup.filter(pl.col("ticker") == tk)[ROW].to_list()
        raise DataInputError(f"ticker {tk} appears twice (rows {rows[0]} and {rows[1]})", file=rel, row=rows[1])
    return {t: s or "" for t, s in zip(frame["ticker"].to_list(), frame["sector"].to_list())}
