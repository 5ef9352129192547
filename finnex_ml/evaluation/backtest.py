"""Single-stock long/short backtest of daily sell/hold/buy signals, with transaction costs.

Timing model
------------
Row i is trading date t_i (consecutive sessions). ``daily_returns[i]`` is
``close(t_{i+1}) / close(t_i) - 1``: what a position held from the close of t_i to the close of
t_{i+1} earns. A signal for t_i is decided with data up to t_i's close, so the position it sets
is ``positions[i]`` and earns ``daily_returns[i]``: nothing from the future is used.

Holding period
--------------
Labels for horizon h are h-day forward returns, so the labels (and signals) of neighbouring
dates overlap. :func:`positions_from_signals` therefore trades non-overlapping holds: a decision
is taken at rows 0, h, 2h, ... and kept for h rows, so every day of P&L is earned by exactly one
decision and nothing is counted twice.

Why daily P&L annualised with 252
---------------------------------
Even though decisions are only taken every h days, the position is marked to market every
session: the strategy's return series is the daily series ``positions[i] * daily_returns[i]``,
including the flat days (zero return). Its mean and standard deviation are per trading day, so
the annual figures use 252 periods whatever h is. Annualising the h-day trade returns with
252 / h would give (for roughly i.i.d. daily returns) the same expected Sharpe, but from h times
fewer observations, ignoring the intra-hold path (drawdowns inside a hold are invisible at h-day
resolution) and the days spent flat. Daily P&L also makes strategies with different horizons
and buy-and-hold directly comparable.

Costs
-----
``cost_bps`` is charged per unit of traded notional: on row i the strategy pays
``cost_bps / 1e4 * |positions[i] - positions[i-1]|`` with ``positions[-1] = 0`` (so the entry
into the first position is paid on row 0), and the final exit ``cost_bps / 1e4 *
|positions[n-1]|`` is paid on the last row as if the book were closed at the end of the data.
A flip from +1 to -1 therefore costs twice the one-way rate; keeping the same position across
consecutive holds costs nothing. ``borrow_bps`` (annual, on the short notional) is charged every
row a position is short: ``borrow_bps / 1e4 / periods_per_year * max(-positions[i], 0)``.

Execution lag
-------------
A signal computed from t's close cannot in practice trade at that same close.
:func:`lag_positions` delays the book by ``lag`` sessions (the position decided at t is held
from t+lag's close), so with ``lag=1`` it earns ``daily_returns[i+1]`` onwards; the first
``lag`` rows are flat. The report's headline uses ``lag=1``.

Staggered sub-portfolios
------------------------
Trading only at rows 0, h, 2h, ... uses one phase of the h-day decision grid, and the result
depends on which phase the data happens to start on. :func:`staggered_positions` runs h
sub-portfolios, sub-portfolio j deciding at rows j, j+h, j+2h, ... and holding for h rows, each
with 1/h of the capital (flat before its first decision); the book is their average, so every
date's signal is used once and trades between sub-portfolios net out. Costs are charged on the
book's net change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from finnex_ml.errors import DataInputError
from finnex_ml.labels import BUY, HOLD, SELL

__all__ = [
    "BacktestResult",
    "positions_from_signals",
    "staggered_positions",
    "lag_positions",
    "sizes_from_predicted_returns",
    "backtest",
    "performance_metrics",
    "buy_and_hold",
    "DEFAULT_PERIODS_PER_YEAR",
]

DEFAULT_PERIODS_PER_YEAR = 252.0
# A sample standard deviation below this (relative to the mean) is rounding noise of a constant
# series; treating it as a real volatility would produce an absurd Sharpe.
_ZERO_STD_RTOL = 1e-12


def _finite_1d(values: np.ndarray, name: str) -> np.ndarray:
    """Return ``values`` as a 1-D float array, naming the first non-finite row if any."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise DataInputError(f"{name} must be 1-D, got shape {arr.shape}", column=name)
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        i = int(bad[0])
        raise DataInputError(f"{name} has a non-finite value ({arr[i]}) at row {i}", column=name, row=i)
    return arr


