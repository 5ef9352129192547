"""Hand-computed checks of finnex_ml.evaluation.backtest."""

from __future__ import annotations

import math

import numpy as np
import pytest

from finnex_ml.evaluation.backtest import (
    backtest,
    buy_and_hold,
    performance_metrics,
    positions_from_signals,
    sizes_from_predicted_returns,
)

SQRT252 = math.sqrt(252.0)


def test_known_signal_gives_known_sharpe_and_drawdown() -> None:
    r = np.array([0.02, -0.01, 0.03, -0.02, 0.01])
    # Right on days 0-2 (long, short, long), then stays long through the -2 % day.
    pos = np.array([1.0, -1.0, 1.0, 1.0, 1.0])
    res = backtest(r, pos, cost_bps=0.0)
    # net = [0.02, 0.01, 0.03, -0.02, 0.01]
    np.testing.assert_allclose(res.returns, [0.02, 0.01, 0.03, -0.02, 0.01])
    # mean = 0.05/5 = 0.01; deviations 0.01, 0, 0.02, -0.03, 0 -> var = 1.4e-3 / 4 = 3.5e-4
    assert res.metrics["sharpe"] == pytest.approx(0.01 / math.sqrt(3.5e-4) * SQRT252)
    assert res.metrics["annual_volatility"] == pytest.approx(math.sqrt(3.5e-4) * SQRT252)
    # equity peaks at 1.02*1.01*1.03 then falls 2 % -> max drawdown 0.02
    assert res.metrics["max_drawdown"] == pytest.approx(0.02)
    total = 1.02 * 1.01 * 1.03 * 0.98 * 1.01 - 1
    assert res.metrics["total_return"] == pytest.approx(total)
    assert res.metrics["annual_return"] == pytest.approx((1 + total) ** (252 / 5) - 1)
    # trades = runs of one position: [+1], [-1], [+1, +1, +1]
    np.testing.assert_allclose(res.trades, [0.02, 0.01, 1.03 * 0.98 * 1.01 - 1])
    assert res.metrics["n_trades"] == 3 and res.metrics["win_rate"] == 1.0
    assert math.isinf(res.metrics["profit_factor"])


def test_perfect_foresight_on_alternating_returns() -> None:
    r = np.array([0.01, -0.01] * 10)
    pos = np.sign(r)  # always on the right side
    res = backtest(r, pos, cost_bps=0.0)
    np.testing.assert_allclose(res.returns, 0.01)
    assert res.metrics["max_drawdown"] == 0.0
    assert math.isnan(res.metrics["sharpe"])  # zero volatility: Sharpe undefined, not infinite
    assert math.isnan(res.metrics["calmar"])
    # Always wrong: lose 1 % every day -> drawdown from the starting value 1 is 1 - 0.99^20.
    bad = backtest(r, -pos, cost_bps=0.0)
    assert bad.metrics["max_drawdown"] == pytest.approx(1 - 0.99**20)


def test_drawdown_counts_from_starting_value() -> None:
    m = performance_metrics(np.array([-0.1, 0.05]))
    assert m["max_drawdown"] == pytest.approx(0.1)


def test_costs_charged_on_every_change_entry_and_final_exit() -> None:
    r = np.full(6, 0.01)
    pos = np.array([0.0, 1.0, 1.0, -1.0, -1.0, 0.5])
    res = backtest(r, pos, cost_bps=10.0)
    # |Δpos| with pos[-1] = 0: 0, 1, 0, 2, 0, 1.5; plus the final exit 0.5 on the last row
    traded = np.array([0.0, 1.0, 0.0, 2.0, 0.0, 2.0])
    np.testing.assert_allclose(res.gross_returns, pos * 0.01)
    np.testing.assert_allclose(res.returns, pos * 0.01 - 0.001 * traded)
    # turnover = (1 + 2 + 1.5 + 0.5) / 6 * 252 and the cost drag equals turnover * bps
    assert res.metrics["turnover"] == pytest.approx(5.0 / 6 * 252)
    assert res.metrics["exposure"] == pytest.approx(5 / 6)


