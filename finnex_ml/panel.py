"""Universe mode: the cross-section of tickers on every trading date.

A universe source (``finnex_ml.data.universe``) answers for each ticker as a single-stock
source does; this module turns it into the panel every later stage reads, keyed by
``(date, ticker)``:

* :func:`panel_features` runs today's single-stock pipeline (snapshots, then the feature table)
  per ticker, only on the sessions that ticker has a price, then adds cross-sectional features
  known at t (``peer__xs_*``: market-excess and sector-relative returns, the ticker's rank of
  return, volatility and dollar volume in that date's universe). A universe of one ticker gets no
  cross-sectional columns: its table is exactly today's ``daily_features``.
* :func:`image_eligibility` says which (ticker, date) pairs have the image's full history
  (``history_needed`` contiguous sessions). A newly listed ticker is in the universe (prices,
  features, labels) from its first price, and gets images once it has that history; nothing
  before its first price is imputed.
* :func:`encode_cross_sections` encodes each date's cross-section with the one layout spec,
  streaming (one buffer per ticker, never the whole range).
* :func:`panel_labels`: today's labels per ticker, plus the h-session return in excess of the
  universe's equal-weight mean and its cross-sectional tercile (``xs_class_{h}d``) on that date.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import date

import numpy as np
import polars as pl

from finnex_ml import calendar, pipeline, progress
from finnex_ml.data.base import DataSource, RawData
from finnex_ml.data.universe import MEMBER_SCHEMA, UniverseSource, ticker_source
from finnex_ml.encoding.encoder import EncodedImage, encode_dates, history_needed
from finnex_ml.encoding.layout import LayoutSpec
from finnex_ml.encoding.normalize import NormConfig
from finnex_ml.errors import DataInputError
from finnex_ml.features import HISTORY_SESSIONS
from finnex_ml.labels import LabelConfig, class_col, compute_labels, return_col

PANEL_HORIZONS: tuple[int, ...] = (1, 5, 20)
XS_QUANTILES = 3  # cross-sectional label classes: bottom / middle / top tercile of excess return
MIN_XS_TICKERS = 3  # fewer tickers with a return on a date give no cross-sectional class
PRICE_COLUMNS = ("open", "high", "low", "close", "volume")
# (feature it is built from, name stem): excess over the universe mean and over the sector mean
_XS_RETURNS = (("price__logret_1d", "ret_1d"), ("price__ret_21d", "ret_21d"))
_XS_RANKS = (("price__logret_1d", "ret_1d"), ("price__ret_21d", "ret_21d"), ("price__rvol_21d", "rvol_21d"))


class SingleStockUniverse:
    """Today's single-stock source as a universe of one ticker (its peers stay its peers). Its
    panel is exactly today's pipeline: the same feature table and image bytes (tests pin that)."""

    benchmark = "the stock itself"

    def __init__(self, source: DataSource, ticker: str, first: date, last: date, sector: str = "") -> None:
        self.source, self.ticker, self.first, self.last, self.sector = source, ticker, first, last, sector
        self.name = f"{source.name}:{ticker}"

    def members(self) -> pl.DataFrame:
        return pl.DataFrame(
            {"ticker": [self.ticker], "sector": [self.sector], "first": [self.first], "last": [self.last]},
            schema=MEMBER_SCHEMA,
        )

    def load_ticker(self, ticker: str, start: date, end: date) -> RawData:
        if ticker != self.ticker:
            raise DataInputError(f"unknown ticker {ticker!r}; this universe holds only {self.ticker!r}")
        return self.source.load(start, end)

    def oracle_scores(self, start: date, end: date, horizons: tuple[int, ...]) -> pl.DataFrame:
        raise ValueError("a single-stock universe has no cross-sectional oracle")


def excess_col(h: int) -> str:
    return f"excess_{h}d"


def xs_class_col(h: int) -> str:
    return f"xs_class_{h}d"


def _sessions_with_close(prices: pl.DataFrame, start: date) -> list[date]:
    """The sessions from ``start`` on which the ticker has a price (its listing, gaps included)."""
    return sorted(
        d for d, c in zip(prices["date"].to_list(), prices["close"].to_list()) if c is not None and d >= start
    )


def ticker_sessions(universe: UniverseSource, ticker: str, start: date, end: date) -> list[date]:
    """The sessions in [start, end] on which ``ticker`` has a price (its listing, gaps included)."""
    return _sessions_with_close(universe.load_ticker(ticker, start, end).prices, start)