def positions_from_signals(
    signals: np.ndarray,
    horizon: int,
    *,
    short_on_sell: bool = True,
    sizes: np.ndarray | None = None,
) -> np.ndarray:
    """Turn daily class signals into non-overlapping h-row positions.

    A decision is taken at rows 0, h, 2h, ... from the signal at that row and held for h rows
    (the last hold may be cut short by the end of the data); signals on other rows are ignored.
    buy -> +1, sell -> -1 (0 when ``short_on_sell`` is False), hold -> 0. With ``sizes``
    (e.g. from :func:`sizes_from_predicted_returns`) the position is multiplied by
    ``clip(sizes[decision_row], 0, 1)``.
    """
    if int(horizon) != horizon or horizon < 1:
        raise ValueError(f"horizon must be a positive integer, got {horizon}")
    h = int(horizon)
    sig = np.asarray(signals)
    if sig.ndim != 1:
        raise DataInputError(f"signals must be 1-D, got shape {sig.shape}", column="signals")
    valid = np.isin(sig, (SELL, HOLD, BUY))
    if not valid.all():
        i = int(np.flatnonzero(~valid)[0])
        raise DataInputError(f"signals must be class codes 0/1/2; row {i} is {sig[i]!r}", column="signals", row=i)
    n = sig.shape[0]
    direction = np.zeros(n, dtype=np.float64)
    direction[sig == BUY] = 1.0
    if short_on_sell:
        direction[sig == SELL] = -1.0
    if sizes is not None:
        sz = _finite_1d(sizes, "sizes")
        if sz.shape[0] != n:
            raise DataInputError(f"sizes has {sz.shape[0]} rows but signals has {n}", column="sizes")
        direction = direction * np.clip(sz, 0.0, 1.0)

    decision_rows = np.arange(0, n, h)
    # Row i follows the decision taken at row (i // h) * h.
    return direction[decision_rows][np.arange(n) // h] if n else direction


def staggered_positions(
    signals: np.ndarray,
    horizon: int,
    *,
    short_on_sell: bool = True,
    sizes: np.ndarray | None = None,
) -> np.ndarray:
    """The average of h sub-portfolios (module docstring): sub-portfolio j trades the signal at
    rows j, j+h, ... with :func:`positions_from_signals` and is flat on rows before j. With
    h = 1 this is :func:`positions_from_signals`."""
    h = int(horizon)
    if h != horizon or h < 1:
        raise ValueError(f"horizon must be a positive integer, got {horizon}")
    sig = np.asarray(signals)
    n = sig.shape[0] if sig.ndim == 1 else 0
    if h == 1 or n == 0:
        return positions_from_signals(sig, h, short_on_sell=short_on_sell, sizes=sizes)
    book = np.zeros(n, dtype=np.float64)
    for j in range(min(h, n)):
        sub_sizes = None if sizes is None else np.asarray(sizes)[j:]
        book[j:] += positions_from_signals(sig[j:], h, short_on_sell=short_on_sell, sizes=sub_sizes)
    return book / h


def lag_positions(positions: np.ndarray, lag: int) -> np.ndarray:
    """``positions`` delayed by ``lag`` rows (flat on the first ``lag`` rows): the book that trades
    ``lag`` sessions after the close its signal was computed from."""
    if int(lag) != lag or lag < 0:
        raise ValueError(f"lag must be an integer >= 0, got {lag}")
    pos = _finite_1d(positions, "positions")
    k = int(lag)
    if k == 0:
        return pos
    out = np.zeros_like(pos)
    if k < pos.shape[0]:
        out[k:] = pos[:-k]
    return out


def sizes_from_predicted_returns(pred_returns: np.ndarray, scale: float) -> np.ndarray:
    """Position sizes ``clip(|pred| / scale, 0, 1)``: full size once the predicted move reaches
    ``scale`` (e.g. the label threshold), proportionally smaller below it."""
    if not (scale > 0):
        raise ValueError(f"scale must be > 0, got {scale}")
    pred = _finite_1d(pred_returns, "pred_returns")
    return np.clip(np.abs(pred) / scale, 0.0, 1.0)


@dataclass
class BacktestResult:
    """Outcome of :func:`backtest`.

    ``returns``: net daily strategy returns [n] (after costs); ``gross_returns``: before costs;
    ``positions``: the positions [n] that were traded; ``equity``: ``equity[i] = prod_{j<=i}
    (1 + returns[j])``, the value at the close of t_{i+1} of 1 unit invested at the close of t_0
    (the starting value 1 itself is not an element, so ``len(equity) == n``); ``trades``: net
    return of each holding period with a nonzero position (see :func:`backtest`); ``metrics``:
    :func:`performance_metrics` of ``returns``.
    """

    returns: np.ndarray
    gross_returns: np.ndarray
    positions: np.ndarray
    equity: np.ndarray
    trades: np.ndarray
    metrics: dict[str, float] = field(default_factory=dict)


def _trade_returns(positions: np.ndarray, net: np.ndarray) -> np.ndarray:
    """Compounded net return of each maximal run of an identical nonzero position.

    The run's rows carry its entry cost; when the run is followed by a flat row, that row's
    (cost-only) return is its exit cost and is folded into the trade, so every cost belongs to
    exactly one trade. An exit straight into another position is paid on the new run's first row.
    """
    n = positions.shape[0]
    if n == 0:
        return np.zeros(0)
    change = np.flatnonzero(np.diff(positions) != 0) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [n]])
    trades = []
    for s, e in zip(starts, ends):
        if positions[s] == 0:
            continue
        value = float(np.prod(1.0 + net[s:e]))
        if e < n and positions[e] == 0:
            value *= 1.0 + float(net[e])
        trades.append(value - 1.0)
    return np.asarray(trades, dtype=np.float64)


