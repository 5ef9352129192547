"""Universe walk-forward: folds purged before their test block, pooled predictions covering exactly
the test blocks once, cached folds reused, and the pooled panel's tests: a planted cross-sectional
signal (CrossSectionalSignal) is found and noise is not.

The learner here is the panel ridge on the planted feature (seconds), standing in for the CNN:
what is tested is the folding, pooling, caching and pooled evaluation; the CNN learner runs
through the Dagster asset in test_universe_assets.py."""

from datetime import date

import numpy as np
import polars as pl
import pytest

from finnex_ml import calendar, panel
from finnex_ml.data.universe import CrossSectionalSignal, SyntheticUniverse
from finnex_ml.evaluation import cross_section as cs
from finnex_ml.evaluation.universe_report import evaluate_pooled, summary_json, universe_html
from finnex_ml.labels import return_col
from finnex_ml.panel_walkforward import PanelFold, fold_samples, panel_folds, walk_forward_predictions

H = 5
START, END = date(2021, 1, 4), date(2023, 12, 29)


def test_training_windows_end_h_sessions_before_their_test_block():
    dates = calendar.sessions(date(2018, 1, 2), date(2022, 12, 30))
    folds = panel_folds(dates, H, window_years=2, train_stride=H)
    assert [f.label for f in folds] == ["2019", "2020", "2021", "2022"]
    sessions = calendar.all_sessions()
    pos = {d: i for i, d in enumerate(sessions)}
    for f in folds:
        first_test = pos[f.test[0]]
        # the label of the last training date (t, t+h] ends before the block's first date
        assert first_test - pos[max(f.window)] > H
        assert first_test - pos[f.val[-1]] > H
        assert pos[f.val[0]] - pos[f.fit[-1]] > H  # inner validation purged from the fitted dates
        assert len(f.window) <= 2 * 252 and set(f.fit) | set(f.val) <= set(f.window)
        assert all(pos[b] - pos[a] == H for a, b in zip(f.fit, f.fit[1:]))  # stride h
        assert {d.year for d in f.test} == {int(f.label)}
    expanding = panel_folds(dates, H)
    assert expanding[-1].window[0] == dates[0] and len(expanding[-1].fit) > len(folds[-1].fit) * H


