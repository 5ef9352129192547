"""The modality table: one entry per kind of input data, which everything that handles modalities
iterates over (snapshots in ``pipeline``, the ingestion multi-asset, ``daily_features``, the
staleness rule of ``schemas``, the CLI's feature stage, the synthetic flags in asset metadata).

A modality is its name, its ingestion asset, the feature-column prefixes it feeds, how long a
carried-forward value of it may age, its provenance key, which sources generate it rather than
observe it, and two hooks:

* ``load(source, raw, sessions)``: its per-session table (a ``date`` column plus raw columns,
  each value known at that session's close) from the source's window; the parser;
* ``features(snapshots)``: its feature columns from its trailing snapshots (``asof``, ``date``,
  raw columns), one row per ``asof`` as ``date`` plus ``{prefix}__*`` columns, from data up to
  ``asof`` only. The five built-in modalities leave it ``None``: their features are computed
  together (they share inputs, e.g. the close in every cross-feature) by
  ``features.build_daily_features``.

Adding one is one entry (``register_modality``) plus its parser and features; with ``tile`` set,
the default tile layout places its ``{prefix}__*`` columns in that tile.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

from finnex_ml.errors import ConfigError

if TYPE_CHECKING:  # polars only where a hook runs: the CLI reads this table at start-up
    import polars as pl

    from finnex_ml.data.base import DataSource, RawData

DAILY_STALENESS_LIMIT = 10  # days; the limit of any *_age column whose group no modality claims

Loader = Callable[["DataSource", "RawData", list[date]], "pl.DataFrame"]
FeatureHook = Callable[["pl.DataFrame"], "pl.DataFrame"]


@dataclass(frozen=True)
class Modality:
    name: str  # short name ("macro")
    asset: str  # its ingestion asset ("macro_data")
    prefixes: tuple[str, ...]  # the feature groups (column prefixes before "__") it feeds
    provenance: str  # its key in RawData.provenance
    description: str
    load: Loader
    staleness_limit: int = DAILY_STALENESS_LIMIT  # days a carried-forward value may age (its *_age columns)
    generated_by: tuple[str, ...] = ()  # source kinds on which it is synthetic, not observed
    features: FeatureHook | None = None  # None: part of features.build_daily_features (the built-ins)
    tile: str = ""  # default tile layout: the tile of its {prefix}__* columns ("" for the built-ins)

    @property
    def prefix(self) -> str:
        return self.prefixes[0]


def _market(source: DataSource, raw: RawData, sessions: list[date]) -> pl.DataFrame:
    return raw.prices.sort("date")


def _peers(source: DataSource, raw: RawData, sessions: list[date]) -> pl.DataFrame:
    return raw.peers.sort("date", "ticker")


def _sentiment(source: DataSource, raw: RawData, sessions: list[date]) -> pl.DataFrame:
    from finnex_ml.alignment import align_releases
    from finnex_ml.sentiment import daily_sentiment

    # text aggregates plus any pre-scored sentiment series (e.g. a survey), as of release
    return daily_sentiment(raw.texts, sessions).join(
        align_releases(raw.releases, sessions, "sentiment"), on="date", how="left"
    )


def _releases(modality: str) -> Loader:
    def load(source: DataSource, raw: RawData, sessions: list[date]) -> pl.DataFrame:
        from finnex_ml.alignment import align_releases

        return align_releases(raw.releases, sessions, modality)

    return load


_BUILTIN = (
    Modality(
        "market",
        "market_data",
        ("price", "market"),
        "prices",
        "Target stock OHLCV (plus any market__* columns), trailing window per date.",
        _market,
        10,
        ("synthetic",),
    ),
    Modality(
        "peer",
        "peer_data",
        ("peer",),
        "peers",
        "Peer closes and volumes (long: ticker column), trailing window per date.",
        _peers,
        DAILY_STALENESS_LIMIT,
        ("synthetic",),
    ),
    Modality(
        "sentiment",
        "sentiment_data",
        ("news", "social", "sentiment"),
        "texts",
        "VADER sentiment of dated news and social texts per session and source.",
        _sentiment,
        10,
        ("synthetic", "packaged"),
    ),
    Modality(
        "macro",
        "macro_data",
        ("macro",),
        "macro",
        "Macro series aligned on release dates with age in days, carried forward.",
        _releases("macro"),
        100,
        ("synthetic",),
    ),
    Modality(
        "fundamental",
        "fundamental_data",
        ("fundamental",),
        "fundamental",
        "Fundamentals aligned on filing dates with age, yoy and TTM, carried forward.",
        _releases("fundamental"),
        140,
        ("synthetic", "packaged"),
    ),
)
BUILTIN_ASSETS: tuple[str, ...] = tuple(m.asset for m in _BUILTIN)

# name -> entry, in registration order (the order of ingestion outputs and feature joins)
MODALITIES: dict[str, Modality] = {m.name: m for m in _BUILTIN}


def register_modality(modality: Modality) -> Modality:
    """Add a modality (it needs a ``features`` hook: the built-in feature code knows only the
    built-ins). Its assets appear in ingestion and daily_features built after this call
    (``finnex_assets.assets.ingestion.modalities_asset`` / ``features.daily_features_asset``)."""
    if modality.name in MODALITIES:
        raise ConfigError(f"modality {modality.name!r} is already registered")
    taken = {p: m.name for m in MODALITIES.values() for p in m.prefixes}
    clash = [p for p in modality.prefixes if p in taken]
    if clash:
        raise ConfigError(f"modality {modality.name!r}: prefix {clash[0]!r} already belongs to {taken[clash[0]]!r}")
    if any(m.asset == modality.asset for m in MODALITIES.values()) or modality.asset == "daily_features":
        raise ConfigError(f"modality {modality.name!r}: asset name {modality.asset!r} is taken")
    if not modality.prefixes or any(not p.isidentifier() or "__" in p for p in modality.prefixes):
        raise ConfigError(f"modality {modality.name!r}: prefixes {modality.prefixes} must be identifiers without '__'")
    if modality.features is None:
        raise ConfigError(
            f"modality {modality.name!r} needs a features hook (snapshots -> date + {{prefix}}__* columns)"
        )
    MODALITIES[modality.name] = modality
    return modality


def unregister_modality(name: str) -> None:
    """Remove an added modality (tests); the built-ins stay."""
    if name in {m.name for m in _BUILTIN}:
        raise ConfigError(f"modality {name!r} is built in")
    MODALITIES.pop(name, None)


def current() -> tuple[Modality, ...]:
    return tuple(MODALITIES.values())


def asset_names(mods: tuple[Modality, ...] | None = None) -> tuple[str, ...]:
    return tuple(m.asset for m in (current() if mods is None else mods))


def staleness_limits() -> dict[str, int]:
    """Feature group (column prefix) -> the days its carried-forward values may age."""
    return {p: m.staleness_limit for m in MODALITIES.values() for p in m.prefixes}


def tile_patterns() -> dict[str, list[str]]:
    """Tile -> ``{prefix}__*`` patterns of the modalities that name a tile (added to the default layout)."""
    out: dict[str, list[str]] = {}
    for m in MODALITIES.values():
        if m.tile:
            out.setdefault(m.tile, []).extend(f"{p}__*" for p in m.prefixes)
    return out


def extra_features(mod: Modality, snapshots: pl.DataFrame) -> pl.DataFrame:
    """``mod.features`` of its snapshots, checked: a ``date`` column, one row per asof, and only
    ``{prefix}__*`` columns cast to Float64 (a ConfigError names the modality and the column)."""
    import polars as pl

    assert mod.features is not None
    frame = mod.features(snapshots)
    if "date" not in frame.columns or frame.schema["date"] != pl.Date:
        raise ConfigError(f"modality {mod.name!r}: its features hook must return a pl.Date 'date' column")
    bad = [c for c in frame.columns if c != "date" and not any(c.startswith(f"{p}__") for p in mod.prefixes)]
    if bad:
        raise ConfigError(
            f"modality {mod.name!r}: feature column {bad[0]!r} lacks its prefix "
            f"({', '.join(p + '__' for p in mod.prefixes)}); rename it"
        )
    if frame["date"].n_unique() != frame.height:
        raise ConfigError(f"modality {mod.name!r}: its features hook returned more than one row for a date")
    return frame.select("date", *[pl.col(c).cast(pl.Float64) for c in sorted(frame.columns) if c != "date"])


__all__ = [
    "BUILTIN_ASSETS",
    "DAILY_STALENESS_LIMIT",
    "MODALITIES",
    "Modality",
    "asset_names",
    "current",
    "extra_features",
    "register_modality",
    "staleness_limits",
    "tile_patterns",
    "unregister_modality",
]
