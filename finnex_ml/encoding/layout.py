"""The mega-image layout: one declarative, JSON-serialisable spec read by encoder, decoder and QA.

Geometry (from ``shared/spec/mega-image-construction.md``)
-----------------------------------------------------------
* image: float32 in [0, 1], shape (512, 512, 3) = (rows, columns, channels);
* channels: 0 RED sentiment/behavioural, 1 GREEN price/technical, 2 BLUE macro/fundamental;
* row sections: 0-170 macro (171 rows), 171-341 behavioural+technical (171 rows),
  342-511 fundamental+competitive (170 rows);
* a *tile* is one (section, channel, column block). The spec only splits RED x middle into
  column blocks (0-170 news, 171-341 social, 342-511 historical sentiment), so that cell has
  three tiles and every other section x channel cell is one full-width tile: 11 tiles in all.

Inside a tile (a heatmap)
-------------------------
* rows: the tile's features in order, each an equal band of rows. With ``H`` rows and ``n``
  features every band has ``H // n`` rows and the first ``H % n`` bands get one extra row, so
  all rows are used and bands differ by at most one row. A tile with no features is *empty*:
  all its pixels hold ``fill_value`` and are marked unused (-1) in the pixel lookup.
* columns: the last ``sessions`` (L) trading sessions up to the image date t, oldest on the left,
  newest (t itself, lag 0) on the right. Each session is an equal band of
  ``px_per_session = width // L`` pixel columns, right-aligned in the tile; the
  ``width - L * px_per_session`` left-most columns are unused (``fill_value``, lookup -1).

Why L = 56 by default: one L for every tile keeps the decoded window a plain ``[L, F]`` array
(every feature has the same history, temporal QA is one rule). 56 is the largest L at which the
narrowest tiles (the 170/171-px sentiment blocks) still get 3 px per session (56 x 3 = 168);
full-width tiles then get 9 px per session (56 x 9 = 504), so at most 8 of 512 columns are unused.
L = 64 would fit the full width exactly (8 px) but leave the sentiment blocks 2 px per session
(128 of 171 columns used). Equal widths within a tile keep "one session older" a fixed pixel shift,
which is what a convolution can exploit.

Feature-to-tile assignment
--------------------------
``assignment`` maps tile name to a list of feature names or ``fnmatch`` glob patterns. A feature
goes to the tile whose matching pattern is the *most specific*: an exact name beats any glob, and
among globs the one with more literal (non-wildcard) characters wins (``price__rvol_*`` beats
``price__*``). Two different tiles tying for a feature is an error. Within a tile, features are
ordered by the index of the pattern that placed them, then by their order in the table.
Every feature must land in a tile, else :class:`~finnex_ml.errors.ConfigError` lists the
unassigned ones (or, with ``allow_unassigned=True``, they are left out of the spec and listed
under ``unassigned``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from finnex_ml.errors import ConfigError
from finnex_ml.geometry import CHANNEL_NAMES, CHANNELS, HEIGHT, SECTIONS, WIDTH

SPEC_VERSION = 1
DEFAULT_SESSIONS = 56
DEFAULT_FILL = 0.0  # unused pixels (padding columns, empty tiles)

CHANNEL_DESCRIPTIONS = (
    "RED: sentiment and behavioural psychology",
    "GREEN: price action and technical indicators",
    "BLUE: macro-economic and fundamental data",
)

# (tile name, section, channel, first column, end column exclusive, description)
TILES: tuple[tuple[str, str, int, int, int, str], ...] = (
    (
        "macro.red",
        "macro",
        0,
        0,
        WIDTH,
        "macro sentiment: fear/greed regime (VIX, realised-minus-implied, credit spread)",
    ),
    ("macro.green", "macro", 1, 0, WIDTH, "rates, market and sector momentum"),
    ("macro.blue", "macro", 2, 0, WIDTH, "economic calendar / FRED-like monthly series, factor returns, yields"),
    ("behavioral.red.news", "behavioral", 0, 0, 171, "news sentiment"),
    ("behavioral.red.social", "behavioral", 0, 171, 342, "social-media sentiment"),
    ("behavioral.red.historical", "behavioral", 0, 342, WIDTH, "historical sentiment context"),
    ("behavioral.green", "behavioral", 1, 0, WIDTH, "price action (OHLCV) and technical indicators"),
    ("behavioral.blue", "behavioral", 2, 0, WIDTH, "options flow and volatility regime"),
    ("fundamental.red", "fundamental", 0, 0, WIDTH, "management tone and analyst ratings"),
    ("fundamental.green", "fundamental", 1, 0, WIDTH, "revenue/earnings growth and margin trends"),
    ("fundamental.blue", "fundamental", 2, 0, WIDTH, "valuation yields, balance sheet, competitive position (peers)"),
)

DEFAULT_ASSIGNMENT: dict[str, list[str]] = {
    # macro__control_*: the positive control's second series (finnex_ml.data.synthetic)
    "macro.red": ["macro__vix", "macro__vix_*", "macro__rvol_minus_vix", "macro__credit_spread", "macro__control_*"],
    "macro.green": [
        "macro__rate_*",
        "macro__term_spread*",
        "macro__market_index*",
        "macro__sector_etf*",
        "macro__beta_*",
        "macro__rel_strength_*",
    ],
    # everything else in macro: monthly FRED-like series (cpi, unemployment, pmi), corporate
    # yields, Fama-French factors, commodities
    "macro.blue": ["macro__*"],
    "behavioral.red.news": ["news__*"],
    "behavioral.red.social": ["social__*"],
    "behavioral.red.historical": ["sentiment__*"],
    "behavioral.green": ["price__*"],
    "behavioral.blue": [
        "market__*",
        "price__rvol_*",
        "price__vol_ratio_*",
        "price__parkinson_*",
        "price__garman_klass_*",
        "price__atr_*",
        "price__bb_width_*",
        "price__range_hl",
    ],
    "fundamental.red": ["fundamental__analyst_rating*", "fundamental__mgmt_tone*"],
    "fundamental.green": [
        "fundamental__revenue*",
        "fundamental__eps*",
        "fundamental__gross_margin*",
        "fundamental__op_margin*",
        "fundamental__free_cash_flow*",
    ],
    "fundamental.blue": [
        "fundamental__earnings_yield",
        "fundamental__sales_yield",
        "fundamental__fcf_yield",
        "fundamental__debt_to_equity*",
        "fundamental__shares_out*",
        "fundamental__*",
        "peer__*",
    ],
}


@dataclass(frozen=True)
class Section:
    name: str
    row0: int
    row1: int  # exclusive
    description: str = ""

    @property
    def height(self) -> int:
        return self.row1 - self.row0


@dataclass(frozen=True)
class Tile:
    name: str
    section: str
    channel: int
    col0: int
    col1: int  # exclusive
    px_per_session: int
    sessions: int  # L, the same for every tile (LayoutSpec.sessions)
    features: tuple[str, ...]
    row_bands: tuple[tuple[int, int], ...]  # absolute image rows [r0, r1) per feature
    description: str = ""

    @property
    def width(self) -> int:
        return self.col1 - self.col0

    @property
    def empty(self) -> bool:
        return not self.features

    @property
    def used_col0(self) -> int:
        """First used column: sessions are right-aligned, the left remainder is padding."""
        return self.col1 - self.sessions * self.px_per_session

    def session_cols(self, lag: int) -> tuple[int, int]:
        """Pixel columns [x0, x1) of the session ``lag`` sessions before the image date."""
        if not 0 <= lag < self.sessions:
            raise ValueError(f"lag {lag} outside 0..{self.sessions - 1}")
        x1 = self.col1 - lag * self.px_per_session
        return x1 - self.px_per_session, x1


@dataclass(frozen=True)
class LayoutSpec:
    sessions: int
    sections: tuple[Section, ...]
    tiles: tuple[Tile, ...]
    features: tuple[str, ...]  # window column order: decode() returns [sessions, len(features)]
    unassigned: tuple[str, ...] = ()
    fill_value: float = DEFAULT_FILL
    height: int = HEIGHT
    width: int = WIDTH
    channels: int = CHANNELS
    version: int = SPEC_VERSION
    channel_names: tuple[str, ...] = CHANNEL_NAMES
    channel_descriptions: tuple[str, ...] = CHANNEL_DESCRIPTIONS

    # ---- derived lookups -------------------------------------------------------------
    @cached_property
    def feature_index(self) -> dict[str, int]:
        return {f: i for i, f in enumerate(self.features)}

    @cached_property
    def tile_of(self) -> dict[str, str]:
        return {f: t.name for t in self.tiles for f in t.features}

    def tile(self, name: str) -> Tile:
        for t in self.tiles:
            if t.name == name:
                return t
        raise KeyError(name)

    def section(self, name: str) -> Section:
        for s in self.sections:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    # ---- serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "shape": [self.height, self.width, self.channels],
            "dtype": "float32",
            "value_range": [0.0, 1.0],
            "sessions": self.sessions,
            "time_axis": "columns; oldest session left, newest (lag 0 = image date) right; "
            "sessions right-aligned in each tile, left remainder columns unused",
            "row_bands": "equal bands per feature; the first (rows % n_features) bands get one extra row",
            "fill_value": self.fill_value,
            "channels": [
                {"index": i, "name": n, "description": d}
                for i, (n, d) in enumerate(zip(self.channel_names, self.channel_descriptions))
            ],
            "sections": [
                {"name": s.name, "rows": [s.row0, s.row1], "description": s.description} for s in self.sections
            ],
            "tiles": [
                {
                    "name": t.name,
                    "section": t.section,
                    "channel": t.channel,
                    "cols": [t.col0, t.col1],
                    "px_per_session": t.px_per_session,
                    "used_cols": [t.used_col0, t.col1],
                    "empty": t.empty,
                    "description": t.description,
                    "features": list(t.features),
                    "row_bands": [list(b) for b in t.row_bands],
                }
                for t in self.tiles
            ],
            "features": list(self.features),
            "unassigned": list(self.unassigned),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    def spec_hash(self) -> str:
        """sha256 of the canonical JSON (sorted keys, no whitespace): stable across processes."""
        return self._hash

    @cached_property
    def _hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode("ascii")).hexdigest()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LayoutSpec:
        try:
            if d["version"] != SPEC_VERSION:
                raise ConfigError(f"layout spec version {d['version']} is not supported (expected {SPEC_VERSION})")
            h, w, c = d["shape"]
            sections = tuple(
                Section(s["name"], s["rows"][0], s["rows"][1], s.get("description", "")) for s in d["sections"]
            )
            tiles = tuple(
                Tile(
                    t["name"],
                    t["section"],
                    int(t["channel"]),
                    t["cols"][0],
                    t["cols"][1],
                    int(t["px_per_session"]),
                    int(d["sessions"]),
                    tuple(t["features"]),
                    tuple((int(a), int(b)) for a, b in t["row_bands"]),
                    t.get("description", ""),
                )
                for t in d["tiles"]
            )
            spec = cls(
                sessions=int(d["sessions"]),
                sections=sections,
                tiles=tiles,
                features=tuple(d["features"]),
                unassigned=tuple(d.get("unassigned", ())),
                fill_value=float(d["fill_value"]),
                height=h,
                width=w,
                channels=c,
                channel_names=tuple(ch["name"] for ch in d["channels"]),
                channel_descriptions=tuple(ch["description"] for ch in d["channels"]),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"malformed layout spec: {exc!r}") from exc
        validate(spec)
        return spec

    @classmethod
    def from_json(cls, text: str) -> LayoutSpec:
        return cls.from_dict(json.loads(text))


# ---- construction -----------------------------------------------------------------------


def row_bands(row0: int, row1: int, n: int) -> tuple[tuple[int, int], ...]:
    """``n`` contiguous bands covering [row0, row1); the first ``(row1-row0) % n`` get one extra row."""
    if n == 0:
        return ()
    h = row1 - row0
    if n > h:
        raise ConfigError(f"{n} features do not fit in {h} rows (at least one row each)")
    base, extra = divmod(h, n)
    out, r = [], row0
    for i in range(n):
        step = base + (1 if i < extra else 0)
        out.append((r, r + step))
        r += step
    return tuple(out)


def _literal_chars(pattern: str) -> int:
    n, i = 0, 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "[":
            j = pattern.find("]", i + 1)
            if j > 0:
                i = j + 1
                continue
        if ch not in "*?":
            n += 1
        i += 1
    return n


def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def resolve_assignment(
    feature_names: Sequence[str],
    assignment: Mapping[str, Sequence[str]],
) -> tuple[dict[str, list[str]], list[str]]:
    """Map every feature to its most specific matching tile; return (tile -> features, unassigned)."""
    tile_names = [t[0] for t in TILES]
    unknown = sorted(set(assignment) - set(tile_names))
    if unknown:
        raise ConfigError(f"assignment names unknown tile(s) {unknown}; tiles are {tile_names}")
    best: dict[str, tuple[tuple[int, int], str, int]] = {}  # feature -> (score, tile, pattern idx)
    ties: dict[str, set[str]] = {}
    for tile in tile_names:
        for p_idx, pattern in enumerate(assignment.get(tile, ())):
            if not isinstance(pattern, str) or not pattern:
                raise ConfigError(f"tile {tile!r}: pattern {pattern!r} is not a non-empty string")
            score = (0, _literal_chars(pattern)) if _is_glob(pattern) else (1, len(pattern))
            for f in feature_names:
                if not (fnmatch.fnmatchcase(f, pattern) if score[0] == 0 else f == pattern):
                    continue
                prev = best.get(f)
                if prev is None or score > prev[0]:
                    best[f] = (score, tile, p_idx)
                    ties.pop(f, None)
                elif score == prev[0] and prev[1] != tile:
                    ties.setdefault(f, {prev[1]}).add(tile)
    if ties:
        desc = "; ".join(f"{f}: {sorted(t)}" for f, t in sorted(ties.items()))
        raise ConfigError(f"ambiguous assignment, equally specific patterns in several tiles: {desc}")
    order = {f: i for i, f in enumerate(feature_names)}
    out: dict[str, list[str]] = {t: [] for t in tile_names}
    for f, (_, tile, _) in best.items():
        out[tile].append(f)
    for feats in out.values():
        feats.sort(key=lambda f: (best[f][2], order[f]))
    unassigned = [f for f in feature_names if f not in best]
    return out, unassigned


def default_assignment() -> dict[str, list[str]]:
    """:data:`DEFAULT_ASSIGNMENT` plus the ``{prefix}__*`` patterns of added modalities that
    name a tile (``finnex_ml.modalities``); the built-ins add none, so their layout is unchanged."""
    from finnex_ml.modalities import tile_patterns

    out = {t: list(p) for t, p in DEFAULT_ASSIGNMENT.items()}
    for tile, patterns in tile_patterns().items():
        if tile not in out:
            raise ConfigError(f"a modality names tile {tile!r}; tiles are {sorted(out)}")
        out[tile] += [p for p in patterns if p not in out[tile]]
    return out


def build_layout(
    feature_names: Iterable[str],
    assignment: Mapping[str, Sequence[str]] | None = None,
    *,
    sessions: int = DEFAULT_SESSIONS,
    allow_unassigned: bool = False,
    fill_value: float = DEFAULT_FILL,
) -> LayoutSpec:
    """Resolve ``assignment`` (default :func:`default_assignment`) against the actual columns.

    ``feature_names`` may include the table's meta columns (``date``, ``history_sessions``,
    ``warmup_complete``); they are ignored. ``spec.features`` keeps the table's column order.
    """
    from finnex_ml.features import META_COLUMNS

    names = [f for f in feature_names if f not in META_COLUMNS]
    if len(set(names)) != len(names):
        dup = sorted({f for f in names if names.count(f) > 1})
        raise ConfigError(f"duplicate feature names {dup}")
    if sessions < 1:
        raise ConfigError(f"sessions must be >= 1, got {sessions}")
    if not 0.0 <= fill_value <= 1.0:
        raise ConfigError(f"fill_value must lie in [0, 1], got {fill_value}")
    per_tile, unassigned = resolve_assignment(names, default_assignment() if assignment is None else assignment)
    if unassigned and not allow_unassigned:
        raise ConfigError(f"{len(unassigned)} feature(s) assigned to no tile: {unassigned}")
    sections = tuple(Section(n, r0, r1, d) for n, r0, r1, d in SECTIONS)
    sec = {s.name: s for s in sections}
    tiles = []
    for name, section, channel, c0, c1, desc in TILES:
        feats = tuple(per_tile[name])
        px = (c1 - c0) // sessions
        if px < 1:
            raise ConfigError(f"tile {name!r} is {c1 - c0} px wide: too narrow for {sessions} sessions")
        try:
            bands = row_bands(sec[section].row0, sec[section].row1, len(feats))
        except ConfigError as exc:
            raise ConfigError(f"tile {name!r}: {exc}") from exc
        tiles.append(Tile(name, section, channel, c0, c1, px, sessions, feats, bands, desc))
    assigned = {f for t in tiles for f in t.features}
    spec = LayoutSpec(
        sessions=sessions,
        sections=sections,
        tiles=tuple(tiles),
        features=tuple(f for f in names if f in assigned),
        unassigned=tuple(unassigned),
        fill_value=float(fill_value),
    )
    validate(spec)
    return spec


def validate(spec: LayoutSpec) -> None:
    """Raise ConfigError unless the spec is internally consistent (used on load from JSON)."""
    if spec.shape != (HEIGHT, WIDTH, CHANNELS):
        raise ConfigError(f"shape {spec.shape} is not {(HEIGHT, WIDTH, CHANNELS)}")
    if len(spec.channel_names) != spec.channels:
        raise ConfigError("one channel name per channel expected")
    rows = 0
    for s in spec.sections:
        if s.row0 != rows or s.row1 <= s.row0:
            raise ConfigError(f"section {s.name!r} rows [{s.row0}, {s.row1}) do not follow on at {rows}")
        rows = s.row1
    if rows != spec.height:
        raise ConfigError(f"sections cover {rows} rows, not {spec.height}")
    sec = {s.name: s for s in spec.sections}
    seen: dict[str, str] = {}
    for t in spec.tiles:
        if t.section not in sec:
            raise ConfigError(f"tile {t.name!r} names unknown section {t.section!r}")
        if not 0 <= t.channel < spec.channels or not 0 <= t.col0 < t.col1 <= spec.width:
            raise ConfigError(f"tile {t.name!r} has channel {t.channel} / cols [{t.col0}, {t.col1}) out of range")
        if t.sessions != spec.sessions or t.px_per_session != t.width // spec.sessions or t.px_per_session < 1:
            raise ConfigError(f"tile {t.name!r}: px_per_session {t.px_per_session} != {t.width} // {spec.sessions}")
        s = sec[t.section]
        if t.row_bands != row_bands(s.row0, s.row1, len(t.features)):
            raise ConfigError(f"tile {t.name!r}: row bands do not follow the equal-band rule")
        for f in t.features:
            if f in seen:
                raise ConfigError(f"feature {f!r} is in tiles {seen[f]!r} and {t.name!r}")
            seen[f] = t.name
    # tiles must not overlap on the same channel
    for i, a in enumerate(spec.tiles):
        for b in spec.tiles[i + 1 :]:
            if (
                a.channel == b.channel
                and sec[a.section].row0 < sec[b.section].row1
                and sec[b.section].row0 < sec[a.section].row1
                and a.col0 < b.col1
                and b.col0 < a.col1
            ):
                raise ConfigError(f"tiles {a.name!r} and {b.name!r} overlap")
    if set(seen) != set(spec.features) or len(spec.features) != len(set(spec.features)):
        raise ConfigError("spec.features must list each tiled feature exactly once")
    if set(spec.unassigned) & set(spec.features):
        raise ConfigError("a feature is both assigned and unassigned")
    if not 0.0 <= spec.fill_value <= 1.0:
        raise ConfigError(f"fill_value {spec.fill_value} outside [0, 1]")


def section_of_row(spec: LayoutSpec, row: int) -> str:
    for s in spec.sections:
        if s.row0 <= row < s.row1:
            return s.name
    raise ValueError(f"row {row} outside the image")


__all__ = [
    "DEFAULT_ASSIGNMENT",
    "DEFAULT_SESSIONS",
    "LayoutSpec",
    "Section",
    "Tile",
    "build_layout",
    "default_assignment",
    "resolve_assignment",
    "row_bands",
    "section_of_row",
    "validate",
]
