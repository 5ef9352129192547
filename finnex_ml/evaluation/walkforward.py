"""Pooled out-of-sample walk-forward for the tabular models.

A 25-date test split cannot show skill or its absence (to reject Sharpe = 0 at 5 % on 25 days
the annualised Sharpe must be about 5). Walk-forward over years gives a long out-of-sample
series instead: for each test block (a calendar year by default) the models are refitted on
every earlier date, less a purge of h sessions (an h-day label of a training date must not
reach into the test block), and score that block; all blocks' predictions are pooled into one
series on which every metric, Sharpe and deflated Sharpe is computed.

Early stopping uses an *inner* validation block: the last ``val_fraction`` of the fold's
training dates, purged by h sessions from the rows fitted on, so the number of boosting
iterations is never chosen on the block that is then scored. The model is then refitted on all
the fold's training dates with that number of iterations.

The tabular models are fitted here; the networks are retrained on the same folds, with the
same inner-block idea for early stopping, in ``network_folds``, and ``evaluate`` scores both on
the same pooled dates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from itertools import pairwise

import numpy as np

from finnex_ml import progress
from finnex_ml.evaluation import baselines as bl

__all__ = ["PooledPredictions", "WalkForwardFold", "fit_early_stopped", "pooled_tabular", "yearly_folds"]


@dataclass
class WalkForwardFold:
    index: int
    train: np.ndarray  # row numbers fitted on (already purged)
    test: np.ndarray  # row numbers scored
    label: str  # e.g. "2019"


def yearly_folds(
    dates: Sequence[date], *, purge: int, min_train: int = 252, block_sessions: int | None = None
) -> list[WalkForwardFold]:
    """Test blocks over sorted ``dates``: calendar years (or consecutive blocks of
    ``block_sessions`` rows), the first one being the earliest with at least ``min_train``
    earlier rows. Each fold trains on every earlier row except the last ``purge`` rows."""
    d = list(dates)
    if any(b <= a for a, b in pairwise(d)):
        raise ValueError("dates must be strictly increasing")
    n = len(d)
    if block_sessions:
        starts = list(range(0, n, int(block_sessions)))
        blocks = [(s, min(s + int(block_sessions), n), f"{d[s].isoformat()}..") for s in starts]
    else:
        years = sorted({x.year for x in d})
        idx = np.array([x.year for x in d])
        blocks = [(int(np.flatnonzero(idx == y)[0]), int(np.flatnonzero(idx == y)[-1]) + 1, str(y)) for y in years]
    folds = []
    for s, e, label in blocks:
        train_end = s - int(purge)
        if s < min_train or train_end <= 0:
            continue
        folds.append(WalkForwardFold(len(folds) + 1, np.arange(train_end), np.arange(s, e), label))
    return folds


def fit_early_stopped(
    kind: str, X: np.ndarray, y: np.ndarray, seed: int, *, purge: int, val_fraction: float = 0.2, max_iter: int = 200
):
    """A fitted classifier. Gradient boosting picks its number of iterations on the last
    ``val_fraction`` of the rows (purged by ``purge`` rows from the fitted part) by validation
    log loss, then refits on all rows; logistic regression has nothing to stop early."""
    if kind != "gradient_boosting":
        return bl.fit_tabular(kind, X, y, seed)
    from sklearn.metrics import log_loss

    from finnex_ml.evaluation.boosting import SequentialBinningHGB

    n = X.shape[0]
    n_val = round(n * val_fraction)
    fit_end = n - n_val - int(purge)
    best_iter = 150  # baselines' fixed budget when the inner block is too small to choose
    stopped = False
    if n_val >= 20 and fit_end >= 50 and len(np.unique(y[:fit_end])) > 1:
        params = {
            "max_depth": 3,
            "learning_rate": 0.05,
            "l2_regularization": 1.0,
            "class_weight": "balanced",
            "early_stopping": False,
            "random_state": seed,
        }
        inner = SequentialBinningHGB(max_iter=max_iter, **params).fit(X[:fit_end], y[:fit_end])
        yv = y[n - n_val :]
        losses = []
        for p in inner.staged_predict_proba(X[n - n_val :]):
            full = np.full((n_val, bl.N_CLASSES), 1e-7)
            full[:, inner.classes_.astype(int)] = np.clip(p, 1e-7, 1.0)
            losses.append(log_loss(yv, full / full.sum(1, keepdims=True), labels=list(range(bl.N_CLASSES))))
        best_iter, stopped = int(np.argmin(losses)) + 1, True
    model = SequentialBinningHGB(
        max_iter=best_iter,
        max_depth=3,
        learning_rate=0.05,
        l2_regularization=1.0,
        class_weight="balanced",
        early_stopping=False,
        random_state=seed,
    )
    model.fit(X, y)
    model.finnex_best_iter_, model.finnex_early_stopped_ = best_iter, stopped
    return model


@dataclass
class PooledPredictions:
    rows: np.ndarray  # row numbers (into the dates given) of the pooled out-of-sample series
    probs: dict[str, np.ndarray] = field(default_factory=dict)  # model -> [len(rows), 3]
    train_prior: np.ndarray | None = None  # [len(rows), 3]: each row's fold training class shares
    folds: list[dict] = field(default_factory=list)


def pooled_tabular(
    X: np.ndarray,
    y: np.ndarray,
    folds: Sequence[WalkForwardFold],
    *,
    seed: int,
    purge: int,
    kinds: Sequence[str] = ("logistic", "gradient_boosting"),
) -> PooledPredictions:
    """Each fold's models fitted on its training rows and applied to its test rows; the test
    rows of all folds pooled in date order. Also returns each row's training prior (the
    majority baseline and the skill scores' reference)."""
    rows, priors, probs, meta = [], [], {k: [] for k in kinds}, []
    for f in progress.track(folds, "walk-forward folds (tabular)", unit="folds"):
        ytr = y[f.train]
        rows.append(f.test)
        shares = np.bincount(ytr, minlength=bl.N_CLASSES) / ytr.size
        priors.append(np.tile(shares, (f.test.size, 1)))
        info = {"fold": f.index, "label": f.label, "train": int(f.train.size), "test": int(f.test.size)}
        for k in kinds:
            # gradient boosting on bin codes of the fold's training quantiles (see baselines.prebin)
            Xa, Xb = bl.prebin(X[f.train], X[f.test]) if k == "gradient_boosting" else (X[f.train], X[f.test])
            model = fit_early_stopped(k, Xa, ytr, seed, purge=purge)
            probs[k].append(bl._full_proba(model, Xb))
            if hasattr(model, "finnex_best_iter_"):
                info[f"{k}_iterations"] = int(model.finnex_best_iter_)
                info[f"{k}_early_stopped"] = bool(model.finnex_early_stopped_)
        meta.append(info)
    if not rows:
        return PooledPredictions(rows=np.zeros(0, dtype=np.int64))
    return PooledPredictions(
        rows=np.concatenate(rows),
        probs={k: np.concatenate(v) for k, v in probs.items()},
        train_prior=np.concatenate(priors),
        folds=meta,
    )
