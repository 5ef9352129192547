"""Hand-computed checks of finnex_ml.evaluation.metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from finnex_ml.evaluation.metrics import (
    class_shares,
    classification_metrics,
    horizon_consistency,
    majority_rate,
    regression_metrics,
)


def _probs_for(pred: list[int]) -> np.ndarray:
    """Probability rows whose argmax is ``pred`` (0.6 on the predicted class, 0.2 elsewhere)."""
    p = np.full((len(pred), 3), 0.2)
    p[np.arange(len(pred)), pred] = 0.6
    return p


# y_true = [S, S, H, H, H, B, B, B], predictions = [S, H, H, H, B, B, B, B]
Y_TRUE = np.array([0, 0, 1, 1, 1, 2, 2, 2])
Y_PRED = [0, 1, 1, 1, 2, 2, 2, 2]


def test_classification_metrics_hand_computed() -> None:
    m = classification_metrics(Y_TRUE, _probs_for(Y_PRED))
    # Confusion (rows true, cols predicted):
    #   sell: 1 correct, 1 -> hold          [1, 1, 0]
    #   hold: 2 correct, 1 -> buy           [0, 2, 1]
    #   buy:  3 correct                     [0, 0, 3]
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 1], [0, 0, 3]]
    assert m["n"] == 8
    # accuracy = (1 + 2 + 3) / 8 = 3/4
    assert m["accuracy"] == pytest.approx(0.75)
    # recalls: sell 1/2, hold 2/3, buy 3/3 -> balanced = (1/2 + 2/3 + 1) / 3 = 13/18
    assert m["balanced_accuracy"] == pytest.approx(13 / 18)
    # precisions (column-wise): sell 1/1, hold 2/(1+2) = 2/3, buy 3/(1+3) = 3/4
    pc = m["per_class"]
    assert pc["sell"]["precision"] == pytest.approx(1.0)
    assert pc["hold"]["precision"] == pytest.approx(2 / 3)
    assert pc["buy"]["precision"] == pytest.approx(3 / 4)
    assert pc["sell"]["recall"] == pytest.approx(1 / 2)
    assert pc["hold"]["recall"] == pytest.approx(2 / 3)
    assert pc["buy"]["recall"] == pytest.approx(1.0)
    # F1 = 2PR/(P+R): sell 2*1*0.5/1.5 = 2/3; hold 2/3; buy 2*0.75*1/1.75 = 6/7
    assert pc["sell"]["f1"] == pytest.approx(2 / 3)
    assert pc["hold"]["f1"] == pytest.approx(2 / 3)
    assert pc["buy"]["f1"] == pytest.approx(6 / 7)
    # macro F1 = (2/3 + 2/3 + 6/7) / 3 = 46/63
    assert m["macro_f1"] == pytest.approx(46 / 63)
    assert [pc[k]["support"] for k in ("sell", "hold", "buy")] == [2, 3, 3]
    # the whole dict is plain JSON
    json.dumps(m)


def test_balanced_accuracy_ignores_absent_class_and_zero_division() -> None:
    # No hold in y_true; the model predicts hold once.
    y = np.array([0, 0, 2, 2])
    m = classification_metrics(y, _probs_for([0, 1, 2, 2]))
    # recalls over present classes: sell 1/2, buy 2/2 -> b = 3/4 (hold is not averaged in); a
    # predictor independent of the labels would get c = (1/4 + 2/4) / 2 = 3/8 on these rows, and
    # b is mapped so that c sits at 1/3: 1/3 + (3/4 - 3/8) / (1 - 3/8) * 2/3 = 11/15
    assert m["balanced_accuracy"] == pytest.approx(11 / 15)
    # hold: precision 0/1 = 0, recall 0/0 -> zero_division = 0
    assert m["per_class"]["hold"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert math.isnan(m["roc_auc_per_class"]["hold"])


def test_log_loss_two_rows() -> None:
    y = np.array([0, 2])
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    m = classification_metrics(y, probs)
    # -(ln 0.5 + ln 0.8) / 2
    assert m["log_loss"] == pytest.approx(-(math.log(0.5) + math.log(0.8)) / 2)


def test_log_loss_clips_zero_probability() -> None:
    y = np.array([1])
    # clipped to [1, 1e-7, 1e-7] then renormalised: p(hold) = 1e-7 / (1 + 2e-7)
    m = classification_metrics(y, np.array([[1.0, 0.0, 0.0]]))
    assert m["log_loss"] == pytest.approx(-math.log(1e-7 / (1 + 2e-7)))


def test_auc_of_perfectly_separating_scores_is_one() -> None:
    y = np.array([0, 1, 2, 0, 1, 2])
    probs = np.array(
        [[0.7, 0.2, 0.1], [0.2, 0.6, 0.2], [0.1, 0.3, 0.6], [0.5, 0.3, 0.2], [0.3, 0.5, 0.2], [0.2, 0.2, 0.6]]
    )
    m = classification_metrics(y, probs)
    assert m["roc_auc_ovr"] == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for v in m["roc_auc_per_class"].values())


def test_auc_reversed_scores_and_single_class() -> None:
    # Column "buy" ranks the buys lowest -> AUC 0 for buy.
    y = np.array([2, 2, 0, 0])
    probs = np.array([[0.5, 0.4, 0.1], [0.5, 0.3, 0.2], [0.3, 0.3, 0.4], [0.2, 0.3, 0.5]])
    m = classification_metrics(y, probs)
    assert m["roc_auc_per_class"]["buy"] == pytest.approx(0.0)
    # every row is "sell" -> sell has no negatives, AUC undefined
    m1 = classification_metrics(np.array([0, 0]), _probs_for([0, 1]))
    assert math.isnan(m1["roc_auc_per_class"]["sell"])
    assert math.isnan(m1["roc_auc_ovr"])


def test_classification_metrics_rejects_empty_and_bad_codes() -> None:
    with pytest.raises(ValueError, match="n == 0"):
        classification_metrics(np.array([], dtype=int), np.zeros((0, 3)))
    with pytest.raises(ValueError, match="row 1"):
        classification_metrics(np.array([0, 3]), _probs_for([0, 1]))


def test_regression_metrics_hand_computed() -> None:
    t = np.array([0.02, -0.01, 0.0, 0.03, np.nan])
    p = np.array([0.01, 0.01, 0.005, 0.03, 0.02])
    m = regression_metrics(t, p, tolerance=0.01)
    assert m["n"] == 4 and m["dropped"] == 1
    # |errors| = 0.01, 0.02, 0.005, 0 -> MAE = 0.035 / 4
    assert m["mae"] == pytest.approx(0.00875)
    # squared = 1e-4, 4e-4, 2.5e-5, 0 -> MSE = 5.25e-4 / 4
    assert m["rmse"] == pytest.approx(math.sqrt(5.25e-4 / 4))
    # mean(t) = 0.01, SST = 1e-4 + 4e-4 + 1e-4 + 4e-4 = 1e-3; R² = 1 - 5.25e-4 / 1e-3
    assert m["r2"] == pytest.approx(0.475)
    # rows with t != 0: (+,+) ok, (-,+) wrong, (+,+) ok -> 2/3
    assert m["directional_accuracy"] == pytest.approx(2 / 3)
    # |err| <= 0.01: 0.01 yes, 0.02 no, 0.005 yes, 0 yes -> 3/4
    assert m["hit_ratio"] == pytest.approx(0.75)
    assert m["pred_mean"] == pytest.approx(0.055 / 4)
    # deviations from 0.01375: -0.00375, -0.00375, -0.00875, 0.01625 -> var = 3.6875e-4 / 4
    assert m["pred_std"] == pytest.approx(math.sqrt(3.6875e-4 / 4))


def test_regression_metrics_degenerate_cases() -> None:
    m = regression_metrics(np.array([0.01, 0.01]), np.array([0.0, 0.02]), tolerance=0.0)
    assert math.isnan(m["r2"])  # constant target
    assert m["directional_accuracy"] == pytest.approx(0.5)  # a zero prediction is not a direction
    assert m["hit_ratio"] == 0.0
    empty = regression_metrics(np.array([np.nan]), np.array([1.0]), tolerance=0.01)
    assert empty["n"] == 0 and empty["dropped"] == 1 and math.isnan(empty["mae"])


def test_horizon_consistency_correlated_and_anticorrelated() -> None:
    a = np.array([0.1, -0.3, 0.5, 0.2, -0.1])
    scores = np.column_stack([a, 2 * a + 1, -a])
    out = horizon_consistency(scores, [1, 5, 20])
    pearson, spearman = np.array(out["pearson"]), np.array(out["spearman"])
    expected = np.array([[1, 1, -1], [1, 1, -1], [-1, -1, 1]], dtype=float)
    np.testing.assert_allclose(pearson, expected, atol=1e-12)
    np.testing.assert_allclose(spearman, expected, atol=1e-12)
    # off-diagonal Spearman pairs: +1, -1, -1 (each twice) -> mean -1/3
    assert out["mean_offdiag_spearman"] == pytest.approx(-1 / 3)
    assert out["horizons"] == [1, 5, 20]


def test_horizon_consistency_monotone_but_nonlinear() -> None:
    a = np.array([1.0, 2.0, 3.0, 4.0])
    out = horizon_consistency(np.column_stack([a, a**3]), [1, 5])
    assert out["spearman"][0][1] == pytest.approx(1.0)
    assert out["pearson"][0][1] < 0.99  # linear correlation is below 1 for a cubic


def test_horizon_consistency_single_horizon() -> None:
    out = horizon_consistency(np.array([[0.1], [0.2]]), [5])
    assert out["pearson"] == [[1.0]] and out["spearman"] == [[1.0]]
    assert math.isnan(out["mean_offdiag_spearman"])


def test_class_shares_and_majority_rate() -> None:
    y = np.array([0, 1, 1, 2, 1])
    assert class_shares(y) == pytest.approx([0.2, 0.6, 0.2])
    assert majority_rate(y) == pytest.approx(0.6)
    assert class_shares(np.array([2, 2])) == [0.0, 0.0, 1.0]
