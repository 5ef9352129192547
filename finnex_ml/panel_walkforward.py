"""Pooled walk-forward for universe mode: yearly test blocks, a model retrained before each.

One test split of a year cannot show cross-sectional skill of the size markets give (an IC of a
few hundredths needs years of dates). Here the universe's image dates are cut into test blocks
(calendar years, ``walkforward.yearly_folds``); for each block the model is retrained on a
training window that ends ``h`` sessions before the block (an h-session label of a training
date must not reach into it) and predicts the block. All blocks' predictions are pooled into one
out-of-sample panel, each (date, ticker) once, on which the cross-sectional metrics run.

Inside each fold's training window the last ``val_fraction`` of its dates is an *inner*
validation block for early stopping, purged by ``h`` dates from the dates fitted on, so the best
epoch is never chosen on the block that is then scored. Training statistics (class shares,
excess-return moments) are the fold's fitted dates only; the images themselves carry the
point-in-time normalisation fixed when they were encoded (no statistic from later dates).

Each fold's predictions are cached on disk under a key of (fold, configuration hash, data hash):
a re-run skips finished folds and a run killed midway resumes at the first unfinished one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl

from finnex_ml import progress
from finnex_ml.errors import DataInputError
from finnex_ml.evaluation.walkforward import yearly_folds
from finnex_ml.paths import write_json_atomic, write_parquet_atomic

SESSIONS_PER_YEAR = 252
MIN_TRAIN = 250  # a first training window of about a year (2018 has 251 sessions)

__all__ = [
    "PanelFold",
    "cnn_fit_predict",
    "config_hash",
    "data_hash",
    "fold_samples",
    "panel_folds",
    "pooled_ridge",
    "walk_forward_predictions",
]


@dataclass(frozen=True)
class PanelFold:
    index: int
    label: str  # the test block's year (or first date)
    fit: tuple[date, ...]  # dates the model is fitted on
    val: tuple[date, ...]  # inner validation dates (early stopping), inside the training window
    test: tuple[date, ...]  # the scored block
    window: tuple[date, ...]  # every date of the training window (the ridge fits on all of them)

    def describe(self) -> dict[str, Any]:
        span = lambda ds: [ds[0].isoformat(), ds[-1].isoformat()] if ds else []  # noqa: E731
        return {
            "fold": self.index,
            "label": self.label,
            "fit_dates": len(self.fit),
            "fit_span": span(self.fit),
            "val_dates": len(self.val),
            "val_span": span(self.val),
            "test_dates": len(self.test),
            "test_span": span(self.test),
        }


def panel_folds(
    dates: Sequence[date],
    horizon: int,
    *,
    min_train: int = MIN_TRAIN,
    window_years: float = 0.0,
    val_fraction: float = 0.2,
    train_stride: int = 1,
    block_sessions: int | None = None,
) -> list[PanelFold]:
    """Folds over the sorted image ``dates``: test blocks from ``yearly_folds`` (purge ``horizon``
    dates before each block), a training window of every earlier date (``window_years`` > 0: only
    the last ``window_years`` x 252 of them, a rolling window), its last ``val_fraction`` the inner
    validation block, purged by ``horizon`` dates from the fitted dates. ``train_stride`` keeps
    every k-th fitted and validation date (counted back from the latest): with h-session labels,
    neighbouring dates' targets overlap by h-1 sessions, so a stride of h loses little and costs
    1/h of the image passes."""
    d = sorted(set(dates))
    h, k = int(horizon), max(1, int(train_stride))
    folds = []
    for f in yearly_folds(d, purge=h, min_train=min_train, block_sessions=block_sessions):
        window = [d[i] for i in f.train]
        if window_years > 0:
            window = window[-round(window_years * SESSIONS_PER_YEAR) :]
        n_val = max(1, round(len(window) * val_fraction))
        val = window[-n_val:]
        fit = window[: len(window) - n_val - h]
        if not fit:
            continue  # too short a window to hold a fitted part, a purge and a validation block
        folds.append(
            PanelFold(
                len(folds) + 1,
                f.label,
                tuple(fit[::-1][::k][::-1]),
                tuple(val[::-1][::k][::-1]),
                tuple(d[i] for i in f.test),
                tuple(window),
            )
        )
    return folds


def fold_samples(samples: pl.DataFrame, fold: PanelFold) -> pl.DataFrame:
    """``samples`` (same rows, same order) with ``set`` = train / val / test for the fold's fitted,
    validation and test dates and null elsewhere."""
    of = {**{x: "train" for x in fold.fit}, **{x: "val" for x in fold.val}, **{x: "test" for x in fold.test}}
    return samples.with_columns(pl.col("date").replace_strict(of, default=None, return_dtype=pl.String).alias("set"))


def _digest(obj: Any) -> str:
    if is_dataclass(obj) and not isinstance(obj, type):
        obj = asdict(obj)
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def config_hash(*parts: Any) -> str:
    """Hash of everything that changes a fold's predictions besides the data (settings, fold rules)."""
    return _digest([_digest(p) for p in parts])


