"""Classification, regression and cross-horizon consistency metrics for out-of-sample predictions.

Class codes follow :mod:`finnex_ml.labels`: 0 = sell, 1 = hold, 2 = buy. Every function returns
plain Python floats, ints and lists so the result can go straight into JSON (NaN marks a metric
that is not defined for the given data, e.g. an AUC for a class that never occurs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import (
    confusion_matrix,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
    r2_score,
    roc_auc_score,
)

from finnex_ml.labels import CLASS_NAMES

__all__ = [
    "classification_metrics",
    "regression_metrics",
    "horizon_consistency",
    "majority_rate",
    "class_shares",
    "balanced_accuracy",
    "balanced_accuracy_rows",
    "probabilistic_skill",
    "prediction_diversity",
    "is_degenerate",
    "hac_mean_test",
    "LOG_LOSS_EPS",
]

NUM_CLASSES = len(CLASS_NAMES)
LABELS = list(range(NUM_CLASSES))
# Probabilities are clipped at this floor before the log loss so one confident miss is costly
# but finite.
LOG_LOSS_EPS = 1e-7
# |pred - true| <= tolerance is tested with this slack so that e.g. 0.03 - 0.01 vs 0.02 is not
# decided by the last bit of floating-point rounding.
_HIT_SLACK = 1e-12


def _class_labels(y: np.ndarray, name: str) -> np.ndarray:
    """Validate a 1-D array of class codes in 0..2 and return it as int64."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        # Accept float arrays holding whole numbers (e.g. read back from parquet).
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            bad = int(np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)))[0])
            raise ValueError(f"{name} must hold integer class codes; row {bad} is {arr[bad]!r}")
    out = arr.astype(np.int64)
    bad_rows = np.flatnonzero((out < 0) | (out >= NUM_CLASSES))
    if bad_rows.size:
        i = int(bad_rows[0])
        raise ValueError(f"{name} must hold class codes 0..{NUM_CLASSES - 1}; row {i} is {arr[i]!r}")
    return out


