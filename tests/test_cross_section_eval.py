"""Cross-sectional evaluation on synthetic panels whose truth is known: a planted signal is found
at the size theory predicts, noise is not, a constant score is flagged, overlapping horizons do
not fool the HAC test (while a naive t-test is fooled), small cross-sections get fewer quantiles,
and the ridge baseline learns on training dates only."""

from __future__ import annotations

import math
from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest
from scipy.stats import ttest_1samp

from finnex_ml.evaluation import cross_section as cs
from finnex_ml.evaluation.significance import minimum_detectable_effect


def _dates(n: int) -> list[date]:
    return [date(2020, 1, 1) + timedelta(days=i) for i in range(n)]


def _frame(scores: np.ndarray, returns: np.ndarray, **extra: np.ndarray) -> pl.DataFrame:
    """Long (date, ticker, score, fwd_return) frame from [D, N] matrices."""
    d, n = scores.shape
    cols = {
        "date": pl.Series([x for x in _dates(d) for _ in range(n)], dtype=pl.Date),
        "ticker": [f"T{j:03d}" for j in range(n)] * d,
        "score": scores.ravel(),
        "fwd_return": returns.ravel(),
    }
    cols.update({k: v.ravel() for k, v in extra.items()})
    return pl.DataFrame(cols)