class _Preloaded:
    """A ticker's source loaded once for ``window``: the snapshots ask for exactly that window
    unless the ticker lists inside the range (then they load their own, shorter one)."""

    def __init__(self, source: DataSource, window: tuple[date, date]) -> None:
        self.source, self.window, self.name = source, window, source.name
        self.raw = source.load(*window)

    def load(self, start: date, end: date) -> RawData:
        return self.raw if (start, end) == self.window else self.source.load(start, end)


def _price_rows(frame: pl.DataFrame, ticker: str, sector: str) -> pl.DataFrame:
    return frame.select(
        "date",
        pl.lit(ticker).alias("ticker"),
        pl.lit(sector).alias("sector"),
        *[pl.col(c).cast(pl.Float64) for c in PRICE_COLUMNS],
    )


def panel_prices(universe: UniverseSource, start: date, end: date) -> pl.DataFrame:
    """date, ticker, sector and OHLCV for every ticker's sessions with a close in [start, end]."""
    members = universe.members()
    frames = []
    for tk, sector in zip(members["ticker"].to_list(), members["sector"].to_list()):
        p = universe.load_ticker(tk, start, end).prices.filter(pl.col("close").is_not_null())
        if p.height:
            frames.append(_price_rows(p, tk, sector))
    if not frames:
        raise DataInputError(f"universe {universe.name!r} has no price between {start} and {end}", date=str(start))
    return pl.concat(frames).sort("date", "ticker")


