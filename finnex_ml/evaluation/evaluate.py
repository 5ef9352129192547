"""The whole evaluation: trained models next to baselines, on the same test dates and folds.

``run_evaluation`` scores, for every trained model and every label horizon:

* the test split: classification and regression metrics, a backtest with costs, block-bootstrap
  intervals, a regime breakdown and ablations (each channel blanked to its training mean);
* the walk-forward folds of the splits: the baselines refitted on each fold's training dates and
  scored on its validation dates;
* a permuted-label control: the same model (``permuted_label_runs`` shuffles, and each tabular
  baseline once) trained on training labels shuffled across dates, which must score at chance
  (see ``_permuted_rows``);

and the baselines (``finnex_ml.evaluation.baselines``) on identical dates. Then the tests that can
fire (``finnex_ml.evaluation.significance``):

* a block permutation p-value of every row's balanced accuracy (test labels permuted against the
  fixed predictions), and for the tabular models a refit permutation test (refitted on
  ``refit_permutations`` block-permuted training labels);
* a label-shift placebo: skill against labels k = m * h sessions further ahead must vanish;
* Diebold–Mariano (Brier loss) of each network against the best baseline and of each tabular
  model against the best naive baseline, and Hansen's SPA (arch) per horizon;
* the deflated Sharpe with N and the trial variance from a log of earlier trials when given
  (``EvalInputs.trial_sharpes``; the asset reads MLflow), else from this report's strategies.

The headline backtest trades ``execution_lag`` sessions after the signal's close, over h staggered
sub-portfolios, paying costs and a short borrow fee. A pooled out-of-sample walk-forward over
years refits the tabular models (``walkforward``) and retrains every network on the budget's
epochs and seeds (``network_folds``, cached per fold) per year, and scores the pooled series;
the headline table puts each model beside its best baseline with the span, the number of
independent decisions, the test, its p-value and the minimum detectable effect. The
leak scan covers every horizon with a permutation bar (a flag warns; implausible skill or a
failed placebo blocks). Everything the reports need is returned as one JSON-serialisable
document plus two tables (per-date predictions and equity curves).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from finnex_ml import labels as lb
from finnex_ml import progress
from finnex_ml.datasets_io import set_dataset, write_set_file
from finnex_ml.errors import DataInputError
from finnex_ml.evaluation import backtest as bt
from finnex_ml.evaluation import baselines as bl
from finnex_ml.evaluation import metrics as mt
from finnex_ml.evaluation import network_folds as nf
from finnex_ml.evaluation import significance as sg
from finnex_ml.evaluation import uncertainty as un
from finnex_ml.evaluation import walkforward as wf
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
    # pooled walk-forward: each network retrained per fold as a seed ensemble (0 epochs skips);
    # the budget sets these to its training epochs and seeds
    walk_forward_epochs: int = 20
    walk_forward_seeds: tuple[int, ...] = (0, 1, 2)
    permuted_label_epochs: int = 4  # 0 skips the network's permuted-label control
    permuted_label_runs: int = 2  # permutations of the training labels, one retrained network each
    ablations: bool = True
    leak_min_abs_corr: float = 0.0  # optional floor on the leak scan's permutation bar
    leak_alpha: float = 0.05  # family-wise level of the leak scan (a flag warns, it does not block)
    leak_permutations: int = 200
    max_balanced_accuracy: float = 0.6
    # trading realism of the headline backtest
    execution_lag: int = 1  # sessions between the signal's close and the trade
    staggered: bool = True  # h sub-portfolios, one per phase of the h-day decision grid
    borrow_bps: float = 50.0  # annual borrow fee on short notional, in basis points
    # tests that can fire
    n_permutations: int = 1000  # block permutations of the test labels (fixed predictions), every row
    refit_permutations: int = 100  # refits on block-permuted training labels, tabular models
    # processes for those refits: 1, since starting joblib workers cost more than 4 binned refits
    # on the loaded 2-core machine (benchmarks/bench_refit.py); more pays off on a quiet machine
    refit_jobs: int = 1
    # stop a refit test once this many permuted refits match the real one (Besag-Clifford; 0: never):
    # a clearly null fit costs ~10 / p refits, and every p < 0.1 still comes from all of them
    refit_stop_after: int = 10
    placebo_shifts: tuple[int, ...] = (1, 2)  # label-shift placebo at k = m * h sessions, m in this list
    degenerate_threshold: float = 0.9  # one class on more than this share of dates: degenerate
    # pooled out-of-sample walk-forward of the tabular models (0 min_train: off)
    # rows of history before the first test block: a calendar year has 250-253 sessions and the
    # splits' purge gaps remove a few, so 240 lets one full first year of training count
    pooled_min_train: int = 240
    pooled_block_sessions: int = 0  # 0: calendar-year test blocks; else blocks of this many rows


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
    # per-period Sharpe ratios of earlier trials on this dataset (e.g. from the MLflow log); None:
    # the deflated Sharpe counts only this report's strategies, and says so
    trial_sharpes: Sequence[float] | None = None
    trial_source: str = ""
    provenance: Mapping[str, Any] = field(default_factory=dict)  # data source, named at the top of the report


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

    def shifted_classes(self, h: int, dates: Sequence[date], k: int) -> np.ndarray:
        """The h-session class of the labels row k rows (sessions) after each date; NaN past the end."""
        values = self.table[lb.class_col(h)].cast(pl.Float64).fill_null(float("nan")).to_numpy()
        idx = np.array([self.row[d] + int(k) for d in dates])
        out = np.full(len(dates), np.nan)
        ok = idx < values.size
        out[ok] = values[idx[ok]]
        return out

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


def _positions(probs: np.ndarray, h: int, cfg: EvalConfig, pred_returns: np.ndarray | None, lag: int) -> np.ndarray:
    sizes = None
    if cfg.position_sizing and pred_returns is not None:
        sizes = bt.sizes_from_predicted_returns(pred_returns, cfg.sizing_scale)
    make = bt.staggered_positions if cfg.staggered else bt.positions_from_signals
    pos = make(probs.argmax(-1), h, short_on_sell=cfg.short_on_sell, sizes=sizes)
    return bt.lag_positions(pos, lag)


def _backtest_row(
    daily: np.ndarray,
    probs: np.ndarray,
    h: int,
    cfg: EvalConfig,
    pred_returns: np.ndarray | None = None,
    *,
    lag: int | None = None,
) -> bt.BacktestResult:
    """The headline backtest: ``cfg.execution_lag`` sessions late, staggered over the h phases,
    with trading costs and the short borrow fee."""
    pos = _positions(probs, h, cfg, pred_returns, cfg.execution_lag if lag is None else lag)
    return bt.backtest(daily, pos, cost_bps=cfg.cost_bps, borrow_bps=cfg.borrow_bps)


def _ci(d: Mapping[str, float]) -> list[float]:
    return [float(d["lower"]), float(d["upper"])]


# spans shorter than this many sessions get their annualised ratios marked (report.py)
ONE_YEAR = 252


def _score_row(
    name: str,
    kind: str,
    h: int,
    y: np.ndarray,
    probs: np.ndarray,
    daily: np.ndarray,
    cfg: EvalConfig,
    *,
    true_ret: np.ndarray | None = None,
    pred_ret: np.ndarray | None = None,
    block: int,
    prior: np.ndarray | None = None,
    return_model: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any], bt.BacktestResult]:
    """One (model, horizon) row. ``prior`` [3] or [n, 3]: the training class shares the skill
    scores are measured against. Buy-and-hold (kind "benchmark") needs no signal, so it is not
    delayed by the execution lag."""
    cls = mt.classification_metrics(y, probs)
    lag = 0 if kind == "benchmark" else cfg.execution_lag
    res = _backtest_row(daily, probs, h, cfg, pred_ret, lag=lag)
    same_close = _backtest_row(daily, probs, h, cfg, pred_ret, lag=0) if lag else res
    pred = probs.argmax(-1)
    ints = un.classification_intervals(y, pred, block=block, n_boot=cfg.n_boot, seed=cfg.seed)
    sharpe_ci = un.sharpe_interval(res.returns, block=block, n_boot=cfg.n_boot, seed=cfg.seed)
    diversity = mt.prediction_diversity(pred)
    perm = sg.permutation_test(y, pred, block=block, n_perm=cfg.n_permutations, seed=cfg.seed)
    row: dict[str, Any] = {
        "model": name,
        "kind": kind,
        "horizon": h,
        "n": int(y.size),
        "accuracy": cls["accuracy"],
        "accuracy_ci": _ci(ints["accuracy"]),
        "balanced_accuracy": cls["balanced_accuracy"],
        "balanced_accuracy_ci": _ci(ints["balanced_accuracy"]),
        "balanced_accuracy_lower": float(ints["balanced_accuracy"]["lower"]),
        "permutation_p": perm["p_value"],
        "permutations": int(perm["n_perm"]),
        "macro_f1": cls["macro_f1"],
        "roc_auc_ovr": cls["roc_auc_ovr"],
        "log_loss": cls["log_loss"],
        **{
            k: res.metrics[k]
            for k in (
                "sharpe",
                "sortino",
                "max_drawdown",
                "calmar",
                "win_rate",
                "profit_factor",
                "annual_volatility",
                "annual_return",
                "turnover",
                "total_return",
                "exposure",
            )
        },
        "sharpe_ci": _ci(sharpe_ci),
        "sharpe_same_close": same_close.metrics["sharpe"],
        "execution_lag": lag,
        "top_class_share": diversity["top_share"],
        "degenerate": bool(diversity["top_share"] > cfg.degenerate_threshold),
        "annualised_from_under_a_year": bool(y.size < ONE_YEAR),
    }
    if prior is not None:
        skill = mt.probabilistic_skill(y, probs, prior)
        row |= {"log_loss_skill": skill["log_loss_skill"], "brier_skill": skill["brier_skill"], "brier": skill["brier"]}
    detail: dict[str, Any] = {
        "classification": cls,
        "backtest": res.metrics,
        "diversity": diversity,
        "permutation_test": perm,
    }
    if true_ret is not None and pred_ret is not None:
        reg = mt.regression_metrics(true_ret, pred_ret, cfg.hit_tolerance)
        row |= {k: reg[k] for k in ("mae", "rmse", "r2", "directional_accuracy", "hit_ratio")}
        row["return_model"] = return_model or name
        detail["regression"] = reg
    return row, detail, res


def _train_short(lm: LoadedModel, train_file: Path, val_file: Path, ckpt_dir: Path, epochs: int, seed: int):
    """The model's own training config, with a short budget, on other set files."""
    from finnex_ml.losses import class_weights_from_labels
    from finnex_ml.training import TrainConfig, train_model

    cfg = dict(lm.config)
    cfg.pop("seeds", None)  # a seed ensemble's checkpoint: fold retraining fits one member
    cfg.update(
        epochs=epochs,
        warmup_epochs=min(float(cfg.get("warmup_epochs", 0)), max(epochs - 1, 0)),
        patience=None,
        seed=seed,
    )
    tc = TrainConfig(**cfg)
    train = set_dataset(train_file, tc.input_mode, tc.horizons)
    val = set_dataset(val_file, tc.input_mode, tc.horizons)
    weights = class_weights_from_labels(train.target_array(f"label_h{tc.horizons[0]}"))
    result = train_model(tc, train, val, checkpoint_dir=ckpt_dir, class_weights=weights, resume=False)
    return load_model(result.checkpoint_path)


