"""Self-contained HTML reports (plotly.js inlined once, images as data URIs): no network needed to
open them, so they can be attached to MLflow runs and mailed around."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from finnex_ml.paths import atomic_path

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#1d2330;max-width:1400px}
h1{font-size:24px} h2{font-size:19px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin-top:20px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{border:1px solid #d8dbe2;padding:3px 7px;text-align:right} th{background:#f1f3f7}
td.l,th.l{text-align:left} tr.model td{background:#eef6ff} tr.fail td{background:#fdeaea}
.note{color:#555;font-size:13px;max-width:1000px} .bad{color:#b00020;font-weight:600} .ok{color:#16794a}
img{image-rendering:pixelated;border:1px solid #ccc;margin:4px}
"""


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (float, int, type(None))) for x in v):
        return f"[{_fmt(v[0])}, {_fmt(v[1])}]"
    return html.escape(str(v))


def html_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, *, row_class: Any = None
) -> str:
    if not rows:
        return "<p class='note'>(none)</p>"
    cols = list(columns or rows[0].keys())
    head = "".join(f"<th class='{'l' if i == 0 else ''}'>{html.escape(c)}</th>" for i, c in enumerate(cols))
    body = []
    for r in rows:
        cls = row_class(r) if row_class else ""
        cells = "".join(
            f"<td class='{'l' if i == 0 or isinstance(r.get(c), str) else ''}'>{_fmt(r.get(c))}</td>"
            for i, c in enumerate(cols)
        )
        body.append(f"<tr class='{cls}'>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _png_tag(data: bytes, title: str) -> str:
    return (
        f"<figure style='display:inline-block'><img src='data:image/png;base64,{base64.b64encode(data).decode()}' "
        f"width='384' alt='{html.escape(title)}'><figcaption class='note'>{html.escape(title)}</figcaption></figure>"
    )


def _page(title: str, parts: Sequence[str], plotly: bool) -> str:
    script = ""
    if plotly:
        from plotly.offline import get_plotlyjs

        script = f"<script type='text/javascript'>{get_plotlyjs()}</script>"
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style>{script}</head><body>{''.join(parts)}</body></html>"
    )


def _fig_div(fig) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})


def write_html(path: Path | str, text: str) -> Path:
    out = Path(path)
    with atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return out


TEST_COLUMNS = [
    "model",
    "kind",
    "horizon",
    "n",
    "accuracy",
    "accuracy_ci",
    "balanced_accuracy",
    "balanced_accuracy_ci",
    "permutation_p",
    "refit_permutation_p",
    "macro_f1",
    "roc_auc_ovr",
    "log_loss",
    "log_loss_skill",
    "brier_skill",
    "top_class_share",
    "degenerate",
    "sharpe",
    "sharpe_ci",
    "sharpe_same_close",
    "sortino",
    "max_drawdown",
    "calmar",
    "win_rate",
    "profit_factor",
    "annual_volatility",
    "turnover",
    "total_return",
]
REG_COLUMNS = ["return_model", "on row of", "horizon", "mae", "rmse", "r2", "directional_accuracy", "hit_ratio"]
HEADLINE_COLUMNS = [
    "model",
    "horizon",
    "best_baseline",
    "span",
    "first",
    "last",
    "n_days",
    "n_independent",
    "balanced_accuracy",
    "baseline_balanced_accuracy",
    "permutation_p",
    "refit_permutation_p",
    "test",
    "dm",
    "p_value",
    "brier_skill",
    "sharpe",
    "baseline_sharpe",
    "mde_sharpe",
    "mde_accuracy",
    "degenerate",
    "placebo_passed",
]
# compounded or annualised from the mean: hidden under a year (Calmar of 17.8 from 25 days means nothing)
HIDDEN_UNDER_A_YEAR = ("calmar", "sortino", "annual_return")
MARK = "†"


