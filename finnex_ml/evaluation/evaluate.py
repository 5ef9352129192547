"""The whole evaluation: trained models next to baselines, on the same test dates and folds.

``run_evaluation`` scores, for every trained model and every label horizon:

* the test split: classification and regression metrics, a backtest with costs, block-bootstrap
  intervals, a regime breakdown and ablations (each channel blanked to its training mean);
* the walk-forward folds: the model *retrained* on each fold's training dates (a short budget,
  ``EvalConfig.walk_forward_epochs``) and scored on that fold's validation dates. Scoring the
  final model on the folds would be in-sample: those dates are in its training data;
* a permuted-label control: the same model (and each tabular baseline) trained on training
  labels shuffled across dates, which must score at chance (see ``_permuted_rows``);

and the baselines (``finnex_ml.evaluation.baselines``) on identical dates. Strategies are
compared through the deflated Sharpe ratio, since several were tried. A leak scan runs on the
tabular features. Everything the reports need is returned as one JSON-serialisable document
plus two tables (per-date predictions and equity curves).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from finnex_ml import labels as lb
from finnex_ml.datasets_io import set_dataset, write_set_file
from finnex_ml.errors import DataInputError
from finnex_ml.evaluation import backtest as bt
from finnex_ml.evaluation import baselines as bl
from finnex_ml.evaluation import metrics as mt
from finnex_ml.evaluation import uncertainty as un
from finnex_ml.evaluation.leakage import LeakReport, scan_features, suspicious_scores
from finnex_ml.evaluation.predict import LoadedModel, blank_channel, load_model, predict_set

CHANNELS = ("red", "green", "blue")
Log = Callable[[str], None]


@dataclass
class EvalConfig:
    cost_bps: float = 5.0
    short_on_sell: bool = True
    position_sizing: bool = False  # scale positions by |predicted return| / sizing_scale
    sizing_scale: float = 0.01
    n_boot: int = 1000
    seed: int = 7
    regime_window: int = 63
    regime_band: float = 0.05
    hit_tolerance: float = 0.005  # return prediction within +-50 bp counts as a hit
    walk_forward_epochs: int = 1  # 0 skips retraining the networks per fold
    permuted_label_epochs: int = 1  # 0 skips the network's permuted-label control
    ablations: bool = True
    leak_min_abs_corr: float = 0.3
    max_balanced_accuracy: float = 0.6


@dataclass
class EvalInputs:
    labels: pl.DataFrame  # every labels row (date, close, class_{h}d, return_{h}d, threshold_{h}d)
    features: pl.DataFrame  # daily features: date + feature columns, for every split/fold date
    feature_columns: list[str]
    splits: Mapping[str, Any]  # splits.json
    ready_root: Path  # cnn_ready/ (train.h5, val.h5, test.h5)
    image_root: Path
    shard_root: Path
    work_dir: Path  # fold and permuted set files, fold checkpoints
    channel_means: Sequence[float]  # training pixel mean per channel (ablation fill)
    models: Mapping[str, Path] = field(default_factory=dict)  # name -> best.pt


def _dates(xs: Sequence[str]) -> list[date]:
    return [date.fromisoformat(x) for x in xs]


def _scores(probs: np.ndarray) -> np.ndarray:
    """A directional score per row: P(buy) - P(sell)."""
    return probs[..., 2] - probs[..., 0]


class _Frame:
    """Per-date lookups from the labels table."""

    def __init__(self, table: pl.DataFrame, horizons: Sequence[int]) -> None:
        self.table = table.sort("date")
        self.horizons = list(horizons)
        self.row = {d: i for i, d in enumerate(self.table["date"].to_list())}

    def col(self, name: str, dates: Sequence[date]) -> np.ndarray:
        values = self.table[name].cast(pl.Float64).fill_null(float("nan")).to_numpy()
        return np.array([values[self.row[d]] if d in self.row else np.nan for d in dates])

    def classes(self, h: int, dates: Sequence[date]) -> np.ndarray:
        c = self.col(lb.class_col(h), dates)
        if np.isnan(c).any():
            d = dates[int(np.flatnonzero(np.isnan(c))[0])]
            raise DataInputError(f"no {h}-session label for evaluation date {d}", date=str(d))
        return c.astype(np.int64)

    def daily_returns(self, dates: Sequence[date]) -> np.ndarray:
        """close(t+1 session) / close(t) - 1 for each date (the P&L of a position held over t's next session)."""
        if 1 in self.horizons:
            r = self.col(lb.return_col(1), dates)
        else:
            from datetime import timedelta

            from finnex_ml import calendar

            nxt = [calendar.session_on_or_after(d + timedelta(days=1)) for d in dates]
            r = self.col("close", nxt) / self.col("close", dates) - 1.0
        bad = np.flatnonzero(~np.isfinite(r))
        if bad.size:
            raise DataInputError(f"no next-session return for evaluation date {dates[bad[0]]}", date=str(dates[bad[0]]))
        return r


def _backtest_row(daily: np.ndarray, probs: np.ndarray, h: int, cfg: EvalConfig,
                  pred_returns: np.ndarray | None = None) -> bt.BacktestResult:
    sizes = None
    if cfg.position_sizing and pred_returns is not None:
        sizes = bt.sizes_from_predicted_returns(pred_returns, cfg.sizing_scale)
    pos = bt.positions_from_signals(probs.argmax(-1), h, short_on_sell=cfg.short_on_sell, sizes=sizes)
    return bt.backtest(daily, pos, cost_bps=cfg.cost_bps)


def _ci(d: Mapping[str, float]) -> list[float]:
    return [float(d["lower"]), float(d["upper"])]


def _score_row(name: str, kind: str, h: int, y: np.ndarray, probs: np.ndarray, daily: np.ndarray,
               cfg: EvalConfig, *, true_ret: np.ndarray | None = None, pred_ret: np.ndarray | None = None,
               block: int) -> tuple[dict[str, Any], dict[str, Any], bt.BacktestResult]:
    cls = mt.classification_metrics(y, probs)
    res = _backtest_row(daily, probs, h, cfg, pred_ret)
    pred = probs.argmax(-1)
    ints = un.classification_intervals(y, pred, block=block, n_boot=cfg.n_boot, seed=cfg.seed)
    sharpe_ci = un.sharpe_interval(res.returns, block=block, n_boot=cfg.n_boot, seed=cfg.seed)
    row: dict[str, Any] = {
        "model": name, "kind": kind, "horizon": h, "n": int(y.size),
        "accuracy": cls["accuracy"], "accuracy_ci": _ci(ints["accuracy"]),
        "balanced_accuracy": cls["balanced_accuracy"], "balanced_accuracy_ci": _ci(ints["balanced_accuracy"]),
        "balanced_accuracy_lower": float(ints["balanced_accuracy"]["lower"]),
        "macro_f1": cls["macro_f1"], "roc_auc_ovr": cls["roc_auc_ovr"], "log_loss": cls["log_loss"],
        **{k: res.metrics[k] for k in ("sharpe", "sortino", "max_drawdown", "calmar", "win_rate", "profit_factor",
                                        "annual_volatility", "turnover", "total_return", "exposure")},
        "sharpe_ci": _ci(sharpe_ci),
    }
    detail: dict[str, Any] = {"classification": cls, "backtest": res.metrics}
    if true_ret is not None and pred_ret is not None:
        reg = mt.regression_metrics(true_ret, pred_ret, cfg.hit_tolerance)
        row |= {k: reg[k] for k in ("mae", "rmse", "r2", "directional_accuracy", "hit_ratio")}
        detail["regression"] = reg
    return row, detail, res


def _train_short(lm: LoadedModel, train_file: Path, val_file: Path, ckpt_dir: Path, epochs: int, seed: int):
    """The model's own training config, with a short budget, on other set files."""
    from finnex_ml.losses import class_weights_from_labels
    from finnex_ml.training import TrainConfig, train_model

    cfg = dict(lm.config)
    cfg.update(epochs=epochs, warmup_epochs=min(float(cfg.get("warmup_epochs", 0)), max(epochs - 1, 0)),
               patience=None, seed=seed)
    tc = TrainConfig(**cfg)
    train = set_dataset(train_file, tc.input_mode, tc.horizons)
    val = set_dataset(val_file, tc.input_mode, tc.horizons)
    weights = class_weights_from_labels(train.target_array(f"label_h{tc.horizons[0]}"))
    result = train_model(tc, train, val, checkpoint_dir=ckpt_dir, class_weights=weights, resume=False)
    return load_model(result.checkpoint_path)


def _write_set(path: Path, name: str, dates: Sequence[date], fr: _Frame, inp: EvalInputs, spec_hash: str,
               split_hash: str, permutation: np.ndarray | None = None) -> Path:
    cls = np.stack([fr.classes(h, dates) for h in fr.horizons], axis=1)
    ret = np.stack([fr.col(lb.return_col(h), dates) for h in fr.horizons], axis=1)
    if permutation is not None:
        cls, ret = cls[permutation], ret[permutation]
    return write_set_file(path, name, dates, inp.image_root, inp.shard_root, cls, ret, fr.horizons,
                          spec_hash=spec_hash, split_hash=split_hash)


def run_evaluation(inp: EvalInputs, cfg: EvalConfig, *, log: Log = print,
                   interpret: Callable[[str, LoadedModel, Path], dict[str, Any]] | None = None
                   ) -> tuple[dict[str, Any], pl.DataFrame, pl.DataFrame]:
    """Score models and baselines (module docstring). Returns (document, predictions, equity curves)."""
    import h5py

    horizons = [int(h) for h in inp.splits["horizons"]]
    fr = _Frame(inp.labels, horizons)
    sets = {k: _dates(v) for k, v in inp.splits["sets"].items()}
    train_d, test_d = sets["train"], sets["test"]
    if not test_d:
        raise DataInputError("the test split is empty: materialise dataset_splits over more dates")
    with h5py.File(inp.ready_root / "test.h5", "r") as f:
        spec_hash, split_hash = str(f.attrs["spec_hash"]), str(f.attrs["split_hash"])
        stored = [d.decode() for d in f["dates"][:]]
    if stored != [d.isoformat() for d in test_d] or split_hash != inp.splits.get("split_hash"):
        raise DataInputError("cnn_ready/test.h5 does not match splits.json; re-materialise dataset_splits",
                             file=str(inp.ready_root / "test.h5"))
    daily = fr.daily_returns(test_d)
    block = un.default_block(len(test_d), max(horizons))
    closes = fr.table.select("date", "close")
    regimes_all = un.regimes_from_closes(closes["close"].to_numpy().astype(np.float64), cfg.regime_window,
                                         cfg.regime_band)
    regime = np.array([regimes_all[fr.row[d]] for d in test_d])

    X_train = bl.feature_matrix(inp.features, train_d, inp.feature_columns)
    X_test = bl.feature_matrix(inp.features, test_d, inp.feature_columns)

    test_rows: list[dict[str, Any]] = []
    details: dict[str, dict[str, Any]] = {}
    regime_rows: list[dict[str, Any]] = []
    pred_frames: list[pl.DataFrame] = []
    curves: dict[str, np.ndarray] = {}
    strategy_returns: dict[str, np.ndarray] = {}

    def record(name: str, kind: str, h: int, y: np.ndarray, probs: np.ndarray, *, true_ret=None, pred_ret=None):
        row, detail, res = _score_row(name, kind, h, y, probs, daily, cfg, true_ret=true_ret, pred_ret=pred_ret,
                                      block=block)
        test_rows.append(row)
        details.setdefault(name, {})[f"{h}d"] = detail
        curves[f"{name} ({h}d)"] = res.equity
        if kind != "benchmark":
            strategy_returns[f"{name} ({h}d)"] = res.returns
        for reg_name, m in un.metrics_by_regime(regime, y, probs.argmax(-1), res.returns).items():
            regime_rows.append({"model": name, "horizon": h, "regime": reg_name, **m})
        pred_frames.append(pl.DataFrame({
            "model": name, "horizon": h, "date": test_d, "label": y, "p_sell": probs[:, 0], "p_hold": probs[:, 1],
            "p_buy": probs[:, 2], "predicted": probs.argmax(-1),
            "predicted_return": pred_ret if pred_ret is not None else np.full(len(test_d), np.nan),
            "true_return": fr.col(lb.return_col(h), test_d)}, schema_overrides={"date": pl.Date}))

    # --- baselines, per horizon, on the test dates ------------------------------------------
    baseline_probs: dict[tuple[str, int], np.ndarray] = {}
    for h in horizons:
        y_tr, y_te = fr.classes(h, train_d), fr.classes(h, test_d)
        r_tr, r_te = fr.col(lb.return_col(h), train_d), fr.col(lb.return_col(h), test_d)
        n = len(test_d)
        candidates = {
            "majority": ("baseline", bl.majority_probs(y_tr, n), np.full(n, np.nanmean(r_tr))),
            "prior_random": ("baseline", bl.prior_random_probs(y_tr, n, cfg.seed + h), None),
            "buy_and_hold": ("benchmark", bl.constant_probs(lb.BUY, n), None),
            "momentum": ("baseline", bl.momentum_probs(bl.trailing_returns(closes, test_d, h),
                                                       fr.col(lb.threshold_col(h), test_d)), None),
            "logistic": ("baseline", bl.tabular_probs("logistic", X_train, y_tr, X_test, cfg.seed), None),
            "gradient_boosting": ("baseline", bl.tabular_probs("gradient_boosting", X_train, y_tr, X_test, cfg.seed),
                                  bl.ridge_returns(X_train, r_tr, X_test)),
        }
        for name, (kind, probs, pred_ret) in candidates.items():
            baseline_probs[(name, h)] = probs
            record(name, kind, h, y_te, probs, true_ret=r_te if pred_ret is not None else None, pred_ret=pred_ret)
        log(f"baselines scored for the {h}-session horizon on {n} test dates")

    # --- models ------------------------------------------------------------------------------
    loaded = {name: load_model(path) for name, path in inp.models.items()}
    ablation_rows, wf_rows = [], []
    controls: list[tuple[str, int, np.ndarray, np.ndarray]] = []  # permuted-label (model, h, truth, prediction)
    consistency, interpretation = {}, {}
    for name, lm in loaded.items():
        sp = predict_set(lm, inp.ready_root / "test.h5")
        for j, h in enumerate(lm.horizons):
            record(name, "model", h, sp.labels[:, j], sp.probs[:, j], true_ret=sp.true_returns[:, j],
                   pred_ret=sp.returns[:, j])
        consistency[name] = mt.horizon_consistency(_scores(sp.probs), lm.horizons)
        log(f"{name}: scored on {len(sp.dates)} test dates")
        if cfg.ablations:
            for c, cname in enumerate(CHANNELS):
                ab = predict_set(lm, inp.ready_root / "test.h5", transform=blank_channel(c, float(inp.channel_means[c])))
                for j, h in enumerate(lm.horizons):
                    cm = mt.classification_metrics(ab.labels[:, j], ab.probs[:, j])
                    full = mt.classification_metrics(sp.labels[:, j], sp.probs[:, j])
                    ablation_rows.append({"model": name, "ablation": f"blank {cname}", "horizon": h,
                                          "accuracy": cm["accuracy"], "balanced_accuracy": cm["balanced_accuracy"],
                                          "delta_balanced_accuracy": cm["balanced_accuracy"] - full["balanced_accuracy"],
                                          "changed_predictions": float((ab.pred[:, j] != sp.pred[:, j]).mean())})
            log(f"{name}: channel ablations done")
        if cfg.permuted_label_epochs > 0:
            perm = np.random.default_rng(cfg.seed).permutation(len(train_d))
            pdir = inp.work_dir / "permuted" / name
            ptrain = _write_set(pdir / "train.h5", "train_permuted", train_d, fr, inp, spec_hash, split_hash, perm)
            plm = _train_short(lm, ptrain, inp.ready_root / "val.h5", pdir / "model", cfg.permuted_label_epochs, cfg.seed)
            psp = predict_set(plm, inp.ready_root / "test.h5")
            for j, h in enumerate(plm.horizons):
                controls.append((name, h, psp.labels[:, j], psp.pred[:, j]))
            log(f"{name}: permuted-label control trained ({cfg.permuted_label_epochs} epoch(s)) and scored")
        if interpret is not None:
            interpretation[name] = interpret(name, lm, inp.ready_root / "test.h5")

    # permuted labels for the tabular baselines: cheap, and the same must-be-chance rule
    perm = np.random.default_rng(cfg.seed).permutation(len(train_d))
    for h in horizons:
        y_tr, y_te = fr.classes(h, train_d), fr.classes(h, test_d)
        for kind in ("logistic", "gradient_boosting"):
            probs = bl.tabular_probs(kind, X_train, y_tr[perm], X_test, cfg.seed)
            controls.append((kind, h, y_te, probs.argmax(-1)))
    permuted_rows = _permuted_rows(controls, block, cfg)

    # --- walk-forward ------------------------------------------------------------------------
    for fold in inp.splits.get("folds", []):
        k, f_tr, f_va = fold["fold"], _dates(fold["train"]), _dates(fold["val"])
        Xa, Xb = bl.feature_matrix(inp.features, f_tr, inp.feature_columns), bl.feature_matrix(inp.features, f_va, inp.feature_columns)
        for h in horizons:
            ya, yb = fr.classes(h, f_tr), fr.classes(h, f_va)
            fold_probs = {"majority": bl.majority_probs(ya, len(f_va)),
                          "momentum": bl.momentum_probs(bl.trailing_returns(closes, f_va, h), fr.col(lb.threshold_col(h), f_va)),
                          "logistic": bl.tabular_probs("logistic", Xa, ya, Xb, cfg.seed),
                          "gradient_boosting": bl.tabular_probs("gradient_boosting", Xa, ya, Xb, cfg.seed)}
            for name, probs in fold_probs.items():
                wf_rows.append(_fold_row(name, k, h, yb, probs, f_va))
        if cfg.walk_forward_epochs > 0 and loaded:
            fdir = inp.work_dir / "folds" / f"fold{k}"
            ftrain = _write_set(fdir / "train.h5", f"fold{k}_train", f_tr, fr, inp, spec_hash, split_hash)
            fval = _write_set(fdir / "val.h5", f"fold{k}_val", f_va, fr, inp, spec_hash, split_hash)
            for name, lm in loaded.items():
                flm = _train_short(lm, ftrain, fval, fdir / name, cfg.walk_forward_epochs, cfg.seed + k)
                fsp = predict_set(flm, fval)
                for j, h in enumerate(flm.horizons):
                    wf_rows.append(_fold_row(name, k, h, fsp.labels[:, j], fsp.probs[:, j], f_va))
        log(f"walk-forward fold {k}: {len(f_tr)} training / {len(f_va)} validation dates scored")

    # --- selection-aware Sharpe, leaks ------------------------------------------------------
    per_period = {k: _per_period_sharpe(r) for k, r in strategy_returns.items()}
    trials = [s for s in per_period.values() if np.isfinite(s)]
    deflated = {k: un.deflated_sharpe_ratio(r, trials) for k, r in strategy_returns.items()
                if np.isfinite(per_period[k]) and len(trials) > 1}
    y1 = fr.col(lb.return_col(min(horizons)), train_d)
    leak = scan_features(X_train, inp.feature_columns, y1, min_abs_corr=cfg.leak_min_abs_corr)
    suspicious = suspicious_scores([r for r in test_rows if r["kind"] == "model"],
                                   max_balanced_accuracy=cfg.max_balanced_accuracy)

    doc = {
        "config": asdict(cfg), "horizons": horizons, "models": sorted(loaded),
        "test": {"first": test_d[0].isoformat(), "last": test_d[-1].isoformat(), "n": len(test_d),
                 "class_shares": {f"{h}d": mt.class_shares(fr.classes(h, test_d)) for h in horizons},
                 "bootstrap_block": block},
        "train": {"first": train_d[0].isoformat(), "last": train_d[-1].isoformat(), "n": len(train_d)},
        "split_hash": split_hash, "spec_hash": spec_hash,
        "tables": {"test": test_rows, "walk_forward": wf_rows, "walk_forward_summary": _fold_summary(wf_rows),
                   "ablations": ablation_rows, "permuted_labels": permuted_rows, "regimes": regime_rows},
        "details": details, "horizon_consistency": consistency, "deflated_sharpe": deflated,
        "leakage": _leak_doc(leak, suspicious, cfg), "interpretation": interpretation,
        "chance": {"balanced_accuracy": 1 / 3,
                   "note": "any predictor independent of the label has expected balanced accuracy 1/3"},
    }
    predictions = pl.concat(pred_frames, how="vertical_relaxed")
    equity = pl.concat([pl.DataFrame({"series": k, "date": test_d, "equity": v}, schema_overrides={"date": pl.Date})
                        for k, v in curves.items()], how="vertical_relaxed")
    return _jsonable(doc), predictions, equity


def _permuted_rows(controls: Sequence[tuple[str, int, np.ndarray, np.ndarray]], block: int,
                   cfg: EvalConfig) -> list[dict[str, Any]]:
    """One row per permuted-label control: balanced accuracy with its 95 % interval (``ci``,
    ``at_chance``) and the verdict on a family-wise interval (Bonferroni, alpha 0.05 / k for k
    controls): with six controls, one of six 95 % intervals misses 1/3 by luck about a quarter of
    the time, and a blocking check must not fire that often on clean data. ``above_chance``
    (the family-wise interval wholly above 1/3) is the signature of a leak; ``below_chance``
    can only be luck or a tiny test set, so it is reported, not blocking."""
    family_alpha = 0.05 / max(len(controls), 1)
    rows = []
    for name, h, y, pred in controls:
        common = dict(block=block, n_boot=cfg.n_boot, seed=cfg.seed)
        ci = un.classification_intervals(y, pred, **common)["balanced_accuracy"]
        fw = un.classification_intervals(y, pred, alpha=family_alpha, **common)["balanced_accuracy"]
        rows.append({"model": name, "horizon": h, "balanced_accuracy": float(ci["estimate"]), "ci": _ci(ci),
                     "chance": 1 / 3, "at_chance": bool(ci["lower"] <= 1 / 3 <= ci["upper"]),
                     "ci_familywise": _ci(fw), "above_chance": bool(fw["lower"] > 1 / 3),
                     "below_chance": bool(fw["upper"] < 1 / 3)})
    return rows


def _fold_row(name: str, k: int, h: int, y: np.ndarray, probs: np.ndarray, dates: Sequence[date]) -> dict[str, Any]:
    m = mt.classification_metrics(y, probs)
    return {"model": name, "fold": k, "horizon": h, "n": int(y.size), "first": dates[0].isoformat(),
            "last": dates[-1].isoformat(), "accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"],
            "macro_f1": m["macro_f1"]}