def _signal_panel(rho: float, d: int = 250, n: int = 100, seed: int = 0) -> pl.DataFrame:
    """Cross-sectionally iid normal returns (sd 2 %) and score = z(return) + noise with Pearson
    correlation ``rho`` to the return."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((d, n))
    noise_sd = math.sqrt(1 / rho**2 - 1) if rho > 0 else 1.0
    score = (z if rho > 0 else 0.0) + noise_sd * rng.standard_normal((d, n))
    return _frame(score, 0.02 * z)


def _expected_spearman(rho: float, n: int) -> float:
    """E[Spearman] of n bivariate-normal points with Pearson rho (Moran 1948)."""
    return 6 / (math.pi * (n + 1)) * (math.asin(rho) + (n - 2) * math.asin(rho / 2))


# ------------------------------------------------------------------------------------------ (a)


def test_planted_signal_is_recovered_at_its_theoretical_size() -> None:
    rho, n = 0.2, 100
    panel = _signal_panel(rho, n=n)
    daily = cs.daily_ic(panel)
    assert daily.height == 250 and daily["ic"].null_count() == 0 and daily["n"].to_list() == [n] * 250
    s = cs.ic_summary(daily, horizon=1)
    theory = _expected_spearman(rho, n)  # ~0.190
    se = s["sd_ic"] / math.sqrt(s["n_dates"])
    assert abs(s["mean_ic"] - theory) < 3 * se, (s["mean_ic"], theory, se)
    assert s["t_hac"] > 20 and s["p_value"] < 1e-10
    assert s["ci_low"] < s["mean_ic"] < s["ci_high"] and s["ci_low"] > 0.15 and s["ci_high"] - s["ci_low"] < 0.05
    assert s["hit_rate"] > 0.9 and s["n_null_dates"] == 0
    assert s["icir_annual"] == pytest.approx(s["icir"] * math.sqrt(252))

    perm = cs.permutation_ic_test(panel, n_perm=1000, seed=1)
    assert perm["mean_ic"] == pytest.approx(s["mean_ic"], abs=1e-12)  # same statistic, other code
    assert perm["p_value"] == pytest.approx(1 / 1001) and perm["p_value"] < 0.01
    assert abs(perm["null_mean"]) < 0.005

    q = cs.quantile_portfolios(panel, n_quantiles=10, horizon=1, cost_bps=10)
    mono = cs.quantile_monotonicity(q)
    assert mono["spearman"] > 0.95
    assert mono["quantile_means"][-1] > 0 > mono["quantile_means"][0]
    ls = cs.long_short_summary(q, horizon=1, n_boot=300)
    assert ls["sharpe_gross"] > ls["sharpe"] > 3 and ls["sharpe_ci_low"] > 0
    assert ls["annual_return_gross"] > ls["annual_return"] > 0
    assert ls["n_periods"] == 250 and ls["first_date"] == date(2020, 1, 1) and ls["last_date"] == _dates(250)[-1]
    # costs: net = gross - 10 bp per unit of traded notional, on every row
    assert np.allclose(q["long_short"] - q["long_short_net"], 1e-3 * q["turnover"])
    assert q["turnover"][0] == pytest.approx(2.0)  # entry into +1 / -1
    assert 2.5 < q["turnover"].mean() <= 4.0  # a noisy score rebuilds most of the book daily


# ------------------------------------------------------------------------------------------ (b)


def test_noise_score_has_no_skill_and_a_spread_out_permutation_p_value() -> None:
    ps, covered = [], 0
    for seed in range(8):
        panel = _signal_panel(0.0, d=200, n=40, seed=seed)
        s = cs.ic_summary(cs.daily_ic(panel), horizon=1, n_boot=300, seed=seed)
        covered += s["ci_low"] < 0 < s["ci_high"]
        ps.append(cs.permutation_ic_test(panel, n_perm=1000, seed=seed)["p_value"])
    assert covered >= 7, covered
    ps = np.array(ps)
    # roughly uniform: not all small, spread over the unit interval
    assert np.sum(ps < 0.05) <= 1 and ps.max() > 0.5 and 0.2 < ps.mean() < 0.8, ps


# ------------------------------------------------------------------------------------------ (c)


def test_constant_score_is_degenerate_and_has_null_ic_on_every_date() -> None:
    panel = _signal_panel(0.2, d=30, n=20).with_columns(pl.lit(0.5).alias("score"))
    assert cs.is_degenerate_score(panel)
    assert not cs.is_degenerate_score(_signal_panel(0.2, d=30, n=20))
    # constant per date but varying over time is just as uninformative
    by_date = panel.with_columns(pl.col("date").dt.day().cast(pl.Float64).alias("score"))
    assert cs.is_degenerate_score(by_date)
    daily = cs.daily_ic(panel)
    assert daily.height == 30 and daily["ic"].null_count() == 30 and daily["n"].to_list() == [20] * 30
    s = cs.ic_summary(daily, horizon=1)
    assert s["n_dates"] == 0 and s["n_null_dates"] == 30 and math.isnan(s["mean_ic"])
    q = cs.quantile_portfolios(panel, 5)
    assert q.height == 30 and q["long_short"].null_count() == 30


# ------------------------------------------------------------------------------------------ (d)


def _overlapping_noise_panel(seed: int, d: int = 250, n: int = 30, h: int = 5) -> pl.DataFrame:
    """A persistent score (AR(1), phi 0.95, per ticker) independent of the returns, and h-day
    forward returns that are sums of overlapping iid daily returns."""
    rng = np.random.default_rng(seed)
    daily = 0.01 * rng.standard_normal((d + h, n))
    fwd = np.stack([daily[t : t + h].sum(axis=0) for t in range(d)])
    score = np.empty((d, n))
    score[0] = rng.standard_normal(n)
    for t in range(1, d):
        score[t] = 0.95 * score[t - 1] + math.sqrt(1 - 0.95**2) * rng.standard_normal(n)
    return _frame(score, fwd)


def test_hac_t_keeps_its_size_with_overlapping_horizons_where_a_naive_t_test_does_not() -> None:
    """Documented property: with h = 5 and a persistent noise score the daily ICs are strongly
    autocorrelated; the naive iid t-test rejects far more often than 5 %, the HAC t (lags 2h)
    stays near nominal."""
    h, sims = 5, 60
    hac_rej = naive_rej = 0
    for seed in range(sims):
        daily = cs.daily_ic(_overlapping_noise_panel(seed, h=h))
        s = cs.ic_summary(daily, horizon=h, n_boot=0)
        hac_rej += s["p_value"] < 0.05
        naive_rej += ttest_1samp(daily["ic"].to_numpy(), 0.0).pvalue < 0.05
    assert hac_rej / sims < 0.15, hac_rej
    # observed with these seeds: HAC 5/60 (8 %), naive 17/60 (28 %)
    assert naive_rej / sims > 0.2 and naive_rej > 2 * hac_rej, (naive_rej, hac_rej)


def test_block_permutation_widens_the_null_for_persistent_scores_on_overlapping_returns() -> None:
    """Independent daily shuffles ignore that a persistent score meets overlapping returns; the
    same shuffle for h consecutive dates keeps that dependence and gives a wider null (in a
    30-panel simulation: 13 % vs 7 % one-sided rejections of a true null at 5 %)."""
    panel = _overlapping_noise_panel(1)
    one = cs.permutation_ic_test(panel, n_perm=400, seed=0, block=1)
    five = cs.permutation_ic_test(panel, n_perm=400, seed=0, block=5)
    assert five["null_sd"] > 1.4 * one["null_sd"], (five["null_sd"], one["null_sd"])
    assert one["mean_ic"] == five["mean_ic"] and abs(five["null_mean"]) < 0.01


def test_hac_lags_cover_the_overlap() -> None:
    assert cs.hac_lags(250, 5) == 10 and cs.hac_lags(250, 1) == 4 and cs.hac_lags(250, 20) == 40
    s = cs.ic_summary(cs.daily_ic(_overlapping_noise_panel(0)), horizon=5, n_boot=200)
    assert s["hac_lags"] == 10 and s["block"] >= 5


# ------------------------------------------------------------------------------------------ (e)


def test_quantiles_with_fewer_tickers_than_quantiles_and_ties() -> None:
    d0, d1, d2 = _dates(3)
    rows = [
        # 4 tickers, 10 quantiles asked -> 4 buckets of one ticker each
        (d0, "A", 1.0, 0.01),
        (d0, "B", 2.0, 0.02),
        (d0, "C", 3.0, -0.01),
        (d0, "D", 4.0, 0.05),
        # 3 tickers with a tie: ordinal ranks break it by ticker -> B below C
        (d1, "A", 1.0, 0.00),
        (d1, "B", 2.0, 0.03),
        (d1, "C", 2.0, -0.02),
        # a single ticker: no portfolio
        (d2, "A", 1.0, 0.04),
    ]
    preds = pl.DataFrame(rows, schema=["date", "ticker", "score", "fwd_return"], orient="row")
    q = cs.quantile_portfolios(preds, n_quantiles=10, horizon=1, cost_bps=0, log_returns=False)
    assert q["n_quantiles"].to_list() == [4, 3, None] and q["n"].to_list() == [4, 3, None]
    r0, r1, r2 = q.rows(named=True)
    assert [r0[f"q{j}"] for j in range(1, 5)] == pytest.approx([0.01, 0.02, -0.01, 0.05])
    assert all(r0[f"q{j}"] is None for j in range(5, 11))
    assert r0["long_short"] == pytest.approx(0.04)
    assert [r1["q1"], r1["q2"], r1["q3"]] == pytest.approx([0.00, 0.03, -0.02])
    assert r1["long_short"] == pytest.approx(-0.02)
    # d1's book: +1 C, -1 A, the same names as d0's -1 A but C long instead of D
    assert r0["turnover"] == pytest.approx(2.0) and r1["turnover"] == pytest.approx(2.0)
    assert r2["long_short"] is None and r2["turnover"] is None
    # 8 tickers in 3 quantiles: sizes 3, 3, 2 -> floor((rank-1) * 3 / 8) + 1
    eight = pl.DataFrame(
        {"date": [d0] * 8, "ticker": list("ABCDEFGH"), "score": np.arange(8.0), "fwd_return": np.arange(8.0) / 100}
    )
    q8 = cs.quantile_portfolios(eight, 3, log_returns=False, cost_bps=0).row(0, named=True)
    assert [q8["q1"], q8["q2"], q8["q3"]] == pytest.approx([0.01, 0.04, 0.065])
    # log returns are turned into simple returns before averaging
    ql = cs.quantile_portfolios(preds.head(4), 4, cost_bps=0).row(0, named=True)
    assert ql["q4"] == pytest.approx(math.exp(0.05) - 1)
    # fewer than MIN_TICKERS: the date is counted, its IC null
    ic = cs.daily_ic(preds)
    assert ic["n"].to_list() == [4, 3, 1] and ic["ic"].null_count() == 3
    no_score = preds.with_columns(pl.when(pl.col("date") == d2).then(None).otherwise(pl.col("score")).alias("score"))
    assert cs.daily_ic(no_score)["n"].to_list() == [4, 3, 0]


def test_staggered_book_averages_the_h_phases() -> None:
    port = pl.DataFrame({"date": _dates(7), "long_short_net": [1.0, 2.0, 3.0, 4.0, None, 6.0, 7.0]})
    st = cs.staggered_returns(port, 3)
    assert st["ret"].to_list() == pytest.approx([2.0, (4 + 0 + 6) / 3, 7.0])
    assert st["date"].to_list() == [_dates(7)[i] for i in (0, 3, 6)]
    # turnover compares with the book of h dates earlier (the sub-portfolio being replaced)
    q = cs.quantile_portfolios(_signal_panel(0.2, d=12, n=20), 5, horizon=3)
    assert q["turnover"][:3].to_list() == pytest.approx([2.0] * 3)
    ls = cs.long_short_summary(q, 3, n_boot=0)
    assert ls["n_periods"] == 4


# ------------------------------------------------------------------------------------------ (f)


def _feature_panel(d: int, n: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    f = rng.standard_normal((3, d, n))
    f[2, rng.random((d, n)) < 0.1] = np.nan  # missing values
    target = f[0] - 0.5 * f[1] + 0.5 * rng.standard_normal((d, n))
    frame = _frame(f[0], 0.01 * target, f2=f[1], f3=f[2]).rename({"score": "f1"})
    return cs.add_excess_return(frame)


def test_panel_ridge_recovers_a_planted_rule_out_of_sample_without_test_targets() -> None:
    panel = _feature_panel(200, 40, seed=0)
    dates = sorted(panel["date"].unique().to_list())
    train = panel.filter(pl.col("date") < dates[120])
    test = panel.filter(pl.col("date") >= dates[120])
    feats = ["f1", "f2", "f3"]
    scores = cs.fit_panel_ridge(train, train, test)  # default features: f1..f3, targets excluded
    assert scores.height == test.height and scores["score"].is_finite().all()
    s = cs.ic_summary(cs.daily_ic(scores.join(test, on=["date", "ticker"])), 1, n_boot=0)
    assert s["mean_ic"] > 0.7 and s["n_dates"] == 80
    # corrupted test targets (even left inside the test frame) do not move a single score
    corrupt = test.with_columns(pl.col("fwd_return") * -7.0 + 1.0, pl.col("excess_return").shuffle(seed=3))
    again = cs.fit_panel_ridge(train, train, corrupt)
    assert np.array_equal(again["score"].to_numpy(), scores["score"].to_numpy())
    explicit = cs.fit_panel_ridge(train.select("date", "ticker", *feats), train, corrupt, feature_cols=feats)
    assert np.allclose(explicit["score"].to_numpy(), scores["score"].to_numpy())
    # but training targets do matter, and training may not touch test dates
    flipped = train.with_columns(-pl.col("excess_return"))
    assert np.corrcoef(cs.fit_panel_ridge(train, flipped, test)["score"], scores["score"])[0, 1] < -0.99
    with pytest.raises(ValueError, match="overlap"):
        cs.fit_panel_ridge(panel, panel, test)


def test_baseline_scores() -> None:
    feats = pl.DataFrame(
        {
            "date": [date(2020, 1, 1)] * 4,
            "ticker": list("ABCD"),
            "price__ret_21d": [0.1, -0.2, 0.3, None],
            "price__ret_5d": [0.01, 0.02, -0.03, 0.0],
        }
    )
    mom = cs.baseline_scores(feats, "momentum")
    assert mom["score"][:3].to_list() == pytest.approx([2 / 3, 1 / 3, 1.0]) and mom["score"][3] is None
    rev = cs.baseline_scores(feats, "reversal")
    assert rev["score"].to_list() == pytest.approx([0.5, 0.25, 1.0, 0.75])
    r1, r2 = cs.baseline_scores(feats, "random", seed=1), cs.baseline_scores(feats, "random", seed=1)
    assert r1["score"].to_list() == r2["score"].to_list() and r1["score"].n_unique() == 4
    with pytest.raises(ValueError, match="unknown baseline"):
        cs.baseline_scores(feats, "oracle")


# ------------------------------------------------------------------------------------------ (g)


def test_compare_to_baselines_flags_the_best_baseline_and_tests_the_model_against_it() -> None:
    rng = np.random.default_rng(5)
    d, n = 200, 50
    z = rng.standard_normal((d, n))
    weak = 0.3 * z + rng.standard_normal((d, n))  # a baseline with some skill (corr ~0.29)
    strong = z + 0.6 * rng.standard_normal((d, n))  # the model (corr ~0.86)
    model = _frame(strong, 0.02 * z)
    base = {
        "weak": _frame(weak, 0.02 * z).select("date", "ticker", "score"),
        "random": model.select("date", "ticker").with_columns(pl.Series("score", rng.random(d * n))),
        "constant": model.select("date", "ticker").with_columns(pl.lit(1.0).alias("score")),
    }
    table, tests = cs.compare_to_baselines(model, base, horizon=1, n_quantiles=5, n_boot=200, n_perm=500)
    assert table["predictor"].to_list() == ["model", "weak", "random", "constant"]
    assert table["best_baseline"].to_list() == [False, True, False, False]
    assert table["degenerate"].to_list() == [False, False, False, True]
    row = dict(zip(table["predictor"], table["mean_ic"], strict=True))
    assert row["model"] > 0.8 and 0.2 < row["weak"] < 0.35 and abs(row["random"]) < 0.03
    assert table.filter(pl.col("predictor") == "constant")["n_dates"][0] == 0
    paired = tests["paired"]
    assert tests["best_baseline"] == "weak" and paired["n_dates"] == d
    assert paired["mean_diff"] == pytest.approx(row["model"] - row["weak"])
    assert paired["t"] > 10 and paired["ci_low"] > 0.4
    assert tests["permutation"]["p_value"] == pytest.approx(1 / 501)
    mono = dict(zip(table["predictor"], table["monotonicity"], strict=True))
    assert mono["model"] == pytest.approx(1.0) and math.isnan(mono["constant"])
    assert 0 < tests["min_detectable_ic"] < 0.02


def test_min_detectable_ic() -> None:
    # sd_ic = 1 reduces to the single-correlation MDE of significance.minimum_detectable_effect
    assert cs.min_detectable_ic(500, 5, 1.0) == pytest.approx(minimum_detectable_effect(500, 5)["ic"])
    z = 1.959963984540054 + 0.8416212335729143
    assert cs.min_detectable_ic(252, 1, 0.1) == pytest.approx(z * 0.1 / math.sqrt(252))
    assert cs.min_detectable_ic(252, 5, 0.1) == pytest.approx(z * 0.1 / math.sqrt(252 / 5))
