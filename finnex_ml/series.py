"""Series identity: which ticker's data on which trading date.

Today's pipeline images one stock, so a date alone has named a series everywhere. ``SeriesKey``
names the (ticker, date) pair explicitly, so stores, labels and patches can address a universe
later without another change of vocabulary. The single-stock pipeline is the universe of one
ticker, ``DEFAULT_TICKER``: a plain date (or ISO string) given where a key is expected means that
series, and its paths and bytes are exactly those of the date-only code.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from finnex_ml.errors import ConfigError

# The single stock's series. Never written to disk: single-stock paths carry only the date.
DEFAULT_TICKER = "TARGET"


@dataclass(frozen=True, order=True)
class SeriesKey:
    """One ticker on one trading date; ordered by ticker, then date."""

    ticker: str
    date: dt.date

    def __post_init__(self) -> None:
        if not isinstance(self.ticker, str) or not self.ticker.strip():
            raise ConfigError(f"SeriesKey: ticker must be a non-empty string, got {self.ticker!r}")
        if isinstance(self.date, dt.datetime) or not isinstance(self.date, dt.date):
            raise ConfigError(f"SeriesKey({self.ticker!r}, ...): date must be a datetime.date, got {self.date!r}")

    @classmethod
    def of(cls, value: SeriesKey | dt.date | str, ticker: str = DEFAULT_TICKER) -> SeriesKey:
        """``value`` as a key: a key unchanged, a date or ISO date string as ``ticker``'s series."""
        if isinstance(value, SeriesKey):
            return value
        if isinstance(value, str):
            try:
                value = dt.date.fromisoformat(value)
            except ValueError as exc:
                raise ConfigError(f"{value!r} is not an ISO date YYYY-MM-DD (a series key needs one)") from exc
        return cls(ticker, value)

    @property
    def is_default(self) -> bool:
        """Whether this is the single-stock series."""
        return self.ticker == DEFAULT_TICKER

    @property
    def partition_key(self) -> str:
        """The Dagster partition this key falls in: its date (tickers are never a partition dimension)."""
        return self.date.isoformat()

    def __str__(self) -> str:
        return f"{self.ticker}@{self.date.isoformat()}"


def series_keys(values: Iterable[SeriesKey | dt.date | str], ticker: str = DEFAULT_TICKER) -> list[SeriesKey]:
    """Each of ``values`` as a key (dates as ``ticker``'s series), in the given order."""
    return [SeriesKey.of(v, ticker) for v in values]


def single_date(value: SeriesKey | dt.date | str, where: str = "the single-stock store") -> dt.date:
    """The date of a key of the single-stock series; a key of another ticker is a ConfigError
    (single-stock files hold one series: another ticker's data belongs in the universe stores)."""
    key = SeriesKey.of(value)
    if not key.is_default:
        raise ConfigError(
            f"{where} holds only the single-stock series {DEFAULT_TICKER!r}, not {key}; "
            "address other tickers through the universe store (finnex_ml.storage.UniverseStore)"
        )
    return key.date
