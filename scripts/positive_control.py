"""Positive-control experiment: can the image models recover a planted rule?

Runs the planted synthetic world (one ticker, two years of image dates) through the real
features, layout and encoder, trains the default layout-aware MultiScaleCNN (an ensemble of 3
seeds) and scores it on the last 20 % of dates beside the oracle, a logistic regression on the
date-t features and the majority class. Writes a markdown table (default
``benchmarks/positive_control.md``).

    .venv/bin/python scripts/positive_control.py [--cases level:1.0 temporal:0.7 none:0]
        [--ablations shuffle_history permute_features blank_behavioral ...] [--out FILE]

The markdown file is rewritten after every case and every ablation, so a run stopped early keeps
what it finished. Beside each case it shows what the evaluation's leak checks would say.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from arch.bootstrap import StationaryBootstrap

from finnex_ml.budget import budget
from finnex_ml.data.synthetic import PlantedSignal
from finnex_ml.evaluation.leakage import scan_features, suspicious_scores
from finnex_ml.evaluation.metrics import balanced_accuracy
from finnex_ml.evaluation.uncertainty import classification_intervals
from finnex_ml.models import model_entry
from finnex_ml.positive_control import ControlData, ControlResult, ablate, build_control_data, run_control, split_dates


def paired_difference_ci(
    y: np.ndarray, a: np.ndarray, b: np.ndarray, reps: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """BA(a) - BA(b) on the same dates with a stationary-bootstrap 95 % interval (block ~5 dates)."""
    bs = StationaryBootstrap(5, np.arange(len(y)), seed=seed)
    diffs = [balanced_accuracy(y[i], a[i]) - balanced_accuracy(y[i], b[i]) for (i,), _ in bs.bootstrap(reps)]
    return (
        balanced_accuracy(y, a) - balanced_accuracy(y, b),
        float(np.quantile(diffs, 0.025)),
        float(np.quantile(diffs, 0.975)),
    )


def leak_verdicts(data: ControlData, res: ControlResult, block: int = 5) -> dict[str, str]:
    """What the evaluation's leak checks would say about these results: the blocking
    implausible-skill bar (``suspicious_scores``: a balanced-accuracy interval wholly above 0.6)
    for the model and the logistic regression, and the warning-only feature scan (|Spearman| of a
    date-t feature with the next return beyond its permutation bar, on the training dates)."""
    out = {}
    for name in ("model", "logistic"):
        ci = classification_intervals(res.test_labels, res.test_pred[name], block=block, n_boot=2000)
        lo, hi = ci["balanced_accuracy"]["lower"], ci["balanced_accuracy"]["upper"]
        flagged = bool(suspicious_scores([{"balanced_accuracy_lower": lo}]))
        out[name] = f"{'FLAGGED' if flagged else 'no'} [{lo:.2f}, {hi:.2f}]"
    train = split_dates(len(data.dates), data.horizon).train
    scan = scan_features(data.date_features[train], data.feature_names, data.returns[train], n_perm=200)
    out["scan"] = ", ".join(f"{n} ({r:+.2f})" for n, r in scan.flagged) or "none"
    out["scan"] += f" (bar {scan.threshold:.2f})"
    return out


def render(rows: list, ablations: list, start: str, end: str, setup: str) -> str:
    """The markdown tables of the cases and ablations finished so far."""
    lines = [
        f"Positive control, one ticker, image dates {start} .. {end}, horizon 1, {setup}; test = last 20 % of dates.",
        "",
        "| planted rule | strength | train / test dates | test span | BA model | BA oracle | BA logistic (date-t) "
        "| BA majority | model share of oracle edge | model - logistic [95 % CI] | model degenerate | minutes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    leak_lines = [
        "",
        "What the evaluation's leak checks would say (`finnex_ml.evaluation.leakage`): the blocking "
        "implausible-skill bar flags a predictor whose balanced-accuracy 95 % block-bootstrap interval "
        "lies wholly above 0.6; the warning-only feature scan flags a date-t feature whose |Spearman| "
        "with the next return beats its family-wise permutation bar on the training dates. A strong "
        "planted rule should fire them (`model_evaluation` lifts the bar for planted provenance); "
        "pure noise should fire neither.",
        "",
        "| planted rule | strength | model: flagged? [BA 95 % CI] | logistic: flagged? [BA 95 % CI] "
        "| feature scan flags (Spearman) |",
        "|---|---|---|---|---|",
    ]
    for _case, res, edge, (d, lo, hi), leak, secs in rows:
        leak_lines.append(f"| {res.form} | {res.strength:g} | {leak['model']} | {leak['logistic']} | {leak['scan']} |")
        ba = res.balanced_accuracy
        lines.append(
            f"| {res.form} | {res.strength:g} | {res.n_train} / {res.n_test} | {res.test_span[0]} .. {res.test_span[1]} "
            f"| {ba['model']:.3f} | {ba['oracle']:.3f} | {ba['logistic']:.3f} | {ba['majority']:.3f} "
            f"| {'' if edge is None else f'{edge:.2f}'} | {d:+.3f} [{lo:+.3f}, {hi:+.3f}] "
            f"| {res.diversity['degenerate']} | {secs / 60:.1f} |"
        )
    lines += leak_lines
    if ablations:
        lines += [
            "",
            "Ablations: the same ensemble retrained and tested on ablated images (same dates and labels).",
            "",
            "| planted rule | ablation | BA intact | BA ablated | ablated - intact [95 % CI] |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {case} | {kind} | {a:.3f} | {b:.3f} | {d:+.3f} [{lo:+.3f}, {hi:+.3f}] |"
            for case, kind, a, b, (d, lo, hi) in ablations
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", nargs="+", default=["level:1.0", "temporal:0.7", "none:0"])
    parser.add_argument("--start", default="2022-01-01")
    parser.add_argument("--end", default="2023-12-31")
    # the training assets' default (the standard budget's epochs), so the control tests the default model
    parser.add_argument("--epochs", type=int, default=budget("standard", "single").epochs)
    parser.add_argument("--model", default="cnn", help="a registered model name (finnex_ml.models)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one ensemble member per seed")
    parser.add_argument("--lr", type=float, default=None, help="override the recipe's (IMAGE_RECIPE) learning rate")
    parser.add_argument(
        "--ablations",
        nargs="*",
        default=["shuffle_history"],
        help="retrain on ablated images for each planted case (finnex_ml.positive_control.ABLATIONS)",
    )
    parser.add_argument("--out", default="benchmarks/positive_control.md")
    args = parser.parse_args()
    out = Path(args.out)
    recipe = {} if args.lr is None else {"lr": args.lr}
    fit = {"model": args.model, "seeds": args.seeds, "epochs": args.epochs, **recipe}
    setup = (
        f"{model_entry(args.model).title} ({args.model}), ensemble of {len(args.seeds)} seed(s), at most "
        f"{args.epochs} epochs, the training assets' recipe" + (f" with lr {args.lr:g}" if recipe else "")
    )
    # the file is rewritten after every case and ablation: a stopped run keeps its finished rows
    rows, ablations, kept = [], [], {}
    for case in args.cases:
        form, strength = case.split(":")
        plant = None if form == "none" else PlantedSignal(form, float(strength))
        t0 = time.perf_counter()
        data = build_control_data(plant, args.start, args.end)
        res = run_control(data, **fit)
        ba = res.balanced_accuracy
        edge = ((ba["model"] - 1 / 3) / (ba["oracle"] - 1 / 3)) if plant is not None and ba["oracle"] > 1 / 3 else None
        diff = paired_difference_ci(res.test_labels, res.test_pred["model"], res.test_pred["logistic"])
        leak = leak_verdicts(data, res)
        rows.append((case, res, edge, diff, leak, time.perf_counter() - t0))
        print(case, ba, res.diversity, diff, leak, flush=True)
        out.write_text(render(rows, ablations, args.start, args.end, setup), encoding="utf-8")
        if plant is not None and args.ablations:
            kept[case] = (data, res)
        del data  # ~1.3 GB of images per case: only planted cases with ablations to run keep theirs
    # every case first, then the ablations (each kind over the planted cases): a run stopped
    # early still has the whole main table
    for kind in args.ablations:
        for case, (data, res) in kept.items():
            abl = run_control(ablate(data, kind), **fit)
            diff = paired_difference_ci(abl.test_labels, abl.test_pred["model"], res.test_pred["model"])
            ablations.append((case, kind, res.balanced_accuracy["model"], abl.balanced_accuracy["model"], diff))
            print(case, kind, abl.balanced_accuracy["model"], flush=True)
            out.write_text(render(rows, ablations, args.start, args.end, setup), encoding="utf-8")
    print(out.read_text())


if __name__ == "__main__":
    main()