def _write_set(
    path: Path,
    name: str,
    dates: Sequence[date],
    fr: _Frame,
    inp: EvalInputs,
    spec_hash: str,
    split_hash: str,
    permutation: np.ndarray | None = None,
) -> Path:
    cls = np.stack([fr.classes(h, dates) for h in fr.horizons], axis=1)
    ret = np.stack([fr.col(lb.return_col(h), dates) for h in fr.horizons], axis=1)
    if permutation is not None:
        cls, ret = cls[permutation], ret[permutation]
    return write_set_file(
        path,
        name,
        dates,
        inp.image_root,
        inp.shard_root,
        cls,
        ret,
        fr.horizons,
        spec_hash=spec_hash,
        split_hash=split_hash,
    )


def _set_hashes(inp: EvalInputs, test_d: Sequence[date]) -> tuple[str, str]:
    """(spec hash, split hash) of cnn_ready/test.h5, checked against splits.json."""
    import h5py

    with h5py.File(inp.ready_root / "test.h5", "r") as f:
        spec_hash, split_hash = str(f.attrs["spec_hash"]), str(f.attrs["split_hash"])
        stored = [d.decode() for d in f["dates"][:]]
    if stored != [d.isoformat() for d in test_d] or split_hash != inp.splits.get("split_hash"):
        raise DataInputError(
            "cnn_ready/test.h5 does not match splits.json; re-materialise dataset_splits",
            file=str(inp.ready_root / "test.h5"),
        )
    return spec_hash, split_hash


