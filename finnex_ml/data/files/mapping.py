"""The mapping file: its schema (entry keys per modality, roles, known series, published
policies), :class:`FileEntry` and the YAML / TOML loading and validation of its entries.

The keys are documented in :mod:`finnex_ml.data.files`.
"""

from __future__ import annotations

import logging
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from finnex_ml.data.base import TEXT_SOURCES
from finnex_ml.errors import ConfigError
from finnex_ml.paths import resolve_under

MODALITIES = ("prices", "market", "peers", "texts", "macro", "fundamental", "sentiment")
RELEASE_KINDS = ("macro", "fundamental", "sentiment")
FREQUENCIES = ("daily", "weekly", "monthly", "quarterly", "annual")
DEFAULT_RELEASE_LAG_DAYS = {"daily": 0, "weekly": 5, "monthly": 14, "quarterly": 45, "annual": 90}
OHLCV = ("open", "high", "low", "close", "volume")
NEW_YORK = "America/New_York"
ROW = "__row__"  # 1-based data row, kept through parsing for messages
MAX_MAPPING_BYTES = 1_000_000  # a mapping lists files; anything bigger is not one
DATE_ORDERS = ("mdy", "dmy")

log = logging.getLogger(__package__)  # "finnex_ml.data.files", as before the package split

_DAILY = ("prices", "market", "peers")
_ENTRY_KEYS: dict[str, tuple[str, ...]] = {
    "path": MODALITIES,
    "modality": MODALITIES,
    "date_column": MODALITIES,
    "columns": ("prices", "market", "peers", *RELEASE_KINDS),
    "frequency": (*_DAILY, *RELEASE_KINDS),
    "release_lag_days": RELEASE_KINDS,
    "release_column": RELEASE_KINDS,
    "vintage_column": RELEASE_KINDS,
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
    vintage_column: str | None = None  # ALFRED realtime_start: each row's vintage date (found by name when None)
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
    if raw.get("release_column") is not None and raw.get("vintage_column") is not None:
        raise ConfigError(
            f"{where}: release_column and vintage_column both give the release date of each row; give one"
        )
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
        vintage_column=_opt_str(raw, "vintage_column", where),
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


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def _sanitise(name: str) -> str:
    return _norm(name)
