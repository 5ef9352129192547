"""Checks of finnex_ml.evaluation.uncertainty against hand-written formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from finnex_ml.evaluation.uncertainty import (
    block_bootstrap_indices,
    bootstrap_ci,
    breakdown_by_group,
    classification_intervals,
    default_block,
    deflated_sharpe_ratio,
    metrics_by_regime,
    probabilistic_sharpe_ratio,
    regimes_from_closes,
    sharpe_interval,
)

RETURNS = np.array([0.01, -0.005, 0.02, 0.0, -0.01, 0.015, 0.005, -0.002, 0.008, -0.012])


def test_block_bootstrap_indices_are_circular_blocks() -> None:
    n, block = 10, 3
    idx = block_bootstrap_indices(n, block, n_boot=200, seed=7)
    assert idx.shape == (200, n)
    assert idx.min() >= 0 and idx.max() < n
    # Inside each block of 3 positions, the next row is the previous + 1 (mod n).
    for start in range(0, n, block):
        chunk = idx[:, start : start + block]
        assert np.all((chunk[:, 1:] - chunk[:, :-1]) % n == 1)
    # Some blocks wrap from the last row to row 0.
    within = np.concatenate([idx[:, s : s + block] for s in range(0, n - block + 1, block)], axis=1)
    assert np.any((within[:, :-1] == n - 1) & (within[:, 1:] == 0))
    np.testing.assert_array_equal(idx, block_bootstrap_indices(n, block, n_boot=200, seed=7))
    assert not np.array_equal(idx, block_bootstrap_indices(n, block, n_boot=200, seed=8))


def test_default_block() -> None:
    assert default_block(1000, 5) == 10  # round(1000^(1/3)) = 10 > 5
    assert default_block(1000, 20) == 20
    assert default_block(8, 20) == 8  # capped at n


def test_ci_contains_estimate_and_narrows_with_more_data() -> None:
    rng = np.random.default_rng(0)
    small = rng.normal(0.0, 1.0, 100)
    large = rng.normal(0.0, 1.0, 2000)
    ci_s = bootstrap_ci(np.mean, [small], block=5, n_boot=300, seed=1)
    ci_l = bootstrap_ci(np.mean, [large], block=5, n_boot=300, seed=1)
    for ci in (ci_s, ci_l):
        assert ci["lower"] <= ci["estimate"] <= ci["upper"]
        assert ci["valid_resamples"] == 300
    assert (ci_l["upper"] - ci_l["lower"]) < 0.5 * (ci_s["upper"] - ci_s["lower"])
    assert ci_s == bootstrap_ci(np.mean, [small], block=5, n_boot=300, seed=1)  # deterministic


def test_ci_ignores_nan_resamples() -> None:
    x = np.array([0.0, 0.0, 0.0, 1.0, 2.0, 3.0])

    def nan_if_constant(v: np.ndarray) -> float:
        return float("nan") if np.ptp(v) == 0 else float(np.mean(v))

    ci = bootstrap_ci(nan_if_constant, [x], block=3, n_boot=200, seed=0)
    # a resample of two copies of the block (0, 0, 0) is constant and must be skipped
    assert 0 < ci["valid_resamples"] < 200
    assert not math.isnan(ci["lower"])


def test_random_predictions_interval_contains_chance() -> None:
    rng = np.random.default_rng(42)
    y = rng.integers(0, 3, 600)
    pred = rng.permutation(y)  # same class mix, no information
    out = classification_intervals(y, pred, block=10, n_boot=300, seed=3)
    for key in ("accuracy", "balanced_accuracy"):
        assert out[key]["lower"] < 1 / 3 < out[key]["upper"]
    # perfect predictions: every resample scores 1
    perfect = classification_intervals(y, y, block=10, n_boot=50, seed=3)
    assert perfect["accuracy"]["lower"] == perfect["accuracy"]["upper"] == 1.0


def test_sharpe_interval_contains_estimate() -> None:
    rng = np.random.default_rng(5)
    r = rng.normal(0.001, 0.01, 500)
    ci = sharpe_interval(r, block=10, n_boot=300, seed=0)
    assert ci["estimate"] == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(252))
    assert ci["lower"] < ci["estimate"] < ci["upper"]


def _hand_psr(r: np.ndarray, benchmark: float) -> float:
    """PSR written out: SR = mean/std(ddof=1), skew = m3/m2^1.5, kurt = m4/m2^2 (population)."""
    t = len(r)
    sr = r.mean() / r.std(ddof=1)
    d = r - r.mean()
    m2, m3, m4 = (d**2).mean(), (d**3).mean(), (d**4).mean()
    g3, g4 = m3 / m2**1.5, m4 / m2**2
    return norm.cdf((sr - benchmark) * math.sqrt(t - 1) / math.sqrt(1 - g3 * sr + (g4 - 1) / 4 * sr**2))


def test_psr_matches_formula() -> None:
    assert probabilistic_sharpe_ratio(RETURNS) == pytest.approx(_hand_psr(RETURNS, 0.0), rel=1e-12)
    assert probabilistic_sharpe_ratio(RETURNS, 0.1) == pytest.approx(_hand_psr(RETURNS, 0.1), rel=1e-12)
    # a higher benchmark is harder to beat
    assert probabilistic_sharpe_ratio(RETURNS, 0.3) < probabilistic_sharpe_ratio(RETURNS, 0.0)


def test_dsr_matches_formula_and_deflates() -> None:
    trials = [0.05, -0.1, 0.2, 0.15, -0.05, 0.3, 0.0, 0.1]
    n = len(trials)
    gamma = 0.5772156649015329
    e_max = math.sqrt(np.var(trials, ddof=1)) * (
        (1 - gamma) * norm.ppf(1 - 1 / n) + gamma * norm.ppf(1 - 1 / (n * math.e))
    )
    out = deflated_sharpe_ratio(RETURNS, trials)
    assert out["expected_max_sharpe"] == pytest.approx(e_max, rel=1e-12)
    assert out["deflated_sharpe"] == pytest.approx(_hand_psr(RETURNS, e_max), rel=1e-12)
    assert out["n_trials"] == n
    assert out["sharpe_per_period"] == pytest.approx(RETURNS.mean() / RETURNS.std(ddof=1))
    assert out["deflated_sharpe"] < probabilistic_sharpe_ratio(RETURNS, 0.0)
    single = deflated_sharpe_ratio(RETURNS, [0.12])
    assert single["expected_max_sharpe"] == 0.0
    assert single["deflated_sharpe"] == pytest.approx(probabilistic_sharpe_ratio(RETURNS, 0.0))


def test_regimes_thresholds() -> None:
    closes = np.array([100.0, 100.0, 100.0, 110.0, 100.0, 90.0, 90.0, 104.0])
    reg = regimes_from_closes(closes, window=3, band=0.05)
    # rows 0-2: no close 3 sessions back; row 3: 110/100-1 = +10 % bull; row 4: 0 % sideways;
    # row 5: -10 % bear; row 6: 90/110-1 = -18 % bear; row 7: 104/100-1 = +4 % sideways
    assert reg.tolist() == ["unknown"] * 3 + ["bull", "sideways", "bear", "bear", "sideways"]


def test_regimes_use_only_past_data() -> None:
    rng = np.random.default_rng(1)
    closes = 100 * np.cumprod(1 + rng.normal(0, 0.02, 120))
    base = regimes_from_closes(closes, window=20)
    for i in (0, 19, 20, 50, 118):
        changed = closes.copy()
        changed[i + 1 :] = changed[i + 1 :] * rng.uniform(0.5, 1.5, len(changed) - i - 1)
        np.testing.assert_array_equal(regimes_from_closes(changed, window=20)[: i + 1], base[: i + 1])


def test_metrics_by_regime_and_breakdown() -> None:
    regimes = np.array(["bull", "bear", "bull", "bear", "bull"])
    y_true = np.array([2, 0, 2, 1, 0])
    y_pred = np.array([2, 0, 1, 0, 0])
    rets = np.array([0.01, 0.02, 0.03, -0.01, 0.02])
    parts = breakdown_by_group(regimes, y=y_true)
    np.testing.assert_array_equal(parts["bull"]["y"], [2, 2, 0])
    out = metrics_by_regime(regimes, y_true, y_pred, strategy_returns=rets)
    # bull rows 0, 2, 4: correct, wrong, correct -> 2/3; recalls buy 1/2, sell 1/1 -> 3/4
    assert out["bull"]["n"] == 3
    assert out["bull"]["accuracy"] == pytest.approx(2 / 3)
    assert out["bull"]["balanced_accuracy"] == pytest.approx(0.75)
    bull_r = np.array([0.01, 0.03, 0.02])
    assert out["bull"]["sharpe"] == pytest.approx(bull_r.mean() / bull_r.std(ddof=1) * math.sqrt(252))
    # bear rows 1, 3: sell right, hold wrong -> accuracy 1/2; both rows are called sell, a
    # constant predictor, so balanced accuracy is chance 1/3 (it was (1 + 0)/2 = 1/2 when chance
    # moved with the classes present)
    assert out["bear"]["accuracy"] == pytest.approx(0.5)
    assert out["bear"]["balanced_accuracy"] == pytest.approx(1 / 3)
    assert math.isnan(metrics_by_regime(regimes, y_true, y_pred)["bull"]["sharpe"])


def test_vectorised_resample_statistics_give_the_same_intervals_as_the_per_resample_loop() -> None:
    from finnex_ml.evaluation import cross_section as cs
    from finnex_ml.evaluation.uncertainty import _accuracy, _annualised_sharpe, _balanced_accuracy

    rng = np.random.default_rng(11)
    y, p = rng.integers(0, 3, 90), rng.integers(0, 3, 90)
    r = rng.normal(0.001, 0.01, 90)
    common = dict(block=5, n_boot=400, seed=4)
    fast = classification_intervals(y, p, **common)
    assert fast["accuracy"] == bootstrap_ci(_accuracy, [y, p], **common)
    assert fast["balanced_accuracy"] == bootstrap_ci(_balanced_accuracy, [y, p], **common)
    assert sharpe_interval(r, **common) == bootstrap_ci(lambda x: _annualised_sharpe(x, 252.0), [r], **common)
    for scalar, rows in ((cs._sharpe(50.4), cs._sharpe_rows(50.4)), (np.mean, cs._row_means)):
        assert bootstrap_ci(scalar, [r], **common) == bootstrap_ci(scalar, [r], batch=rows, **common)
    flat = np.zeros(40)  # sd 0 on every resample: NaN Sharpe in both forms, no valid resample
    assert math.isnan(sharpe_interval(flat, **common)["lower"])
    idx = block_bootstrap_indices(90, 5, 400, seed=4)
    idx[0, 0] = -1  # a caller's copy: the cached draw is untouched
    assert block_bootstrap_indices(90, 5, 400, seed=4)[0, 0] != -1
