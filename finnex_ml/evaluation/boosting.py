"""The gradient-boosting baseline's classifier: scikit-learn's, binning on one thread.

scikit-learn bins every feature of a fit in a joblib thread pool, one task per feature, whatever
the number of rows. On the evaluation's few hundred rows x 206 prebinned features the pool's
dispatch and result polling cost ~60 ms a fit, about a quarter of a 50-iteration fit here
(measured: 0.24-0.29 s against 0.33-0.37 s per fit, paired). Binning on one thread gives the same
bins, so the same model; the trees still grow on OpenMP threads (one thread for everything is
slower: 0.39-0.42 s). Imported lazily, with scikit-learn, by the baselines that fit it.
"""

from __future__ import annotations

from typing import Any

from sklearn.ensemble import HistGradientBoostingClassifier


class SequentialBinningHGB(HistGradientBoostingClassifier):
    """``HistGradientBoostingClassifier`` whose feature binning runs on one thread."""

    def _bin_data(self, X: Any, sample_weight: Any, is_training_data: bool) -> Any:
        # fit() has just built the bin mapper with the OpenMP thread count; only this step changes
        self._bin_mapper.n_threads = 1
        return super()._bin_data(X, sample_weight, is_training_data)