def test_buy_and_hold_pays_entry_and_exit_once() -> None:
    r = np.array([0.01, 0.02, -0.01])
    res = buy_and_hold(r, cost_bps=25.0)
    np.testing.assert_allclose(res.positions, 1.0)
    np.testing.assert_allclose(res.returns, [0.01 - 0.0025, 0.02, -0.01 - 0.0025])
    assert len(res.trades) == 1


def test_single_row_pays_entry_and_exit() -> None:
    res = backtest(np.array([0.0]), np.array([-1.0]), cost_bps=5.0)
    assert res.returns[0] == pytest.approx(-2 * 0.0005)


def test_trade_includes_exit_cost_paid_on_following_flat_row() -> None:
    r = np.array([0.01, 0.02, 0.0, 0.03])
    pos = np.array([1.0, 1.0, 0.0, 0.0])
    res = backtest(r, pos, cost_bps=10.0)
    # entry 0.1 % on row 0, exit 0.1 % on row 2 (flat) -> one trade
    np.testing.assert_allclose(res.returns, [0.009, 0.02, -0.001, 0.0])
    np.testing.assert_allclose(res.trades, [1.009 * 1.02 * 0.999 - 1])


def test_equity_is_cumprod_of_net_returns() -> None:
    rng = np.random.default_rng(3)
    r = rng.normal(0, 0.01, 30)
    pos = positions_from_signals(rng.integers(0, 3, 30), 3)
    res = backtest(r, pos, cost_bps=5.0)
    np.testing.assert_allclose(res.equity, np.cumprod(1 + res.returns))
    assert res.metrics["total_return"] == pytest.approx(res.equity[-1] - 1)