def _fold_summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for (name, h) in sorted({(r["model"], r["horizon"]) for r in rows}):
        sel = [r for r in rows if r["model"] == name and r["horizon"] == h]
        ba = np.array([r["balanced_accuracy"] for r in sel])
        out.append({"model": name, "horizon": h, "folds": len(sel), "mean_balanced_accuracy": float(ba.mean()),
                    "std_balanced_accuracy": float(ba.std(ddof=1)) if len(ba) > 1 else float("nan"),
                    "mean_accuracy": float(np.mean([r["accuracy"] for r in sel]))})
    return out


def _per_period_sharpe(r: np.ndarray) -> float:
    s = float(np.std(r, ddof=1)) if len(r) > 1 else 0.0
    return float(np.mean(r) / s) if s > 0 else float("nan")


def _leak_doc(leak: LeakReport, suspicious: list[dict], cfg: EvalConfig) -> dict[str, Any]:
    return {"feature_scan": {"passed": leak.passed, "threshold_abs_spearman": leak.threshold, "training_dates": leak.n,
                             "flagged": [{"feature": f, "spearman": r} for f, r in leak.flagged],
                             "top": [{"feature": f, "spearman": r} for f, r in leak.top]},
            "suspicious_models": [{"model": r["model"], "horizon": r["horizon"],
                                   "balanced_accuracy_ci": r["balanced_accuracy_ci"]} for r in suspicious],
            "max_balanced_accuracy": cfg.max_balanced_accuracy,
            "passed": leak.passed and not suspicious}


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


__all__ = ["CHANNELS", "EvalConfig", "EvalInputs", "run_evaluation"]