def train_network_controls(inp: EvalInputs, cfg: EvalConfig, *, what: str, log: Log = print) -> dict[str, Any]:
    """The evaluation's network retraining alone, so it can run (and be timed and cached) as its
    own step before :func:`run_evaluation`, which then loads the results from ``inp.work_dir``:
    ``what`` = "walk_forward" (every network retrained per pooled walk-forward fold) or
    "permuted_labels" (the permuted-label control). Returns what was trained and what was cached."""
    horizons = [int(h) for h in inp.splits["horizons"]]
    fr = _Frame(inp.labels, horizons)
    sets = {k: _dates(v) for k, v in inp.splits["sets"].items()}
    if not sets["test"]:
        raise DataInputError("the test split is empty: materialise dataset_splits over more dates")
    spec_hash, split_hash = _set_hashes(inp, sets["test"])
    loaded = {name: load_model(path) for name, path in inp.models.items()}
    if what == "walk_forward":
        plan = _pooled_folds(sets, horizons, cfg)
        if plan is None:
            return {"models": sorted(loaded), "folds": 0, "trained": 0, "cached": 0, "note": "no fold"}
        dates, folds, _ = plan
        nets = _pooled_networks(inp, fr, dates, folds, horizons, cfg, loaded, spec_hash, split_hash, log)
        trained = sum(n.trained_folds for n in nets.values())
        total = sum(len(n.folds) for n in nets.values())
        return {"models": sorted(loaded), "folds": len(folds), "trained": trained, "cached": total - trained}
    if what == "permuted_labels":
        runs = [_permuted_network(lm, name, r, sets["train"], fr, inp, cfg, spec_hash, split_hash, log)
                for name, lm in loaded.items() for r in _permuted_runs(cfg)]  # fmt: skip
        trained = sum(not c for *_, c in runs)
        return {"models": sorted(loaded), "runs": len(runs), "trained": trained, "cached": len(runs) - trained}
    raise ValueError(f"unknown network control {what!r}; use 'walk_forward' or 'permuted_labels'")


def _permuted_runs(cfg: EvalConfig) -> list[int]:
    return list(range(cfg.permuted_label_runs)) if cfg.permuted_label_epochs > 0 else []


