"""The one interface every data source implements, and the canonical raw tables it returns.

A source answers ``load(start, end)`` with everything *published* up to ``end``'s close and
reaching back to ``start``. All timestamps say when a value became known, so the
point-in-time alignment downstream never needs to trust the source about leakage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Protocol

import polars as pl

# Canonical schemas. Every source returns exactly these columns (extra market columns allowed).
PRICE_SCHEMA = {
    "date": pl.Date,
    "open": pl.Float64,
    "high": pl.Float64,
    "low": pl.Float64,
    "close": pl.Float64,
    "volume": pl.Float64,
}
PEER_SCHEMA = {"date": pl.Date, "ticker": pl.String, "close": pl.Float64, "volume": pl.Float64}
TEXT_SCHEMA = {"published_at": pl.Datetime("us", "UTC"), "source": pl.String, "text": pl.String}
# One row per published observation of a lower-frequency (or daily) series.
# ``released`` is the date the value became public: it enters the feature table on that session.
RELEASE_SCHEMA = {
    "modality": pl.String,  # macro | fundamental | sentiment | market
    "series": pl.String,
    "period_end": pl.Date,
    "released": pl.Date,
    "value": pl.Float64,
}
TEXT_SOURCES = ("news", "social")
RELEASE_MODALITIES = ("macro", "fundamental", "sentiment", "market")


@dataclass(frozen=True)
class RawData:
    """Everything a source knows for a window, in canonical form."""

    prices: pl.DataFrame  # PRICE_SCHEMA, one row per session, plus optional ``market__*`` columns
    peers: pl.DataFrame  # PEER_SCHEMA, long
    texts: pl.DataFrame  # TEXT_SCHEMA
    releases: pl.DataFrame  # RELEASE_SCHEMA
    provenance: dict[str, str] = field(default_factory=dict)  # modality -> origin

    def __post_init__(self) -> None:
        for name, schema in (
            ("prices", PRICE_SCHEMA),
            ("peers", PEER_SCHEMA),
            ("texts", TEXT_SCHEMA),
            ("releases", RELEASE_SCHEMA),
        ):
            frame: pl.DataFrame = getattr(self, name)
            for col, dtype in schema.items():
                if col not in frame.columns:
                    raise TypeError(f"RawData.{name} lacks column {col!r}")
                if frame.schema[col] != dtype:
                    raise TypeError(f"RawData.{name}.{col} is {frame.schema[col]}, expected {dtype}")


class DataSource(Protocol):
    """What the Dagster resource hands to assets. Implementations must be deterministic."""

    name: str

    def load(self, start: date, end: date) -> RawData:
        """Return data observed in [start, end] and published no later than ``end``'s close."""
        ...


def empty_frame(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)
