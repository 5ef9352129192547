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


def html_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, *,
               row_class: Any = None) -> str:
    if not rows:
        return "<p class='note'>(none)</p>"
    cols = list(columns or rows[0].keys())
    head = "".join(f"<th class='{'l' if i == 0 else ''}'>{html.escape(c)}</th>" for i, c in enumerate(cols))
    body = []
    for r in rows:
        cls = row_class(r) if row_class else ""
        cells = "".join(f"<td class='{'l' if i == 0 or isinstance(r.get(c), str) else ''}'>{_fmt(r.get(c))}</td>"
                        for i, c in enumerate(cols))
        body.append(f"<tr class='{cls}'>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _png_tag(data: bytes, title: str) -> str:
    return (f"<figure style='display:inline-block'><img src='data:image/png;base64,{base64.b64encode(data).decode()}' "
            f"width='384' alt='{html.escape(title)}'><figcaption class='note'>{html.escape(title)}</figcaption></figure>")


def _page(title: str, parts: Sequence[str], plotly: bool) -> str:
    script = ""
    if plotly:
        from plotly.offline import get_plotlyjs

        script = f"<script type='text/javascript'>{get_plotlyjs()}</script>"
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style>{script}</head><body>{''.join(parts)}</body></html>")


def _fig_div(fig) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})


def write_html(path: Path | str, text: str) -> Path:
    out = Path(path)
    with atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return out


TEST_COLUMNS = ["model", "kind", "horizon", "n", "accuracy", "accuracy_ci", "balanced_accuracy", "balanced_accuracy_ci",
                "macro_f1", "roc_auc_ovr", "log_loss", "sharpe", "sharpe_ci", "sortino", "max_drawdown", "calmar",
                "win_rate", "profit_factor", "annual_volatility", "turnover", "total_return"]
REG_COLUMNS = ["model", "horizon", "mae", "rmse", "r2", "directional_accuracy", "hit_ratio"]


