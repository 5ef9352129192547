"""Positive control: a planted rule rendered through FinNeX's own features, layout and encoder.

:func:`build_control_data` runs a planted synthetic world (``finnex_ml.data.synthetic``) through
the real feature pipeline, the default layout and the leak-free image encoder, and returns the
images with their labels, the date-t feature values (what a tabular baseline sees) and the
oracle's classes. :func:`run_control` trains an image model on it and scores model, oracle and
baselines on the same held-out dates. It answers "can the model learn?" separately from "is there
signal in the market?": a model that cannot recover a planted, noise-free rule is broken.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any

import numpy as np
import polars as pl

from finnex_ml import calendar
from finnex_ml.data.synthetic import PlantedSignal, SyntheticSource
from finnex_ml.encoding.encoder import encode_dates, history_needed
from finnex_ml.encoding.layout import LayoutSpec, build_layout
from finnex_ml.encoding.normalize import NormConfig
from finnex_ml.evaluation.metrics import balanced_accuracy, is_degenerate, prediction_diversity
from finnex_ml.labels import LabelConfig, class_col, classify, compute_labels, return_col, threshold_col
from finnex_ml.pipeline import daily_features_from_snapshots, modality_snapshots


@dataclass
class ControlData:
    dates: list[date]
    images: np.ndarray  # float32 [n, 512, 512, 3]
    labels: np.ndarray  # int64 [n], class at ``horizon``
    returns: np.ndarray  # float64 [n], forward simple return at ``horizon``
    date_features: np.ndarray  # float64 [n, F], the feature table's row at each date
    feature_names: list[str]
    oracle: np.ndarray  # int64 [n], the oracle's class (planted rule, thresholds known at t)
    spec: LayoutSpec
    horizon: int
    plant: PlantedSignal | None


def build_control_data(
    plant: PlantedSignal | None, start: date | str, end: date | str, *, horizon: int = 1, seed: int = 7
) -> ControlData:
    """Images, labels, date-t features and oracle classes for every session in [start, end]
    whose label is known. ``plant=None`` is the plain (pure-noise for this purpose) world."""
    source = SyntheticSource(seed, plant=plant or PlantedSignal("level", 0.0))
    image_dates = calendar.sessions(start, end)
    norm = NormConfig()
    # one pass with a throwaway layout to learn the feature names, then the real layout
    first = calendar.sessions_back(image_dates[0], 400)
    asof = calendar.sessions(first, image_dates[-1])
    snaps, _ = modality_snapshots(source, asof)
    table = daily_features_from_snapshots(snaps)
    spec = build_layout(table.columns)
    need = history_needed(spec, norm)
    if asof.index(image_dates[0]) + 1 < need:
        raise ValueError(f"not enough lookback: need {need} sessions before {image_dates[0]}")
    # labels need sessions after ``end``: read the prices a little further
    every = calendar.all_sessions()
    future_end = every[every.index(image_dates[-1]) + horizon]
    prices = source.load(first, future_end).prices
    cal = calendar.sessions(first, future_end)
    lab = compute_labels(prices, image_dates, LabelConfig(horizons=(horizon,)), sessions=cal)
    lab = lab.filter(pl.col(class_col(horizon)).is_not_null())
    dates = lab["date"].to_list()
    images = np.empty((len(dates), *spec.shape), dtype=np.float32)
    for i, item in enumerate(encode_dates(table, dates, spec, norm)):
        images[i] = item.image
    feats = table.filter(pl.col("date").is_in(dates)).sort("date")
    feat_np = feats.select(list(spec.features)).to_numpy().astype(np.float64)
    if plant is not None:
        orc = source.oracle_returns(dates[0], dates[-1], (horizon,)).filter(pl.col("date").is_in(dates)).sort("date")
        expected = np.expm1(orc[f"oracle_h{horizon}"].to_numpy())  # labels use simple returns
        oracle = classify(np.nan_to_num(expected), lab[threshold_col(horizon)].to_numpy())
    else:  # no planted rule: the oracle knows nothing beyond the training prior (set by the caller)
        oracle = np.full(len(dates), -1)
    return ControlData(
        dates,
        images,
        lab[class_col(horizon)].to_numpy().astype(np.int64),
        lab[return_col(horizon)].to_numpy().astype(np.float64),
        feat_np,
        list(spec.features),
        np.asarray(oracle, dtype=np.int64),
        spec,
        horizon,
        plant,
    )


ABLATIONS = (
    "shuffle_history",
    "permute_features",
    "blank_macro",
    "blank_behavioral",
    "blank_fundamental",
    "blank_red",
    "blank_green",
    "blank_blue",
)


def ablate(data: ControlData, kind: str, seed: int = 0) -> ControlData:
    """The same dates and labels with the images' structure ablated (``finnex_ml.encoding.ablate``),
    for retraining: what a model can still learn without that structure."""
    from finnex_ml.encoding import ablate as ab

    if kind == "shuffle_history":
        images = ab.shuffle_history(data.images, data.spec, seed)
    elif kind == "permute_features":
        images = ab.permute_features(data.images, data.spec, seed)
    elif kind.startswith("blank_") and kind in ABLATIONS:
        what = kind.removeprefix("blank_")
        channels = [n for n in data.spec.channel_names]
        images = (
            ab.blank_tiles(data.images, data.spec, channel=channels.index(what))
            if what in channels
            else ab.blank_tiles(data.images, data.spec, section=what)
        )
    else:
        raise ValueError(f"unknown ablation {kind!r}; expected one of {ABLATIONS}")
    return replace(data, images=images)


@dataclass
class ControlSplit:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_dates(n: int, horizon: int, val: float = 0.15, test: float = 0.2) -> ControlSplit:
    """Chronological train / val / test positions with a ``horizon``-session purge before each
    later block (a label at t reads closes up to t+h)."""
    n_test, n_val = int(round(n * test)), int(round(n * val))
    t0 = n - n_test
    v0 = t0 - horizon - n_val
    return ControlSplit(np.arange(0, v0 - horizon), np.arange(v0, t0 - horizon), np.arange(t0, n))


@dataclass
class ControlResult:
    form: str
    strength: float
    n_train: int
    n_test: int
    test_span: tuple[str, str]
    balanced_accuracy: dict[str, float]  # model, oracle, logistic, majority
    test_pred: dict[str, np.ndarray] = field(repr=False)
    test_labels: np.ndarray = field(repr=False)
    diversity: dict[str, Any] = field(default_factory=dict)
    train_seconds: float = 0.0


def logistic_baseline(x: np.ndarray, y: np.ndarray, split: ControlSplit) -> np.ndarray:
    """Standardised (train statistics) multinomial logistic regression on the date-t features."""
    from sklearn.linear_model import LogisticRegression

    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    mu, sd = x[split.train].mean(0), x[split.train].std(0) + 1e-9
    z = (x - mu) / sd
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(z[split.train], y[split.train])
    return clf.predict(z[split.test])


def train_image_model(
    data: ControlData,
    split: ControlSplit,
    *,
    model: str = "cnn",
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = 30,
    threads: int | None = None,
    overrides: dict[str, Any] | None = None,
    **recipe: Any,
) -> np.ndarray:
    """An ensemble of ``len(seeds)`` models ``model`` (a registered name: layout-aware ones get the
    data's layout spec, e.g. ``"vit_patches"`` reads the pixels); returns test probabilities [n_test, 3].

    Trained with the training assets' recipe for ``model`` (``image_recipe``); ``recipe``
    overrides its fields (e.g. ``lr``, ``label_smoothing``)."""
    import torch

    from finnex_ml.models import layout_json, model_entry
    from finnex_ml.training import ArrayDataset, TrainConfig, image_recipe, train_model

    h = data.horizon
    targets = {f"label_h{h}": data.labels, f"return_h{h}": data.returns.astype(np.float32)}
    x = torch.from_numpy(data.images)
    tr, va = (ArrayDataset(x, targets, indices=split.train), ArrayDataset(x, targets, indices=split.val))
    layout = {"layout": layout_json(data.spec)} if model_entry(model).layout_aware else {}
    probs = []
    for seed in seeds:
        cfg = TrainConfig(
            **{**image_recipe(model), **recipe},
            model=model,
            input_mode="image",
            horizons=(h,),
            class_targets=(f"label_h{h}",),
            reg_targets=(f"return_h{h}",),
            epochs=epochs,
            seed=seed,
            num_threads=threads,
            model_overrides={**layout, **(overrides or {})},
        )
        with tempfile.TemporaryDirectory() as tmp:
            res = train_model(cfg, tr, va, checkpoint_dir=tmp)
        m = res.model.eval()
        with torch.no_grad():
            out = []
            for i in range(0, len(split.test), 64):
                xb = x[split.test[i : i + 64]].permute(0, 3, 1, 2)
                out.append(torch.softmax(m(xb)["classification"], -1).numpy())
        probs.append(np.concatenate(out))
    return np.mean(probs, axis=0)


def run_control(
    data: ControlData,
    *,
    model: str = "cnn",
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = 30,
    threads: int | None = None,
    overrides: dict[str, Any] | None = None,
    **recipe: Any,
) -> ControlResult:
    """Model versus oracle versus baselines on the held-out last 20 % of dates."""
    import time

    split = split_dates(len(data.dates), data.horizon)
    y = data.labels
    t0 = time.perf_counter()
    probs = train_image_model(
        data, split, model=model, seeds=seeds, epochs=epochs, threads=threads, overrides=overrides, **recipe
    )
    secs = time.perf_counter() - t0
    majority = int(np.bincount(y[split.train], minlength=3).argmax())
    oracle = data.oracle[split.test] if data.plant is not None else np.full(len(split.test), majority)
    preds = {
        "model": probs.argmax(1),
        "oracle": oracle,
        "logistic": logistic_baseline(data.date_features, y, split),
        "majority": np.full(len(split.test), majority),
    }
    yt = y[split.test]
    return ControlResult(
        form=data.plant.form if data.plant else "none",
        strength=data.plant.strength if data.plant else 0.0,
        n_train=len(split.train),
        n_test=len(split.test),
        test_span=(data.dates[split.test[0]].isoformat(), data.dates[split.test[-1]].isoformat()),
        balanced_accuracy={k: balanced_accuracy(yt, v) for k, v in preds.items()},
        test_pred=preds,
        test_labels=yt,
        diversity={**prediction_diversity(preds["model"]), "degenerate": is_degenerate(preds["model"])},
        train_seconds=secs,
    )


__all__ = ["ABLATIONS", "ControlData", "ControlResult", "ablate", "build_control_data", "run_control", "split_dates"]
