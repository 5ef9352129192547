"""Universe evaluation: the oracle is a ceiling (never the baseline to beat), baselines score the
model's rows, and implausible skill without a planted rule is flagged as a leak."""

from datetime import date

import numpy as np
import polars as pl

from finnex_ml import calendar
from finnex_ml.evaluation.universe_report import ORACLE, evaluate_universe, universe_html


def _panel(skill: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    dates = calendar.sessions(date(2024, 1, 2), date(2024, 6, 28))
    tickers = [f"T{i:02d}" for i in range(12)]
    rows = []
    for i, d in enumerate(dates):
        signal = rng.normal(size=len(tickers))
        ret = 0.01 * (skill * signal + np.sqrt(1 - skill**2) * rng.normal(size=len(tickers)))
        for t, s, r in zip(tickers, signal, ret):
            rows.append(
                {
                    "date": d,
                    "ticker": t,
                    "signal": s,
                    "fwd_return": r,
                    "set": "train" if i < 80 else ("val" if i < 90 else "test"),
                }
            )
    frame = pl.DataFrame(rows)
    frame = frame.with_columns((pl.col("fwd_return") - pl.col("fwd_return").mean().over("date")).alias("excess"))
    features = frame.select(
        "date",
        "ticker",
        pl.col("signal").alias("market__signal"),
        pl.Series("price__ret_21d", rng.normal(size=frame.height)),
        pl.Series("price__ret_5d", rng.normal(size=frame.height)),
    )
    return frame, features


def test_oracle_is_a_ceiling_and_the_model_faces_the_real_baselines():
    frame, features = _panel(skill=0.5)
    rest = frame.filter(pl.col("set") != "train")
    noise = pl.Series(np.random.default_rng(1).normal(size=rest.height))
    preds = rest.with_columns(
        (pl.col("signal") + noise).alias("score"), (pl.col("signal").rank().cast(pl.Int64) % 3).alias("pred_class")
    )
    oracle = frame.select("date", "ticker", pl.col("signal").alias("score"))
    doc = evaluate_universe(frame, preds, features, 1, oracle=oracle, n_boot=200, n_perm=200)
    table = doc["table"]
    names = table["predictor"].to_list()
    assert names[0] == "model" and names[-1] == ORACLE
    assert {"momentum", "reversal", "random", "ridge"} <= set(names)
    best = table.filter(pl.col("best_baseline"))["predictor"].to_list()
    assert best == ["ridge"]  # the ridge sees market__signal (fitted on train dates), the oracle is not a baseline
    ic = dict(zip(names, table["mean_ic"].to_list()))
    assert ic[ORACLE] > ic["model"] > 0.2 and abs(ic["random"]) < 0.1
    assert doc["test_span"][0] > frame.filter(pl.col("set") == "val")["date"].max().isoformat()
    assert "Implausible" not in universe_html(doc, "synthetic test panel")  # planted: expected skill


def test_implausible_skill_without_a_planted_rule_is_flagged():
    frame, features = _panel(skill=0.9)
    preds = frame.filter(pl.col("set") != "train").with_columns(
        pl.col("signal").alias("score"), (pl.col("signal").rank().cast(pl.Int64) % 3).alias("pred_class")
    )
    doc = evaluate_universe(frame, preds, features, 1, n_boot=200, n_perm=200)
    assert doc["table"]["ic_ci_low"][0] > 0.5
    assert "Implausible skill" in universe_html(doc, "real closes")


def test_one_class_model_is_flagged_degenerate():
    frame, features = _panel(skill=0.3)
    preds = frame.filter(pl.col("set") != "train").with_columns(
        pl.col("signal").alias("score"), pl.lit(1).alias("pred_class")
    )
    doc = evaluate_universe(frame, preds, features, 1, n_boot=100, n_perm=100)
    assert doc["degenerate"]
    assert "degenerate" in universe_html(doc, "x")
