"""Universe sources: many tickers, each loadable as a single-stock :class:`RawData`.

A universe answers three questions: which tickers exist and when each had a price
(:meth:`UniverseSource.members`, delisted ones included, so there is no survivorship bias),
what one ticker looked like over a window (:meth:`UniverseSource.load_ticker`, same contract as
``DataSource.load``: everything published up to ``end``'s close), and, for a synthetic universe
with a planted cross-sectional rule, what an oracle would expect (:meth:`UniverseSource.oracle_scores`).
:func:`ticker_source` wraps one ticker as a plain ``DataSource`` so the single-stock pipeline
(``finnex_ml.pipeline.modality_snapshots``) runs per ticker unchanged.

Three universes (the third, ``files``, lives in :mod:`finnex_ml.data.files_universe`: the
user's own CSV / Parquet exports, many tickers per mapping):

- :class:`SyntheticUniverse`: a seeded factor model on the same fixed session grid as
  ``synthetic.py`` (from ``EPOCH``), so a value on a date never depends on the requested window.
  Log return of ticker i = alpha_i + beta_i * market + gamma_i * sector_s(i) + idiosyncratic_i.
  The market factor (and its regimes) is the synthetic world's market, so the shared macro
  (``market_index``, ``vix`` ...) is exactly ``SyntheticSource``'s; each sector has its own GARCH
  factor; each ticker has GARCH(1,1) Student-t idiosyncratic noise, a latent AR(1) mood that its
  news and social posts express (and that leads its next-day idiosyncratic return a little, as in
  ``synthetic.py``), quarterly fundamentals with ``synthetic.py``'s series names, and listing /
  delisting events. Everything for a ticker is simulated lazily from streams keyed by
  (seed, stream, ticker index), so ``members()`` and one ``load_ticker`` are cheap even for
  hundreds of tickers.
- :class:`PackagedPanel`: the 20-stock S&P 500 panel that ships with skfolio (adjusted closes,
  1990-2022; open/high/low/volume are missing and stay null), GICS sectors, and the same
  ``arch.data`` macro as ``PackagedSource`` (daily series end in 2018; prices run to 2022). No
  texts, no fundamentals. The panel itself is survivorship-biased (20 large caps still listed in
  2022, all with prices from the calendar's first session 1995-01-03); members() reports it as is.
  With closes only, the OHLV-based features are null and the feature table's warm-up never
  completes (its depth counts every raw input, open/high/low/volume included).

Listing events (synthetic): round(15 %) of tickers list and round(10 %) delist (at least one of
each from 4 tickers); the first listing and the first delisting fall inside the default synthetic
range (2024), the rest one per equal stratum of 2015-2026. Tickers without a listing event start
at the grid's first session; without a delisting they run to the calendar's last session.

Planted cross-sectional signal (:class:`CrossSectionalSignal`, off by default): each ticker gets
an i.i.d. N(0, 1) price-frame column ``market__control_a``; z_i(t) is control_a_i(t) minus its
mean over the tickers listed at t; ticker i's next-session log return becomes
``strength * 0.015 * z_i(t) + sqrt(1 - strength^2) * r_i(t+1)``. The planted part has no market
component (it sums to zero over the cross-section at t).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import lru_cache
from typing import Any, Protocol

import numpy as np
import polars as pl

from finnex_ml import calendar
from finnex_ml.data.base import PEER_SCHEMA, PRICE_SCHEMA, RELEASE_SCHEMA, TEXT_SCHEMA, DataSource, RawData
from finnex_ml.data.synthetic import (
    _NEGATIVE,
    _NEUTRAL,
    _POSITIVE,
    EPOCH,
    GRID,
    PLANT_SCALE,
    SyntheticSource,
    _month_ends,
    _session_on_or_after,
    _shift_years,
    _world,
)
from finnex_ml.errors import ConfigError, DataInputError

MEMBER_SCHEMA = {"ticker": pl.String, "sector": pl.String, "first": pl.Date, "last": pl.Date}
UNIVERSE_KINDS = ("synthetic", "packaged-panel", "files")
# files: the example mapping (examples/files_universe/mapping.yaml) after the images' 307-session lookback
DEFAULT_UNIVERSE_RANGE = {
    "synthetic": ("2024-01-02", "2024-12-31"),
    # images from the first session with 307 sessions of features inside the partitions (from 2014-01-02) to
    # the last with a 5-session label before skfolio's panel ends (2022-12-28): a first training window to
    # 2016, then six walk-forward test years 2017-2022
    "packaged-panel": ("2015-03-23", "2022-12-16"),
    "files": ("2024-03-22", "2024-09-04"),
}


class UniverseSource(Protocol):
    """Many tickers, each loadable as a single-stock RawData (module docstring)."""

    name: str
    benchmark: str

    def members(self) -> pl.DataFrame:
        """MEMBER_SCHEMA, one row per ticker sorted by ticker: sector and listing span (delisted included)."""
        ...

    def load_ticker(self, ticker: str, start: date, end: date) -> RawData:
        """One ticker as a single-stock RawData: prices only inside its listing span and [start, end]."""
        ...

    def oracle_scores(self, start: date, end: date, horizons: tuple[int, ...]) -> pl.DataFrame:
        """date, ticker, oracle_h{h}: expected h-session excess log return known at t's close."""
        ...