def evaluation_html(doc: Mapping[str, Any], equity: pl.DataFrame, images: Mapping[str, bytes] | None = None) -> str:
    """The evaluation report: tables, equity curves, confusion matrices, importance."""
    import plotly.graph_objects as go

    t = doc["tables"]
    cfg = doc["config"]
    leak = doc["leakage"]
    parts = [f"<h1>FinNeX evaluation report</h1>",
             f"<p class='note'>Test dates {doc['test']['first']} – {doc['test']['last']} ({doc['test']['n']} sessions); "
             f"training {doc['train']['first']} – {doc['train']['last']} ({doc['train']['n']}). Models: "
             f"{', '.join(doc['models']) or 'none trained'}. Costs {cfg['cost_bps']} bp per unit of turnover; "
             f"Sell = {'short' if cfg['short_on_sell'] else 'flat'}; intervals are 95 % circular block bootstrap "
             f"(block {doc['test']['bootstrap_block']} sessions, {cfg['n_boot']} resamples). Split {doc['split_hash'][:12]}, "
             f"layout {doc['spec_hash'][:12]}.</p>",
             "<p class='note'>Honest daily single-stock direction accuracy is in the low 50s for up/down; with three "
             "classes, chance balanced accuracy is 1/3. A result far above that is a leak until proven otherwise. "
             "With a test set this short, the intervals are wide: read them, not the point estimates.</p>"]
    status = "<span class='ok'>passed</span>" if leak["passed"] else "<span class='bad'>FAILED</span>"
    parts.append(f"<h2>Leak checks: {status}</h2>")
    parts.append(f"<p class='note'>Feature scan: |Spearman ρ| of each daily feature with the next return on the "
                 f"{leak['feature_scan']['training_dates']} training dates, bar {leak['feature_scan']['threshold_abs_spearman']:.3f}. "
                 f"Model bar: balanced-accuracy interval wholly above {leak['max_balanced_accuracy']}.</p>")
    parts.append("<h3>Largest feature correlations</h3>" + html_table(leak["feature_scan"]["top"]))
    if leak["feature_scan"]["flagged"]:
        parts.append("<p class='bad'>Flagged features:</p>" + html_table(leak["feature_scan"]["flagged"]))
    if leak["suspicious_models"]:
        parts.append("<p class='bad'>Suspiciously good models:</p>" + html_table(leak["suspicious_models"]))

    model_row = lambda r: "model" if r.get("kind") == "model" else ""  # noqa: E731
    parts.append("<h2>Test split: models and baselines</h2>" + html_table(t["test"], TEST_COLUMNS, row_class=model_row))
    reg = [r for r in t["test"] if r.get("mae") is not None]
    parts.append("<h3>Return regression</h3>" + html_table(reg, REG_COLUMNS, row_class=model_row))
    if doc.get("deflated_sharpe"):
        rows = [{"strategy": k, **v} for k, v in doc["deflated_sharpe"].items()]
        parts.append("<h3>Deflated Sharpe (all strategies above count as trials)</h3>" + html_table(rows))

    if equity.height:
        fig = go.Figure()
        for name in equity["series"].unique(maintain_order=True).to_list():
            sub = equity.filter(pl.col("series") == name)
            bold = name.startswith("buy_and_hold") or any(name.startswith(m) for m in doc["models"])
            fig.add_trace(go.Scatter(x=sub["date"].to_list(), y=sub["equity"].to_list(), name=name, mode="lines",
                                     line={"width": 3 if bold else 1}, visible=True if bold else "legendonly"))
        fig.update_layout(title="Equity curves, net of costs (click the legend to show baselines)",
                          height=480, yaxis_title="growth of 1", template="plotly_white")
        parts.append("<h2>Equity curves</h2>" + _fig_div(fig))

    parts.append("<h2>Confusion matrices (test, rows true, columns predicted)</h2>")
    for name in doc["models"] + ["logistic", "gradient_boosting"]:
        for hz, d in doc["details"].get(name, {}).items():
            cm = d["classification"]["confusion_matrix"]
            fig = go.Figure(go.Heatmap(z=cm, x=["sell", "hold", "buy"], y=["sell", "hold", "buy"], colorscale="Blues",
                                       text=cm, texttemplate="%{text}", showscale=False))
            fig.update_layout(title=f"{name} {hz}", width=340, height=320, yaxis={"autorange": "reversed"},
                              margin={"l": 50, "r": 10, "t": 40, "b": 40})
            parts.append(f"<div style='display:inline-block'>{_fig_div(fig)}</div>")

    parts.append("<h2>Walk-forward folds</h2><p class='note'>Networks are retrained on each fold's training dates "
                 f"({cfg['walk_forward_epochs']} epoch(s)); baselines are refitted per fold.</p>")
    parts.append(html_table(t["walk_forward_summary"]))
    parts.append("<details><summary>per fold</summary>" + html_table(t["walk_forward"]) + "</details>")
    parts.append("<h2>Ablations and controls</h2><h3>Each channel blanked to its training mean</h3>"
                 + html_table(t["ablations"]))
    parts.append("<h3>Permuted training labels (must be at chance, 1/3)</h3><p class='note'>ci: 95 % "
                 "interval. The verdict uses ci_familywise (Bonferroni over all controls): wholly above "
                 "1/3 is a suspected leak and blocks this report; wholly below is flagged as a warning "
                 "(luck or too few test dates).</p>"
                 + html_table(t["permuted_labels"],
                              row_class=lambda r: "fail" if r.get("above_chance") or r.get("below_chance") else ""))
    parts.append("<h2>Regime breakdown (trailing return known at t)</h2>" + html_table(t["regimes"]))
    if doc.get("horizon_consistency"):
        parts.append("<h2>Multi-horizon consistency</h2>" + html_table(
            [{"model": k, **{kk: vv for kk, vv in v.items() if not isinstance(vv, list)}}
             for k, v in doc["horizon_consistency"].items()]))

    interp = doc.get("interpretation") or {}
    if interp:
        parts.append("<h2>Interpretability</h2>")
        for name, d in interp.items():
            parts.append(f"<h3>{html.escape(name)}</h3><p class='note'>{html.escape(d.get('note', ''))}</p>")
            for kind, agg in (d.get("aggregates") or {}).items():
                secs = agg.get("section", {})
                top = agg.get("top_features", [])[:15]
                fig = go.Figure(go.Bar(x=[v for _, v in top][::-1], y=[f for f, _ in top][::-1], orientation="h"))
                fig.update_layout(title=f"{name}: {kind}, top features (share of importance)", height=420, width=640,
                                  margin={"l": 260}, template="plotly_white")
                parts.append(f"<div style='display:inline-block'>{_fig_div(fig)}</div>")
                parts.append(html_table([{"importance": kind, **{f"section {k}": v for k, v in secs.items()},
                                          **{f"channel {k}": v for k, v in agg.get("channel", {}).items()}}]))
        for title, data in (images or {}).items():
            parts.append(_png_tag(data, title))
    return _page("FinNeX evaluation report", parts, plotly=True)


def qa_html(rows: Sequence[Mapping[str, Any]], generated: str) -> str:
    """The QA report: one row per asset check with its history across runs and partitions."""
    import plotly.graph_objects as go

    failing = [r for r in rows if r.get("latest") == "failed"]
    parts = [f"<h1>FinNeX QA report</h1><p class='note'>Generated {html.escape(generated)}. Every asset check of the "
             f"project, with its executions so far. {len(rows)} checks; {len(failing)} failing in their latest "
             "execution; never-run checks are listed as such.</p>"]
    if rows:
        fig = go.Figure([go.Bar(name="passed", x=[r["check"] for r in rows], y=[r["passed"] for r in rows]),
                         go.Bar(name="failed", x=[r["check"] for r in rows], y=[r["failed"] for r in rows])])
        fig.update_layout(barmode="stack", height=420, template="plotly_white", title="Executions per check")
        parts.append(_fig_div(fig))
    parts.append(html_table(rows, row_class=lambda r: "fail" if r.get("latest") == "failed" else ""))
    return _page("FinNeX QA report", parts, plotly=True)


__all__ = ["evaluation_html", "html_table", "qa_html", "write_html"]