def _universe(strength: float) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Samples (date, ticker, label, excess, fwd_return at h) and features with the planted control
    (strength 0: the control is published but carries nothing: noise)."""
    u = SyntheticUniverse(n_tickers=12, plant=CrossSectionalSignal(strength))
    prices = panel.panel_prices(u, calendar.sessions_back(START, 30), END)
    dates = calendar.sessions(START, calendar.sessions_back(END, H + 1))
    labels = panel.panel_labels(prices, dates)
    samples = labels.filter(pl.col(panel.xs_class_col(H)).is_not_null()).select(
        "date",
        "ticker",
        pl.col(panel.xs_class_col(H)).cast(pl.Int64).alias("label"),
        pl.col(panel.excess_col(H)).alias("excess"),
        pl.col(return_col(H)).alias("fwd_return"),
    )
    control = pl.concat(
        u.load_ticker(t, START, END).prices.select("date", pl.lit(t).alias("ticker"), "market__control_a")
        for t in u.members()["ticker"]
    )
    logc = pl.col("close").log()
    feats = (
        prices.sort("ticker", "date")
        .with_columns(
            (logc - logc.shift(21)).over("ticker").alias("price__ret_21d"),
            (logc - logc.shift(5)).over("ticker").alias("price__ret_5d"),
        )
        .select("date", "ticker", "price__ret_21d", "price__ret_5d")
        .join(control, on=["date", "ticker"], how="inner")
    )
    return samples.sort("date", "ticker"), feats.filter(pl.col("date").is_in(dates))


class RidgeLearner:
    """A fold's learner: the panel ridge on the control feature, fitted on the fold's train rows."""

    def __init__(self, features: pl.DataFrame) -> None:
        self.features, self.calls = features, 0

    def __call__(self, part: pl.DataFrame, fold: PanelFold) -> tuple[pl.DataFrame, dict]:
        self.calls += 1
        assert part.filter(pl.col("set") == "train")["date"].max() < fold.test[0]
        train = part.filter(pl.col("set") == "train").select("date", "ticker", pl.col("excess").alias("excess_return"))
        cols = ["market__control_a"]
        fit = self.features.join(train, on=["date", "ticker"], how="semi").select("date", "ticker", *cols)
        test = part.filter(pl.col("set") == "test")
        scores = cs.fit_panel_ridge(
            fit, train, self.features.join(test, on=["date", "ticker"], how="semi"), feature_cols=cols
        )
        out = test.join(scores, on=["date", "ticker"]).with_columns(
            (pl.col("score").rank().over("date") * 3 / (pl.len().over("date") + 1))
            .floor()
            .cast(pl.Int64)
            .alias("pred_class")
        )
        return out, {"train_rows": train.height, "best_epochs": [0]}


@pytest.fixture(scope="module")
def planted():
    return _universe(0.5)


def _pooled(samples, feats, tmp_path, learner=None):
    folds = panel_folds(samples["date"].unique().sort().to_list(), H, window_years=1, train_stride=1)
    learner = learner or RidgeLearner(feats)
    pooled, infos = walk_forward_predictions(
        samples, folds, learner, cache_dir=tmp_path / "folds", config_key="ridge", data_key="d"
    )
    return folds, pooled, infos, learner


def test_pooled_predictions_cover_the_test_blocks_once_and_cached_folds_are_reused(planted, tmp_path):
    samples, feats = planted
    folds, pooled, infos, learner = _pooled(samples, feats, tmp_path)
    assert [f.label for f in folds] == ["2022", "2023"] and learner.calls == 2
    blocks = set().union(*(f.test for f in folds))
    expected = samples.filter(pl.col("date").is_in(blocks)).select("date", "ticker").sort("date", "ticker")
    assert pooled.select("date", "ticker").equals(expected)
    assert not pooled.select("date", "ticker").is_duplicated().any()
    assert sorted(pooled["fold"].unique().to_list()) == [1, 2]
    assert [i["cached"] for i in infos] == [False, False]
    # a re-run trains nothing; losing one fold's file (a run killed midway) retrains that fold only
    again = RidgeLearner(feats)
    _, pooled2, infos2, _ = _pooled(samples, feats, tmp_path, again)
    assert again.calls == 0 and [i["cached"] for i in infos2] == [True, True] and pooled2.equals(pooled)
    next((tmp_path / "folds").glob("fold02_*.parquet")).unlink()
    _, pooled3, infos3, _ = _pooled(samples, feats, tmp_path, again)
    assert again.calls == 1 and [i["cached"] for i in infos3] == [True, False]
    assert pooled3.select("date", "ticker", "score").equals(pooled.select("date", "ticker", "score"))
    # another configuration is another cache entry
    other = RidgeLearner(feats)
    walk_forward_predictions(samples, folds, other, cache_dir=tmp_path / "folds", config_key="x", data_key="d")
    assert other.calls == 2


def test_fold_samples_keep_rows_and_mark_only_the_folds_dates(planted):
    samples, _ = planted
    fold = panel_folds(samples["date"].unique().sort().to_list(), H, window_years=1, train_stride=H)[0]
    part = fold_samples(samples, fold)
    assert part.select("date", "ticker").equals(samples.select("date", "ticker"))
    counts = dict(part.group_by("set").len().iter_rows())
    assert counts["train"] == samples.filter(pl.col("date").is_in(fold.fit)).height
    assert counts["test"] == samples.filter(pl.col("date").is_in(fold.test)).height
    assert counts[None] > 0  # the strided-out dates, the purges and everything after the block


def test_pooled_ic_finds_a_planted_signal_and_not_noise(planted, tmp_path):
    samples, feats = planted
    folds, pooled, infos, _ = _pooled(samples, feats, tmp_path)
    doc = evaluate_pooled(samples, pooled, feats, H, folds, infos, n_boot=200, n_perm=200)
    model = doc["table"].row(0, named=True)
    assert model["mean_ic"] > 0.1 and model["p_value"] < 0.01
    assert doc["tests"]["permutation"]["p_value"] < 0.01
    assert doc["test_span"][0].startswith("2022-01") and doc["span_years"] > 1.9
    assert doc["independent_decisions"] == doc["n_test_dates"] // H and doc["n_rows"] == pooled.height
    text = universe_html(doc, "synthetic", pooled=doc)
    assert text.index("Pooled out-of-sample span") < text.index("Single split (secondary)")
    assert "no single split" in universe_html(None, "synthetic", pooled=doc)  # universe_model not run
    assert summary_json(doc)["headline"]["p_value"] == doc["tests"]["paired"]["p_value"]

    noise, nfeats = _universe(0.0)
    folds, pooled, infos, _ = _pooled(noise, nfeats, tmp_path / "noise")
    doc = evaluate_pooled(noise, pooled, nfeats, H, folds, infos, n_boot=200, n_perm=200)
    model = doc["table"].row(0, named=True)
    assert abs(model["mean_ic"]) < 0.05 and model["p_value"] > 0.05
    assert doc["tests"]["permutation"]["p_value"] > 0.05
    assert np.isfinite(doc["tests"]["min_detectable_ic"])
