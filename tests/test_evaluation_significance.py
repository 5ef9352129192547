"""Evaluation statistics that can fire: fixed-chance balanced accuracy, arch's block length,
permutation tests, the label-shift placebo, DM/SPA, the leak scan's permutation bar."""

from __future__ import annotations

import math

import numpy as np
import pytest

from finnex_ml.evaluation import significance as sg
from finnex_ml.evaluation.baselines import tabular_probs
from finnex_ml.evaluation.leakage import scan_features
from finnex_ml.evaluation.metrics import (
    balanced_accuracy,
    hac_mean_test,
    is_degenerate,
    prediction_diversity,
    probabilistic_skill,
)
from finnex_ml.evaluation.uncertainty import classification_intervals, optimal_block


def test_constant_predictor_balanced_accuracy_interval_is_exactly_one_third() -> None:
    rng = np.random.default_rng(3)
    # a short, unbalanced test set: many resamples lack a class, which used to move chance to 1/2
    y = rng.choice(3, size=25, p=[0.15, 0.6, 0.25])
    for cls in (0, 1, 2):
        ci = classification_intervals(y, np.full(25, cls), block=5, n_boot=400, seed=1)["balanced_accuracy"]
        assert ci["estimate"] == 1 / 3 and ci["lower"] == 1 / 3 and ci["upper"] == 1 / 3, (cls, ci)


def test_balanced_accuracy_fixed_scale_values() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    assert balanced_accuracy(y, y) == 1.0
    assert balanced_accuracy(y, (y + 1) % 3) == 0.0
    # all classes present: the usual mean recall, (1/2 + 1 + 0) / 3
    assert balanced_accuracy(y, np.array([0, 1, 1, 1, 1, 1])) == pytest.approx(1 / 2)
    # hold absent; perfect on the two present classes -> 1 on the fixed scale, not a 2-class 1
    assert balanced_accuracy(np.array([0, 2, 0, 2]), np.array([0, 2, 0, 2])) == 1.0
    # one class only: undefined
    assert math.isnan(balanced_accuracy(np.array([1, 1, 1]), np.array([1, 0, 1])))


def test_probabilistic_skill_against_the_training_prior() -> None:
    y = np.array([0, 1, 2, 2])
    prior = [0.25, 0.25, 0.5]
    same = probabilistic_skill(y, np.tile(prior, (4, 1)), prior)
    assert same["log_loss_skill"] == pytest.approx(0.0) and same["brier_skill"] == pytest.approx(0.0)
    perfect = probabilistic_skill(y, np.eye(3)[y], prior)
    assert perfect["brier_skill"] == pytest.approx(1.0) and perfect["log_loss_skill"] > 0.99
    # Brier of the prior by hand: rows 0, 1 -> 0.75^2 + 0.25^2 + 0.5^2 = 0.875; rows 2, 3 -> 0.25^2 * 2 + 0.5^2 = 0.375
    assert same["brier_prior"] == pytest.approx((0.875 * 2 + 0.375 * 2) / 4)
    assert same["log_loss_prior"] == pytest.approx(-(math.log(0.25) * 2 + math.log(0.5) * 2) / 4)


def test_prediction_diversity_and_degenerate_flag() -> None:
    pred = np.array([2] * 19 + [0])
    d = prediction_diversity(pred, 3)
    assert d["shares"] == [0.05, 0.0, 0.95] and d["top_class"] == 2 and d["n_classes_used"] == 2
    assert is_degenerate(pred) and not is_degenerate(pred, threshold=0.95)
    assert not is_degenerate(np.array([0, 1, 2] * 5))
    assert prediction_diversity(np.array([1, 1]))["entropy"] == 0.0


def test_optimal_block_reproduces_arch_on_an_ar1_series() -> None:
    from arch.bootstrap import optimal_block_length

    rng = np.random.default_rng(0)
    e = rng.standard_normal(600)
    x = np.empty(600)
    x[0] = e[0]
    for i in range(1, 600):
        x[i] = 0.7 * x[i - 1] + e[i]
    expected = math.ceil(float(optimal_block_length(x)["circular"].iloc[0]))
    assert expected > 5  # a persistent series needs long blocks
    assert optimal_block(x, horizon=1) == expected
    assert optimal_block(x, horizon=expected + 3) == expected + 3  # never shorter than the horizon