def test_non_overlapping_holds_ignore_signals_inside_a_hold() -> None:
    signals = np.array([2, 2, 0, 0, 0, 0, 2, 2, 2, 2, 1])
    pos = positions_from_signals(signals, 5)
    # decisions at rows 0 (buy), 5 (sell) and 10 (hold); the sell at row 2 and buy at row 6 are ignored
    np.testing.assert_array_equal(pos, [1, 1, 1, 1, 1, -1, -1, -1, -1, -1, 0])
    flat = positions_from_signals(signals, 5, short_on_sell=False)
    np.testing.assert_array_equal(flat, [1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(positions_from_signals(signals, 1), [1, 1, -1, -1, -1, -1, 1, 1, 1, 1, 0])


def test_sizes_scale_positions_at_decision_row() -> None:
    signals = np.array([2, 2, 2, 0, 0, 0])
    sizes = np.array([0.5, 0.9, 0.9, 3.0, 0.1, 0.1])
    pos = positions_from_signals(signals, 3, sizes=sizes)
    # row 0: +1 * 0.5; row 3: -1 * clip(3.0) = -1
    np.testing.assert_allclose(pos, [0.5, 0.5, 0.5, -1, -1, -1])
    np.testing.assert_allclose(sizes_from_predicted_returns(np.array([0.01, -0.04, 0.0]), 0.02), [0.5, 1.0, 0.0])


def test_sortino_calmar_profit_factor_win_rate_by_hand() -> None:
    r = np.array([0.02, -0.01, 0.0, 0.03, -0.02])
    m = performance_metrics(r)
    # mean = 0.02/5 = 0.004; downside deviation = sqrt((0.01² + 0.02²)/5) = sqrt(1e-4)
    assert m["sortino"] == pytest.approx(0.004 / 0.01 * SQRT252)
    # equity 1.02, 1.0098, 1.0098, 1.040094, 1.01929212 -> deepest fall 1.02 -> 1.0098 = 1 %,
    # and 1.040094 -> 1.01929212 = 2 %
    assert m["max_drawdown"] == pytest.approx(0.02)
    total = 1.02 * 0.99 * 1.03 * 0.98 - 1
    assert m["calmar"] == pytest.approx(((1 + total) ** (252 / 5) - 1) / 0.02)
    # nonzero periods: wins 0.02, 0.03; losses 0.01, 0.02 -> win rate 2/4, PF 0.05/0.03
    assert m["win_rate"] == pytest.approx(0.5)
    assert m["profit_factor"] == pytest.approx(5 / 3)
    assert m["n_trades"] == 4
    # with explicit trades the trades are used instead
    m2 = performance_metrics(r, trades=np.array([0.05, -0.01, -0.04]))
    assert m2["win_rate"] == pytest.approx(1 / 3) and m2["profit_factor"] == pytest.approx(1.0)
    assert math.isnan(m["turnover"]) and math.isnan(m["exposure"])


def test_no_negative_period_gives_nan_sortino() -> None:
    assert math.isnan(performance_metrics(np.array([0.01, 0.02]))["sortino"])


def test_bad_input_names_the_row() -> None:
    r = np.array([0.01, 0.02, 0.0, np.nan, 0.01])
    with pytest.raises(ValueError, match="row 3"):
        backtest(r, np.ones(5), cost_bps=1.0)
    with pytest.raises(ValueError, match="row 3"):
        backtest(np.zeros(5), np.array([1.0, 1.0, 0.0, np.inf, 0.0]), cost_bps=1.0)
    with pytest.raises(ValueError, match="rows"):
        backtest(np.zeros(5), np.ones(4), cost_bps=1.0)
    with pytest.raises(ValueError, match="row 2"):
        positions_from_signals(np.array([0, 1, 5]), 2)


def test_staggered_positions_average_h_phases_by_hand() -> None:
    from finnex_ml.evaluation.backtest import staggered_positions

    # buy, sell, hold, buy, buy with h = 2: phase 0 decides at rows 0, 2, 4 -> [1, 1, 0, 0, 1];
    # phase 1 decides at rows 1, 3 (flat on row 0) -> [0, -1, -1, 1, 1]; the book is the mean
    sig = np.array([2, 0, 1, 2, 2])
    np.testing.assert_allclose(staggered_positions(sig, 2), [0.5, 0.0, -0.5, 0.5, 1.0])
    np.testing.assert_allclose(staggered_positions(sig, 1), positions_from_signals(sig, 1))
    np.testing.assert_allclose(staggered_positions(sig, 2, short_on_sell=False), [0.5, 0.5, 0.0, 0.5, 1.0])


def test_execution_lag_shifts_the_book_by_one_session() -> None:
    from finnex_ml.evaluation.backtest import lag_positions

    r = np.array([0.01, -0.02, 0.03, 0.01])
    pos = np.array([1.0, -1.0, 1.0, 0.0])
    lagged = lag_positions(pos, 1)
    np.testing.assert_array_equal(lagged, [0.0, 1.0, -1.0, 1.0])
    res = backtest(r, lagged, cost_bps=10)
    # by hand: gross [0, -0.02, -0.03, 0.01]; traded [0, 1, 2, 2 + final exit 1] * 10 bp
    np.testing.assert_allclose(res.returns, [0.0, -0.02 - 0.001, -0.03 - 0.002, 0.01 - 0.003])
    np.testing.assert_array_equal(lag_positions(pos, 0), pos)
    np.testing.assert_array_equal(lag_positions(pos, 9), np.zeros(4))


def test_borrow_cost_is_charged_on_short_days_only() -> None:
    r = np.array([0.0, 0.0, 0.0, 0.0])
    pos = np.array([-1.0, -0.5, 1.0, 0.0])
    res = backtest(r, pos, cost_bps=0, borrow_bps=252.0)  # 252 bp a year = 1 bp a session
    np.testing.assert_allclose(res.returns, [-1e-4, -0.5e-4, 0.0, 0.0])
    with pytest.raises(ValueError, match="borrow_bps"):
        backtest(r, pos, cost_bps=0, borrow_bps=-1)