def classification_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Standard multi-class metrics for sell/hold/buy probabilities.

    ``y_true`` holds class codes [n]; ``probs`` is [n, 3] with rows summing to 1, and the
    predicted class is the row's argmax. Returns ``n``, ``accuracy``, ``balanced_accuracy`` (over
    all 3 classes with chance fixed at 1/3, see :func:`balanced_accuracy`), ``per_class`` ({name: {precision, recall, f1,
    support}}, zero_division=0), ``macro_f1`` (mean F1 over the classes occurring in ``y_true`` or
    in the predictions, scikit-learn's convention, so a class nobody saw does not count as 0),
    ``confusion_matrix`` (3x3, rows true, columns predicted), ``roc_auc_per_class`` (one-vs-rest
    AUC of column k; NaN when class k is absent or is every row), ``roc_auc_ovr`` (mean of the
    defined per-class AUCs; NaN if none) and ``log_loss`` (probabilities clipped to
    [1e-7, 1] and renormalised).
    """
    y = _class_labels(y_true, "y_true")
    p = np.asarray(probs, dtype=np.float64)
    if y.shape[0] == 0:
        raise ValueError("classification_metrics needs at least one row; got n == 0")
    if p.ndim != 2 or p.shape != (y.shape[0], NUM_CLASSES):
        raise ValueError(f"probs must have shape ({y.shape[0]}, {NUM_CLASSES}), got {p.shape}")
    bad = np.flatnonzero(~np.all(np.isfinite(p), axis=1))
    if bad.size:
        raise ValueError(f"probs has a non-finite value at row {int(bad[0])}")

    pred = np.argmax(p, axis=1)
    n = int(y.shape[0])

    cm = confusion_matrix(y, pred, labels=LABELS)
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=LABELS, zero_division=0)
    balanced = balanced_accuracy(y, pred)

    per_class = {
        name: {
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "f1": float(f1[k]),
            "support": int(support[k]),
        }
        for k, name in enumerate(CLASS_NAMES)
    }

    auc_per_class: dict[str, float] = {}
    for k, name in enumerate(CLASS_NAMES):
        positives = y == k
        # AUC needs both positives and negatives for the class.
        if positives.any() and not positives.all():
            auc_per_class[name] = float(roc_auc_score(positives.astype(int), p[:, k]))
        else:
            auc_per_class[name] = math.nan
    defined = [v for v in auc_per_class.values() if not math.isnan(v)]
    auc_ovr = float(np.mean(defined)) if defined else math.nan

    clipped = np.clip(p, LOG_LOSS_EPS, 1.0)
    clipped = clipped / clipped.sum(axis=1, keepdims=True)
    ll = float(log_loss(y, clipped, labels=LABELS))

    return {
        "n": n,
        "accuracy": float(np.mean(pred == y)),
        "balanced_accuracy": balanced,
        "per_class": per_class,
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
        "confusion_matrix": cm.astype(int).tolist(),
        "roc_auc_ovr": auc_ovr,
        "roc_auc_per_class": auc_per_class,
        "log_loss": ll,
    }


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = NUM_CLASSES) -> float:
    """Balanced accuracy on a K-class scale whose chance level is always 1/K.

    With every class present this is the usual mean recall over the K classes. A sample (a test
    split, a regime, a bootstrap resample) that lacks a class has no recall for it; averaging
    over the m < K present classes alone would move chance to 1/m, so a constant predictor
    would score 1/3 on one resample and 1/2 on the next. Instead the recall of an absent class
    is excluded and the mean recall ``b`` over the m present classes is compared with the mean
    recall ``c`` any predictor independent of the labels would get on that sample (``c`` = mean,
    over the present classes, of the share of rows predicted as that class), then mapped
    piecewise-linearly so that 0 -> 0, ``c`` -> 1/K and 1 -> 1:
    ``1/K + (b - c) / (1 - c) * (1 - 1/K)`` if ``b >= c``, else ``b / c / K``.
    With all K classes present ``c`` is exactly 1/K and the map is the identity. A constant
    predictor scores exactly 1/K on every sample. NaN when fewer than two classes are present
    (no balanced accuracy is defined on a one-class sample).
    """
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if y.shape != p.shape or y.ndim != 1 or y.size == 0:
        raise ValueError(f"y_true and y_pred must be non-empty 1-D of equal length, got {y.shape}, {p.shape}")
    k = int(num_classes)
    support = np.bincount(y, minlength=k)[:k]
    hits = np.bincount(y[p == y], minlength=k)[:k]
    predicted = np.bincount(p, minlength=k)[:k] / p.size
    present = support > 0
    m = int(present.sum())
    if m < 2:
        return math.nan
    b = float(np.sum(hits[present] / support[present]) / m)
    c = float(np.sum(predicted[present]) / m)
    if m == k or c == 0.0:
        # all classes present: c == 1/K and the map is the identity; c == 0: nothing was predicted
        # as a present class, so b == 0 too and the predictor is at chance by construction
        return b if m == k else 1.0 / k
    if b >= c:
        return float(1.0 / k + (b - c) / (1.0 - c) * (1.0 - 1.0 / k))
    return float(b / c / k)


def balanced_accuracy_rows(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """:func:`balanced_accuracy` of every row of ``y_true`` and ``y_pred`` ([R, n], or a 1-D
    ``y_pred`` shared by every row) at once, bit for bit the same values: the bootstrap and
    permutation tests score a thousand resamples, and a Python call per resample cost more than
    the arithmetic."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.broadcast_to(np.asarray(y_pred, dtype=np.int64), y.shape)
    if y.ndim != 2 or y.shape[1] == 0:
        raise ValueError(f"y_true must be [rows, n] with n >= 1, got {y.shape}")
    k, n = int(num_classes), y.shape[1]
    support = np.stack([(y == c).sum(axis=1) for c in range(k)], axis=1)
    hits = np.stack([((y == c) & (p == c)).sum(axis=1) for c in range(k)], axis=1)
    predicted = np.stack([(p == c).sum(axis=1) for c in range(k)], axis=1) / n
    present = support > 0
    m = present.sum(axis=1)
    # absent classes add an exact 0.0, so each sum equals the scalar's sum over present classes
    b = np.where(present, hits / np.maximum(support, 1), 0.0).sum(axis=1) / np.maximum(m, 1)
    c = np.where(present, predicted, 0.0).sum(axis=1) / np.maximum(m, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mapped = np.where(b >= c, 1.0 / k + (b - c) / (1.0 - c) * (1.0 - 1.0 / k), b / c / k)
    out = np.where(m == k, b, np.where(c == 0.0, 1.0 / k, mapped))
    return np.where(m < 2, np.nan, out)


def probabilistic_skill(y_true: np.ndarray, probs: np.ndarray, prior: Sequence[float]) -> dict[str, float]:
    """Log-loss and Brier skill of ``probs`` against always forecasting the training ``prior``.

    ``log_loss_skill = 1 - LL(model) / LL(prior)`` and ``brier_skill = 1 - BS(model) / BS(prior)``
    (Brier score: mean over rows of the squared distance between the probability vector and the
    one-hot truth). 0 means no better than the class shares known before the test period, > 0
    better, < 0 worse: unlike raw log loss, the reference is fixed by the training data, not by
    the test sample. ``prior`` may also be [n, 3], one reference per row (pooled walk-forward
    folds, each with its own training shares). Probabilities are clipped at ``LOG_LOSS_EPS`` and
    renormalised.
    """
    y = _class_labels(y_true, "y_true")
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != (y.size, NUM_CLASSES) or y.size == 0:
        raise ValueError(f"probs must have shape ({y.size}, {NUM_CLASSES}) with n > 0, got {p.shape}")
    q = np.asarray(prior, dtype=np.float64)
    if q.shape not in ((NUM_CLASSES,), (y.size, NUM_CLASSES)) or not np.all(q >= 0) or not np.all(q.sum(-1) > 0):
        raise ValueError(f"prior must be {NUM_CLASSES} non-negative shares (or one row of them per row)")
    q = q / q.sum(axis=-1, keepdims=True)
    onehot = np.eye(NUM_CLASSES)[y]

    def ll(x: np.ndarray) -> float:
        x = np.clip(x, LOG_LOSS_EPS, 1.0)
        x = x / x.sum(axis=1, keepdims=True)
        return float(-np.mean(np.log(x[np.arange(y.size), y])))

    prior_rows = q if q.ndim == 2 else np.tile(q, (y.size, 1))
    ll_m, ll_p = ll(p), ll(prior_rows)
    bs_m = float(np.mean(np.sum((p - onehot) ** 2, axis=1)))
    bs_p = float(np.mean(np.sum((prior_rows - onehot) ** 2, axis=1)))
    return {
        "log_loss": ll_m,
        "log_loss_prior": ll_p,
        "log_loss_skill": 1.0 - ll_m / ll_p if ll_p > 0 else math.nan,
        "brier": bs_m,
        "brier_prior": bs_p,
        "brier_skill": 1.0 - bs_m / bs_p if bs_p > 0 else math.nan,
    }


def prediction_diversity(pred: np.ndarray, num_classes: int = NUM_CLASSES) -> dict[str, Any]:
    """How varied a predictor's class calls are: ``shares`` (K entries), ``top_class``,
    ``top_share`` (share of rows on the most frequent call), ``n_classes_used`` and ``entropy``
    (in bits; 0 for a constant predictor, log2 K for uniform calls)."""
    p = np.asarray(pred, dtype=np.int64)
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"pred must be a non-empty 1-D array, got shape {p.shape}")
    counts = np.bincount(p, minlength=num_classes)[:num_classes]
    shares = counts / p.size
    nz = shares[shares > 0]
    return {
        "shares": [float(s) for s in shares],
        "top_class": int(np.argmax(counts)),
        "top_share": float(shares.max()),
        "n_classes_used": int((counts > 0).sum()),
        "entropy": float(-np.sum(nz * np.log2(nz))),
    }


def is_degenerate(pred: np.ndarray, threshold: float = 0.9, num_classes: int = NUM_CLASSES) -> bool:
    """True when one class is called on more than ``threshold`` of the rows: such a predictor is
    (nearly) a constant, its accuracy is the class share, and explaining its "decisions" explains
    nothing."""
    return prediction_diversity(pred, num_classes)["top_share"] > threshold


def hac_mean_test(x: np.ndarray, lags: int | None = None) -> dict[str, float]:
    """t-test of mean(x) == 0 with a Newey-West (HAC, Bartlett kernel) standard error.

    Uses statsmodels (OLS of x on a constant, ``cov_type="HAC"``) rather than an own estimator.
    ``lags`` defaults to statsmodels' rule ``floor(4 (n/100)^(2/9))``; pass h - 1 or more for
    overlapping h-day quantities. Returns ``mean``, ``se``, ``t``, ``p_value`` (two-sided,
    normal), ``n`` and ``lags``; NaN for fewer than 3 finite values or a constant series.
    """
    import statsmodels.api as sm

    v = np.asarray(x, dtype=np.float64)
    v = v[np.isfinite(v)]
    n = int(v.size)
    nan = math.nan
    if n < 3 or float(np.std(v)) == 0.0:
        return {"mean": float(np.mean(v)) if n else nan, "se": nan, "t": nan, "p_value": nan, "n": n, "lags": nan}
    if lags is None:
        lags = math.floor(4 * (n / 100.0) ** (2.0 / 9.0))
    lags = int(min(max(lags, 0), n - 2))
    fit = sm.OLS(v, np.ones((n, 1))).fit(cov_type="HAC", cov_kwds={"maxlags": lags, "use_correction": True})
    return {
        "mean": float(fit.params[0]),
        "se": float(fit.bse[0]),
        "t": float(fit.tvalues[0]),
        "p_value": float(fit.pvalues[0]),
        "n": n,
        "lags": float(lags),
    }


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray, tolerance: float) -> dict[str, float]:
    """Error and direction metrics of predicted forward returns.

    Rows where either array is NaN (or infinite) are dropped first; their count is ``dropped``
    and ``n`` counts the rows used. Returns ``n``, ``dropped``, ``mae``, ``rmse``, ``r2`` (NaN if
    n < 2 or the target is constant), ``directional_accuracy`` (share of rows with true != 0
    whose predicted sign matches; a zero prediction counts as wrong), ``hit_ratio`` (share with
    |pred - true| <= tolerance), ``pred_mean`` and ``pred_std`` (population std, ddof=0: it
    describes the predictions, it does not estimate anything). Every metric is NaN when no row
    is left.
    """
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if t.ndim != 1 or p.ndim != 1 or t.shape != p.shape:
        raise ValueError(f"y_true and y_pred must be 1-D of equal length, got {t.shape} and {p.shape}")
    if not (tolerance >= 0):
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    keep = np.isfinite(t) & np.isfinite(p)
    dropped = int(t.size - keep.sum())
    t, p = t[keep], p[keep]
    n = int(t.size)
    nan = math.nan
    if n == 0:
        return {
            "n": 0,
            "dropped": dropped,
            "mae": nan,
            "rmse": nan,
            "r2": nan,
            "directional_accuracy": nan,
            "hit_ratio": nan,
            "pred_mean": nan,
            "pred_std": nan,
        }

    # R² is undefined for one row or a constant target (zero total sum of squares).
    r2 = float(r2_score(t, p)) if n >= 2 and np.ptp(t) > 0 else nan
    moved = t != 0
    directional = float(np.mean(np.sign(p[moved]) == np.sign(t[moved]))) if moved.any() else nan
    return {
        "n": n,
        "dropped": dropped,
        "mae": float(mean_absolute_error(t, p)),
        "rmse": float(math.sqrt(mean_squared_error(t, p))),
        "r2": r2,
        "directional_accuracy": directional,
        "hit_ratio": float(np.mean(np.abs(p - t) <= tolerance + _HIT_SLACK)),
        "pred_mean": float(np.mean(p)),
        "pred_std": float(np.std(p)),
    }


