"""Classification, regression and cross-horizon consistency metrics for out-of-sample predictions.

Class codes follow :mod:`finnex_ml.labels`: 0 = sell, 1 = hold, 2 = buy. Every function returns
plain Python floats, ints and lists so the result can go straight into JSON (NaN marks a metric
that is not defined for the given data, e.g. an AUC for a class that never occurs).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

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
    predicted class is the row's argmax. Returns ``n``, ``accuracy``, ``balanced_accuracy`` (mean
    recall over the classes present in ``y_true``), ``per_class`` ({name: {precision, recall, f1,
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
    precision, recall, f1, support = precision_recall_fscore_support(
        y, pred, labels=LABELS, zero_division=0
    )
    present = support > 0
    balanced = float(np.mean(recall[present]))

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
        return {"n": 0, "dropped": dropped, "mae": nan, "rmse": nan, "r2": nan,
                "directional_accuracy": nan, "hit_ratio": nan, "pred_mean": nan, "pred_std": nan}

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
        return {"horizons": hs, "n": int(n), "pearson": [[1.0]], "spearman": [[1.0]],
                "mean_offdiag_spearman": math.nan}
    if n < 2:
        nan_m = np.full((h, h), np.nan)
        return {"horizons": hs, "n": int(n), "pearson": nan_m.tolist(), "spearman": nan_m.tolist(),
                "mean_offdiag_spearman": math.nan}
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