def _permuted_network(
    lm: LoadedModel,
    name: str,
    r: int,
    train_d: Sequence[date],
    fr: _Frame,
    inp: EvalInputs,
    cfg: EvalConfig,
    spec_hash: str,
    split_hash: str,
    log: Log,
) -> tuple[np.ndarray, np.ndarray, list[int], bool]:
    """Permutation ``r`` of the permuted-label control: the model retrained on shuffled training
    labels and its test (labels, predicted classes, horizons). Cached under work_dir with a key of
    the model's config, the checkpoint file, the budget, the permutation, the split and the
    layout, so the separate step's result is what the evaluation reads (returned flag: cached)."""
    import hashlib
    import json

    perm = np.random.default_rng(cfg.seed + r).permutation(len(train_d))
    pdir = inp.work_dir / "permuted" / name / f"perm{r + 1}"
    ckpt = inp.models[name]
    st = ckpt.stat()
    key = hashlib.sha256(
        json.dumps(
            [lm.config, ckpt.name, st.st_size, st.st_mtime_ns, cfg.permuted_label_epochs, cfg.seed + r,
             spec_hash, split_hash, [d.isoformat() for d in train_d]],
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()  # fmt: skip
    done = pdir / f"result_{key[:16]}.npz"
    if done.exists():
        z = np.load(done)
        return z["labels"], z["pred"], [int(h) for h in z["horizons"]], True
    for old in pdir.glob("result_*.npz"):
        old.unlink()  # another key's result: stale
    ptrain = _write_set(pdir / "train.h5", "train_permuted", train_d, fr, inp, spec_hash, split_hash, perm)
    plm = _train_short(lm, ptrain, inp.ready_root / "val.h5", pdir / "model", cfg.permuted_label_epochs, cfg.seed + r)
    psp = predict_set(plm, inp.ready_root / "test.h5")
    tmp = pdir / f".result_{key[:16]}.tmp.npz"
    np.savez(tmp, labels=psp.labels, pred=psp.pred, horizons=np.asarray(plm.horizons))
    tmp.replace(done)  # atomic: a killed run leaves no half-written result
    log(f"{name}: permuted-label network {r + 1} trained ({cfg.permuted_label_epochs} epoch(s))")
    return psp.labels, psp.pred, list(plm.horizons), False


def run_evaluation(
    inp: EvalInputs,
    cfg: EvalConfig,
    *,
    log: Log = print,
    interpret: Callable[[str, LoadedModel, Path], dict[str, Any]] | None = None,
) -> tuple[dict[str, Any], pl.DataFrame, pl.DataFrame]:
    """Score models and baselines (module docstring). Returns (document, predictions, equity curves)."""
    horizons = [int(h) for h in inp.splits["horizons"]]
    fr = _Frame(inp.labels, horizons)
    sets = {k: _dates(v) for k, v in inp.splits["sets"].items()}
    train_d, test_d = sets["train"], sets["test"]
    if not test_d:
        raise DataInputError("the test split is empty: materialise dataset_splits over more dates")
    spec_hash, split_hash = _set_hashes(inp, test_d)
    daily = fr.daily_returns(test_d)
    # arch's Politis–White block for the test span's market returns, never below the longest horizon
    block = un.optimal_block(daily, max(horizons))
    closes = fr.table.select("date", "close")
    regimes_all = un.regimes_from_closes(
        closes["close"].to_numpy().astype(np.float64), cfg.regime_window, cfg.regime_band
    )
    regime = np.array([regimes_all[fr.row[d]] for d in test_d])

    X_train = bl.feature_matrix(inp.features, train_d, inp.feature_columns)
    X_test = bl.feature_matrix(inp.features, test_d, inp.feature_columns)

    test_rows: list[dict[str, Any]] = []
    details: dict[str, dict[str, Any]] = {}
    regime_rows: list[dict[str, Any]] = []
    pred_frames: list[pl.DataFrame] = []
    curves: dict[str, np.ndarray] = {}
    strategy_returns: dict[str, np.ndarray] = {}
    scored: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}  # (name, h) -> (truth, probs) on the test split

    def record(
        name: str,
        kind: str,
        h: int,
        y: np.ndarray,
        probs: np.ndarray,
        *,
        true_ret=None,
        pred_ret=None,
        return_model: str | None = None,
    ):
        prior = mt.class_shares(fr.classes(h, train_d))
        row, detail, res = _score_row(
            name,
            kind,
            h,
            y,
            probs,
            daily,
            cfg,
            true_ret=true_ret,
            pred_ret=pred_ret,
            block=block,
            prior=prior,
            return_model=return_model,
        )
        test_rows.append(row)
        scored[(name, h)] = (y, probs)
        details.setdefault(name, {})[f"{h}d"] = detail
        curves[f"{name} ({h}d)"] = res.equity
        if kind != "benchmark":
            strategy_returns[f"{name} ({h}d)"] = res.returns
        for reg_name, m in un.metrics_by_regime(regime, y, probs.argmax(-1), res.returns).items():
            regime_rows.append(
                {"model": name, "horizon": h, "regime": reg_name, **m, "small_sample": bool(m["n"] < 20)}
            )
        pred_frames.append(
            pl.DataFrame(
                {
                    "model": name,
                    "horizon": h,
                    "date": test_d,
                    "label": y,
                    "p_sell": probs[:, 0],
                    "p_hold": probs[:, 1],
                    "p_buy": probs[:, 2],
                    "predicted": probs.argmax(-1),
                    "predicted_return": pred_ret if pred_ret is not None else np.full(len(test_d), np.nan),
                    "true_return": fr.col(lb.return_col(h), test_d),
                },
                schema_overrides={"date": pl.Date},
            )
        )

    # --- baselines, per horizon, on the test dates ------------------------------------------
    for h in horizons:
        y_tr, y_te = fr.classes(h, train_d), fr.classes(h, test_d)
        r_tr, r_te = fr.col(lb.return_col(h), train_d), fr.col(lb.return_col(h), test_d)
        n = len(test_d)
        # (kind, probs, predicted returns, the model that predicted the returns)
        candidates = {
            "majority": ("baseline", bl.majority_probs(y_tr, n), np.full(n, np.nanmean(r_tr)), "training mean"),
            "prior_random": ("baseline", bl.prior_random_probs(y_tr, n, cfg.seed + h), None, None),
            "buy_and_hold": ("benchmark", bl.constant_probs(lb.BUY, n), None, None),
            "momentum": (
                "baseline",
                bl.momentum_probs(bl.trailing_returns(closes, test_d, h), fr.col(lb.threshold_col(h), test_d)),
                None,
                None,
            ),
            "logistic": ("baseline", bl.tabular_probs("logistic", X_train, y_tr, X_test, cfg.seed), None, None),
            # the regression baseline is a ridge: its return metrics sit on this row but are ridge's
            "gradient_boosting": (
                "baseline",
                bl.tabular_probs("gradient_boosting", X_train, y_tr, X_test, cfg.seed),
                bl.ridge_returns(X_train, r_tr, X_test),
                "ridge",
            ),
        }
        for name, (kind, probs, pred_ret, ret_model) in candidates.items():
            record(
                name,
                kind,
                h,
                y_te,
                probs,
                true_ret=r_te if pred_ret is not None else None,
                pred_ret=pred_ret,
                return_model=ret_model,
            )
        log(f"baselines scored for the {h}-session horizon on {n} test dates")

    # --- models ------------------------------------------------------------------------------
    loaded = {name: load_model(path) for name, path in inp.models.items()}
    ablation_rows, wf_rows = [], []
    controls: list[tuple[str, int, np.ndarray, np.ndarray]] = []  # permuted-label (model, h, truth, prediction)
    consistency, interpretation = {}, {}
    for name, lm in loaded.items():
        sp = predict_set(lm, inp.ready_root / "test.h5")
        for j, h in enumerate(lm.horizons):
            record(
                name,
                "model",
                h,
                sp.labels[:, j],
                sp.probs[:, j],
                true_ret=sp.true_returns[:, j],
                pred_ret=sp.returns[:, j],
            )
        consistency[name] = mt.horizon_consistency(_scores(sp.probs), lm.horizons)
        log(f"{name}: scored on {len(sp.dates)} test dates")
        if cfg.ablations:
            for c, cname in enumerate(CHANNELS):
                ab = predict_set(
                    lm, inp.ready_root / "test.h5", transform=blank_channel(c, float(inp.channel_means[c]))
                )
                for j, h in enumerate(lm.horizons):
                    cm = mt.classification_metrics(ab.labels[:, j], ab.probs[:, j])
                    full = mt.classification_metrics(sp.labels[:, j], sp.probs[:, j])
                    ablation_rows.append(
                        {
                            "model": name,
                            "ablation": f"blank {cname}",
                            "horizon": h,
                            "accuracy": cm["accuracy"],
                            "balanced_accuracy": cm["balanced_accuracy"],
                            "delta_balanced_accuracy": cm["balanced_accuracy"] - full["balanced_accuracy"],
                            "changed_predictions": float((ab.pred[:, j] != sp.pred[:, j]).mean()),
                        }
                    )
            log(f"{name}: channel ablations done")
        if cfg.permuted_label_epochs > 0 and cfg.permuted_label_runs > 0:
            runs = _permuted_runs(cfg)
            for r in progress.track(runs, f"permuted-label control ({name})", unit="permutations", log=log):
                # read from the permuted_label_control step's cache when it ran; trained here otherwise
                plabels, ppred, phorizons, _ = _permuted_network(
                    lm, name, r, train_d, fr, inp, cfg, spec_hash, split_hash, log
                )
                label = name if cfg.permuted_label_runs == 1 else f"{name} (permutation {r + 1})"
                for j, h in enumerate(phorizons):
                    controls.append((label, h, plabels[:, j], ppred[:, j]))
            log(
                f"{name}: permuted-label control trained ({cfg.permuted_label_runs} permutation(s) x "
                f"{cfg.permuted_label_epochs} epoch(s)) and scored"
            )
        if interpret is not None:
            # explaining a (near-)constant predictor explains nothing: only non-degenerate models
            degenerate = mt.is_degenerate(sp.pred[:, 0], cfg.degenerate_threshold)
            if degenerate:
                share = mt.prediction_diversity(sp.pred[:, 0])["top_share"]
                interpretation[name] = {
                    "skipped": True,
                    "note": (
                        f"not explained: a degenerate predictor (one class on {share:.0%} of the test dates at "
                        f"h={lm.horizons[0]}, above {cfg.degenerate_threshold:.0%}); its maps would explain a constant"
                    ),
                }
            else:
                interpretation[name] = interpret(name, lm, inp.ready_root / "test.h5")

    # permuted labels for the tabular baselines: cheap, and the same must-be-chance rule
    perm = np.random.default_rng(cfg.seed).permutation(len(train_d))
    for h in horizons:
        y_tr, y_te = fr.classes(h, train_d), fr.classes(h, test_d)
        for kind in ("logistic", "gradient_boosting"):
            probs = bl.tabular_probs(kind, X_train, y_tr[perm], X_test, cfg.seed)
            controls.append((kind, h, y_te, probs.argmax(-1)))
    permuted_rows = _permuted_rows(controls, block, cfg)

    # --- permutation test of the tabular fitting procedure (refits on block-permuted labels) --
    if cfg.refit_permutations > 0:
        for h in horizons:
            y_tr, y_te = fr.classes(h, train_d), fr.classes(h, test_d)
            for kind in TABULAR:
                # gradient boosting refits on features binned once (baselines.prebin), real and permuted alike
                Xa, Xb = bl.prebin(X_train, X_test) if kind == "gradient_boosting" else (X_train, X_test)
                res = sg.refit_permutation_test(
                    partial(_refit_score, kind, Xa, Xb, y_te, cfg.seed),
                    y_tr,
                    block=un.default_block(len(train_d), h),
                    n_perm=cfg.refit_permutations,
                    seed=cfg.seed + h,
                    label=f"refit permutations {kind} h={h}",
                    n_jobs=cfg.refit_jobs,
                    stop_after=cfg.refit_stop_after or None,
                )
                row = next(r for r in test_rows if r["model"] == kind and r["horizon"] == h)
                row["refit_permutation_p"], row["refit_permutations"] = res["p_value"], int(res["n_perm"])
            log(f"refit permutation tests (up to {cfg.refit_permutations} block permutations) done for h={h}")

    # --- label-shift placebo: skill against labels k >= h sessions further ahead must vanish --
    tested = [(r["model"], r["horizon"]) for r in test_rows if r["kind"] == "model" or r["model"] in TABULAR]
    n_calls = max(len(tested) * max(len(cfg.placebo_shifts), 1), 1)
    placebo_perm = max(cfg.n_permutations, math.ceil(5 * n_calls / 0.05))  # p can reach the family bar
    placebo_rows = []
    for name, h in tested:
        _, probs = scored[(name, h)]
        shifted = {m * h: fr.shifted_classes(h, test_d, m * h) for m in cfg.placebo_shifts}
        for r in sg.label_shift_placebo(
            probs.argmax(-1), shifted, block=block, n_perm=placebo_perm, seed=cfg.seed, alpha=0.05 / max(len(tested), 1)
        ):
            placebo_rows.append({"model": name, "horizon": h, **r})

    # --- each model against the best baseline: Diebold–Mariano on the Brier loss, SPA --------
    comparisons, spa_rows = _comparisons(test_rows, scored, horizons, block, cfg, "test split")

    # --- walk-forward ------------------------------------------------------------------------
    for fold in progress.track(inp.splits.get("folds", []), "walk-forward folds", unit="folds", log=log):
        k, f_tr, f_va = fold["fold"], _dates(fold["train"]), _dates(fold["val"])
        Xa, Xb = (
            bl.feature_matrix(inp.features, f_tr, inp.feature_columns),
            bl.feature_matrix(inp.features, f_va, inp.feature_columns),
        )
        for h in horizons:
            ya, yb = fr.classes(h, f_tr), fr.classes(h, f_va)
            fold_probs = {
                "majority": bl.majority_probs(ya, len(f_va)),
                "momentum": bl.momentum_probs(bl.trailing_returns(closes, f_va, h), fr.col(lb.threshold_col(h), f_va)),
                "logistic": bl.tabular_probs("logistic", Xa, ya, Xb, cfg.seed),
                "gradient_boosting": bl.tabular_probs("gradient_boosting", Xa, ya, Xb, cfg.seed),
            }
            for name, probs in fold_probs.items():
                wf_rows.append(_fold_row(name, k, h, yb, probs, f_va))
        # the networks are retrained per fold in the pooled walk-forward below (full budget, an
        # inner validation block); these split folds keep the baselines' fold-to-fold spread
        log(f"walk-forward fold {k}: {len(f_tr)} training / {len(f_va)} validation dates scored")

    # --- pooled out-of-sample walk-forward of the tabular models -------------------------------
    pooled = _pooled_oos(inp, fr, sets, horizons, closes, cfg, log, loaded, spec_hash, split_hash)

    # --- selection-aware Sharpe, leaks ------------------------------------------------------
    deflated, trials_doc = _deflated(strategy_returns, inp)
    leak = scan_features(
        X_train,
        inp.feature_columns,
        {h: fr.col(lb.return_col(h), train_d) for h in horizons},
        min_abs_corr=cfg.leak_min_abs_corr,
        alpha=cfg.leak_alpha,
        n_perm=cfg.leak_permutations,
        block=max(horizons),
        seed=cfg.seed,
    )
    # implausible skill counts for the tabular models too: they are fitted on the very features a
    # leak would sit in
    suspicious = suspicious_scores(
        [r for r in test_rows if r["kind"] == "model" or r["model"] in TABULAR],
        max_balanced_accuracy=cfg.max_balanced_accuracy,
    )

    headline = _headline(test_rows, comparisons, placebo_rows, test_d, "test split")
    if pooled:
        headline = pooled["headline"] + headline
    doc = {
        "config": asdict(cfg),
        "horizons": horizons,
        "models": sorted(loaded),
        "provenance": dict(inp.provenance),
        "test": {
            "first": test_d[0].isoformat(),
            "last": test_d[-1].isoformat(),
            "n": len(test_d),
            "class_shares": {f"{h}d": mt.class_shares(fr.classes(h, test_d)) for h in horizons},
            "bootstrap_block": block,
            "under_one_year": len(test_d) < ONE_YEAR,
            "minimum_detectable_effect": {f"{h}d": sg.minimum_detectable_effect(len(test_d), h) for h in horizons},
        },
        "train": {"first": train_d[0].isoformat(), "last": train_d[-1].isoformat(), "n": len(train_d)},
        "split_hash": split_hash,
        "spec_hash": spec_hash,
        "tables": {
            "headline": headline,
            "test": test_rows,
            "walk_forward": wf_rows,
            "walk_forward_summary": _fold_summary(wf_rows),
            "ablations": ablation_rows,
            "permuted_labels": permuted_rows,
            "regimes": regime_rows,
            "comparisons": comparisons,
            "spa": spa_rows,
            "label_shift_placebo": placebo_rows,
        },
        "pooled_oos": {k: v for k, v in (pooled or {}).items() if k != "headline"},
        "details": details,
        "horizon_consistency": consistency,
        "deflated_sharpe": deflated,
        "deflated_sharpe_trials": trials_doc,
        "leakage": _leak_doc(leak, suspicious, placebo_rows, cfg),
        "interpretation": interpretation,
        "permuted_label_control": _permuted_doc(cfg, sorted(loaded)),
        "chance": {
            "balanced_accuracy": 1 / 3,
            "note": "any predictor independent of the label has expected balanced accuracy 1/3; a "
            "resample lacking a class keeps chance at 1/3 (metrics.balanced_accuracy)",
        },
    }
    predictions = pl.concat(pred_frames, how="vertical_relaxed")
    equity = pl.concat(
        [
            pl.DataFrame({"series": k, "date": test_d, "equity": v}, schema_overrides={"date": pl.Date})
            for k, v in curves.items()
        ],
        how="vertical_relaxed",
    )
    return _jsonable(doc), predictions, equity


TABULAR = ("logistic", "gradient_boosting")
QUARTER = 63
NAIVE = ("majority", "prior_random", "momentum")


def _comparisons(
    rows: Sequence[dict[str, Any]],
    scored: Mapping[tuple[str, int], tuple[np.ndarray, np.ndarray]],
    horizons: Sequence[int],
    block: int,
    cfg: EvalConfig,
    span: str,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Diebold–Mariano of every network against the best baseline (naive or tabular) and of
    every tabular model against the best naive baseline, on the per-row Brier loss; "best" is
    the lowest mean Brier loss on these very dates (which favours the baseline). Plus one SPA
    test per horizon: does any network or tabular model beat the best naive baseline?"""
    out, spa_rows = [], []
    for h in horizons:
        present = {r["model"]: r for r in rows if r["horizon"] == h}
        loss = {m: sg.brier_losses(*scored[(m, h)]) for m in present if (m, h) in scored}
        naive = [m for m in NAIVE if m in loss]
        if not naive:
            continue
        best_naive = min(naive, key=lambda m: float(np.mean(loss[m])))
        pool = naive + [m for m in TABULAR if m in loss]
        best_all = min(pool, key=lambda m: float(np.mean(loss[m])))
        challengers = [m for m, r in present.items() if r["kind"] == "model" or m in TABULAR]
        for m in challengers:
            base = best_naive if m in TABULAR else best_all
            dm = sg.diebold_mariano(loss[m], loss[base], horizon=h)
            out.append(
                {
                    "model": m,
                    "horizon": h,
                    "span": span,
                    "best_baseline": base,
                    "test": "Diebold–Mariano, Brier loss, HAC (Newey–West) + HLN correction",
                    "mean_loss_model": float(np.mean(loss[m])),
                    "mean_loss_baseline": float(np.mean(loss[base])),
                    "dm": dm["dm"],
                    "p_value": dm["p_value_model_better"],
                    "p_value_two_sided": dm["p_value"],
                }
            )
        if challengers:
            spa = sg.spa_test(
                loss[best_naive],
                np.column_stack([loss[m] for m in challengers]),
                block=block,
                reps=max(cfg.n_boot, 100),
                seed=cfg.seed,
            )
            spa_rows.append(
                {"horizon": h, "span": span, "benchmark": best_naive, "models": ", ".join(challengers), **spa}
            )
    return out, spa_rows


def _headline(
    rows: Sequence[dict[str, Any]],
    comparisons: Sequence[dict[str, Any]],
    placebo: Sequence[dict[str, Any]] | None,
    dates: Sequence[date],
    span: str,
) -> list[dict[str, Any]]:
    """The table a quant reads first: each model against its best baseline on one span
    (``placebo`` None: the placebo was not run on this span)."""
    by = {(r["model"], r["horizon"]): r for r in rows}
    out = []
    for c in comparisons:
        m, h, b = c["model"], c["horizon"], c["best_baseline"]
        r, rb = by[(m, h)], by[(b, h)]
        mde = sg.minimum_detectable_effect(len(dates), h)
        fails = [p for p in placebo or [] if p["model"] == m and p["horizon"] == h and p.get("fails")]
        out.append(
            {
                "model": m,
                "horizon": h,
                "best_baseline": b,
                "span": span,
                "first": dates[0].isoformat(),
                "last": dates[-1].isoformat(),
                "n_days": len(dates),
                "n_independent": len(dates) / h,
                "balanced_accuracy": r["balanced_accuracy"],
                "baseline_balanced_accuracy": rb["balanced_accuracy"],
                "permutation_p": r.get("permutation_p"),
                "refit_permutation_p": r.get("refit_permutation_p"),
                "test": "DM (Brier)",
                "dm": c["dm"],
                "p_value": c["p_value"],
                "brier_skill": r.get("brier_skill"),
                "sharpe": r["sharpe"],
                "baseline_sharpe": rb["sharpe"],
                "mde_sharpe": mde["sharpe"],
                "mde_accuracy": mde["accuracy"],
                "degenerate": r["degenerate"],
                "placebo_passed": None if placebo is None else not fails,
                "annualised_from_under_a_year": bool(len(dates) < ONE_YEAR),
            }
        )
    return out


def _deflated(
    strategy_returns: Mapping[str, np.ndarray], inp: EvalInputs
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Deflated Sharpe of every strategy. N and the variance of the trial Sharpes come from the
    earlier trials on this dataset (``inp.trial_sharpes``, e.g. from MLflow) plus this report's
    strategies; without such a log, from this report's strategies alone (which undercounts the
    configurations really tried, and the document says so)."""
    per_period = {k: _per_period_sharpe(r) for k, r in strategy_returns.items()}
    current = [s for s in per_period.values() if np.isfinite(s)]
    logged = [float(s) for s in (inp.trial_sharpes or []) if np.isfinite(s)]
    if logged:
        trials, source = logged + current, inp.trial_source or "logged trials"
    else:
        trials, source = current, "this report's strategies only (no trial log for this dataset)"
    doc = {
        "source": source,
        "n_trials": len(trials),
        "n_logged": len(logged),
        "n_report": len(current),
        "variance": float(np.var(trials, ddof=1)) if len(trials) > 1 else math.nan,
    }
    deflated = {
        k: un.deflated_sharpe_ratio(r, trials)
        for k, r in strategy_returns.items()
        if np.isfinite(per_period[k]) and len(trials) > 1
    }
    return deflated, doc


def _pooled_networks(
    inp: EvalInputs,
    fr: _Frame,
    dates: Sequence[date],
    folds: Sequence[wf.WalkForwardFold],
    horizons: Sequence[int],
    cfg: EvalConfig,
    loaded: Mapping[str, LoadedModel],
    spec_hash: str,
    split_hash: str,
    log: Log,
) -> dict[str, nf.PooledNetwork]:
    """Each network retrained per fold (``network_folds``), its folds cached under work_dir."""
    if cfg.walk_forward_epochs <= 0 or not loaded:
        return {}
    from finnex_ml.encoding.store import image_path

    classes = np.stack([fr.classes(h, dates) for h in horizons], axis=1)
    rets = np.stack([fr.col(lb.return_col(h), dates) for h in horizons], axis=1)
    hashes = []
    for f in folds:
        rows = np.concatenate([f.train, f.test])
        ds = [dates[i] for i in rows]
        hashes.append(
            nf.fold_data_hash(spec_hash, ds, classes[rows], rets[rows], [image_path(inp.image_root, d) for d in ds])
        )

    def write(path: Path, name: str, ds: Sequence[date]) -> Path:
        return _write_set(path, name, ds, fr, inp, spec_hash, split_hash)

    return nf.pooled_networks(
        loaded,
        dates,
        folds,
        write_set=write,
        data_hashes=hashes,
        cache_dir=inp.work_dir / "walk_forward",
        epochs=cfg.walk_forward_epochs,
        seeds=cfg.walk_forward_seeds,
        purge=max(horizons),
        log=log,
    )


def _pooled_folds(
    sets: Mapping[str, list[date]], horizons: Sequence[int], cfg: EvalConfig
) -> tuple[list[date], list[wf.WalkForwardFold], str] | None:
    """(every split date, the pooled walk-forward's folds, how its test blocks are cut), or None
    when it is off or there is not enough history for one fold."""
    if cfg.pooled_min_train <= 0:
        return None
    dates = sorted({d for v in sets.values() for d in v})
    folds = wf.yearly_folds(
        dates, purge=max(horizons), min_train=cfg.pooled_min_train, block_sessions=cfg.pooled_block_sessions or None
    )
    blocks = f"blocks of {cfg.pooled_block_sessions} sessions" if cfg.pooled_block_sessions else "calendar years"
    if not folds and not cfg.pooled_block_sessions:
        # under two years of data (the one-year demo): quarters after half the dates of history
        # still pool several times the test split's length out of sample
        folds = wf.yearly_folds(
            dates, purge=max(horizons), min_train=min(cfg.pooled_min_train, len(dates) // 2), block_sessions=QUARTER
        )
        blocks = (
            f"quarters ({QUARTER} sessions) after {min(cfg.pooled_min_train, len(dates) // 2)} dates of "
            f"history: too few dates for calendar years after {cfg.pooled_min_train}"
        )
    return (dates, folds, blocks) if folds else None


def _pooled_oos(
    inp: EvalInputs,
    fr: _Frame,
    sets: Mapping[str, list[date]],
    horizons: Sequence[int],
    closes: pl.DataFrame,
    cfg: EvalConfig,
    log: Log,
    loaded: Mapping[str, LoadedModel],
    spec_hash: str,
    split_hash: str,
) -> dict[str, Any] | None:
    """Walk-forward over years with every fold's test predictions pooled: the tabular models
    (``finnex_ml.evaluation.walkforward``) and the networks (``network_folds``) refitted per
    fold, the naive baselines scored on the same pooled dates with each fold's training data.
    None when there is not enough history for one fold."""
    plan = _pooled_folds(sets, horizons, cfg)
    if plan is None:
        if cfg.pooled_min_train > 0:
            log(f"pooled walk-forward skipped: fewer than {cfg.pooled_min_train} dates before the last test block")
        return None
    dates, folds, blocks = plan
    X = bl.feature_matrix(inp.features, dates, inp.feature_columns)
    nets = _pooled_networks(inp, fr, dates, folds, horizons, cfg, loaded, spec_hash, split_hash, log)
    rows_all, scored, returns = [], {}, {}
    pdates: list[date] = []
    for h in horizons:
        y = fr.classes(h, dates)
        pp = wf.pooled_tabular(X, y, folds, seed=cfg.seed, purge=h)
        networks = {}
        for name, net in nets.items():
            if h in net.horizons:
                # the same folds, so the same pooled rows as the tabular models
                if not np.array_equal(net.rows, pp.rows):
                    raise AssertionError(f"{name}: pooled rows differ from the tabular models'")
                networks[name] = ("model", net.probs[:, net.horizons.index(h)])
        pdates = [dates[i] for i in pp.rows]
        yt = y[pp.rows]
        daily = fr.daily_returns(pdates)
        block = un.optimal_block(daily, h)
        candidates = {
            "majority": ("baseline", pp.train_prior),
            "momentum": (
                "baseline",
                bl.momentum_probs(bl.trailing_returns(closes, pdates, h), fr.col(lb.threshold_col(h), pdates)),
            ),
            "buy_and_hold": ("benchmark", bl.constant_probs(lb.BUY, len(pdates))),
            **{k: ("baseline", p) for k, p in pp.probs.items()},
            **networks,
        }
        for name, (kind, probs) in candidates.items():
            row, _, res = _score_row(name, kind, h, yt, probs, daily, cfg, block=block, prior=pp.train_prior)
            rows_all.append({**row, "span": "pooled walk-forward"})
            scored[(name, h)] = (yt, probs)
            if kind != "benchmark":
                returns[f"{name} ({h}d)"] = res.returns
        log(
            f"pooled walk-forward h={h}: {len(folds)} folds, {len(pdates)} out-of-sample dates "
            f"{pdates[0]}..{pdates[-1]}"
        )
    comparisons, spa_rows = _comparisons(
        rows_all,
        scored,
        horizons,
        un.optimal_block(fr.daily_returns(pdates), max(horizons)),
        cfg,
        "pooled walk-forward",
    )
    deflated, trials_doc = _deflated(returns, inp)
    return {
        "rows": rows_all,
        "comparisons": comparisons,
        "spa": spa_rows,
        "folds": pp.folds,
        "first": pdates[0].isoformat(),
        "last": pdates[-1].isoformat(),
        "n": len(pdates),
        "years": len(pdates) / ONE_YEAR,
        "independent_decisions": {f"{h}d": len(pdates) / h for h in horizons},
        "minimum_detectable_effect": {f"{h}d": sg.minimum_detectable_effect(len(pdates), h) for h in horizons},
        "deflated_sharpe": deflated,
        "deflated_sharpe_trials": trials_doc,
        "headline": _headline(rows_all, comparisons, None, pdates, "pooled walk-forward"),
        "blocks": blocks,
        "networks": {name: net.folds for name, net in nets.items()},
        "network_training": {
            "epochs": cfg.walk_forward_epochs,
            "seeds": list(cfg.walk_forward_seeds),
            "trained_folds": sum(net.trained_folds for net in nets.values()),
            "cached_folds": sum(len(net.folds) - net.trained_folds for net in nets.values()),
        },
        "note": f"test blocks: {blocks}. Each fold refitted on all earlier dates (purged by the longest horizon). "
        "Gradient boosting's iterations are chosen on an inner purged validation block; "
        + (
            f"the networks ({', '.join(sorted(nets))}) are retrained per fold as seed ensembles "
            f"({cfg.walk_forward_epochs} epochs at most, seeds {list(cfg.walk_forward_seeds)}), early-stopped on an "
            "inner validation block (the last 20 % of the fold's training dates, purged by the longest "
            "horizon), never on the scored block"
            if nets
            else "no network was retrained per fold (walk_forward_epochs is 0 or no model is trained), so "
            "the networks appear on the test split only"
        ),
    }


def _permuted_rows(
    controls: Sequence[tuple[str, int, np.ndarray, np.ndarray]], block: int, cfg: EvalConfig
) -> list[dict[str, Any]]:
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
        rows.append(
            {
                "model": name,
                "horizon": h,
                "balanced_accuracy": float(ci["estimate"]),
                "ci": _ci(ci),
                "chance": 1 / 3,
                "at_chance": bool(ci["lower"] <= 1 / 3 <= ci["upper"]),
                "ci_familywise": _ci(fw),
                "above_chance": bool(fw["lower"] > 1 / 3),
                "below_chance": bool(fw["upper"] < 1 / 3),
            }
        )
    return rows


def _refit_score(
    kind: str, X_train: np.ndarray, X_test: np.ndarray, y_te: np.ndarray, seed: int, y: np.ndarray
) -> float:
    """Test balanced accuracy of ``kind`` fitted on training labels ``y`` (a module-level
    function so joblib can send it to worker processes); gradient boosting with the refit
    test's cheaper settings (``baselines.REFIT_BOOSTING``) on the features the caller binned once
    (``baselines.prebin``), the same for real and permuted labels."""
    boosting = bl.REFIT_BOOSTING if kind == "gradient_boosting" else None
    probs = bl.tabular_probs(kind, X_train, y, X_test, seed, boosting=boosting, binned=True)
    return mt.balanced_accuracy(y_te, probs.argmax(-1))


def _permuted_doc(cfg: EvalConfig, networks: Sequence[str]) -> dict[str, Any]:
    """How many permuted-label retrainings the networks got, and what that can show."""
    ran = bool(networks) and cfg.permuted_label_epochs > 0 and cfg.permuted_label_runs > 0
    return {
        "networks": list(networks) if ran else [],
        "permutations": cfg.permuted_label_runs if ran else 0,
        "epochs": cfg.permuted_label_epochs if ran else 0,
        "tabular_permutations": 1,
        "can_detect": "a path from the test labels to the predictions that bypasses training (labels or "
        "returns reaching the network through the set files, misaligned rows, a test-time leak): a network "
        "trained on shuffled labels must still score at chance on the test split",
        "cannot_detect": "a leak in the features or images (with shuffled training labels a leaked mapping "
        "cannot be learned); nor is it a test of skill: with "
        f"{cfg.permuted_label_runs} permutation(s) it gives no p-value (that is the pooled block-permutation "
        "test's job), and a few epochs may leave a network predicting nearly one class, which is at chance "
        "trivially",
    }


def _fold_row(name: str, k: int, h: int, y: np.ndarray, probs: np.ndarray, dates: Sequence[date]) -> dict[str, Any]:
    m = mt.classification_metrics(y, probs)
    return {
        "model": name,
        "fold": k,
        "horizon": h,
        "n": int(y.size),
        "first": dates[0].isoformat(),
        "last": dates[-1].isoformat(),
        "accuracy": m["accuracy"],
        "balanced_accuracy": m["balanced_accuracy"],
        "macro_f1": m["macro_f1"],
    }


def _fold_summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for name, h in sorted({(r["model"], r["horizon"]) for r in rows}):
        sel = [r for r in rows if r["model"] == name and r["horizon"] == h]
        ba = np.array([r["balanced_accuracy"] for r in sel])
        out.append(
            {
                "model": name,
                "horizon": h,
                "folds": len(sel),
                "mean_balanced_accuracy": float(ba.mean()),
                "std_balanced_accuracy": float(ba.std(ddof=1)) if len(ba) > 1 else float("nan"),
                "mean_accuracy": float(np.mean([r["accuracy"] for r in sel])),
            }
        )
    return out


def _per_period_sharpe(r: np.ndarray) -> float:
    s = float(np.std(r, ddof=1)) if len(r) > 1 else 0.0
    return float(np.mean(r) / s) if s > 0 else float("nan")


def _leak_doc(
    leak: LeakReport, suspicious: list[dict], placebo: Sequence[dict[str, Any]], cfg: EvalConfig
) -> dict[str, Any]:
    """The leak verdict. Blocking (``passed`` False): implausible skill of a network or tabular
    model, or skill that survives the label-shift placebo. Warning only: features whose
    correlation with a forward return beats the permutation bar (a strong legitimate signal
    does that too)."""
    placebo_fail = [p for p in placebo if p.get("fails")]
    blocking = [
        f"implausible skill: {r['model']} h={r['horizon']} balanced accuracy interval "
        f"{r['balanced_accuracy_ci']} wholly above {cfg.max_balanced_accuracy}"
        for r in suspicious
    ] + [
        f"label-shift placebo: {p['model']} h={p['horizon']} keeps skill against labels {p['shift']} "
        f"sessions later (balanced accuracy {p['balanced_accuracy']:.3f}, p={p['p_value']:.4f})"
        for p in placebo_fail
    ]
    warnings = [
        f"feature {d['feature']} correlates with the {d['horizon']}-session forward return "
        f"(rho={d['spearman']:+.3f}, family-wise p={d['p_value']:.3f})"
        for d in leak.flagged_by_horizon
    ]
    return {
        "feature_scan": {
            "passed": leak.passed,
            "threshold_abs_spearman": leak.threshold,
            "training_dates": leak.n,
            "horizons": leak.horizons,
            "permutations": leak.n_perm,
            "alpha": leak.alpha,
            "null_max_median": leak.null_max_median,
            "verdict": "warning only",
            "flagged": [{"feature": f, "spearman": r} for f, r in leak.flagged],
            "flagged_by_horizon": leak.flagged_by_horizon,
            "top": [{"feature": f, "spearman": r} for f, r in leak.top],
            "canary": leak.canary,
        },
        "suspicious_models": [
            {"model": r["model"], "horizon": r["horizon"], "balanced_accuracy_ci": r["balanced_accuracy_ci"]}
            for r in suspicious
        ],
        "label_shift_placebo_failed": placebo_fail,
        "max_balanced_accuracy": cfg.max_balanced_accuracy,
        "blocking": blocking,
        "warnings": warnings,
        "passed": not blocking,
    }


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


__all__ = ["CHANNELS", "EvalConfig", "EvalInputs", "run_evaluation", "train_network_controls"]
