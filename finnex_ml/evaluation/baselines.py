"""Baselines scored on exactly the dates the models are scored on.

Every baseline returns class probabilities ``[n, 3]`` (0 Sell, 1 Hold, 2 Buy) whose argmax is its
prediction, so the same metric and backtest code scores models and baselines alike:

* ``majority``: the training class shares as probabilities (argmax = the majority class);
* ``prior_random``: a class drawn from the training shares (seeded); probabilities are half the
  drawn class and half the shares, so the argmax is the draw and log-loss stays finite;
* ``buy_and_hold``: always Buy;
* ``momentum``: the class the trailing h-session return would get with the label threshold of
  that date (persistence of the last h sessions; both numbers are known at t's close);
* ``logistic`` / ``gradient_boosting``: scikit-learn on the tabular daily features of date t,
  fitted on the training dates only (imputation and scaling inside the pipeline, so their
  statistics are the training dates' too), with balanced class weights like the networks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from finnex_ml import labels as lb
from finnex_ml.errors import DataInputError
from finnex_ml.evaluation.metrics import class_shares

N_CLASSES = 3


def majority_probs(train_y: np.ndarray, n: int) -> np.ndarray:
    return np.tile(np.asarray(class_shares(train_y)), (n, 1))


def prior_random_probs(train_y: np.ndarray, n: int, seed: int) -> np.ndarray:
    shares = np.asarray(class_shares(train_y))
    draw = np.random.default_rng(seed).choice(N_CLASSES, size=n, p=shares)
    return 0.5 * np.eye(N_CLASSES)[draw] + 0.5 * shares


def constant_probs(cls: int, n: int) -> np.ndarray:
    return np.tile(np.eye(N_CLASSES)[cls], (n, 1))


def momentum_probs(trailing_return: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """One-hot of ``classify(trailing return, threshold)``; a date without either is Hold."""
    cls = lb.classify(np.asarray(trailing_return, dtype=np.float64), np.asarray(threshold, dtype=np.float64))
    return np.eye(N_CLASSES)[np.where(cls < 0, lb.HOLD, cls)]


def trailing_returns(closes: pl.DataFrame, dates: Sequence, h: int) -> np.ndarray:
    """close(t) / close(t - h sessions) - 1 from a (date, close) table of consecutive sessions."""
    table = closes.select("date", "close").sort("date")
    pos = {d: i for i, d in enumerate(table["date"].to_list())}
    c = table["close"].to_numpy().astype(np.float64)
    out = np.full(len(dates), np.nan)
    for k, d in enumerate(dates):
        i = pos.get(d)
        if i is not None and i >= h:
            out[k] = c[i] / c[i - h] - 1.0
    return out


def _full_proba(model, X: np.ndarray) -> np.ndarray:
    # a class absent from the training dates gets probability 0, not a shifted column
    p = np.zeros((X.shape[0], N_CLASSES))
    p[:, model.classes_.astype(int)] = model.predict_proba(X)
    return p


# gradient boosting in the refit permutation test: a third of the iterations at three times the
# step (same depth, regularisation and class weights), used for the real-label fit and every
# permuted fit alike, so the test compares like with like at a third of the cost
REFIT_BOOSTING = {"max_iter": 50, "learning_rate": 0.15}


def fit_tabular(kind: str, X: np.ndarray, y: np.ndarray, seed: int, *, boosting: dict | None = None):
    """A fitted scikit-learn classifier pipeline: ``"logistic"`` or ``"gradient_boosting"``
    (``boosting`` overrides its iterations / learning rate, e.g. :data:`REFIT_BOOSTING`)."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "logistic":
        model = make_pipeline(
            SimpleImputer(strategy="median", keep_empty_features=True),
            StandardScaler(),
            LogisticRegression(C=0.05, max_iter=2000, class_weight="balanced"),
        )
    elif kind == "gradient_boosting":
        from finnex_ml.evaluation.boosting import SequentialBinningHGB

        params = {"learning_rate": 0.05, "max_iter": 150, **(boosting or {})}
        model = SequentialBinningHGB(
            max_depth=3,
            l2_regularization=1.0,
            class_weight="balanced",
            early_stopping=False,
            random_state=seed,
            **params,
        )
    else:
        raise ValueError(f"unknown tabular baseline {kind!r}")
    return model.fit(X, y)


def tabular_probs(
    kind: str,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_eval: np.ndarray,
    seed: int,
    *,
    boosting: dict | None = None,
    binned: bool = False,
) -> np.ndarray:
    """Probabilities ``[n_eval, 3]`` of ``kind`` fitted on the training rows. Gradient boosting
    fits bin codes of the training quantiles (:func:`prebin`; ``binned``: the caller did)."""
    if kind == "gradient_boosting" and not binned:
        X_train, X_eval = prebin(X_train, X_eval)
    return _full_proba(fit_tabular(kind, X_train, y_train, seed, boosting=boosting), X_eval)


def prebin(X_train: np.ndarray, X_eval: np.ndarray, max_bins: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """Both matrices as bin codes of the training columns' quantiles (NaN stays missing).

    Why: with sample weights (class_weight="balanced") scikit-learn >= 1.6 bins every feature
    of a gradient-boosting fit by weighted percentiles, one Python call per bin edge: on 500 x
    206 that is ~17 s of CPU per fit, whatever the number of iterations. Columns with at most
    ``max_bins`` distinct values skip it, and the cost grew with the rows: a fold of 380 dates
    took ~7 s per fit, so a two-year evaluation's split walk-forward alone took 75 s. Binning once on
    the unweighted quantiles (what the unweighted fit does) makes a fit's cost the boosting
    itself; every gradient-boosting fit of the evaluation does it. KBinsDiscretizer rejects NaN,
    which the features have."""
    qs = np.linspace(0, 100, max_bins + 1)[1:-1]
    A, B = np.full(X_train.shape, np.nan), np.full(X_eval.shape, np.nan)
    for j in range(X_train.shape[1]):
        col = X_train[:, j]
        finite = col[np.isfinite(col)]
        if finite.size == 0:
            continue
        edges = np.unique(np.percentile(finite, qs))
        for src, dst in ((col, A), (X_eval[:, j], B)):
            ok = np.isfinite(src)
            dst[ok, j] = np.searchsorted(edges, src[ok], side="right")
    return A, B


def ridge_returns(X_train: np.ndarray, r_train: np.ndarray, X_eval: np.ndarray) -> np.ndarray:
    """A ridge regression of the forward return on the daily features (the regression baseline)."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(
        SimpleImputer(strategy="median", keep_empty_features=True),
        StandardScaler(),
        Ridge(alpha=float(X_train.shape[1])),
    )
    return model.fit(X_train, r_train).predict(X_eval)


def feature_matrix(features: pl.DataFrame, dates: Sequence, columns: Sequence[str]) -> np.ndarray:
    """Rows of the daily feature table for ``dates`` in order; a missing date is an error."""
    idx = {d: i for i, d in enumerate(features["date"].to_list())}
    missing = [d for d in dates if d not in idx]
    if missing:
        raise DataInputError(
            f"no daily_features row for {len(missing)} evaluation date(s), first {missing[0]}", date=str(missing[0])
        )
    X = features.select([pl.col(c).cast(pl.Float64) for c in columns]).to_numpy()
    X = X[[idx[d] for d in dates]]
    X[~np.isfinite(X)] = np.nan
    return X


__all__ = [
    "constant_probs",
    "feature_matrix",
    "fit_tabular",
    "majority_probs",
    "momentum_probs",
    "prebin",
    "prior_random_probs",
    "ridge_returns",
    "tabular_probs",
    "trailing_returns",
]
