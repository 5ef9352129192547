"""The gradient-boosting baseline bins on one thread and is otherwise scikit-learn's classifier."""

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier

from finnex_ml.evaluation import baselines as bl
from finnex_ml.evaluation.boosting import SequentialBinningHGB


def test_sequential_binning_is_the_same_model():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(196, 40))
    X[rng.random(X.shape) < 0.05] = np.nan
    y = (np.nan_to_num(X[:, 3]) + 0.5 * rng.normal(size=196) > 0).astype(int) + (rng.random(196) < 0.2)
    Xa, Xb = bl.prebin(X, rng.normal(size=(50, 40)))
    params = dict(max_iter=30, max_depth=3, learning_rate=0.15, l2_regularization=1.0, class_weight="balanced")
    ours = SequentialBinningHGB(random_state=0, early_stopping=False, **params).fit(Xa, y)
    stock = HistGradientBoostingClassifier(random_state=0, early_stopping=False, **params).fit(Xa, y)
    # the override ran (a scikit-learn that stopped calling _bin_data would leave the thread count)
    assert ours._bin_mapper.n_threads == 1
    np.testing.assert_array_equal(ours.predict_proba(Xb), stock.predict_proba(Xb))
    assert len(np.unique(ours.predict(Xb))) > 1  # a fitted model, not a constant
    # and it is what the baselines fit
    assert isinstance(bl.fit_tabular("gradient_boosting", Xa, y, 0), SequentialBinningHGB)