def _corr_matrix(x: np.ndarray) -> np.ndarray:
    """Pearson correlation of the columns of x; rows/columns of a constant column are NaN."""
    centred = x - x.mean(axis=0)
    norms = np.sqrt((centred**2).sum(axis=0))
    h = x.shape[1]
    out = np.full((h, h), np.nan)
    ok = norms > 0
    if ok.any():
        z = centred[:, ok] / norms[ok]
        sub = np.clip(z.T @ z, -1.0, 1.0)
        idx = np.flatnonzero(ok)
        out[np.ix_(idx, idx)] = sub
        out[idx, idx] = 1.0
    return out


def horizon_consistency(scores: np.ndarray, horizons: Sequence[int]) -> dict[str, Any]:
    """How consistently the directional scores of different horizons agree across dates.

    ``scores`` is [n, H]: one directional score per horizon (e.g. P(buy) - P(sell), or the
    predicted return). Rows with a NaN are dropped. Returns ``horizons``, ``n``, ``pearson`` and
    ``spearman`` (H x H nested lists; entries involving a constant column are NaN) and
    ``mean_offdiag_spearman`` (mean of the defined off-diagonal Spearman entries; NaN if H == 1).
    """
    s = np.asarray(scores, dtype=np.float64)
    hs = [int(h) for h in horizons]
    if s.ndim != 2 or s.shape[1] != len(hs):
        raise ValueError(f"scores must be [n, {len(hs)}] to match horizons {hs}, got {s.shape}")
    s = s[~np.any(np.isnan(s), axis=1)]
    n, h = s.shape
    if h == 1:
        return {"horizons": hs, "n": int(n), "pearson": [[1.0]], "spearman": [[1.0]], "mean_offdiag_spearman": math.nan}
    if n < 2:
        nan_m = np.full((h, h), np.nan)
        return {
            "horizons": hs,
            "n": int(n),
            "pearson": nan_m.tolist(),
            "spearman": nan_m.tolist(),
            "mean_offdiag_spearman": math.nan,
        }
    pearson = _corr_matrix(s)
    # Spearman = Pearson of the (average-tie) ranks within each column.
    spearman = _corr_matrix(np.column_stack([rankdata(s[:, j]) for j in range(h)]))
    off = spearman[~np.eye(h, dtype=bool)]
    off = off[~np.isnan(off)]
    return {
        "horizons": hs,
        "n": int(n),
        "pearson": pearson.tolist(),
        "spearman": spearman.tolist(),
        "mean_offdiag_spearman": float(off.mean()) if off.size else math.nan,
    }


def class_shares(y: np.ndarray) -> list[float]:
    """Share of sell, hold and buy (3 entries, summing to 1) among the class codes in ``y``."""
    labels = _class_labels(y, "y")
    if labels.size == 0:
        raise ValueError("class_shares needs at least one row; got n == 0")
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    return [float(c) / labels.size for c in counts]


def majority_rate(y: np.ndarray) -> float:
    """Accuracy of always predicting the most frequent class: the naive baseline to beat."""
    return max(class_shares(y))
