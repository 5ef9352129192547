"""Universe mode's evaluation: the model's cross-sectional skill beside the best baseline, on a
stated out-of-sample span, with tests that could reject it (``cross_section``), and its report.

Every predictor is scored on the same test (date, ticker) rows: daily rank IC against the
h-session excess return, its HAC t-test and bootstrap interval, decile (or fewer) long-short
portfolios net of costs, a paired test of the model's daily IC against the best baseline's, and
a permutation test of the model's mean IC. With a planted signal the oracle's IC is shown too.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

import polars as pl

from finnex_ml.evaluation import cross_section as cs
from finnex_ml.evaluation.report import _page, html_table

BASELINES = ("momentum", "reversal", "random")
ORACLE = "oracle (planted rule)"
# Without a planted rule, an IC interval wholly above this is implausible for daily data: a leak
# until proven otherwise (real cross-sectional ICs are a few hundredths).
IMPLAUSIBLE_IC = 0.10
ONE_CLASS_SHARE = 0.95  # calls of one class on this share of test rows or more: degenerate


def evaluate_universe(
    samples: pl.DataFrame,
    preds: pl.DataFrame,
    features: pl.DataFrame,
    horizon: int,
    *,
    oracle: pl.DataFrame | None = None,
    n_quantiles: int = 10,
    cost_bps: float = 10.0,
    n_boot: int = 1000,
    n_perm: int = 1000,
    ridge: pl.DataFrame | None = None,
) -> dict[str, Any]:
    """Score the model's test rows beside the baselines.

    ``samples``: every (date, ticker) with its ``set`` and ``excess`` (the split); ``preds``: the
    model's test rows at least (date, ticker, set, score, pred_class, fwd_return as a simple
    return); ``features``: universe features of the train and test dates. Baselines: momentum,
    reversal, random, and a ridge on the ``peer__xs_*`` and ``price__*`` features fitted on the
    training set's excess returns only (``ridge``: its test scores fitted elsewhere, e.g. per
    walk-forward fold); with a planted signal, the oracle (date, ticker, score)."""
    test = preds.filter(pl.col("set") == "test").with_columns(pl.col("fwd_return").log1p())
    if test.height == 0:
        raise ValueError("no test predictions to evaluate")
    test_dates = sorted(set(test["date"].to_list()))
    feats_test = features.filter(pl.col("date").is_in(test_dates))
    baselines = {k: cs.baseline_scores(feats_test, k) for k in BASELINES}
    train_rows = samples.filter(pl.col("set") == "train").select(
        "date", "ticker", pl.col("excess").alias("excess_return")
    )
    # every feature the images carry, so the ridge sees what the model sees (date-t values only)
    ridge_cols = ridge_columns(features)
    train_feats = features.join(train_rows.select("date", "ticker"), on=["date", "ticker"], how="semi")
    if ridge is not None:
        baselines["ridge"] = ridge
    elif train_feats.height:
        baselines["ridge"] = cs.fit_panel_ridge(
            train_feats.select("date", "ticker", *ridge_cols),
            train_rows,
            feats_test.select("date", "ticker", *ridge_cols),
            feature_cols=ridge_cols,
        )
    table, tests = cs.compare_to_baselines(
        test.select("date", "ticker", "score", "fwd_return"),
        baselines,
        horizon,
        n_quantiles=n_quantiles,
        cost_bps=cost_bps,
        n_boot=n_boot,
        n_perm=n_perm,
    )
    if oracle is not None:  # a ceiling, not a baseline: never the "best baseline" the model must beat
        ceiling, _ = cs.compare_to_baselines(
            test.select("date", "ticker", "fwd_return").join(
                oracle.select("date", "ticker", "score"), on=["date", "ticker"], how="inner"
            ),
            {},
            horizon,
            model_name=ORACLE,
            n_quantiles=n_quantiles,
            cost_bps=cost_bps,
            n_boot=n_boot,
            n_perm=10,
        )
        table = pl.concat([table, ceiling], how="diagonal_relaxed")
    quantiles = cs.quantile_portfolios(cs.add_excess_return(test), n_quantiles, horizon, cost_bps)
    return {
        "table": table,
        "tests": tests,
        "horizon": horizon,
        "test_span": (test_dates[0].isoformat(), test_dates[-1].isoformat()),
        "n_test_dates": len(test_dates),
        "n_train_rows": train_rows.height,
        "tickers_per_date": float(test.group_by("date").len()["len"].mean()),
        "degenerate": cs.is_degenerate_score(test) or _one_class(test),
        "planted": oracle is not None,
        "quantile_means": cs.quantile_monotonicity(quantiles),
    }


def ridge_columns(features: pl.DataFrame) -> list[str]:
    """Every image feature (``group__name``, numeric): what the ridge baseline is fitted on."""
    return [c for c, t in features.schema.items() if "__" in c and t.is_numeric()]


def evaluate_pooled(
    samples: pl.DataFrame,
    pooled: pl.DataFrame,
    features: pl.DataFrame,
    horizon: int,
    folds: Sequence[Any],
    fold_info: Sequence[Mapping[str, Any]] = (),
    **kwargs: Any,
) -> dict[str, Any]:
    """``evaluate_universe`` on the pooled walk-forward panel (every fold's test block; ``pooled``:
    date, ticker, score, pred_class, fwd_return, fold), the ridge refitted per fold on that fold's
    training window; with the pooled span, its years and its independent h-session decisions."""
    from finnex_ml.panel_walkforward import pooled_ridge

    preds = pooled.with_columns(pl.lit("test").alias("set"))
    ridge = pooled_ridge(features, samples, folds, ridge_columns(features))
    no_split = samples.with_columns(pl.lit(None, dtype=pl.String).alias("set"))  # the folds fit, not one split
    doc = evaluate_universe(no_split, preds, features, horizon, ridge=ridge, **kwargs)
    first, last = (date.fromisoformat(x) for x in doc["test_span"])
    doc.update(
        span_years=(last - first).days / 365.25,
        n_rows=preds.height,
        independent_decisions=doc["n_test_dates"] // max(1, int(horizon)),
        folds=[dict(f) for f in fold_info],
        n_train_rows=sum(int(f.get("train_rows", 0)) for f in fold_info),
    )
    return doc


def headline(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The row a quant reads first: the model against the best baseline, the test, its p-value."""
    table: pl.DataFrame = doc["table"]
    tests = doc["tests"]
    model = table.row(0, named=True)
    best = tests["best_baseline"]
    base = table.filter(pl.col("predictor") == best).row(0, named=True) if best else {}
    return {
        "model_mean_ic": model["mean_ic"],
        "model_ic_p_value": model["p_value"],
        "best_baseline": best,
        "best_baseline_mean_ic": base.get("mean_ic"),
        "ic_difference": tests["paired"]["mean_diff"],
        "test": "paired daily IC difference, Newey-West t",
        "p_value": tests["paired"]["p_value"],
        "permutation_p_value": tests["permutation"].get("p_value"),
        "min_detectable_ic": tests["min_detectable_ic"],
    }