def test_hac_mean_test_matches_statsmodels_and_inflates_for_overlap() -> None:
    rng = np.random.default_rng(1)
    x = np.convolve(rng.standard_normal(400), np.ones(5), mode="valid") * 0.01 + 0.001  # overlapping 5-day sums
    hac = hac_mean_test(x, lags=4)
    naive_se = x.std(ddof=1) / math.sqrt(x.size)
    assert hac["se"] > 1.5 * naive_se  # overlap makes the i.i.d. standard error far too small
    assert hac["t"] == pytest.approx(hac["mean"] / hac["se"])


def _planted(n: int, signal: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 4))
    score = signal * X[:, 0] + rng.standard_normal(n)
    y = np.digitize(score, np.quantile(score, [1 / 3, 2 / 3]))
    return X, y


@pytest.mark.parametrize("signal,significant", [(1.5, True), (0.0, False)])
def test_refit_permutation_test_fires_on_a_planted_signal_only(signal: float, significant: bool) -> None:
    X, y = _planted(300, signal, seed=11)
    tr, te = slice(0, 200), slice(200, 300)

    def score(y_train: np.ndarray) -> float:
        probs = tabular_probs("logistic", X[tr], y_train, X[te], seed=0)
        return balanced_accuracy(y[te], probs.argmax(1))

    res = sg.refit_permutation_test(score, y[tr], block=5, n_perm=100, seed=2)
    assert res["n_perm"] == 100
    if significant:
        assert res["p_value"] < 0.01 and res["statistic"] > 0.5
    else:
        assert res["p_value"] > 0.05


def test_refit_permutation_test_stops_early_only_when_the_fit_is_clearly_null() -> None:
    """Besag-Clifford: on noise the refits stop at the 10th permuted fit that matches the real
    one (p = 10 / refits done, a prefix of the fixed test's null); on a planted signal no refit
    matches it, so all run and p equals the fixed-count test's."""
    calls = []

    def scorer(X: np.ndarray, y: np.ndarray):
        def score(y_train: np.ndarray) -> float:
            calls.append(1)
            probs = tabular_probs("logistic", X[:200], y_train, X[200:], seed=0)
            return balanced_accuracy(y[200:], probs.argmax(1))

        return score

    for signal in (0.0, 1.5):
        X, y = _planted(300, signal, seed=11)
        full = sg.refit_permutation_test(scorer(X, y), y[:200], block=5, n_perm=100, seed=2)
        calls.clear()
        seq = sg.refit_permutation_test(scorer(X, y), y[:200], block=5, n_perm=100, seed=2, stop_after=10)
        assert len(calls) == 1 + seq["n_perm"]  # the real fit plus the refits done, no more
        if signal == 0.0:
            assert seq["stopped_early"] and seq["n_perm"] < 60
            assert seq["p_value"] == pytest.approx(10 / seq["n_perm"]) and seq["p_value"] > 0.1
            assert full["p_value"] > 0.1  # the same verdict as all 100 refits
        else:
            assert not seq["stopped_early"] and seq["n_perm"] == 100
            assert seq["p_value"] == full["p_value"] < 0.01


def _refit_score(X: np.ndarray, y_test: np.ndarray, kind: str, boosting, y_train: np.ndarray) -> float:
    probs = tabular_probs(kind, X[:200], y_train, X[200:], seed=0, boosting=boosting)
    return balanced_accuracy(y_test, probs.argmax(1))


def test_refit_permutations_in_two_processes_give_the_same_null_and_cheap_boosting_still_finds_a_signal() -> None:
    from functools import partial

    from finnex_ml.evaluation.baselines import REFIT_BOOSTING

    X, y = _planted(300, 1.5, seed=11)
    score = partial(_refit_score, X, y[200:], "gradient_boosting", REFIT_BOOSTING)
    one = sg.refit_permutation_test(score, y[:200], block=5, n_perm=12, seed=2)
    two = sg.refit_permutation_test(score, y[:200], block=5, n_perm=12, seed=2, n_jobs=2)
    assert one == two  # the same refits, in any process
    assert one["statistic"] > 0.5 and one["p_value"] == pytest.approx(1 / 13)  # beats all 12 permuted refits