def _annualised_view(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], under_a_year: bool
) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows and columns for display: under a year, annual ratios that compound are dropped and
    the Sharpe columns are renamed with a mark that the note explains."""
    if not under_a_year:
        return [dict(r) for r in rows], list(columns)
    cols = [c for c in columns if c not in HIDDEN_UNDER_A_YEAR]
    rename = {
        c: f"{c} {MARK}"
        for c in cols
        if c.startswith("sharpe") or c in ("baseline_sharpe", "mde_sharpe", "annual_volatility")
    }
    out = [{rename.get(k, k): v for k, v in r.items()} for r in rows]
    return out, [rename.get(c, c) for c in cols]


def _provenance_html(doc: Mapping[str, Any]) -> str:
    prov = doc.get("provenance") or {}
    source = prov.get("source") or "unknown (not recorded)"
    synth = prov.get("synthetic_modalities") or []
    mods = prov.get("modalities") or {}
    kind = "bad" if synth or "synthetic" in str(source) else "ok"
    lines = [
        f"<p class='{kind}'>Data source: {html.escape(str(source))}"
        + (f" — synthetic modalities: {html.escape(', '.join(synth))}" if synth else " — no synthetic modality")
        + "</p>"
    ]
    if "synthetic" in str(source):
        lines.append(
            "<p class='note'>Synthetic data: the generator decides what is predictable. Nothing below is "
            "evidence about any real market.</p>"
        )
    if mods:
        lines.append(html_table([{"modality": k, **v} for k, v in mods.items()]))
        revised = sorted(k for k, v in mods.items() if "current vintage" in str(v.get("provenance", "")))
        if revised:
            lines.append(
                f"<p class='note'>Revised data ({html.escape(', '.join(revised))}): some series are current "
                "vintages, each period at its latest revision rather than as first published, so their values "
                "were not all known at the dates they count from. Vintage files (ALFRED realtime_start) give "
                "point-in-time values.</p>"
            )
    lines.append(f"<p class='note'>Provenance from: {html.escape(str(prov.get('how', 'not recorded')))}.</p>")
    return "".join(lines)


def evaluation_html(doc: Mapping[str, Any], equity: pl.DataFrame, images: Mapping[str, bytes] | None = None) -> str:
    """The evaluation report: the data source first, then the headline table (each model against
    its best baseline, with the test, its p-value and the minimum detectable effect), then the
    details: tables, equity curves, confusion matrices, controls, importance."""
    import plotly.graph_objects as go

    t = doc["tables"]
    cfg = doc["config"]
    leak = doc["leakage"]
    under = bool(doc["test"].get("under_one_year", doc["test"]["n"] < 252))
    parts = [
        "<h1>FinNeX evaluation report</h1>",
        _provenance_html(doc),
        f"<p class='note'>Test dates {doc['test']['first']} – {doc['test']['last']} ({doc['test']['n']} sessions); "
        f"training {doc['train']['first']} – {doc['train']['last']} ({doc['train']['n']}). Models: "
        f"{', '.join(doc['models']) or 'none trained'}. Costs {cfg['cost_bps']} bp per unit of turnover, short "
        f"borrow {cfg.get('borrow_bps', 0)} bp a year; trades {cfg.get('execution_lag', 0)} session(s) after the "
        f"signal's close{', over h staggered sub-portfolios' if cfg.get('staggered') else ''}; "
        f"Sell = {'short' if cfg['short_on_sell'] else 'flat'}; intervals are 95 % circular block bootstrap "
        f"(block {doc['test']['bootstrap_block']} sessions, {cfg['n_boot']} resamples). Split {doc['split_hash'][:12]}, "
        f"layout {doc['spec_hash'][:12]}.</p>",
        "<p class='note'>Honest daily single-stock direction accuracy is in the low 50s for up/down; with three "
        "classes, chance balanced accuracy is 1/3 (fixed, also on resamples lacking a class). A result far above "
        "that is a leak until proven otherwise.</p>",
    ]
    if under:
        parts.append(
            f"<p class='bad'>{MARK} The test span is under one year ({doc['test']['n']} sessions): annualised "
            f"ratios ({MARK}) are extrapolations and Calmar, Sortino and annual return are not shown.</p>"
        )

    parts.append("<h2>Read this first: each model against its best baseline</h2>")
    parts.append(
        "<p class='note'>Best baseline: the lowest mean Brier loss on the same dates (naive baselines for the "
        "tabular models; naive or tabular for the networks). Test: Diebold–Mariano on the per-date Brier loss "
        "(HAC, Harvey–Leybourne–Newbold), p-value one-sided for 'model better'. permutation_p: block "
        "permutation of the labels against the fixed predictions; refit_permutation_p: the model refitted on "
        "block-permuted training labels. n_independent = n_days / h. mde_*: the smallest true effect (annual "
        "Sharpe; balanced accuracy above 1/3) a 5 % test finds with 80 % power on this span. Rows are only "
        "shown beside their best baseline; a degenerate model calls one class on more than "
        f"{cfg.get('degenerate_threshold', 0.9):.0%} of the dates.</p>"
    )
    spans = {r.get("span", "") for r in t.get("headline", [])}
    # the longest out-of-sample series first: it is the one that can show something
    for span in sorted(spans, key=lambda sp: (sp != "pooled walk-forward", sp)):
        rows = [r for r in t["headline"] if r.get("span") == span]
        span_under = any(r.get("annualised_from_under_a_year") for r in rows)
        view, cols = _annualised_view(rows, HEADLINE_COLUMNS, span_under)
        parts.append(
            f"<h3>{html.escape(span)}</h3>"
            + html_table(
                view,
                cols,
                row_class=lambda r: "fail" if r.get("degenerate") or r.get("placebo_passed") is False else "",
            )
        )
    if t.get("spa"):
        parts.append(
            "<h3>Hansen's SPA (arch): does any model beat the best naive baseline?</h3>" + html_table(t["spa"])
        )

    status = (
        "<span class='bad'>FAILED (blocking)</span>"
        if not leak["passed"]
        else "<span class='ok'>passed</span>"
        if not leak.get("warnings")
        else "<span class='bad'>warnings</span>"
    )
    parts.append(f"<h2>Leak checks: {status}</h2>")
    fs = leak["feature_scan"]
    parts.append(
        f"<p class='note'>Blocking: a balanced-accuracy interval wholly above {leak['max_balanced_accuracy']} "
        "(networks and tabular models), or skill that survives the label-shift placebo. Warning only: a "
        f"feature whose |Spearman ρ| with a forward return (horizons {fs.get('horizons')}) on the "
        f"{fs['training_dates']} training dates beats the family-wise bar {fs['threshold_abs_spearman']:.3f} "
        f"(the {1 - fs.get('alpha', 0.05):.0%} quantile of the largest |ρ| over {fs.get('permutations')} block "
        "permutations of the returns); a strong legitimate signal does that too.</p>"
    )
    for b in leak.get("blocking", []):
        parts.append(f"<p class='bad'>{html.escape(b)}</p>")
    for w in leak.get("warnings", [])[:20]:
        parts.append(f"<p class='note'>warning: {html.escape(w)}</p>")
    if fs.get("canary"):
        parts.append(
            "<h3>Canaries: a feature built from the future return, through the same bar</h3>" + html_table(fs["canary"])
        )
    parts.append("<h3>Largest feature correlations</h3>" + html_table(fs["top"]))
    if fs["flagged"]:
        parts.append("<p class='bad'>Flagged features:</p>" + html_table(fs["flagged"]))
    if leak["suspicious_models"]:
        parts.append("<p class='bad'>Suspiciously good models:</p>" + html_table(leak["suspicious_models"]))
    if t.get("label_shift_placebo"):
        parts.append(
            "<h3>Label-shift placebo (skill against labels k sessions later must vanish)</h3>"
            + html_table(t["label_shift_placebo"], row_class=lambda r: "fail" if r.get("fails") else "")
        )

    model_row = lambda r: "model" if r.get("kind") == "model" else ""  # noqa: E731
    view, cols = _annualised_view(t["test"], TEST_COLUMNS, under)
    parts.append(
        "<h2>Test split: models and baselines</h2><p class='note'>sharpe: the headline backtest (execution "
        "lag, staggered, costs, borrow); sharpe_same_close: trading at the signal's own close, for comparison. "
        "Degenerate rows are shaded.</p>"
        + html_table(view, cols, row_class=lambda r: "fail" if r.get("degenerate") else model_row(r))
    )
    reg = [
        {**r, "on row of": r["model"], "return_model": r.get("return_model") or r["model"]}
        for r in t["test"]
        if r.get("mae") is not None
    ]
    parts.append(
        "<h3>Return regression</h3><p class='note'>return_model is the model whose return predictions are "
        "scored: the regression baseline is a ridge regression (shown on gradient boosting's row), the "
        "majority row predicts the training mean return.</p>" + html_table(reg, REG_COLUMNS, row_class=model_row)
    )
    if doc.get("deflated_sharpe"):
        rows = [{"strategy": k, **v} for k, v in doc["deflated_sharpe"].items()]
        trials = doc.get("deflated_sharpe_trials") or {}
        parts.append(
            f"<h3>Deflated Sharpe</h3><p class='note'>Trials: {html.escape(str(trials.get('source', '')))}; "
            f"N = {trials.get('n_trials')}, variance of the per-period trial Sharpes "
            f"{_fmt(trials.get('variance'))}.</p>" + html_table(rows)
        )
    pooled = doc.get("pooled_oos") or {}
    if pooled.get("rows"):
        pview, pcols = _annualised_view(pooled["rows"], TEST_COLUMNS, pooled.get("n", 0) < 252)
        ptrials = pooled.get("deflated_sharpe_trials") or {}
        parts.append(
            f"<h2>Pooled out-of-sample walk-forward: {pooled['first']} – {pooled['last']} ({pooled['n']} "
            f"sessions, {pooled.get('years', 0):.1f} years)</h2><p class='note'>{html.escape(pooled.get('note', ''))}"
            "</p>"
            + _pooled_power(pooled)
            + html_table(pview, pcols, row_class=lambda r: "fail" if r.get("degenerate") else "")
            + "<h3>Folds</h3>"
            + html_table(pooled.get("folds", []))
        )
        net_folds = [f for folds in (pooled.get("networks") or {}).values() for f in folds]
        if net_folds:
            parts.append(
                "<h3>Networks retrained per fold</h3><p class='note'>fit / inner_val / test: first date, last "
                "date, dates. Early stopping and the best epoch use inner_val only; cached: loaded from an "
                "earlier run with the same model, fold, config and data.</p>"
                + html_table(
                    [
                        {
                            k: f.get(k)
                            for k in ("model", "label", "fit", "inner_val", "test", "epochs", "seeds", "cached")
                        }
                        | {"best_epochs": [m.get("best_epoch") for m in f.get("members", [])]}
                        for f in net_folds
                    ]
                )
            )
        if pooled.get("deflated_sharpe"):
            parts.append(
                f"<h3>Deflated Sharpe, pooled</h3><p class='note'>Trials: "
                f"{html.escape(str(ptrials.get('source', '')))}; N = {ptrials.get('n_trials')}.</p>"
                + html_table([{"strategy": k, **v} for k, v in pooled["deflated_sharpe"].items()])
            )

    if equity.height:
        fig = go.Figure()
        for name in equity["series"].unique(maintain_order=True).to_list():
            sub = equity.filter(pl.col("series") == name)
            bold = name.startswith("buy_and_hold") or any(name.startswith(m) for m in doc["models"])
            fig.add_trace(
                go.Scatter(
                    x=sub["date"].to_list(),
                    y=sub["equity"].to_list(),
                    name=name,
                    mode="lines",
                    line={"width": 3 if bold else 1},
                    visible=True if bold else "legendonly",
                )
            )
        fig.update_layout(
            title="Equity curves, net of costs (click the legend to show baselines)",
            height=480,
            yaxis_title="growth of 1",
            template="plotly_white",
        )
        parts.append("<h2>Equity curves</h2>" + _fig_div(fig))

    parts.append("<h2>Confusion matrices (test, rows true, columns predicted)</h2>")
    for name in doc["models"] + ["logistic", "gradient_boosting"]:
        for hz, d in doc["details"].get(name, {}).items():
            cm = d["classification"]["confusion_matrix"]
            fig = go.Figure(
                go.Heatmap(
                    z=cm,
                    x=["sell", "hold", "buy"],
                    y=["sell", "hold", "buy"],
                    colorscale="Blues",
                    text=cm,
                    texttemplate="%{text}",
                    showscale=False,
                )
            )
            fig.update_layout(
                title=f"{name} {hz}",
                width=340,
                height=320,
                yaxis={"autorange": "reversed"},
                margin={"l": 50, "r": 10, "t": 40, "b": 40},
            )
            parts.append(f"<div style='display:inline-block'>{_fig_div(fig)}</div>")

    parts.append(
        "<h2>Walk-forward folds of the splits</h2><p class='note'>Baselines refitted per fold. The networks "
        f"are retrained per year in the pooled walk-forward ({cfg['walk_forward_epochs']} epoch(s) at most, "
        f"seeds {list(cfg.get('walk_forward_seeds') or [])}; 0 epochs: not retrained).</p>"
    )
    parts.append(html_table(t["walk_forward_summary"]))
    parts.append("<details><summary>per fold</summary>" + html_table(t["walk_forward"]) + "</details>")
    parts.append(
        "<h2>Ablations and controls</h2><h3>Each channel blanked to its training mean</h3>" + html_table(t["ablations"])
    )
    parts.append(
        "<h3>Permuted training labels (must be at chance, 1/3)</h3><p class='note'>ci: 95 % "
        "interval. The verdict uses ci_familywise (Bonferroni over all controls): wholly above "
        "1/3 is a suspected leak and blocks this report; wholly below is flagged as a warning "
        "(luck or too few test dates). "
        + html.escape(_permuted_note(doc.get("permuted_label_control") or {}))
        + "</p>"
        + html_table(
            t["permuted_labels"], row_class=lambda r: "fail" if r.get("above_chance") or r.get("below_chance") else ""
        )
    )
    regimes = t["regimes"]
    rview, rcols = _annualised_view(regimes, list(regimes[0]) if regimes else [], under)
    parts.append(
        "<h2>Regime breakdown (trailing return known at t)</h2><p class='note'>Shaded: fewer than 20 "
        "dates, too few to read anything into. Each regime's Sharpe is annualised from its own (non-"
        "contiguous) dates.</p>" + html_table(rview, rcols, row_class=lambda r: "fail" if r.get("small_sample") else "")
    )
    if doc.get("horizon_consistency"):
        parts.append(
            "<h2>Multi-horizon consistency</h2>"
            + html_table(
                [
                    {"model": k, **{kk: vv for kk, vv in v.items() if not isinstance(vv, list)}}
                    for k, v in doc["horizon_consistency"].items()
                ]
            )
        )

    interp = doc.get("interpretation") or {}
    if interp:
        parts.append("<h2>Interpretability</h2>")
        for name, d in interp.items():
            parts.append(
                f"<h3>{html.escape(name)}</h3><p class='{'bad' if d.get('skipped') else 'note'}'>"
                f"{html.escape(d.get('note', ''))}</p>"
            )
            for kind, agg in (d.get("aggregates") or {}).items():
                secs = agg.get("section", {})
                top = agg.get("top_features", [])[:15]
                fig = go.Figure(go.Bar(x=[v for _, v in top][::-1], y=[f for f, _ in top][::-1], orientation="h"))
                fig.update_layout(
                    title=f"{name}: {kind}, top features (share of importance)",
                    height=420,
                    width=640,
                    margin={"l": 260},
                    template="plotly_white",
                )
                parts.append(f"<div style='display:inline-block'>{_fig_div(fig)}</div>")
                parts.append(
                    html_table(
                        [
                            {
                                "importance": kind,
                                **{f"section {k}": v for k, v in secs.items()},
                                **{f"channel {k}": v for k, v in agg.get("channel", {}).items()},
                            }
                        ]
                    )
                )
        for title, data in (images or {}).items():
            parts.append(_png_tag(data, title))
    return _page("FinNeX evaluation report", parts, plotly=True)


def qa_html(rows: Sequence[Mapping[str, Any]], generated: str) -> str:
    """The QA report: one row per asset check with its history across runs and partitions."""
    import plotly.graph_objects as go

    failing = [r for r in rows if r.get("latest") == "failed"]
    parts = [
        f"<h1>FinNeX QA report</h1><p class='note'>Generated {html.escape(generated)}. Every asset check of the "
        f"project, with its executions so far: completed evaluations only, across every run and partition "
        f"(a check planned in a run that stopped before evaluating it is counted apart). {len(rows)} checks; "
        f"{len(failing)} failing in their latest execution; never-run checks are listed as such.</p>"
    ]
    if rows:
        fig = go.Figure(
            [
                go.Bar(name="passed", x=[r["check"] for r in rows], y=[r["passed"] for r in rows]),
                go.Bar(name="failed", x=[r["check"] for r in rows], y=[r["failed"] for r in rows]),
            ]
        )
        fig.update_layout(barmode="stack", height=420, template="plotly_white", title="Executions per check")
        parts.append(_fig_div(fig))
    parts.append(html_table(rows, row_class=lambda r: "fail" if r.get("latest") == "failed" else ""))
    return _page("FinNeX QA report", parts, plotly=True)


__all__ = ["evaluation_html", "html_table", "qa_html", "write_html"]


def _pooled_power(pooled: dict) -> str:
    """The pooled span's number of independent decisions and minimum detectable effects."""
    mde = pooled.get("minimum_detectable_effect") or {}
    if not mde:
        return ""
    rows = [
        {
            "horizon": h,
            "n_days": pooled.get("n"),
            "n_independent": (pooled.get("independent_decisions") or {}).get(h),
            "mde_sharpe": m.get("sharpe"),
            "mde_accuracy": m.get("accuracy"),
            "mde_ic": m.get("ic"),
        }
        for h, m in mde.items()
    ]
    return (
        "<p class='note'>What this span can show: the number of independent decisions (n / h) and the "
        "smallest true effect a 5 % test finds with 80 % power (annual Sharpe; balanced accuracy above "
        "1/3; an information coefficient).</p>" + html_table(rows)
    )


def _permuted_note(ctrl: dict) -> str:
    if not ctrl.get("permutations"):
        return "No network was retrained on permuted labels."
    return (
        f"Networks: {ctrl['permutations']} permutation(s) x {ctrl['epochs']} epoch(s) each. It can detect "
        f"{ctrl.get('can_detect', '')}. It cannot detect {ctrl.get('cannot_detect', '')}."
    )