def data_hash(samples: pl.DataFrame, *extra: str) -> str:
    """Hash of the samples' keys and targets (and e.g. the image layout's hash)."""
    cols = [c for c in ("date", "ticker", "label", "excess", "fwd_return") if c in samples.columns]
    text = samples.select(cols).sort("date", "ticker").write_csv()
    return hashlib.sha256((text + "|".join(extra)).encode()).hexdigest()


FitPredict = Callable[[pl.DataFrame, PanelFold], tuple[pl.DataFrame, dict[str, Any]]]


def walk_forward_predictions(
    samples: pl.DataFrame,
    folds: Sequence[PanelFold],
    fit_predict: FitPredict,
    *,
    cache_dir: Path,
    config_key: str,
    data_key: str,
    log: Callable[[str], None] | None = None,
) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """Pooled out-of-sample predictions: per fold, ``fit_predict(fold_samples(samples, fold), fold)``
    (predictions with at least date, ticker, set, score; the fold's info) unless the fold's
    predictions are cached under (fold, ``config_key``, ``data_key``); test rows of every fold
    concatenated in date order, with a ``fold`` column. Returns them and each fold's info."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    pooled, infos = [], []
    for fold in progress.track(folds, "universe walk-forward folds", unit="folds", log=log):
        key = config_hash(fold.describe(), config_key, data_key)[:16]
        path = cache_dir / f"fold{fold.index:02d}_{fold.label.replace('.', '')}_{key}.parquet"
        meta = path.with_suffix(".json")
        if path.exists() and meta.exists():
            preds = pl.read_parquet(path)
            info = {**json.loads(meta.read_text(encoding="utf-8")), "cached": True}
        else:
            part = fold_samples(samples, fold)
            out, extra = fit_predict(part, fold)
            preds = out.filter(pl.col("set") == "test").with_columns(pl.lit(fold.index).alias("fold"))
            info = {**fold.describe(), **extra, "test_rows": preds.height}
            write_parquet_atomic(path, preds)  # the predictions first: info without them is no cache hit
            write_json_atomic(meta, info)
            info = {**info, "cached": False}
        if log is not None:
            log(f"fold {fold.label}: {preds.height} test rows ({'cached' if info['cached'] else 'trained'})")
        pooled.append(preds)
        infos.append(info)
    if not pooled:
        return pl.DataFrame(), infos
    out = pl.concat(pooled, how="diagonal_relaxed").sort("date", "ticker")
    if out.select("date", "ticker").is_duplicated().any():
        raise DataInputError("walk-forward test blocks overlap: a (date, ticker) was predicted twice")
    return out, infos


def train_statistics(part: pl.DataFrame) -> dict[str, Any]:
    """Class shares and excess-return moments of the fold's fitted rows only."""
    tr = part.filter(pl.col("set") == "train")
    counts = tr["label"].value_counts().sort("label")
    return {
        "train_rows": tr.height,
        "train_class_share": {
            int(c): n / tr.height for c, n in zip(counts["label"].to_list(), counts["count"].to_list())
        },
        "train_excess_mean": float(tr["excess"].mean()),
        "train_excess_std": float(tr["excess"].std()),
    }


def cnn_fit_predict(
    reader: Any,
    spec: Any,
    horizon: int,
    settings: Any,
    *,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> FitPredict:
    """The universe model (``panel_model.train_and_predict``) as a fold's learner: ``reader`` is a
    ``PanelReader`` over the full ``samples`` (fold_samples keeps rows and order)."""
    from finnex_ml import panel_model

    def run(part: pl.DataFrame, fold: PanelFold) -> tuple[pl.DataFrame, dict[str, Any]]:
        # only the test block is kept: predicting the inner validation block again would be wasted passes
        preds, history = panel_model.train_and_predict(
            reader, part, spec, horizon, settings, on_epoch_end=on_epoch_end, score_sets=("test",)
        )
        return preds, {
            **train_statistics(part),
            "best_epochs": [h["best_epoch"] for h in history],
            "val_rows": part.filter(pl.col("set") == "val").height,
        }

    return run


def pooled_ridge(
    features: pl.DataFrame,
    samples: pl.DataFrame,
    folds: Sequence[PanelFold],
    feature_cols: Sequence[str],
) -> pl.DataFrame:
    """The panel ridge baseline refitted per fold on every date of the fold's training window (it
    has no epochs to stop early, and more dates only make the baseline harder to beat), scored on
    the fold's test block; blocks pooled. Returns date, ticker, score."""
    from finnex_ml.evaluation import cross_section as cs

    target = samples.select("date", "ticker", pl.col("excess").alias("excess_return"))
    cols = ["date", "ticker", *feature_cols]
    out = []
    for fold in folds:
        train = features.filter(pl.col("date").is_in(fold.window)).select(cols)
        test = features.filter(pl.col("date").is_in(fold.test)).select(cols)
        if train.height and test.height:
            out.append(cs.fit_panel_ridge(train, target, test, feature_cols=list(feature_cols)))
    return pl.concat(out) if out else pl.DataFrame(schema={"date": pl.Date, "ticker": pl.String, "score": pl.Float64})