@dataclass(frozen=True)
class _TickerSource:
    universe: Any
    ticker: str
    name: str

    def load(self, start: date, end: date) -> RawData:
        return self.universe.load_ticker(self.ticker, start, end)


def ticker_source(universe: UniverseSource, ticker: str) -> DataSource:
    """One ticker of ``universe`` as a plain DataSource named ``{universe.name}:{ticker}``."""
    return _TickerSource(universe, ticker, f"{universe.name}:{ticker}")


def universe_source(kind: str, **options: Any) -> UniverseSource:
    """``"synthetic"`` -> SyntheticUniverse(**options), ``"packaged-panel"`` -> PackagedPanel(**options),
    ``"files"`` -> FilesUniverse.from_mapping(mapping_path) (``finnex_ml.data.files_universe``)."""
    if kind == "synthetic":
        return SyntheticUniverse(**options)
    if kind == "packaged-panel":
        return PackagedPanel(**options)
    if kind == "files":
        from finnex_ml.data.files_universe import FilesUniverse

        mapping_path = options.pop("mapping_path", None)
        if not mapping_path or options:
            extra = f"; unexpected options {sorted(options)}" if options else ""
            raise ConfigError(f"the files universe takes mapping_path (a YAML/TOML mapping file){extra}")
        return FilesUniverse.from_mapping(mapping_path)
    raise ConfigError(f"unknown universe kind {kind!r}; valid kinds: {', '.join(UNIVERSE_KINDS)}")


def _unknown_ticker(ticker: str, valid: list[str], universe: str) -> DataInputError:
    shown = ", ".join(valid[:5]) + (", ..." if len(valid) > 5 else "")
    return DataInputError(f"unknown ticker {ticker!r} in universe {universe!r}; valid tickers include {shown}")


def _empty(schema: dict[str, Any]) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


# ======================================================================================
# Synthetic universe
# ======================================================================================

# Stream ids (keyed with the seed and, per ticker, its index); disjoint from synthetic.py's 0-14.
_U_PARAMS, _U_EVENTS, _U_SECTOR, _U_IDIO, _U_MOOD, _U_OHLC, _U_VOLUME = range(100, 107)
_U_OPTIONS, _U_TEXT, _U_FUND, _U_CONTROL = range(107, 111)

LIST_SHARE, DELIST_SHARE = 0.15, 0.10  # share of tickers that list / delist inside EVENT_SPAN
EVENT_SPAN = (date(2015, 1, 1), date(2026, 12, 31))
NEWS_PER_DAY, SOCIAL_PER_DAY = 2.0, 3.0
MOOD_LEAD = 0.06  # correlation of the mood with the next idiosyncratic return (as in synthetic.py)
_VOL_MULT = np.array([0.85, 1.6, 1.0])  # synthetic.py's regime volatility multipliers


@dataclass(frozen=True)
class CrossSectionalSignal:
    """A planted cross-sectional rule (module docstring); strength in [0, 1], 1 = noise-free."""

    strength: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"cross-sectional signal strength must lie in [0, 1], got {self.strength}")


def _rng(seed: int, stream: int, *extra: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, *extra])


