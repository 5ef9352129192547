"""Universe mode's splits, training and predictions over (date, ticker) samples.

Splits are by date (``finnex_ml.splits.temporal_split``, purge by date): every ticker of a date
falls in one set, so no test date's cross-section is partly seen in training. The model learns
the cross-sectional tercile of the h-session excess return (``xs_class_{h}d``: balanced by
construction) with the excess return as the auxiliary regression target, and its score for
ranking is P(top) - P(bottom).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from finnex_ml import calendar
from finnex_ml import splits as sp
from finnex_ml.encoding.layout import LayoutSpec
from finnex_ml.errors import DataInputError
from finnex_ml.labels import return_col
from finnex_ml.panel import excess_col, xs_class_col

DEFAULT_HORIZON = 5


def panel_samples(labels: pl.DataFrame, index: pl.DataFrame, horizon: int) -> pl.DataFrame:
    """(date, ticker) pairs with an image (``index``: date, ticker, row) and a known
    cross-sectional class at ``horizon``; with ``label``, ``excess`` and ``fwd_return``."""
    cls, exc, ret = xs_class_col(horizon), excess_col(horizon), return_col(horizon)
    missing = [c for c in (cls, exc, ret) if c not in labels.columns]
    if missing:
        raise DataInputError(f"universe labels lack {missing} (horizon {horizon} not labelled)", column=missing[0])
    lab = labels.filter(pl.col(cls).is_not_null()).select(
        "date",
        "ticker",
        pl.col(cls).cast(pl.Int64).alias("label"),
        pl.col(exc).alias("excess"),
        pl.col(ret).alias("fwd_return"),
    )
    return index.select("date", "ticker").join(lab, on=["date", "ticker"], how="inner").sort("date", "ticker")


def split_panel(
    samples: pl.DataFrame, horizon: int, *, train: float = 0.6, val: float = 0.2, embargo: int = 0
) -> tuple[pl.DataFrame, sp.Split]:
    """``samples`` with a ``set`` column (train / val / test, null = purged), split by date."""
    dates = sorted(set(samples["date"].to_list()))
    split = sp.temporal_split(dates, calendar.all_sessions(), horizon, train=train, val=val, embargo=embargo)
    of = {d: name for name, ds in split.sets().items() for d in ds}
    out = samples.with_columns(pl.col("date").replace_strict(of, default=None, return_dtype=pl.String).alias("set"))
    return out, split


def train_statistics(samples: pl.DataFrame) -> dict[str, Any]:
    """Label shares and excess-return moments of the training set only."""
    tr = samples.filter(pl.col("set") == "train")
    shares = tr["label"].value_counts().sort("label")
    return {
        "n_train": tr.height,
        "train_dates": tr["date"].n_unique(),
        "class_share": {int(k): n / tr.height for k, n in zip(shares["label"].to_list(), shares["count"].to_list())},
        "excess_mean": float(tr["excess"].mean()),
        "excess_std": float(tr["excess"].std()),
    }


@dataclass
class PanelTrainSettings:
    model: str = "cnn"
    epochs: int = 5
    patience: int = 2
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-2
    seeds: Sequence[int] = (0,)
    num_threads: int | None = 2
    overrides: dict[str, Any] = field(default_factory=dict)


def train_and_predict(
    reader: Any,
    samples: pl.DataFrame,
    spec: LayoutSpec,
    horizon: int,
    settings: PanelTrainSettings | None = None,
    *,
    checkpoint_root: Path | None = None,
    on_epoch_end: Any = None,
    score_sets: Sequence[str] = ("val", "test"),
) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """Train one layout-aware model per seed on the train set (early stopping on val), average
    their probabilities, and return predictions for every sample of ``score_sets`` (default val
    and test; the walk-forward keeps only its test block, so it predicts only that) with the history.

    ``reader``: a ``PanelReader`` over ``samples`` itself (its index: date, ticker, row), so sample
    i of ``samples`` is reader position i."""
    import torch

    from finnex_ml.models import layout_json
    from finnex_ml.training import PanelDataset, TrainConfig, train_model

    s = settings or PanelTrainSettings()
    samples = samples.with_row_index("pos")
    rows = {name: samples.filter(pl.col("set") == name) for name in ("train", "val", "test")}
    for name, part in rows.items():
        if part.height == 0:
            raise DataInputError(f"universe split has no {name} samples; add dates")
    cls, reg = f"label_h{horizon}", f"return_h{horizon}"

    def dataset(part: pl.DataFrame) -> PanelDataset:
        return PanelDataset(
            reader,
            part["pos"].to_numpy(),
            {cls: part["label"].to_numpy(), reg: part["excess"].fill_null(0.0).to_numpy().astype(np.float32)},
        )

    train, val = dataset(rows["train"]), dataset(rows["val"])
    unknown = set(score_sets) - set(rows)
    if unknown or not score_sets:
        raise ValueError(f"score_sets must be a non-empty subset of {sorted(rows)}, got {list(score_sets)}")
    scored = pl.concat([rows[name] for name in score_sets])
    models, history = [], []
    for seed in s.seeds:
        cfg = TrainConfig(
            model=s.model,
            input_mode="image",
            horizons=(horizon,),
            class_targets=(cls,),
            reg_targets=(reg,),
            epochs=s.epochs,
            batch_size=s.batch_size,
            lr=s.lr,
            weight_decay=s.weight_decay,
            warmup_epochs=1,
            patience=s.patience,
            seed=seed,
            noise_std=0.0,
            mixup_alpha=0.0,
            loss_weighting="fixed",
            fixed_weights=(1.0, 0.1),
            num_threads=s.num_threads,
            model_overrides={"layout": layout_json(spec), **s.overrides},
        )
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = checkpoint_root / f"seed{seed}" if checkpoint_root else Path(tmp)
            res = train_model(cfg, train, val, checkpoint_dir=ckpt, on_epoch_end=on_epoch_end)
        history.append({"seed": seed, "best_epoch": res.best_epoch, "history": res.history})
        models.append(res.model.eval())
    # every seed's model scores each image as it is read: one read per image, not one per seed
    # (a read-ahead thread was tried: slower, the decompression and the models share two cores)
    r = scored["pos"].to_numpy()
    batches = (reader.read_batch(r[i : i + 64]) for i in range(0, len(r), 64))
    outs: list[list[np.ndarray]] = [[] for _ in models]
    with torch.no_grad():
        for xb in batches:
            x = torch.from_numpy(xb).permute(0, 3, 1, 2)
            for out, model in zip(outs, models):
                out.append(torch.softmax(model(x)["classification"], -1).numpy())
    p = np.mean([np.concatenate(out) for out in outs], axis=0)
    preds = scored.select("date", "ticker", "set", "label", "excess", "fwd_return").with_columns(
        pl.Series("p_bottom", p[:, 0]),
        pl.Series("p_middle", p[:, 1]),
        pl.Series("p_top", p[:, 2]),
        pl.Series("score", p[:, 2] - p[:, 0]),
        pl.Series("pred_class", p.argmax(1).astype(np.int64)),
    )
    return preds, history