def test_fixed_prediction_permutation_test_and_label_shift_placebo() -> None:
    X, y = _planted(400, 2.0, seed=5)
    pred = np.digitize(X[:, 0], np.quantile(X[:, 0], [1 / 3, 2 / 3]))
    res = sg.permutation_test(y, pred, block=5, n_perm=200, seed=0)
    assert res["p_value"] < 0.01 and res["null_mean"] == pytest.approx(1 / 3, abs=0.02)
    noise = sg.permutation_test(y, np.random.default_rng(10).integers(0, 3, 400), block=5, n_perm=200, seed=0)
    assert noise["p_value"] > 0.05
    # honest forecaster: labels shifted 5 and 10 rows into the future carry no skill
    shifted = {k: np.concatenate([y[k:], np.full(k, np.nan)]) for k in (5, 10)}
    rows = sg.label_shift_placebo(pred, shifted, block=5, n_perm=200, seed=0)
    assert [r["shift"] for r in rows] == [5, 10] and not any(r["fails"] for r in rows)
    # a "forecaster" that is really aligned with the labels 5 rows later fails the placebo
    late = np.concatenate([y[5:], y[:5]])
    rows = sg.label_shift_placebo(late, shifted, block=5, n_perm=200, seed=0)
    assert rows[0]["fails"] and rows[0]["balanced_accuracy"] == pytest.approx(1.0)


def test_diebold_mariano_and_spa() -> None:
    rng = np.random.default_rng(4)
    base = rng.uniform(0.5, 0.8, 300)
    better = base - 0.05 + rng.normal(0, 0.05, 300)
    dm = sg.diebold_mariano(better, base, horizon=5)
    assert dm["mean_diff"] < 0 and dm["p_value_model_better"] < 0.01
    same = sg.diebold_mariano(base + rng.normal(0, 0.05, 300), base, horizon=1)
    assert same["p_value"] > 0.01
    spa = sg.spa_test(base, np.column_stack([better, base + 0.01]), block=5, reps=200, seed=0)
    assert spa["p_value"] < 0.05
    worse = sg.spa_test(base, (base + 0.05 + rng.normal(0, 0.05, 300))[:, None], block=5, reps=200, seed=0)
    assert worse["p_value"] > 0.2  # a clearly worse model: no evidence of superiority


def test_minimum_detectable_effect_by_hand() -> None:
    m = sg.minimum_detectable_effect(252, 5)
    z = 1.959963984540054 + 0.8416212335729143
    assert m["sharpe"] == pytest.approx(z)  # one year of daily P&L: annual Sharpe ~2.8
    assert m["n_independent"] == pytest.approx(50.4)
    assert m["accuracy"] == pytest.approx(z * math.sqrt(2 / 9 / 50.4))
    assert m["ic"] == pytest.approx(z / math.sqrt(50.4))


def _leak_world(n: int = 250, seed: int = 0) -> tuple[np.ndarray, list[str], dict[int, np.ndarray]]:
    rng = np.random.default_rng(seed)
    daily = rng.standard_normal(n + 5) * 0.01
    fwd = {h: np.array([daily[t + 1 : t + 1 + h].sum() for t in range(n)]) for h in (1, 5)}
    X = rng.standard_normal((n, 6))
    return X, [f"f{j}" for j in range(6)], fwd


def test_scan_catches_a_partial_five_day_leak_the_fixed_bar_missed() -> None:
    X, names, fwd = _leak_world()
    rng = np.random.default_rng(42)
    z5 = (fwd[5] - fwd[5].mean()) / fwd[5].std()
    # a partial leak of the 5-day forward return: rho ~ 0.2 (0.22 in this sample)
    leak = 0.25 * z5 + math.sqrt(1 - 0.25**2) * rng.standard_normal(len(z5))
    X = np.column_stack([X, leak])
    rep = scan_features(X, names + ["leaky"], fwd, n_perm=200, seed=0)
    rho = dict(rep.top)["leaky"]
    assert 0.18 < abs(rho) < 0.3
    assert abs(rho) < max(0.3, 5 / math.sqrt(len(z5) - 1))  # the old fixed bar let it through
    assert [f for f, _ in rep.flagged] == ["leaky"]
    assert rep.flagged_by_horizon[0]["horizon"] == 5 and rep.flagged_by_horizon[0]["p_value"] < 0.05
    assert rep.threshold < abs(rho) and rep.horizons == [1, 5]
    clean = scan_features(X[:, :-1], names, fwd, n_perm=200, seed=0)
    assert clean.passed and clean.threshold < 0.3