def _garch_fast(
    z: np.ndarray, omega: float, alpha: float, beta: float, scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """GARCH(1,1) on given unit-variance shocks ``z``; ``scale`` multiplies the conditional sd.

    Same recursion as ``synthetic._garch``, with plain floats in the loop (several times faster)."""
    zl, sl = z.tolist(), scale.tolist()
    n = len(zl)
    var = [0.0] * n
    eps = [0.0] * n
    v = omega / (1 - alpha - beta)
    for i in range(n):
        var[i] = v
        e = math.sqrt(v) * zl[i]
        eps[i] = e * sl[i]
        v = omega + alpha * e * e + beta * v
    var_a = np.asarray(var)
    return np.asarray(eps), var_a * scale**2


def _ar1_fast(shocks: np.ndarray, mean: float, phi: float, start: float) -> np.ndarray:
    """x_t = mean + phi (x_{t-1} - mean) + shock_t, from x_{-1} = start (synthetic._ar1 on given shocks)."""
    out = [0.0] * len(shocks)
    x = start
    for i, e in enumerate(shocks.tolist()):
        x = mean + phi * (x - mean) + e
        out[i] = x
    return np.asarray(out)


def _t_shocks(rng: np.random.Generator, size: Any, nu: float) -> np.ndarray:
    return rng.standard_t(nu, size=size) / np.sqrt(nu / (nu - 2))


@dataclass(frozen=True)
class _Ticker:
    """One ticker's simulated series over the whole grid (index k = grid session k)."""

    ret: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    implied_vol: np.ndarray
    put_call: np.ndarray
    mood: np.ndarray
    control: np.ndarray | None


@dataclass
class _Universe:
    """Per (seed, n, n_sectors): parameters, listing spans, shared factors."""

    sessions: np.ndarray  # datetime64[D] of the known grid sessions (the prefix of the grid)
    tickers: list[str]
    sector: np.ndarray  # int per ticker
    beta: np.ndarray
    gamma: np.ndarray
    alpha: np.ndarray
    price0: np.ndarray
    volume0: np.ndarray
    first: np.ndarray  # grid index of the first listed session
    last: np.ndarray  # grid index of the last listed session
    market: np.ndarray  # market factor log return over the grid
    market_var: np.ndarray
    vol_mult: np.ndarray
    sector_ret: np.ndarray  # [GRID, n_sectors]
    sector_var: np.ndarray
    control_mean: dict[int, np.ndarray] = field(default_factory=dict)  # cross-sectional mean of control_a


def _event_indices(rng: np.random.Generator, k: int, sess: np.ndarray) -> np.ndarray:
    """k listing (or delisting) sessions: the first uniform inside the default synthetic range
    (so the default demo window always shows one), the rest one uniform draw inside each of k - 1
    equal strata of EVENT_SPAN."""
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    d_lo, d_hi = (np.datetime64(d, "D") for d in DEFAULT_UNIVERSE_RANGE["synthetic"])
    e_lo, e_hi = (np.datetime64(d, "D") for d in EVENT_SPAN)
    # keep a month clear of the range's edges, so the event is visibly inside it
    first = d_lo + 30 + int(rng.random() * ((d_hi - d_lo).astype(int) - 60))
    span = (e_hi - e_lo).astype(int)
    rest = e_lo + ((np.arange(k - 1) + rng.random(k - 1)) / max(k - 1, 1) * span).astype(int)
    days = np.concatenate([[first], rest]).astype("datetime64[D]")
    idx = np.searchsorted(sess, days, side="left")
    return np.minimum(idx, len(sess) - 1)


@lru_cache(maxsize=8)
def _universe(seed: int, n: int, n_sectors: int) -> _Universe:
    w = _world(seed)  # the single-stock world: its market factor and regimes are shared
    sess = w.sessions[~np.isnat(w.sessions)]
    width = max(3, len(str(n - 1)))
    tickers = [f"U{i:0{width}d}" for i in range(n)]
    p = _rng(seed, _U_PARAMS)
    sector = p.permutation(np.arange(n) % n_sectors)
    beta = p.uniform(0.6, 1.4, size=n)
    gamma = p.uniform(0.6, 1.4, size=n)
    alpha = p.normal(0.0002, 0.0002, size=n)
    price0 = np.exp(p.uniform(np.log(8.0), np.log(150.0), size=n))
    volume0 = np.exp(p.uniform(np.log(3e5), np.log(2e7), size=n))

    ev = _rng(seed, _U_EVENTS)
    order = ev.permutation(n)
    # at least one of each (from 4 tickers), never more events than tickers, one ticker always listed
    n_list = max(int(round(LIST_SHARE * n)), int(n >= 4))
    n_delist = min(max(int(round(DELIST_SHARE * n)), int(n >= 4)), n - n_list - 1)
    first = np.zeros(n, dtype=np.int64)
    last = np.full(n, len(sess) - 1, dtype=np.int64)
    first[order[:n_list]] = _event_indices(ev, n_list, sess)
    last[order[n_list : n_list + n_delist]] = _event_indices(ev, n_delist, sess)

    vol_mult = _VOL_MULT[w.regime]
    sector_ret = np.empty((GRID, n_sectors))
    sector_var = np.empty((GRID, n_sectors))
    for s in range(n_sectors):
        z = _t_shocks(_rng(seed, _U_SECTOR, s), GRID, 5.0)
        sector_ret[:, s], sector_var[:, s] = _garch_fast(z, 2.0e-6, 0.06, 0.90, vol_mult)
    return _Universe(
        sess,
        tickers,
        sector,
        beta,
        gamma,
        alpha,
        price0,
        volume0,
        first,
        last,
        w.market_ret,
        w.market_var,
        vol_mult,
        sector_ret,
        sector_var,
    )


def _listed_mask(u: _Universe) -> np.ndarray:
    """[GRID, n] True where the ticker is listed at that grid session."""
    k = np.arange(GRID)[:, None]
    return (k >= u.first[None, :]) & (k <= u.last[None, :])


def _controls(seed: int, n: int) -> np.ndarray:
    return np.stack([_rng(seed, _U_CONTROL, i).standard_normal(GRID) for i in range(n)], axis=1)


def _control_mean(u: _Universe, seed: int) -> np.ndarray:
    """Cross-sectional mean of control_a over the tickers listed at each grid session (NaN if none)."""
    if seed not in u.control_mean:
        mask = _listed_mask(u)
        ctrl = _controls(seed, len(u.tickers))
        count = mask.sum(axis=1)
        total = np.where(mask, ctrl, 0.0).sum(axis=1)
        u.control_mean[seed] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return u.control_mean[seed]


@lru_cache(maxsize=64)
def _ticker(seed: int, n: int, n_sectors: int, i: int, strength: float | None) -> _Ticker:
    u = _universe(seed, n, n_sectors)
    vm = u.vol_mult
    # Mood: standardised AR(1); it leads tomorrow's idiosyncratic return only weakly.
    mood = _ar1_fast(_rng(seed, _U_MOOD, i).normal(0.0, math.sqrt(1 - 0.49), GRID), 0.0, 0.7, 0.0)
    lead = np.concatenate([[0.0], mood[:-1]])
    ir = _rng(seed, _U_IDIO, i)
    nu = float(ir.uniform(4.0, 7.0))
    i_eps, i_var = _garch_fast(_t_shocks(ir, GRID, nu), 4e-6, 0.08, 0.89, vm)
    idio_sd = np.sqrt(i_var)
    s = u.sector[i]
    ret = (
        u.alpha[i]
        + u.beta[i] * u.market
        + u.gamma[i] * u.sector_ret[:, s]
        + MOOD_LEAD * idio_sd * lead
        + math.sqrt(1 - MOOD_LEAD**2) * i_eps
    )
    var = u.beta[i] ** 2 * u.market_var + u.gamma[i] ** 2 * u.sector_var[:, s] + i_var
    control = None
    if strength is not None:
        control = _rng(seed, _U_CONTROL, i).standard_normal(GRID)
        listed = (np.arange(GRID) >= u.first[i]) & (np.arange(GRID) <= u.last[i])
        z = np.where(listed, control - _control_mean(u, seed), 0.0)
        planted = np.concatenate([[0.0], z[:-1]]) * PLANT_SCALE
        keep = math.sqrt(1.0 - strength**2)
        ret = strength * planted + keep * ret
        var = strength**2 * PLANT_SCALE**2 + keep**2 * var
    # Price level: price0 at the listing session, then the simulated returns (before it: unused).
    cum = np.cumsum(ret)
    close = u.price0[i] * np.exp(cum - cum[u.first[i]])
    o = _rng(seed, _U_OHLC, i)
    sd = np.sqrt(var)
    prev_close = np.concatenate([[close[0] * math.exp(-ret[0])], close[:-1]])
    gap = ret * o.uniform(0.1, 0.5, size=GRID) + o.normal(0, 0.15, size=GRID) * sd
    open_ = prev_close * np.exp(gap)
    high = np.maximum(open_, close) * np.exp(np.abs(o.normal(0, 0.6, size=GRID)) * sd)
    low = np.minimum(open_, close) * np.exp(-np.abs(o.normal(0, 0.6, size=GRID)) * sd)
    vz = _ar1_fast(_rng(seed, _U_VOLUME, i).normal(0.0, 0.35, GRID), 0.0, 0.6, 0.0)
    volume = np.round(u.volume0[i] * np.exp(vz + 25.0 * np.abs(ret - u.alpha[i]) + 0.3 * (vm > 1.5))) + 1.0
    opt = _rng(seed, _U_OPTIONS, i)
    implied_vol = np.sqrt(252 * var) * np.exp(opt.normal(0.12, 0.08, size=GRID))
    put_call = np.exp(0.25 * np.tanh(-lead) + opt.normal(-0.3, 0.15, size=GRID))
    return _Ticker(ret, open_, high, low, close, volume, implied_vol, put_call, mood, control)


@lru_cache(maxsize=32)
def _ticker_texts(seed: int, n: int, n_sectors: int, i: int) -> pl.DataFrame:
    """Every news item and post about ticker i over the grid's calendar days: ~2 news (a third of
    that at weekends, 6:00-20:00 New York) and ~3 posts (round the clock) a day, more on days of
    strong mood; the share of positive texts rises with the ticker's mood (that of the latest
    session on or before the day), neutral ones are 30 %. Columns: day (New York calendar day) + TEXT_SCHEMA."""
    u = _universe(seed, n, n_sectors)
    mood = _ticker(seed, n, n_sectors, i, None).mood  # the mood does not depend on a plant
    lo = np.datetime64(EPOCH, "D") - 4
    days = np.arange(lo, u.sessions[-1] + 1)
    k = np.maximum(np.searchsorted(u.sessions, days, side="right") - 1, 0)
    m = mood[k]
    weekend = ((days.astype(np.int64) + 3) % 7) >= 5  # 1970-01-01 was a Thursday
    ticker = u.tickers[i]
    pools = [[x.format(t=ticker) for x in pool] for pool in (_NEUTRAL, _POSITIVE, _NEGATIVE)]
    offset = np.cumsum([0] + [len(p) for p in pools])
    table = np.array([x for p in pools for x in p], dtype=object)
    r = _rng(seed, _U_TEXT, i)
    frames = []
    for source, rate, (h0, h1) in (
        ("news", NEWS_PER_DAY * np.where(weekend, 0.3, 1.0), (6.0, 20.0)),
        ("social", SOCIAL_PER_DAY * np.ones(len(days)), (0.0, 24.0)),
    ):
        count = r.poisson(rate * (1.0 + 0.3 * np.abs(m)))
        p_pos = 1.0 / (1.0 + np.exp(-(0.6 * m + r.normal(0.0, 0.8, size=len(days)))))
        day_idx = np.repeat(np.arange(len(days)), count)
        total = int(count.sum())
        neutral, positive, pick = r.random(total) < 0.3, r.random(total) < p_pos[day_idx], r.random(total)
        pool = np.where(neutral, 0, np.where(positive, 1, 2))
        sizes = np.array([len(p) for p in pools])
        text = table[offset[pool] + (pick * sizes[pool]).astype(np.int64)]
        minutes = r.uniform(h0 * 60, h1 * 60, size=total).astype(np.int64)
        frames.append(
            pl.DataFrame(
                {
                    "day": pl.Series(days[day_idx]).cast(pl.Date),
                    "minutes": minutes,
                    "source": pl.Series([source] * total, dtype=pl.String),
                    "text": pl.Series(text.tolist(), dtype=pl.String),
                }
            )
        )
    both = pl.concat(frames)
    published = pl.col("day").cast(pl.Datetime("us")).dt.replace_time_zone("America/New_York").dt.convert_time_zone(
        "UTC"
    ) + pl.duration(minutes=pl.col("minutes"))
    return both.select("day", published.alias("published_at"), "source", "text").sort("published_at", "source", "text")


class SyntheticUniverse:
    """A seeded factor-model universe on synthetic.py's fixed session grid (module docstring)."""

    name = "synthetic-universe"
    benchmark = "equal-weight universe"

    def __init__(
        self, n_tickers: int = 24, seed: int = 7, n_sectors: int = 4, plant: CrossSectionalSignal | None = None
    ) -> None:
        if n_tickers < 2:
            raise ValueError(f"a synthetic universe needs at least 2 tickers, got {n_tickers}")
        if not 1 <= n_sectors <= n_tickers:
            raise ValueError(f"n_sectors must lie in [1, n_tickers={n_tickers}], got {n_sectors}")
        self.n_tickers, self.seed, self.n_sectors, self.plant = int(n_tickers), int(seed), int(n_sectors), plant
        self._macro_source = SyntheticSource(self.seed)

    def _u(self) -> _Universe:
        return _universe(self.seed, self.n_tickers, self.n_sectors)

    def _index(self, ticker: str) -> int:
        u = self._u()
        try:
            return u.tickers.index(ticker)
        except ValueError:
            raise _unknown_ticker(ticker, u.tickers, self.name) from None

    @property
    def tag(self) -> str:
        base = f"synthetic-universe(seed={self.seed}, n={self.n_tickers}"
        return base + (")" if self.plant is None else f", planted=cross-sectional@{self.plant.strength:g})")

    def members(self) -> pl.DataFrame:
        u = self._u()
        return pl.DataFrame(
            {
                "ticker": u.tickers,
                "sector": [f"S{s}" for s in u.sector],
                "first": pl.Series(u.sessions[u.first]).cast(pl.Date),
                "last": pl.Series(u.sessions[u.last]).cast(pl.Date),
            },
            schema=MEMBER_SCHEMA,
        ).sort("ticker")

    def _t(self, i: int) -> _Ticker:
        strength = None if self.plant is None else float(self.plant.strength)
        return _ticker(self.seed, self.n_tickers, self.n_sectors, i, strength)

    def load_ticker(self, ticker: str, start: date, end: date) -> RawData:
        i = self._index(ticker)
        if start < EPOCH:
            raise ValueError(f"synthetic data starts at {EPOCH}; asked for {start}")
        u, t = self._u(), self._t(i)
        sess = u.sessions
        lo = int(np.searchsorted(sess, np.datetime64(start, "D")))
        hi = int(np.searchsorted(sess, np.datetime64(end, "D"), side="right"))
        p_lo, p_hi = max(lo, int(u.first[i])), min(hi, int(u.last[i]) + 1)
        idx = slice(p_lo, max(p_lo, p_hi))
        prices = pl.DataFrame(
            {
                "date": pl.Series("date", sess[idx]).cast(pl.Date),
                "open": t.open[idx],
                "high": t.high[idx],
                "low": t.low[idx],
                "close": t.close[idx],
                "volume": t.volume[idx],
                "market__implied_vol": t.implied_vol[idx],
                "market__put_call_ratio": t.put_call[idx],
            },
            schema_overrides=PRICE_SCHEMA,
        )
        if t.control is not None:
            prices = prices.with_columns(pl.Series("market__control_a", t.control[idx], dtype=pl.Float64))
        # Shared macro: SyntheticSource's own daily and monthly series (its market is this universe's market).
        w = _world(self.seed)
        prev = slice(max(lo - 1, 0), hi)
        macro = pl.concat(
            [
                SyntheticSource._daily_macro(w, prev, pl.Series("date", w.sessions[prev]).cast(pl.Date)),
                self._macro_source._monthly_macro(start, end),
            ]
        )
        releases = pl.concat([macro.cast(RELEASE_SCHEMA), self._fundamentals(i, start, end)])  # type: ignore[arg-type]
        releases = releases.filter(pl.col("released") <= end)
        texts = self._texts(i, start, end)
        tag = self.tag
        provenance = {m: tag for m in ("prices", "market", "texts", "macro", "fundamental")}
        provenance["peers"] = "none: universe mode has no peer tickers per stock"
        return RawData(prices=prices, peers=_empty(PEER_SCHEMA), texts=texts, releases=releases, provenance=provenance)

    # --- fundamentals ---------------------------------------------------------------------------
    def _fundamentals(self, i: int, start: date, end: date) -> pl.DataFrame:
        """Quarterly filings 25-45 days after each quarter end, only while listed; synthetic.py's series."""
        u = self._u()
        quarters = [q for q in _month_ends(EPOCH, end) if q.month in (3, 6, 9, 12)]
        n = len(quarters)
        r = _rng(self.seed, _U_FUND, i)
        size = 200
        growth = _ar1_fast(r.normal(0.0, 0.03, size), 0.015, 0.6, 0.02)[:n]
        revenue = float(r.uniform(100.0, 3000.0)) * np.exp(np.cumsum(growth))
        gm_mean = float(r.uniform(0.3, 0.75))
        gross_margin = np.clip(_ar1_fast(r.normal(0.0, 0.015, size), gm_mean, 0.85, gm_mean), 0.2, 0.9)[:n]
        op_margin = np.clip(gross_margin - 0.33 + _ar1_fast(r.normal(0, 0.01, size), 0.0, 0.7, 0.0)[:n], -0.2, 0.6)
        shares = float(r.uniform(50.0, 500.0)) * np.exp(np.cumsum(r.normal(0.0, 0.004, size=size)))[:n]
        eps = revenue * op_margin * 0.79 / shares
        debt_to_equity = np.clip(_ar1_fast(r.normal(0, 0.04, size), 0.6, 0.9, 0.5), 0.0, None)[:n]
        fcf = revenue * (op_margin * 0.8 + r.normal(0, 0.02, size=size)[:n])
        lags = r.integers(25, 46, size=size)[:n]
        filed = [_session_on_or_after(q + timedelta(days=int(lag))) for q, lag in zip(quarters, lags)]
        mood = self._t(i).mood
        k = np.minimum(np.searchsorted(u.sessions, np.array(filed, dtype="datetime64[D]")), len(u.sessions) - 1)
        mood_at = mood[k]
        tone = np.tanh(0.5 * mood_at + r.normal(0, 0.6, size=size)[:n])
        rating = np.clip(3.4 + 0.5 * mood_at + r.normal(0, 0.4, size=size)[:n], 1, 5)
        series = {
            "revenue": revenue,
            "eps": eps,
            "gross_margin": gross_margin,
            "op_margin": op_margin,
            "debt_to_equity": debt_to_equity,
            "free_cash_flow": fcf,
            "shares_out": shares,
            "mgmt_tone": tone,
            "analyst_rating": rating,
        }
        first = u.sessions[u.first[i]].astype(object)
        last = u.sessions[u.last[i]].astype(object)
        keep = [j for j, q in enumerate(quarters) if q >= _shift_years(start, -2) and first <= filed[j] <= last]
        return pl.concat(
            [
                pl.DataFrame(
                    {
                        "modality": "fundamental",
                        "series": name,
                        "period_end": [quarters[j] for j in keep],
                        "released": [filed[j] for j in keep],
                        "value": np.asarray(v, dtype=float)[keep],
                    },
                    schema=RELEASE_SCHEMA,
                )
                for name, v in series.items()
            ]
        )

    # --- texts ----------------------------------------------------------------------------------
    def _texts(self, i: int, start: date, end: date) -> pl.DataFrame:
        """News and posts of calendar days in [start - 4 days, end] inside the listing span (after-close
        texts of earlier days count for ``start``), published before ``end``'s close. They are drawn once
        over the whole grid, so they never depend on the window."""
        u = self._u()
        first = u.sessions[u.first[i]].astype(object)
        last = u.sessions[u.last[i]].astype(object)
        d0, d1 = max(start - timedelta(days=4), first), min(end, last)
        close_end = calendar.session_close_utc(calendar.session_on_or_before(min(end, last)))
        return (
            _ticker_texts(self.seed, self.n_tickers, self.n_sectors, i)
            .filter(pl.col("day").is_between(d0, d1), pl.col("published_at") < close_end)
            .drop("day")
        )

    # --- oracle ---------------------------------------------------------------------------------
    def oracle_scores(self, start: date, end: date, horizons: tuple[int, ...]) -> pl.DataFrame:
        """Per session t in [start, end] and ticker listed at t: ``oracle_h{h}`` = strength * 0.015 * z_i(t),
        the expected h-session log return in excess of the cross-sectional mean given t's close (only
        z(t) is known at t, and later scores have mean 0, so every horizon gets the same value)."""
        if self.plant is None:
            raise ValueError(
                "oracle_scores needs a planted signal (SyntheticUniverse(plant=CrossSectionalSignal(...)))"
            )
        u = self._u()
        lo = int(np.searchsorted(u.sessions, np.datetime64(start, "D")))
        hi = int(np.searchsorted(u.sessions, np.datetime64(end, "D"), side="right"))
        ctrl = _controls(self.seed, len(u.tickers))[lo:hi]
        mask = _listed_mask(u)[lo:hi]
        z = ctrl - _control_mean(u, self.seed)[lo:hi, None]
        score = self.plant.strength * PLANT_SCALE * z
        rows, cols = np.nonzero(mask)
        frame = pl.DataFrame(
            {
                "date": pl.Series(u.sessions[lo:hi][rows]).cast(pl.Date),
                "ticker": pl.Series([u.tickers[c] for c in cols], dtype=pl.String),
            }
        )
        return frame.with_columns(
            pl.Series(f"oracle_h{h}", score[rows, cols], dtype=pl.Float64) for h in horizons
        ).sort("date", "ticker")


# ======================================================================================
# Packaged S&P 500 panel (skfolio)
# ======================================================================================

GICS_SECTORS = {
    "AAPL": "Information Technology",
    "AMD": "Information Technology",
    "BAC": "Financials",
    "BBY": "Consumer Discretionary",
    "CVX": "Energy",
    "GE": "Industrials",
    "HD": "Consumer Discretionary",
    "JNJ": "Health Care",
    "JPM": "Financials",
    "KO": "Consumer Staples",
    "LLY": "Health Care",
    "MRK": "Health Care",
    "MSFT": "Information Technology",
    "PEP": "Consumer Staples",
    "PFE": "Health Care",
    "PG": "Consumer Staples",
    "RRC": "Energy",
    "UNH": "Health Care",
    "WMT": "Consumer Staples",
    "XOM": "Energy",
}


@lru_cache(maxsize=1)
def _panel() -> tuple[pl.DataFrame, tuple[str, ...]]:
    """Long (date, ticker, close) on NYSE sessions, null closes dropped; plus the notes on what was dropped."""
    from skfolio.datasets import load_sp500_dataset

    df = load_sp500_dataset()
    wide = pl.from_pandas(df.reset_index()).rename({df.index.name or "index": "date"})
    wide = wide.with_columns(pl.col("date").cast(pl.Date))
    notes = []
    early = wide.filter(pl.col("date") < calendar.CALENDAR_START).height
    if early:
        notes.append(
            f"skfolio sp500: dropped {early} row(s) before the calendar's first session {calendar.CALENDAR_START}"
        )
        wide = wide.filter(pl.col("date") >= calendar.CALENDAR_START)
    sessions = pl.DataFrame(
        {"date": calendar.sessions(wide["date"].min(), wide["date"].max())}, schema={"date": pl.Date}
    )
    kept = wide.join(sessions, on="date", how="semi")
    if kept.height < wide.height:
        notes.append(f"skfolio sp500: dropped {wide.height - kept.height} row(s) on dates that are not NYSE sessions")
    wide = kept
    long = (
        wide.unpivot(index="date", variable_name="ticker", value_name="close")
        .with_columns(pl.col("close").cast(pl.Float64))
        .filter(pl.col("close").is_not_null() & pl.col("close").is_not_nan())
        .sort("ticker", "date")
    )
    return long, tuple(notes)


class PackagedPanel:
    """The 20-stock S&P 500 panel shipped with skfolio (closes only), GICS sectors, arch.data macro."""

    name = "packaged-panel"
    benchmark = "equal-weight 20-stock S&P 500 panel (skfolio)"

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def _data(self) -> pl.DataFrame:
        long, notes = _panel()
        self.warnings = list(notes)
        return long

    def members(self) -> pl.DataFrame:
        spans = (
            self._data().group_by("ticker").agg(pl.col("date").min().alias("first"), pl.col("date").max().alias("last"))
        )
        return (
            spans.select(
                "ticker",
                pl.col("ticker").replace_strict(GICS_SECTORS, return_dtype=pl.String).alias("sector"),
                "first",
                "last",
            )
            .cast(MEMBER_SCHEMA)
            .sort("ticker")
        )  # type: ignore[arg-type]

    def load_ticker(self, ticker: str, start: date, end: date) -> RawData:
        data = self._data()
        if ticker not in GICS_SECTORS:
            raise _unknown_ticker(ticker, sorted(GICS_SECTORS), self.name)
        from finnex_ml.data.packaged import MACRO_PROVENANCE, _macro

        closes = data.filter((pl.col("ticker") == ticker) & pl.col("date").is_between(start, end))
        nulls = pl.lit(None, dtype=pl.Float64)
        prices = closes.select(
            "date", nulls.alias("open"), nulls.alias("high"), nulls.alias("low"), "close", nulls.alias("volume")
        ).cast(PRICE_SCHEMA)  # type: ignore[arg-type]
        macro = _macro().filter((pl.col("released") <= end) & (pl.col("period_end") >= _shift_years(start, -2)))
        provenance = {
            "prices": "packaged:skfolio.datasets.load_sp500_dataset (adjusted closes; open/high/low/volume missing)",
            "macro": MACRO_PROVENANCE,
            "texts": "none: no package ships dated news or posts for this panel",
            "fundamental": "none: no package ships filings for this panel",
            "peers": "none: universe mode has no peer tickers per stock",
        }
        return RawData(
            prices=prices,
            peers=_empty(PEER_SCHEMA),
            texts=_empty(TEXT_SCHEMA),
            releases=macro.cast(RELEASE_SCHEMA),
            provenance=provenance,
        )  # type: ignore[arg-type]

    def oracle_scores(self, start: date, end: date, horizons: tuple[int, ...]) -> pl.DataFrame:
        raise ValueError("oracle_scores needs a planted signal; the packaged panel has none")