def summary_json(doc: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A JSON-ready summary of an evaluation document (span, headline, table, folds)."""
    if doc is None:
        return None
    keys = ("horizon", "test_span", "n_test_dates", "tickers_per_date", "degenerate", "planted")
    out = {k: doc[k] for k in keys}
    for k in ("span_years", "n_rows", "independent_decisions", "folds"):
        if k in doc:
            out[k] = doc[k]
    out["headline"] = headline(doc)
    out["table"] = doc["table"].to_dicts()
    return out


def _one_class(test: pl.DataFrame) -> bool:
    """A model that calls one class on nearly every row is flagged, whatever its scores do."""
    if "pred_class" not in test.columns:
        return False
    return float(test["pred_class"].value_counts()["count"].max()) / test.height >= ONE_CLASS_SHARE


def _flags(doc: Mapping[str, Any]) -> list[str]:
    flags = []
    low = doc["table"].row(0, named=True).get("ic_ci_low")
    if not doc.get("planted") and low is not None and low == low and low > IMPLAUSIBLE_IC:
        flags.append(
            f"<p class='bad'>Implausible skill: the model's IC interval lies above {IMPLAUSIBLE_IC} without a planted "
            "rule. Treat it as a leak until proven otherwise.</p>"
        )
    if doc["degenerate"]:
        flags.append(
            "<p class='warn'><b>The model is degenerate</b> (one class or a constant score): not interpreted.</p>"
        )
    if doc["n_test_dates"] < 126:
        flags.append(
            f"<p class='warn'>Test span is {doc['n_test_dates']} dates (under half a year): wide intervals.</p>"
        )
    return flags


def _comparison(doc: Mapping[str, Any], level: int) -> list[str]:
    """The comparison table and the model's tests, under headings of ``level``."""
    tests = doc["tests"]
    perm, paired = tests["permutation"], tests["paired"]
    return [
        f"<h{level}>Model beside the baselines (same test rows)</h{level}>",
        html_table(
            doc["table"].to_dicts(),
            [
                "predictor",
                "mean_ic",
                "ic_ci_low",
                "ic_ci_high",
                "t_hac",
                "p_value",
                "icir",
                "sharpe_net",
                "sharpe_net_ci_low",
                "sharpe_net_ci_high",
                "monotonicity",
                "n_dates",
                "degenerate",
                "best_baseline",
            ],
        ),
        f"<h{level}>Tests of the model</h{level}>",
        html_table(
            [
                {
                    "test": f"daily IC minus best baseline ({tests['best_baseline']})",
                    "estimate": paired["mean_diff"],
                    "interval": (paired["ci_low"], paired["ci_high"]),
                    "p_value": paired["p_value"],
                },
                {
                    "test": f"permutation of scores within dates (blocks of {doc['horizon']})",
                    "estimate": perm.get("mean_ic"),
                    "interval": None,
                    "p_value": perm.get("p_value"),
                },
                {
                    "test": "minimum detectable mean IC (5 %, power 80 %)",
                    "estimate": tests["min_detectable_ic"],
                    "interval": None,
                    "p_value": None,
                },
            ]
        ),
    ]


def _span(doc: Mapping[str, Any], what: str) -> str:
    return (
        f"<p><b>{what}:</b> {doc['test_span'][0]} to {doc['test_span'][1]} "
        f"({doc['n_test_dates']} dates, {doc['tickers_per_date']:.1f} tickers per date), horizon "
        f"{doc['horizon']} sessions, scored on the excess return over the universe's equal-weight mean.</p>"
    )


def _pooled_parts(doc: Mapping[str, Any]) -> list[str]:
    """The pooled walk-forward first: its span, the headline row, the comparison, the folds."""
    top = headline(doc)
    return [
        "<h2>Pooled out-of-sample walk-forward</h2>",
        f"<p><b>Pooled out-of-sample span:</b> {doc['test_span'][0]} to {doc['test_span'][1]} "
        f"({doc['span_years']:.1f} years; {doc['n_test_dates']} dates x {doc['tickers_per_date']:.1f} tickers = "
        f"{doc['n_rows']:,} predictions; {doc['independent_decisions']} independent {doc['horizon']}-session "
        f"decisions) over {len(doc['folds'])} yearly folds, each retrained on a window ending {doc['horizon']} "
        "sessions before its block, early-stopped on an inner purged validation block.</p>",
        *_flags(doc),
        html_table(
            [
                {
                    "model_mean_ic": top["model_mean_ic"],
                    "best_baseline": top["best_baseline"],
                    "baseline_mean_ic": top["best_baseline_mean_ic"],
                    "difference": top["ic_difference"],
                    "test": top["test"],
                    "p_value": top["p_value"],
                    "permutation_p": top["permutation_p_value"],
                    "min_detectable_ic": top["min_detectable_ic"],
                }
            ]
        ),
        *_comparison(doc, 3),
        "<h3>Folds</h3>",
        html_table(
            [
                {
                    "fold": f.get("label"),
                    "fit": " .. ".join(f.get("fit_span", [])) + f" ({f.get('fit_dates')} dates)",
                    "validation": " .. ".join(f.get("val_span", [])) + f" ({f.get('val_dates')} dates)",
                    "test": " .. ".join(f.get("test_span", [])) + f" ({f.get('test_dates')} dates)",
                    "best_epochs": f.get("best_epochs"),
                    "cached": f.get("cached"),
                }
                for f in doc["folds"]
            ]
        ),
    ]


def universe_html(doc: Mapping[str, Any] | None, provenance: str, pooled: Mapping[str, Any] | None = None) -> str:
    """The report: source first; with a walk-forward, its pooled span and the model-versus-best-
    baseline row lead and the single split (``doc``, None when not run) follows as a secondary
    table; then the caveats."""
    parts = ["<h1>FinNeX universe evaluation</h1>", f"<p><b>Data:</b> {html.escape(provenance)}</p>"]
    if pooled is not None:
        parts += [*_pooled_parts(pooled), "<h2>Single split (secondary)</h2>"]
        if doc is None:
            parts.append("<p class='note'>(universe_model not materialised: no single split)</p>")
        else:
            parts += [_span(doc, "Test split"), *_flags(doc), *_comparison(doc, 3)]
    elif doc is None:
        raise ValueError("nothing to report: neither a single split nor a walk-forward")
    else:
        parts += [_span(doc, "Out-of-sample span"), *_flags(doc), *_comparison(doc, 2)]
    parts.append(
        "<p class='note'>IC: Spearman rank correlation of score and excess return per date; t: Newey-West with "
        "at least 2h lags; intervals: circular block bootstrap (block >= h); long-short: top minus bottom quantile, "
        "staggered over h phases, 10 bp per unit turnover. Daily direction accuracy in the low 50s and ICs of a few "
        "hundredths are what real markets give; far more is a leak until proven otherwise.</p>",
    )
    return _page("FinNeX universe evaluation", parts, plotly=False)


__all__ = ["BASELINES", "evaluate_pooled", "evaluate_universe", "headline", "summary_json", "universe_html"]