def test_yearly_folds_purge_and_pooled_predictions_are_out_of_sample() -> None:
    from datetime import date, timedelta

    from finnex_ml.evaluation.walkforward import pooled_tabular, yearly_folds

    dates = [date(2019, 1, 1) + timedelta(days=i) for i in range(0, 3 * 365, 5)]  # ~3 years, 219 rows
    folds = yearly_folds(dates, purge=5, min_train=60)
    years = [f.label for f in folds]
    assert years == ["2020", "2021"]  # 2019 has no history before it
    for f in folds:
        first_test = int(f.test[0])
        assert int(f.train[-1]) == first_test - 6  # the last 5 rows before the test year are purged
        assert all(dates[i].year == int(f.label) for i in f.test)
    X, y = _planted(len(dates), 1.5, seed=3)
    pp = pooled_tabular(X, y, folds, seed=0, purge=5)
    assert pp.rows.tolist() == [i for f in folds for i in f.test.tolist()]
    assert pp.probs["gradient_boosting"].shape == (pp.rows.size, 3)
    # the last fold has enough rows for an inner purged validation block to choose the iterations
    assert pp.folds[-1]["gradient_boosting_early_stopped"] and 1 <= pp.folds[-1]["gradient_boosting_iterations"] <= 200
    # each pooled row's prior is its own fold's training class shares
    f0 = folds[0]
    np.testing.assert_allclose(pp.train_prior[0], np.bincount(y[f0.train], minlength=3) / f0.train.size)
    assert balanced_accuracy(y[pp.rows], pp.probs["logistic"].argmax(1)) > 0.5


def test_a_strong_legitimate_signal_warns_but_does_not_block() -> None:
    """A feature known at t that really predicts the next return (rho ~ 0.35) is flagged by the
    correlation scan, but the blocking verdict rests on the placebo and implausible skill, which
    it passes: its skill vanishes against labels shifted past the forecast window."""
    from finnex_ml.evaluation.evaluate import EvalConfig, _leak_doc
    from finnex_ml.evaluation.leakage import suspicious_scores

    rng = np.random.default_rng(8)
    n = 400
    signal = rng.standard_normal(n + 3)  # known at t's close
    r1 = 0.4 * signal[:-3] + rng.standard_normal(n)  # r1[t]: return over (t, t+1], driven by signal[t]
    X = np.column_stack([signal[:n], rng.standard_normal((n, 5))])
    rep = scan_features(X, ["legit"] + [f"f{j}" for j in range(5)], {1: r1}, n_perm=200, seed=0)
    assert [f for f, _ in rep.flagged] == ["legit"] and abs(dict(rep.top)["legit"]) > 0.3
    y = np.digitize(r1, np.quantile(r1, [1 / 3, 2 / 3]))
    pred = np.digitize(signal[:n], np.quantile(signal[:n], [1 / 3, 2 / 3]))
    assert sg.permutation_test(y, pred, block=2, n_perm=200, seed=0)["p_value"] < 0.01  # real skill
    shifted = {k: np.concatenate([y[k:], np.full(k, np.nan)]) for k in (1, 2)}
    placebo = [
        {"model": "logistic", "horizon": 1, **r}
        for r in sg.label_shift_placebo(pred, shifted, block=2, n_perm=400, seed=0)
    ]
    assert not any(r["fails"] for r in placebo)
    ci = classification_intervals(y, pred, block=2, n_boot=300, seed=0)["balanced_accuracy"]
    rows = [
        {
            "model": "logistic",
            "horizon": 1,
            "balanced_accuracy_lower": ci["lower"],
            "balanced_accuracy_ci": [ci["lower"], ci["upper"]],
        }
    ]
    doc = _leak_doc(rep, suspicious_scores(rows), placebo, EvalConfig())
    assert doc["passed"] and doc["blocking"] == [] and len(doc["warnings"]) == 1
    assert doc["feature_scan"]["verdict"] == "warning only"


def test_prebin_gives_monotone_codes_of_the_training_quantiles_and_keeps_missing_values() -> None:
    from finnex_ml.evaluation.baselines import prebin

    rng = np.random.default_rng(3)
    X = rng.standard_normal((600, 3))
    X[::7, 1] = np.nan
    X[:, 2] = rng.integers(0, 4, 600)  # few distinct values: one code each
    A, B = prebin(X[:500], np.vstack([X[500:], [[-99.0, 99.0, 3.0]]]))
    for j in range(3):
        ok = np.isfinite(X[:500, j])
        assert np.array_equal(np.isnan(A[:, j]), ~ok)
        order = np.argsort(X[:500, j][ok], kind="stable")
        assert np.all(np.diff(A[:, j][ok][order]) >= 0)  # monotone in the raw value
        assert len(np.unique(A[:, j][ok])) <= 255
    assert len(np.unique(A[:, 0])) > 200 and len(np.unique(A[:, 2])) == 4
    assert B[-1, 0] == 0 and B[-1, 1] == np.nanmax(A[:, 1])  # beyond the training range: the end codes
    assert np.array_equal(np.isnan(B[:-1, 1]), np.isnan(X[500:, 1]))


