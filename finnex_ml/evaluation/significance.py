"""Hypothesis tests that can fire: permutation tests of skill, a label-shift placebo, model versus
baseline comparisons (Diebold–Mariano, Hansen's SPA) and the minimum detectable effect.

Daily evaluation rows are autocorrelated and h-day labels overlap, so every null here keeps
blocks of consecutive rows together (:func:`block_permutation_indices`) and every standard
error is HAC (Newey–West, from statsmodels). Hansen's SPA comes from ``arch.bootstrap.SPA``.
Own code remains where no maintained library has it: the block *permutation* (arch resamples
with replacement, which estimates sampling variability but is not a null of no association)
and the Diebold–Mariano statistic (statsmodels has the HAC variance, not the DM test with the
Harvey–Leybourne–Newbold small-sample correction).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from scipy.stats import norm
from scipy.stats import t as student_t

from finnex_ml import progress
from finnex_ml.evaluation.metrics import NUM_CLASSES, balanced_accuracy, balanced_accuracy_rows, hac_mean_test

__all__ = [
    "block_permutation_indices",
    "brier_losses",
    "diebold_mariano",
    "label_shift_placebo",
    "minimum_detectable_effect",
    "permutation_test",
    "refit_permutation_test",
    "spa_test",
]


def block_permutation_indices(n: int, block: int, n_perm: int, seed: int) -> np.ndarray:
    """Row orders [n_perm, n]: the rows cut into consecutive blocks of ``block`` (after a random
    circular offset, so block boundaries move between permutations) and the blocks shuffled.

    Each row appears exactly once per permutation (a permutation, not a bootstrap), and rows
    inside a block stay in order, so autocorrelation and label overlap up to ``block`` rows
    survive while the alignment with another series is broken.
    """
    if n < 1 or block < 1 or n_perm < 1:
        raise ValueError(f"n, block and n_perm must be >= 1, got {n}, {block}, {n_perm}")
    return _permutation_rows(int(n), min(int(block), int(n)), int(n_perm), int(seed)).copy()


# every row of an evaluation table permutes the same test dates with the same seed: drawn once
@functools.lru_cache(maxsize=8)
def _permutation_rows(n: int, block: int, n_perm: int, seed: int) -> np.ndarray:
    """The orders of :func:`block_permutation_indices` (read-only). Per permutation the draws are
    those of rolling ``arange(n)`` by a random offset, cutting it into blocks and shuffling them;
    the rows are then built for all permutations at once from a padded [blocks, block] grid."""
    rng = np.random.default_rng(seed)
    n_blocks = -(-n // block)
    offsets = np.empty(n_perm, dtype=np.int64)
    orders = np.empty((n_perm, n_blocks), dtype=np.int64)
    for i in range(n_perm):  # the same draws, in the same order, as one roll and one shuffle each
        offsets[i] = rng.integers(0, n)
        orders[i] = rng.permutation(n_blocks)
    grid = np.arange(n_blocks * block).reshape(n_blocks, block)  # positions in the rolled sequence
    picked = grid[orders].reshape(n_perm, -1)
    picked = picked[picked < n].reshape(n_perm, n)  # only the last block is short
    rows = (picked + offsets[:, None]) % n  # the rolled sequence's position k holds row k + offset
    rows.setflags(write=False)
    return rows


def _p_value(observed: float, null: np.ndarray) -> float:
    """One-sided (greater) permutation p-value with the +1 correction, so it is never 0; NaN when
    the observed statistic is undefined (e.g. a balanced accuracy on one-class labels)."""
    if not math.isfinite(observed):
        return math.nan
    valid = null[np.isfinite(null)]
    return float((1 + np.sum(valid >= observed - 1e-12)) / (1 + valid.size))


def permutation_test(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    *,
    block: int,
    n_perm: int = 1000,
    seed: int = 0,
    statistic: Callable[[np.ndarray, np.ndarray], float] = balanced_accuracy,
) -> dict[str, float]:
    """Is the out-of-sample skill of fixed predictions beyond chance?

    The predictions stay in place and the true labels are block-permuted ``n_perm`` times; the
    p-value is the share of permutations (with +1 correction) whose ``statistic`` (default:
    balanced accuracy on the fixed 1/3 scale) reaches the observed one. Costs no refitting, so
    it applies to networks as well as baselines. Returns ``statistic``, ``null_mean``,
    ``null_q95``, ``p_value``, ``n_perm`` and ``block``.
    """
    y, p = np.asarray(y_true), np.asarray(y_pred)
    if y.ndim != 1 or y.shape != p.shape or y.size == 0:
        raise ValueError(f"y_true and y_pred must be non-empty 1-D of equal length, got {y.shape}, {p.shape}")
    observed = float(statistic(y, p))
    perms = _permutation_rows(int(y.size), min(int(block), int(y.size)), int(n_perm), int(seed))
    if statistic is balanced_accuracy:  # the default: every permutation scored in one vectorised pass
        null = balanced_accuracy_rows(y[perms], p)
    else:
        null = np.array([float(statistic(y[idx], p)) for idx in perms])
    return _permutation_summary(observed, null, n_perm, min(block, y.size))


def _permutation_summary(observed: float, null: np.ndarray, n_perm: int, block: int) -> dict[str, float]:
    return {
        "statistic": observed,
        "null_mean": float(np.nanmean(null)),
        "null_q95": float(np.nanquantile(null, 0.95)),
        "p_value": _p_value(observed, null),
        "n_perm": float(n_perm),
        "block": float(block),
    }


def refit_permutation_test(
    score: Callable[[np.ndarray], float],
    y_train: np.ndarray,
    *,
    block: int,
    n_perm: int = 100,
    seed: int = 0,
    label: str = "refit permutations",
    n_jobs: int = 1,
    stop_after: int | None = None,
) -> dict[str, float]:
    """Permutation test of a whole fitting procedure (Ojala & Garriga 2010, in blocks).

    ``score(y)`` fits the model on the training features with training labels ``y`` and returns
    its out-of-sample skill on the untouched test labels. It is called once with the real labels
    and up to ``n_perm`` times with block-permuted training labels: a model that learned a real
    relation beats nearly all of its permuted refits. More expensive than
    :func:`permutation_test` (one fit per permutation) but it tests the model, not only the
    association of one prediction series with the labels. ``n_jobs`` > 1 runs the refits in
    that many processes (joblib; ``score`` must pickle); the null is the same in any order.

    ``stop_after`` = k stops the refits once k permuted refits score at least the real one
    (Besag & Clifford 1991's sequential Monte Carlo p-value, exact like the fixed-count one):
    p = k / refits done. A fit that is clearly not significant then costs about k / p refits
    instead of ``n_perm``; every p below k / ``n_perm`` still comes from all ``n_perm`` refits,
    as does any p the fixed test would report below 0.05 when k / ``n_perm`` >= 0.05.
    ``n_perm`` in the result counts the refits done; ``stopped_early`` says whether the rule fired.
    """
    y = np.asarray(y_train)
    observed = float(score(y))
    perms = block_permutation_indices(y.size, block, n_perm, seed)
    if n_jobs > 1:
        from joblib import Parallel, delayed

        # loky caps each worker's BLAS/OpenMP threads at cores // n_jobs, so refits do not oversubscribe
        fits = Parallel(n_jobs=n_jobs, return_as="generator")(delayed(score)(y[idx]) for idx in perms)
    else:
        fits = (score(y[idx]) for idx in perms)
    null: list[float] = []
    exceed = 0
    for v in progress.track(fits, label, total=n_perm, unit="refits"):
        null.append(float(v))
        exceed += bool(math.isfinite(observed) and math.isfinite(v) and v >= observed - 1e-12)
        if stop_after is not None and exceed >= stop_after and len(null) < n_perm:
            break
    done = len(null)
    out = _permutation_summary(observed, np.array(null), done, min(block, y.size))
    out["stopped_early"] = done < n_perm
    if out["stopped_early"]:
        out["p_value"] = exceed / done  # Besag-Clifford: k exceedances in `done` refits
    return out


def label_shift_placebo(
    y_pred: np.ndarray,
    shifted_labels: Mapping[int, np.ndarray],
    *,
    block: int,
    n_perm: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
) -> list[dict[str, Any]]:
    """Skill of the predictions against labels shifted k sessions into the future.

    ``shifted_labels[k][i]`` is the label of the date k sessions after prediction row i (NaN
    where that date is past the data). With k >= h the shifted label's window no longer overlaps
    the one the model forecast, so an honest forecaster has no skill against it; skill that
    survives the shift comes from something slower than the forecast (a misaligned join, a
    feature keyed to a later date, a regime the model memorised). Each shift gets a block
    permutation p-value; ``fails`` is set when it is below ``alpha`` divided by the number of
    shifts (Bonferroni), so the verdict fires about ``alpha`` of the time on clean data.
    """
    p = np.asarray(y_pred)
    rows = []
    family = alpha / max(len(shifted_labels), 1)
    for k, lab in sorted(shifted_labels.items()):
        lab = np.asarray(lab, dtype=np.float64)
        ok = np.isfinite(lab)
        n = int(ok.sum())
        if n < 3 * max(block, 1) or len(np.unique(lab[ok])) < 2:
            rows.append({"shift": int(k), "n": n, "balanced_accuracy": math.nan, "p_value": math.nan, "fails": False})
            continue
        test = permutation_test(lab[ok].astype(np.int64), p[ok], block=block, n_perm=n_perm, seed=seed + int(k))
        rows.append(
            {
                "shift": int(k),
                "n": n,
                "balanced_accuracy": test["statistic"],
                "p_value": test["p_value"],
                "fails": bool(test["p_value"] < family),
            }
        )
    return rows


def brier_losses(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per-row Brier loss (squared distance of the probability vector from the one-hot truth):
    a proper, bounded loss, so one overconfident row cannot dominate a comparison."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    return np.sum((p - np.eye(NUM_CLASSES)[y]) ** 2, axis=1)


def diebold_mariano(loss_model: np.ndarray, loss_base: np.ndarray, horizon: int = 1) -> dict[str, float]:
    """Diebold–Mariano test of equal predictive accuracy, model versus baseline.

    ``d = loss_model - loss_base`` per row; its mean is tested against 0 with a Newey–West
    variance (statsmodels, ``horizon - 1`` lags at least, since h-day forecast errors overlap)
    and the Harvey–Leybourne–Newbold (1997) small-sample factor
    ``sqrt((n + 1 - 2h + h(h-1)/n) / n)`` with a Student t(n-1) reference. Negative ``mean_diff``
    means the model's loss is lower. ``p_value_model_better`` is one-sided (H1: model better);
    ``p_value`` is two-sided.
    """
    a, b = np.asarray(loss_model, dtype=np.float64), np.asarray(loss_base, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"losses must be 1-D of equal length, got {a.shape}, {b.shape}")
    d = a - b
    d = d[np.isfinite(d)]
    n, h = int(d.size), max(int(horizon), 1)
    nan = math.nan
    hac = hac_mean_test(d, lags=max(h - 1, math.floor(4 * (max(n, 1) / 100.0) ** (2.0 / 9.0))))
    if not np.isfinite(hac["t"]) or n < 3:
        return {
            "mean_diff": float(np.mean(d)) if n else nan,
            "dm": nan,
            "p_value": nan,
            "p_value_model_better": nan,
            "n": n,
        }
    factor = (n + 1 - 2 * h + h * (h - 1) / n) / n
    dm = hac["t"] * math.sqrt(factor) if factor > 0 else hac["t"]
    return {
        "mean_diff": hac["mean"],
        "dm": float(dm),
        "p_value": float(2 * student_t.sf(abs(dm), n - 1)),
        "p_value_model_better": float(student_t.cdf(dm, n - 1)),
        "n": n,
    }


def spa_test(
    loss_base: np.ndarray, loss_models: np.ndarray, *, block: int, reps: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Hansen's (2005) Superior Predictive Ability test with ``arch.bootstrap.SPA``: H0 is that no
    model in ``loss_models`` [n, m] has a lower expected loss than the baseline ``loss_base``
    [n]. Stationary bootstrap with mean block ``block``. Returns the consistent, lower and upper
    p-values."""
    from arch.bootstrap import SPA

    base = np.asarray(loss_base, dtype=np.float64)
    models = np.asarray(loss_models, dtype=np.float64)
    if models.ndim == 1:
        models = models[:, None]
    spa = SPA(base, models, block_size=int(block), reps=int(reps), seed=np.random.default_rng(seed))
    spa.compute()
    pv = spa.pvalues
    return {
        "p_value": float(pv["consistent"]),
        "p_value_lower": float(pv["lower"]),
        "p_value_upper": float(pv["upper"]),
        "reps": float(reps),
        "block": float(block),
        "n_models": float(models.shape[1]),
    }


def minimum_detectable_effect(
    n_days: int,
    horizon: int,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    periods_per_year: float = 252.0,
    chance: float = 1 / 3,
) -> dict[str, float]:
    """Smallest true effect a two-sided level-``alpha`` test detects with probability ``power``
    on ``n_days`` out-of-sample sessions at horizon h.

    With ``z = z(1 - alpha/2) + z(power)`` and ``n_eff = n_days / h`` independent decisions:
    ``sharpe`` (annualised, daily P&L over n_days sessions) ``= z sqrt(ppy / n_days)``;
    ``accuracy`` (above the chance level ``chance``) ``= z sqrt(chance (1 - chance) / n_eff)``;
    ``ic`` (an information coefficient) ``= z / sqrt(n_eff)``.
    """
    if n_days < 1 or horizon < 1:
        raise ValueError(f"n_days and horizon must be >= 1, got {n_days}, {horizon}")
    z = float(norm.ppf(1 - alpha / 2) + norm.ppf(power))
    n_eff = n_days / float(horizon)
    return {
        "n_days": float(n_days),
        "n_independent": float(n_eff),
        "alpha": alpha,
        "power": power,
        "sharpe": z * math.sqrt(periods_per_year / n_days),
        "accuracy": z * math.sqrt(chance * (1 - chance) / n_eff),
        "ic": z / math.sqrt(n_eff),
    }
