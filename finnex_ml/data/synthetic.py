"""A seeded fictional stock and its world, for tests, CI and the demo.

The whole world is simulated once per seed over a fixed grid of sessions from ``EPOCH``
(one independent random stream per process), so the value on any date never depends on
the range a caller asks for. Texts are drawn per calendar day from a generator seeded by
(seed, day), for the same reason.

What is realistic about it:
- returns: GARCH(1,1) with Student-t innovations (volatility clustering, fat tails) and a
  three-state Markov regime (bull, bear, sideways) that shifts drift and volatility;
- sentiment: a latent AR(1) mood leads next-day returns with a correlation of only a few
  per cent, and texts express it through noisy word choice;
- macro: a VIX-like index driven by market variance, 2y/10y rates, a sector ETF, plus monthly
  CPI, unemployment and PMI published 10-16 days after the month ends;
- fundamentals: quarterly statements filed 25-45 days after the quarter ends;
- three peers sharing the sector factor.

A positive control (:class:`PlantedSignal`, off by default) plants a known rule in next-day
returns: two extra i.i.d. N(0, 1) series, ``market__control_a`` (a market column: behavioural
section, blue channel) and the daily macro series ``control_b`` (macro section, red channel),
and a score z(t) known at t's close. ``level``: z = control_a(t). ``temporal``: z = (control_a 9
sessions before t minus control_b 17 sessions before t) / sqrt(2). Single lags keep z free of
autocorrelation, so past returns (which the planted rule drives) say nothing about z(t): only the
two series' histories do, and no date-t feature shows them. The next session's log return is
``strength * 0.015 * z(t) + sqrt(1 - strength^2) * r(t+1)``: strength 1 is noise-free.
:meth:`SyntheticSource.oracle_returns` gives the expected h-session log return given all that is
known at t, from which the oracle's classes and accuracy follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Literal

import numpy as np
import polars as pl

from finnex_ml import calendar
from finnex_ml.data.base import PEER_SCHEMA, RELEASE_SCHEMA, TEXT_SCHEMA, RawData

EPOCH = date(2000, 1, 3)
GRID = 10_000  # sessions simulated; covers well past the calendar's horizon
PEERS = ("PEERA", "PEERB", "PEERC")
TICKER = "FNX"

# Stream ids keep each process on its own generator, so adding a process changes no other.
_S_REGIME, _S_MARKET, _S_SECTOR, _S_STOCK, _S_MOOD, _S_OHLC, _S_VOLUME = range(7)
_S_RATES, _S_VIX, _S_MONTHLY, _S_FUND, _S_PEER, _S_TEXT, _S_OPTIONS = range(7, 14)
_S_CONTROL = 14

PLANT_SCALE = 0.015  # daily log-return sd of the planted component at strength 1
# temporal form: (series, first lag, last lag) of the two windows, +a and -b; one lag each, so
# that z has no autocorrelation (a window mean would let yesterday's return reveal most of z)
TEMPORAL_WINDOWS = (("a", 9, 9), ("b", 17, 17))


@dataclass(frozen=True)
class PlantedSignal:
    """A known rule in next-day returns (module docstring); strength in [0, 1], 1 = noise-free."""

    form: Literal["level", "temporal"] = "level"
    strength: float = 1.0

    def __post_init__(self) -> None:
        if self.form not in ("level", "temporal"):
            raise ValueError(f"planted signal form must be 'level' or 'temporal', got {self.form!r}")
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"planted signal strength must lie in [0, 1], got {self.strength}")


_POSITIVE = (
    "great quarter for {t} as demand looks strong",
    "{t} shares gain after analysts praise the excellent outlook",
    "investors love the new {t} product, shares win big",
    "{t} beats expectations, management sounds confident and happy",
    "strong buying in {t} today, a good sign",
    "bullish on {t}: solid growth and improving margins",
)
_NEGATIVE = (
    "{t} shares fall as worries about weak demand grow",
    "terrible guidance from {t}, investors fear a loss",
    "{t} hit by lawsuit, analysts warn of bad news ahead",
    "selling pressure on {t}: disappointing and weak results",
    "{t} misses estimates, panic among holders",
    "bearish on {t}, the crash may not be over",
)
_NEUTRAL = (
    "{t} to report earnings next month",
    "{t} announces date of annual meeting",
    "trading volume in {t} in line with average",
    "{t} shares unchanged in midday trading",
)


@dataclass(frozen=True)
class _World:
    sessions: np.ndarray  # datetime64[D], length n
    regime: np.ndarray
    market_ret: np.ndarray
    market_var: np.ndarray
    sector_ret: np.ndarray
    mood: np.ndarray
    stock_ret: np.ndarray
    stock_var: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    implied_vol: np.ndarray
    put_call: np.ndarray
    vix: np.ndarray
    rate_2y: np.ndarray
    rate_10y: np.ndarray
    sector_close: np.ndarray
    index_close: np.ndarray
    peer_close: np.ndarray  # [n, peers]
    peer_volume: np.ndarray
    control: np.ndarray | None = None  # [n, 2]: control_a, control_b (planted signal only)
    score: np.ndarray | None = None  # z(t), the planted score known at t


def _rng(seed: int, stream: int, *extra: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, *extra])


def _garch(
    rng: np.random.Generator, n: int, omega: float, alpha: float, beta: float, scale: np.ndarray, nu: float = 5.0
) -> tuple[np.ndarray, np.ndarray]:
    """GARCH(1,1) with unit-variance Student-t shocks; ``scale`` multiplies the conditional sd."""
    z = rng.standard_t(nu, size=n) / np.sqrt(nu / (nu - 2))
    var = np.empty(n)
    eps = np.empty(n)
    v = omega / (1 - alpha - beta)
    for i in range(n):
        var[i] = v
        eps[i] = np.sqrt(v) * z[i] * scale[i]
        v = omega + alpha * (eps[i] / scale[i]) ** 2 + beta * v
    return eps, var * scale**2


def _ar1(rng: np.random.Generator, n: int, mean: float, phi: float, sd: float, start: float) -> np.ndarray:
    out = np.empty(n)
    x = start
    shocks = rng.normal(0.0, sd, size=n)
    for i in range(n):
        x = mean + phi * (x - mean) + shocks[i]
        out[i] = x
    return out


def control_score(control: np.ndarray, form: str) -> np.ndarray:
    """z(t) from the control series [n, 2] (module docstring); NaN where the window is incomplete."""
    a, b = control[:, 0], control[:, 1]
    if form == "level":
        return a.copy()
    z = np.full(len(a), np.nan)
    (_, a0, a1), (_, b0, b1) = TEMPORAL_WINDOWS
    for t in range(max(a1, b1), len(a)):
        z[t] = a[t - a1 : t - a0 + 1].mean() - b[t - b1 : t - b0 + 1].mean()
    return z / np.sqrt(1 / (a1 - a0 + 1) + 1 / (b1 - b0 + 1))


@lru_cache(maxsize=4)
def _world(seed: int, plant: PlantedSignal | None = None) -> _World:
    known = np.array(calendar.sessions(EPOCH, calendar.calendar_end()), dtype="datetime64[D]")
    n = GRID
    # Regimes: 0 bull, 1 bear, 2 sideways; persistent, mean duration ~ 6-12 months.
    stay = np.array([0.995, 0.990, 0.993])
    u = _rng(seed, _S_REGIME).random(n)
    nxt = _rng(seed, _S_REGIME, 1).integers(0, 2, size=n)
    regime = np.empty(n, dtype=np.int8)
    r = 2
    for i in range(n):
        if u[i] > stay[r]:
            r = [s for s in range(3) if s != r][nxt[i]]
        regime[i] = r
    drift = np.array([0.0006, -0.0007, 0.0001])[regime]
    vol_mult = np.array([0.85, 1.6, 1.0])[regime]

    m_eps, m_var = _garch(_rng(seed, _S_MARKET), n, 1.5e-6, 0.09, 0.88, vol_mult)
    market_ret = drift * 0.6 + m_eps
    s_eps, _ = _garch(_rng(seed, _S_SECTOR), n, 1.0e-6, 0.06, 0.90, vol_mult)
    sector_ret = 1.1 * market_ret + s_eps

    # Latent mood (standardised AR(1)) leads tomorrow's idiosyncratic return only weakly.
    mood_raw = _ar1(_rng(seed, _S_MOOD), n, 0.0, 0.7, np.sqrt(1 - 0.49), 0.0)
    i_eps, i_var = _garch(_rng(seed, _S_STOCK), n, 4e-6, 0.08, 0.89, vol_mult)
    lead = np.concatenate([[0.0], mood_raw[:-1]])
    idio_sd = np.sqrt(i_var)
    stock_ret = 0.0002 + 1.2 * sector_ret + 0.06 * idio_sd * lead + np.sqrt(1 - 0.06**2) * i_eps
    stock_var = 1.44 * (1.21 * m_var) + i_var
    control = score = None
    if plant is not None:
        control = _rng(seed, _S_CONTROL).standard_normal((n, 2))
        score = control_score(control, plant.form)
        planted = np.concatenate([[0.0], np.nan_to_num(score[:-1])]) * PLANT_SCALE
        keep = np.sqrt(1.0 - plant.strength**2)
        stock_ret = plant.strength * planted + keep * stock_ret
        stock_var = plant.strength**2 * PLANT_SCALE**2 + keep**2 * stock_var

    close = 40.0 * np.exp(np.cumsum(stock_ret))
    o = _rng(seed, _S_OHLC)
    sd = np.sqrt(stock_var)
    prev_close = np.concatenate([[40.0], close[:-1]])
    # Part of each day's move happens overnight (gap), the rest intraday.
    gap = stock_ret * o.uniform(0.1, 0.5, size=n) + o.normal(0, 0.15, size=n) * sd
    open_ = prev_close * np.exp(gap)
    spread_up = np.abs(o.normal(0, 0.6, size=n)) * sd
    spread_dn = np.abs(o.normal(0, 0.6, size=n)) * sd
    high = np.maximum(open_, close) * np.exp(spread_up)
    low = np.minimum(open_, close) * np.exp(-spread_dn)
    vz = _ar1(_rng(seed, _S_VOLUME), n, 0.0, 0.6, 0.35, 0.0)
    volume = np.round(3.0e6 * np.exp(vz + 25.0 * np.abs(stock_ret - 0.0002) + 0.3 * (regime == 1)))

    opt = _rng(seed, _S_OPTIONS)
    implied_vol = np.sqrt(252 * stock_var) * np.exp(opt.normal(0.12, 0.08, size=n))
    put_call = np.exp(0.25 * np.tanh(-lead) + opt.normal(-0.3, 0.15, size=n))

    vix = 100 * np.sqrt(252 * m_var) * 1.15 * np.exp(_ar1(_rng(seed, _S_VIX), n, 0.0, 0.9, 0.04, 0.0))
    rr = _rng(seed, _S_RATES)
    rate_2y = np.clip(_ar1(rr, n, 3.0, 0.9995, 0.035, 5.0), 0.05, None)
    rate_10y = rate_2y + _ar1(rr, n, 1.0, 0.998, 0.02, 1.2)
    sector_close = 100.0 * np.exp(np.cumsum(sector_ret))
    index_close = 1400.0 * np.exp(np.cumsum(market_ret))

    pr = _rng(seed, _S_PEER)
    betas = np.array([0.9, 1.05, 1.3])
    peer_eps = pr.standard_t(5, size=(n, len(PEERS))) * np.sqrt(3 / 5) * 0.015 * vol_mult[:, None]
    peer_ret = betas[None, :] * sector_ret[:, None] + peer_eps
    peer_close = np.array([25.0, 60.0, 12.0])[None, :] * np.exp(np.cumsum(peer_ret, axis=0))
    peer_volume = np.round(
        np.array([2e6, 8e5, 5e6])[None, :] * np.exp(pr.normal(0, 0.3, size=(n, 3)) + 20 * np.abs(peer_ret))
    )
    sess = np.full(n, np.datetime64("NaT"), dtype="datetime64[D]")
    sess[: min(n, len(known))] = known[:n]
    return _World(
        sess,
        regime,
        market_ret,
        m_var,
        sector_ret,
        mood_raw,
        stock_ret,
        stock_var,
        open_,
        high,
        low,
        close,
        volume,
        implied_vol,
        put_call,
        vix,
        rate_2y,
        rate_10y,
        sector_close,
        index_close,
        peer_close,
        peer_volume,
        control,
        score,
    )


class SyntheticSource:
    """Deterministic synthetic world; ``seed`` picks the world."""

    name = "synthetic"

    def __init__(
        self, seed: int = 7, news_per_day: float = 6.0, social_per_day: float = 14.0, plant: PlantedSignal | None = None
    ) -> None:
        self.seed = int(seed)
        self.news_per_day = news_per_day
        self.social_per_day = social_per_day
        self.plant = plant

    def _w(self) -> _World:
        return _world(self.seed, self.plant)

    def oracle_returns(self, start: date, end: date, horizons: tuple[int, ...]) -> pl.DataFrame:
        """Per session in [start, end]: ``oracle_h{h}``, the expected h-session log return given
        everything known at t's close (the planted part only; the rest has mean ~0). For the
        level form only z(t) is known; for the temporal form the known lags of later scores count
        too. Null without a planted signal's complete window."""
        if self.plant is None:
            raise ValueError("oracle_returns needs a planted signal (SyntheticSource(plant=...))")
        w = self._w()
        valid = ~np.isnat(w.sessions)
        sess = w.sessions[valid]
        lo = int(np.searchsorted(sess, np.datetime64(start, "D")))
        hi = int(np.searchsorted(sess, np.datetime64(end, "D"), side="right"))
        out = {"date": pl.Series("date", sess[lo:hi]).cast(pl.Date)}
        for h in horizons:
            exp = np.full(hi - lo, np.nan)
            for i, t in enumerate(range(lo, hi)):
                total = 0.0
                for j in range(h):  # score of session t+j drives the return of t+j+1
                    if j == 0:
                        z = w.score[t]
                    elif self.plant.form == "level":
                        z = 0.0  # control_a(t+j) is not known at t
                    else:
                        known = w.control[: t + 1]  # unknown future controls have mean 0
                        padded = np.vstack([known, np.zeros((j, 2))])
                        z = control_score(padded[t + j - 20 : t + j + 1], "temporal")[-1]  # max lag < 21
                    total += z
                exp[i] = self.plant.strength * PLANT_SCALE * total
            out[f"oracle_h{h}"] = exp
        return pl.DataFrame(out)

    def load(self, start: date, end: date) -> RawData:
        if start < EPOCH:
            raise ValueError(f"synthetic data starts at {EPOCH}; asked for {start}")
        w = self._w()
        lo = int(np.searchsorted(w.sessions[~np.isnat(w.sessions)], np.datetime64(start, "D")))
        hi = int(np.searchsorted(w.sessions[~np.isnat(w.sessions)], np.datetime64(end, "D"), side="right"))
        idx = slice(lo, hi)
        dates = pl.Series("date", w.sessions[idx]).cast(pl.Date)
        prices = pl.DataFrame(
            {
                "date": dates,
                "open": w.open[idx],
                "high": w.high[idx],
                "low": w.low[idx],
                "close": w.close[idx],
                "volume": w.volume[idx],
                "market__implied_vol": w.implied_vol[idx],
                "market__put_call_ratio": w.put_call[idx],
            }
        )
        if w.control is not None:
            prices = prices.with_columns(pl.Series("market__control_a", w.control[idx, 0]))
        peers = pl.concat(
            [
                pl.DataFrame(
                    {
                        "date": dates,
                        "ticker": [t] * len(dates),
                        "close": w.peer_close[idx, k],
                        "volume": w.peer_volume[idx, k],
                    }
                )
                for k, t in enumerate(PEERS)
            ]
        ).cast(PEER_SCHEMA)  # type: ignore[arg-type]
        # Daily macro starts one session early: the release before ``start`` is what a
        # point-in-time change on the first day is measured against.
        prev = slice(max(lo - 1, 0), hi)
        releases = (
            pl.concat(
                [
                    self._daily_macro(w, prev, pl.Series("date", w.sessions[prev]).cast(pl.Date)),
                    self._monthly_macro(start, end),
                    self._fundamentals(w, start, end),
                ]
            )
            .filter(pl.col("released") <= end)
            .cast(RELEASE_SCHEMA)
        )  # type: ignore[arg-type]
        texts = self._texts(w, start, end)
        tag = (
            f"synthetic(seed={self.seed})"
            if self.plant is None
            else (f"synthetic(seed={self.seed}, planted={self.plant.form}@{self.plant.strength:g})")
        )
        provenance = {m: tag for m in ("prices", "market", "peers", "texts", "macro", "fundamental")}
        return RawData(prices=prices, peers=peers, texts=texts, releases=releases, provenance=provenance)

    # --- macro -------------------------------------------------------------------------------
    @staticmethod
    def _daily_macro(w: _World, idx: slice, dates: pl.Series) -> pl.DataFrame:
        series = {
            "vix": w.vix,
            "rate_2y": w.rate_2y,
            "rate_10y": w.rate_10y,
            "sector_etf": w.sector_close,
            "market_index": w.index_close,
        }
        if w.control is not None:
            series["control_b"] = w.control[:, 1]
        return pl.concat(
            [
                pl.DataFrame(
                    {"modality": "macro", "series": name, "period_end": dates, "released": dates, "value": values[idx]}
                )
                for name, values in series.items()
            ]
        )

    def _monthly_macro(self, start: date, end: date) -> pl.DataFrame:
        # One value per month since EPOCH, so a month's value never depends on the window.
        months = _month_ends(EPOCH, end)
        n = len(months)
        r = _rng(self.seed, _S_MONTHLY)
        values = {
            "cpi_yoy": _ar1(r, 400, 2.5, 0.93, 0.25, 2.5)[:n],
            "unemployment": np.clip(_ar1(r, 400, 5.0, 0.97, 0.18, 4.5), 2.5, None)[:n],
            "pmi": _ar1(r, 400, 52.0, 0.8, 1.6, 52.0)[:n],
        }
        lags = _rng(self.seed, _S_MONTHLY, 1).integers(10, 17, size=400)[:n]
        released = [_session_on_or_after(m + timedelta(days=int(lag))) for m, lag in zip(months, lags)]
        keep = [i for i, m in enumerate(months) if m >= _shift_years(start, -2)]
        return pl.concat(
            [
                pl.DataFrame(
                    {
                        "modality": "macro",
                        "series": name,
                        "period_end": [months[i] for i in keep],
                        "released": [released[i] for i in keep],
                        "value": v[keep],
                    }
                )
                for name, v in values.items()
            ]
        )

    # --- fundamentals --------------------------------------------------------------------------
    def _fundamentals(self, w: _World, start: date, end: date) -> pl.DataFrame:
        quarters = [q for q in _month_ends(EPOCH, end) if q.month in (3, 6, 9, 12)]
        n = len(quarters)
        r = _rng(self.seed, _S_FUND)
        growth = _ar1(r, 200, 0.02, 0.6, 0.03, 0.03)[:n]
        revenue = 500.0 * np.exp(np.cumsum(growth))  # $m per quarter
        gross_margin = np.clip(_ar1(r, 200, 0.55, 0.85, 0.015, 0.55), 0.2, 0.9)[:n]
        op_margin = np.clip(gross_margin - 0.33 + _ar1(r, 200, 0.0, 0.7, 0.01, 0.0)[:n], -0.2, 0.6)
        shares = 100.0 * np.exp(np.cumsum(r.normal(0.0, 0.004, size=200)))[:n]
        eps = revenue * op_margin * 0.79 / shares
        debt_to_equity = np.clip(_ar1(r, 200, 0.6, 0.9, 0.04, 0.5), 0.0, None)[:n]
        fcf = revenue * (op_margin * 0.8 + r.normal(0, 0.02, size=200)[:n])
        # Analyst ratings (1 sell .. 5 buy) and management tone lean on the mood at filing.
        lags = _rng(self.seed, _S_FUND, 1).integers(25, 46, size=200)[:n]
        filed = [_session_on_or_after(q + timedelta(days=int(lag))) for q, lag in zip(quarters, lags)]
        sess = w.sessions[~np.isnat(w.sessions)]
        mood_at = np.array(
            [w.mood[min(int(np.searchsorted(sess, np.datetime64(f, "D"))), len(sess) - 1)] for f in filed]
        )
        tone = np.tanh(0.5 * mood_at + r.normal(0, 0.6, size=200)[:n])
        rating = np.clip(3.4 + 0.5 * mood_at + r.normal(0, 0.4, size=200)[:n], 1, 5)
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
        keep = [i for i, q in enumerate(quarters) if q >= _shift_years(start, -2)]
        return pl.concat(
            [
                pl.DataFrame(
                    {
                        "modality": "fundamental",
                        "series": name,
                        "period_end": [quarters[i] for i in keep],
                        "released": [filed[i] for i in keep],
                        "value": v[keep],
                    }
                )
                for name, v in series.items()
            ]
        )

    # --- texts -----------------------------------------------------------------------------------
    def _texts(self, w: _World, start: date, end: date) -> pl.DataFrame:
        sess = w.sessions[~np.isnat(w.sessions)]
        close_end = calendar.session_close_utc(end)
        rows: list[tuple[datetime, str, str]] = []
        day = start - timedelta(days=4)  # after-close texts of earlier days land in ``start``
        while day <= end:
            # The mood shown on a calendar day is that of the latest session on or before it.
            k = max(int(np.searchsorted(sess, np.datetime64(day, "D"), side="right")) - 1, 0)
            rows.extend(self._texts_for_day(day, float(w.mood[k])))
            day += timedelta(days=1)
        frame = pl.DataFrame(rows, schema=TEXT_SCHEMA, orient="row")
        return frame.filter(pl.col("published_at") < close_end).sort("published_at", "source", "text")

    def _texts_for_day(self, day: date, mood: float) -> list[tuple[datetime, str, str]]:
        r = _rng(self.seed, _S_TEXT, day.toordinal())
        weekend = day.weekday() >= 5
        out: list[tuple[datetime, str, str]] = []
        for source, rate, hours in (
            ("news", self.news_per_day * (0.3 if weekend else 1.0), (6.0, 20.0)),
            ("social", self.social_per_day, (0.0, 24.0)),
        ):
            day_noise = r.normal(0.0, 0.8)
            n = int(r.poisson(rate * (1.0 + 0.3 * abs(mood))))
            p_pos = 1.0 / (1.0 + np.exp(-(0.6 * mood + day_noise)))
            for _ in range(n):
                u = r.random()
                pool = _NEUTRAL if u < 0.3 else (_POSITIVE if r.random() < p_pos else _NEGATIVE)
                text = pool[int(r.integers(0, len(pool)))].format(t=TICKER)
                minutes = int(r.uniform(hours[0] * 60, hours[1] * 60))
                local = datetime(day.year, day.month, day.day, tzinfo=calendar.NEW_YORK) + timedelta(minutes=minutes)
                out.append((local.astimezone(UTC), source, text))
        return out


def _month_ends(start: date, end: date) -> list[date]:
    out = []
    y, m = start.year, start.month
    while True:
        nxt = date(y + (m == 12), m % 12 + 1, 1)
        last = nxt - timedelta(days=1)
        if last > end:
            return out
        out.append(last)
        y, m = nxt.year, nxt.month


def _session_on_or_after(d: date) -> date:
    try:
        return calendar.session_on_or_after(d)
    except ValueError:  # beyond the calendar: it will be filtered out as unreleased anyway
        return d


def _shift_years(d: date, years: int) -> date:
    return date(d.year + years, d.month, min(d.day, 28))