def test_every_gradient_boosting_fit_bins_its_training_quantiles_once() -> None:
    """The headline, fold and refit fits all boost on prebin codes: the same probabilities as
    boosting the caller's own prebin codes, whatever monotone transform the raw features had;
    boosting the raw features (scikit-learn's class-weighted binning) gives others."""
    from finnex_ml.evaluation.baselines import fit_tabular, prebin, tabular_probs

    rng = np.random.default_rng(5)
    X = rng.standard_normal((240, 6)) * np.exp(rng.standard_normal(6))
    y = (X[:, 0] + 0.5 * rng.standard_normal(240) > 0.3).astype(int) + (X[:, 1] > 1.0)  # imbalanced
    Xa, Xb = X[:200], X[200:]
    got = tabular_probs("gradient_boosting", Xa, y[:200], Xb, 0)
    A, B = prebin(Xa, Xb)
    np.testing.assert_array_equal(got, tabular_probs("gradient_boosting", A, y[:200], B, 0, binned=True))
    np.testing.assert_array_equal(got, tabular_probs("gradient_boosting", np.exp(Xa), y[:200], np.exp(Xb), 0))
    raw = fit_tabular("gradient_boosting", Xa, y[:200], 0).predict_proba(Xb)
    assert not np.allclose(raw, got)


def _old_block_permutations(n: int, block: int, n_perm: int, seed: int) -> np.ndarray:
    """The loop the vectorised orders replaced: roll by a random offset, cut into blocks, shuffle."""
    block = min(block, n)
    rng = np.random.default_rng(seed)
    out = np.empty((n_perm, n), dtype=np.int64)
    for i in range(n_perm):
        rolled = np.roll(np.arange(n), -int(rng.integers(0, n)))
        blocks = [rolled[s : s + block] for s in range(0, n, block)]
        out[i] = np.concatenate([blocks[j] for j in rng.permutation(len(blocks))])
    return out


@pytest.mark.parametrize(("n", "block"), [(1, 1), (7, 3), (250, 5), (251, 5), (10, 20), (5, 1)])
def test_block_permutation_orders_equal_the_loop_they_replaced(n: int, block: int) -> None:
    from finnex_ml.evaluation.significance import block_permutation_indices

    got = block_permutation_indices(n, block, 40, seed=3)
    assert np.array_equal(got, _old_block_permutations(n, block, 40, 3))
    assert (np.sort(got, axis=1) == np.arange(n)).all()  # every row a permutation
    got[0, 0] = -1  # callers get their own copy: the cached draw is untouched
    assert block_permutation_indices(n, block, 40, seed=3)[0, 0] != -1


def test_vectorised_balanced_accuracy_equals_the_scalar_bit_for_bit() -> None:
    from finnex_ml.evaluation.metrics import balanced_accuracy, balanced_accuracy_rows

    rng = np.random.default_rng(5)
    rows = []
    for n in (3, 8, 40):
        for _ in range(60):  # skewed class shares, so resamples lack a class or hold only one
            rows.append((rng.choice(3, (20, n), p=rng.dirichlet([0.5] * 3)), rng.choice(3, (20, n))))
    nan_rows = 0
    for y, p in rows:
        want = np.array([balanced_accuracy(a, b) for a, b in zip(y, p, strict=True)])
        got = balanced_accuracy_rows(y, p)
        assert np.array_equal(got, want, equal_nan=True)
        nan_rows += int(np.isnan(want).sum())
    assert nan_rows > 0  # the one-class case was exercised
    y = rng.integers(0, 3, (5, 30))
    shared = rng.integers(0, 3, 30)  # one prediction row against every label row (the permutation test)
    assert np.array_equal(balanced_accuracy_rows(y, shared), [balanced_accuracy(a, shared) for a in y])


def test_permutation_test_vectorised_default_equals_a_per_permutation_statistic() -> None:
    from finnex_ml.evaluation.metrics import balanced_accuracy

    rng = np.random.default_rng(9)
    y, p = rng.integers(0, 3, 120), rng.integers(0, 3, 120)
    fast = sg.permutation_test(y, p, block=5, n_perm=300, seed=2)
    slow = sg.permutation_test(y, p, block=5, n_perm=300, seed=2, statistic=lambda a, b: balanced_accuracy(a, b))
    assert fast == slow
