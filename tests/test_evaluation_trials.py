"""Deflated Sharpe trials: from the MLflow log of earlier runs on the same dataset when there is
one, else from the report's strategies (and the document says which)."""

from __future__ import annotations

import numpy as np
import pytest

from finnex_ml.evaluation.evaluate import EvalInputs, _deflated


def _inputs(**kw) -> EvalInputs:
    return EvalInputs(
        labels=None,
        features=None,
        feature_columns=[],
        splits={},
        ready_root=None,
        image_root=None,
        shard_root=None,
        work_dir=None,
        channel_means=[0.5] * 3,
        **kw,
    )


def test_deflated_sharpe_counts_logged_trials() -> None:
    rng = np.random.default_rng(0)
    strategies = {"a (1d)": rng.normal(0.001, 0.01, 300), "b (1d)": rng.normal(0.0, 0.01, 300)}
    own, doc = _deflated(strategies, _inputs())
    assert doc["n_trials"] == 2 and doc["n_logged"] == 0 and "only" in doc["source"]
    logged = [0.05, -0.02, 0.01, 0.08, 0.0]
    dsr, doc = _deflated(strategies, _inputs(trial_sharpes=logged, trial_source="MLflow"))
    assert doc["n_trials"] == 7 and doc["n_logged"] == 5 and doc["source"] == "MLflow"
    per = [float(np.mean(r) / np.std(r, ddof=1)) for r in strategies.values()]
    assert doc["variance"] == pytest.approx(float(np.var(logged + per, ddof=1)))
    assert dsr["a (1d)"]["n_trials"] == 7
    # more (and more dispersed) trials raise the bar the best strategy must clear
    assert dsr["a (1d)"]["expected_max_sharpe"] > own["a (1d)"]["expected_max_sharpe"]


def test_logged_trial_sharpes_reads_runs_tagged_with_the_split(tmp_path) -> None:
    import mlflow

    from finnex_assets.assets.evaluation import TRIAL_TAG, logged_trial_sharpes
    from finnex_assets.resources import MlflowTracking

    tracking = MlflowTracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="trials")
    mlflow.set_tracking_uri(tracking.uri())
    ids = []
    for split, values in (
        ("s1", {"test_sharpe_per_period_h1": 0.03, "test_sharpe_per_period_h5": -0.01}),
        ("s1", {"test_sharpe_per_period_h1": 0.07}),
        ("s2", {"test_sharpe_per_period_h1": 0.5}),
    ):
        with mlflow.start_run(experiment_id=tracking.experiment_id()) as run:
            mlflow.log_metrics({**values, "test_accuracy_h1": 0.4})
            mlflow.set_tag(TRIAL_TAG, split)
            ids.append(run.info.run_id)
    assert sorted(logged_trial_sharpes(tracking, "s1", set())) == [-0.01, 0.03, 0.07]
    assert sorted(logged_trial_sharpes(tracking, "s1", {ids[1]})) == [-0.01, 0.03]  # runs evaluated now excluded
    assert logged_trial_sharpes(tracking, "nope", set()) == []