def backtest(
    daily_returns: np.ndarray,
    positions: np.ndarray,
    *,
    cost_bps: float,
    periods_per_year: float = DEFAULT_PERIODS_PER_YEAR,
    borrow_bps: float = 0.0,
) -> BacktestResult:
    """Daily P&L of ``positions`` on ``daily_returns`` with linear transaction costs.

    ``net[i] = positions[i] * daily_returns[i] - cost_bps / 1e4 * |positions[i] -
    positions[i-1]| - borrow_bps / 1e4 / periods_per_year * max(-positions[i], 0)`` with
    ``positions[-1] = 0``; the final exit ``cost_bps / 1e4 * |positions[n-1]|`` is charged on
    the last row. Trades are maximal runs of the same nonzero
    position (consecutive holds of the same side merge into one trade).
    """
    r = _finite_1d(daily_returns, "daily_returns")
    pos = _finite_1d(positions, "positions")
    if r.shape[0] != pos.shape[0]:
        raise DataInputError(f"daily_returns has {r.shape[0]} rows but positions has {pos.shape[0]}")
    if r.shape[0] == 0:
        raise DataInputError("backtest needs at least one row")
    if not (cost_bps >= 0) or not math.isfinite(cost_bps):
        raise ValueError(f"cost_bps must be a finite number >= 0, got {cost_bps}")
    if not (borrow_bps >= 0) or not math.isfinite(borrow_bps):
        raise ValueError(f"borrow_bps must be a finite number >= 0, got {borrow_bps}")

    rate = cost_bps / 1e4
    traded = np.abs(np.diff(pos, prepend=0.0))
    traded[-1] += abs(pos[-1])  # close the book at the end of the data
    gross = pos * r
    net = gross - rate * traded - borrow_bps / 1e4 / periods_per_year * np.maximum(-pos, 0.0)
    trades = _trade_returns(pos, net)
    return BacktestResult(
        returns=net,
        gross_returns=gross,
        positions=pos,
        equity=np.cumprod(1.0 + net),
        trades=trades,
        metrics=performance_metrics(net, periods_per_year, positions=pos, trades=trades),
    )


def buy_and_hold(
    daily_returns: np.ndarray,
    cost_bps: float,
    periods_per_year: float = DEFAULT_PERIODS_PER_YEAR,
) -> BacktestResult:
    """Long 1 unit every row (one entry and one exit cost): the baseline every signal must beat."""
    r = _finite_1d(daily_returns, "daily_returns")
    return backtest(r, np.ones_like(r), cost_bps=cost_bps, periods_per_year=periods_per_year)