def panel_features(
    universe: UniverseSource, asof: Sequence[date], log: Callable[[str], None] | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``(prices, features)`` for every ticker trading on each date of ``asof``.

    ``prices``: date, ticker, sector, open, high, low, close, volume (the membership record: one
    row per ticker that traded that date). ``features``: date, ticker, today's feature columns
    and, with two or more tickers, the ``peer__xs_*`` columns. Rows sorted by date, ticker.
    ``log`` gets progress lines (tickers done, rate, ETA).
    """
    asof = sorted(asof)
    members = universe.members()
    price_frames, feature_frames = [], []
    window = (calendar.sessions_back(asof[0], HISTORY_SESSIONS), asof[-1])  # what the snapshots of asof load
    rows = list(zip(members["ticker"].to_list(), members["sector"].to_list()))
    for tk, sector in progress.track(rows, "universe_features", unit="tickers", log=log):
        source = _Preloaded(ticker_source(universe, tk), window)
        have = set(_sessions_with_close(source.raw.prices, asof[0]))
        days = [d for d in asof if d in have]
        if not days:
            continue
        snaps, _ = pipeline.modality_snapshots(source, days)
        table = pipeline.daily_features_from_snapshots(snaps)
        feature_frames.append(table.with_columns(pl.lit(tk).alias("ticker")))
        market = snaps["market_data"].filter(pl.col("date") == pl.col("asof"))
        price_frames.append(_price_rows(market, tk, sector))
    if not feature_frames:
        raise DataInputError(
            f"universe {universe.name!r} has no ticker with a price between {asof[0]} and {asof[-1]}",
            date=asof[0].isoformat(),
        )
    prices = pl.concat(price_frames).sort("date", "ticker")
    features = pl.concat(feature_frames, how="diagonal_relaxed")
    # the union of every ticker's columns (one layout for all): a ticker without, say, fundamentals
    # gets nulls there, which the images record as missing
    union = dict.fromkeys(c for f in feature_frames for c in f.columns if c not in ("date", "ticker"))
    features = features.select("date", "ticker", *union).sort("date", "ticker")
    if members.height > 1:
        features = add_cross_sectional(features, prices)
    return prices, features


def _pct_rank(col: str) -> pl.Expr:
    """Rank in [0, 1] within the date (average ties); null stays null; one value ranks 0.5."""
    r = pl.col(col).rank("average").over("date")
    n = pl.col(col).count().over("date")
    return pl.when(n > 1).then((r - 1) / (n - 1)).otherwise(pl.when(n == 1).then(0.5))


def add_cross_sectional(features: pl.DataFrame, prices: pl.DataFrame) -> pl.DataFrame:
    """The ``peer__xs_*`` columns: each from date-t values of that date's universe only."""
    frame = features.join(
        prices.select("date", "ticker", "sector", (pl.col("close") * pl.col("volume")).log().alias("_dollar_volume")),
        on=["date", "ticker"],
        how="left",
    )
    exprs = []
    for src, stem in _XS_RETURNS:
        exprs += [
            (pl.col(src) - pl.col(src).mean().over("date")).alias(f"peer__xs_excess_{stem}"),
            (pl.col(src) - pl.col(src).mean().over("date", "sector")).alias(f"peer__xs_sector_rel_{stem}"),
        ]
    exprs += [_pct_rank(src).alias(f"peer__xs_rank_{stem}") for src, stem in _XS_RANKS]
    exprs.append(_pct_rank("_dollar_volume").alias("peer__xs_rank_dollar_volume"))
    return frame.with_columns(*[e.cast(pl.Float64) for e in exprs]).drop("sector", "_dollar_volume")


def image_eligibility(features: pl.DataFrame, dates: Sequence[date], need: int) -> dict[date, list[str]]:
    """Per date of ``dates``: the tickers whose table holds ``need`` contiguous sessions ending
    at that date (what the encoder needs), sorted."""
    wanted = set(dates)
    out: dict[date, list[str]] = {d: [] for d in sorted(wanted)}
    cal = calendar.sessions(features["date"].min(), features["date"].max())
    pos = {d: i for i, d in enumerate(cal)}
    for (tk,), part in features.select("date", "ticker").group_by("ticker", maintain_order=True):
        idx = np.array([pos[d] for d in part["date"].to_list()])
        ds = part["date"].to_list()
        for i, d in enumerate(ds):
            if d in wanted and i + 1 >= need and idx[i] - idx[i - need + 1] == need - 1:
                out[d].append(tk)
    return {d: sorted(v) for d, v in out.items()}


def encode_cross_sections(
    features: pl.DataFrame, dates: Sequence[date], spec: LayoutSpec, norm: NormConfig
) -> Iterator[tuple[date, list[tuple[str, EncodedImage]]]]:
    """Yield ``(date, [(ticker, image), ...])`` in date order, tickers sorted, for every eligible
    pair. Each image is overwritten when its ticker's next date is encoded: consume a date's
    cross-section before asking for the next."""
    elig = image_eligibility(features, dates, history_needed(spec, norm))
    per_ticker: dict[str, list[date]] = {}
    for d, tks in elig.items():
        for tk in tks:
            per_ticker.setdefault(tk, []).append(d)
    tables = features.partition_by("ticker", as_dict=True, include_key=False)  # one pass, not one filter per ticker
    streams = {
        tk: encode_dates(tables[(tk,)].sort("date"), ds, spec, norm, reuse_buffer=True)
        for tk, ds in sorted(per_ticker.items())
    }
    for d in sorted(elig):
        yield d, [(tk, next(streams[tk])) for tk in elig[d]]


def panel_labels(prices: pl.DataFrame, dates: Sequence[date], cfg: LabelConfig | None = None) -> pl.DataFrame:
    """Labels per (date, ticker) for the tickers trading on ``dates``: today's columns per ticker
    (horizons count NYSE sessions, so a delisted ticker's label past its last price is null),
    plus ``excess_{h}d`` (return minus that date's equal-weight universe mean over tickers with a
    return) and ``xs_class_{h}d`` (its tercile within the date: 0 bottom, 1 middle, 2 top; ties
    broken by ticker; null with fewer than MIN_XS_TICKERS returns)."""
    cfg = cfg or LabelConfig(horizons=PANEL_HORIZONS)
    wanted = set(dates)
    sessions = calendar.sessions(
        prices["date"].min(), calendar.sessions_forward(prices["date"].max(), max(cfg.horizons))
    )
    frames = []
    for (tk,), part in prices.group_by("ticker", maintain_order=True):
        days = [d for d in part["date"].to_list() if d in wanted]
        if days:
            lab = compute_labels(part.select("date", "close"), days, cfg, sessions=sessions)
            frames.append(lab.with_columns(pl.lit(tk).alias("ticker")))
    if not frames:
        raise DataInputError("no ticker has a price on the requested label dates", date=str(min(dates)))
    table = pl.concat(frames).sort("date", "ticker")
    out = []
    for h in cfg.horizons:
        ret = pl.col(return_col(h))
        n = ret.count().over("date")
        rank = ret.rank("ordinal").over("date")
        out += [
            (ret - ret.mean().over("date")).alias(excess_col(h)),
            pl.when(ret.is_not_null() & (n >= MIN_XS_TICKERS))
            .then(((rank - 1) * XS_QUANTILES // n).cast(pl.Int8))
            .alias(xs_class_col(h)),
        ]
    return table.with_columns(out).select(
        "date",
        "ticker",
        *[c for c in table.columns if c not in ("date", "ticker")],
        *[e.meta.output_name() for e in out],
    )


__all__ = [
    "PANEL_HORIZONS",
    "SingleStockUniverse",
    "add_cross_sectional",
    "class_col",
    "encode_cross_sections",
    "excess_col",
    "image_eligibility",
    "panel_features",
    "panel_labels",
    "xs_class_col",
]