def performance_metrics(
    returns: np.ndarray,
    periods_per_year: float = DEFAULT_PERIODS_PER_YEAR,
    positions: np.ndarray | None = None,
    trades: np.ndarray | None = None,
) -> dict[str, float]:
    """Risk/return summary of a series of per-period (daily) returns.

    * ``total_return``: compounded, ``prod(1 + r) - 1``;
    * ``annual_return``: CAGR ``(1 + total)^(ppy / n) - 1`` (-1 if the equity reached 0 or less);
    * ``annual_volatility``: ``std(r, ddof=1) * sqrt(ppy)``;
    * ``sharpe``: ``mean / std(ddof=1) * sqrt(ppy)``, risk-free rate 0; NaN if std == 0 or n < 2;
    * ``sortino``: ``mean / sqrt(mean(min(r, 0)^2)) * sqrt(ppy)``, the downside deviation taken
      over all periods; NaN if no period is negative;
    * ``max_drawdown``: largest peak-to-trough fall of the equity curve that starts at 1,
      as a positive fraction; ``calmar``: annual_return / max_drawdown (NaN if it is 0);
    * ``win_rate`` / ``profit_factor``: over ``trades`` if given, else over the nonzero-return
      periods; win rate = share > 0; profit factor = sum of gains / |sum of losses| (inf with
      gains and no losses, NaN with neither); ``n_trades`` counts what they were computed over;
    * ``turnover``: traded notional per year, ``(sum |Δposition| incl. the entry from 0 and the
      final exit to 0) / n * ppy``, so the yearly cost drag is ``turnover * cost_bps / 1e4``;
      ``exposure``: share of rows with a nonzero position (both NaN without ``positions``);
    * ``n_periods``.
    """
    r = _finite_1d(returns, "returns")
    n = r.shape[0]
    if n == 0:
        raise DataInputError("performance_metrics needs at least one period")
    if not (periods_per_year > 0):
        raise ValueError(f"periods_per_year must be > 0, got {periods_per_year}")
    ppy = float(periods_per_year)
    nan = math.nan

    equity = np.cumprod(1.0 + r)
    total = float(equity[-1] - 1.0)
    annual = (1.0 + total) ** (ppy / n) - 1.0 if total > -1.0 else -1.0

    mean = float(np.mean(r))
    std = float(np.std(r, ddof=1)) if n >= 2 else nan
    vol = std * math.sqrt(ppy) if n >= 2 else nan
    flat = n < 2 or std <= _ZERO_STD_RTOL * max(1.0, abs(mean))
    sharpe = nan if flat else mean / std * math.sqrt(ppy)

    downside = np.minimum(r, 0.0)
    sortino = nan
    if np.any(downside < 0):
        sortino = mean / math.sqrt(float(np.mean(downside**2))) * math.sqrt(ppy)

    curve = np.concatenate([[1.0], equity])
    peaks = np.maximum.accumulate(curve)
    mdd = float(np.max(1.0 - curve / peaks))
    calmar = annual / mdd if mdd > 0 else nan

    outcomes = _finite_1d(trades, "trades") if trades is not None else r[r != 0]
    if outcomes.size:
        win_rate = float(np.mean(outcomes > 0))
        gains = float(outcomes[outcomes > 0].sum())
        losses = float(-outcomes[outcomes < 0].sum())
        if losses > 0:
            profit_factor = gains / losses
        else:
            profit_factor = math.inf if gains > 0 else nan
    else:
        win_rate = profit_factor = nan

    turnover = exposure = nan
    if positions is not None:
        pos = _finite_1d(positions, "positions")
        if pos.shape[0] != n:
            raise DataInputError(f"positions has {pos.shape[0]} rows but returns has {n}")
        traded = float(np.abs(np.diff(pos, prepend=0.0)).sum() + abs(pos[-1]))
        turnover = traded / n * ppy
        exposure = float(np.mean(pos != 0))

    return {
        "total_return": total,
        "annual_return": float(annual),
        "annual_volatility": float(vol),
        "sharpe": float(sharpe),
        "sortino": float(sortino),
        "max_drawdown": mdd,
        "calmar": float(calmar),
        "win_rate": win_rate,
        "profit_factor": float(profit_factor),
        "turnover": float(turnover),
        "exposure": float(exposure),
        "n_periods": float(n),
        "n_trades": float(outcomes.size),
    }
