"""Image-level predictions of a trained model on a ``cnn_ready`` set file, with optional ablations.

A patch-mode model reads an image as the bag of its 256 patches (each with its grid position)
and pools them with learned attention into one prediction per image, exactly as in training.
Images are read one at a time from the set's virtual ``images`` array, so memory does not grow
with the number of dates.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from finnex_ml.geometry import IMAGE_SHAPE
from finnex_ml.training import load_checkpoint_model

ImageTransform = Callable[[np.ndarray], np.ndarray]


@dataclass
class SetPredictions:
    dates: list[str]
    probs: np.ndarray  # float64 [n, H, 3]
    returns: np.ndarray  # float64 [n, H]: predicted forward return, original units
    labels: np.ndarray  # int [n, H]: true class
    true_returns: np.ndarray  # float64 [n, H]
    horizons: list[int]

    @property
    def pred(self) -> np.ndarray:
        return self.probs.argmax(-1)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    input_mode: str
    horizons: list[int]
    reg_mean: np.ndarray
    reg_std: np.ndarray
    config: dict[str, Any]


def load_model(checkpoint: Path | str) -> LoadedModel:
    """A trained model from its ``best.pt``, with what is needed to turn outputs into predictions."""
    model, ckpt = load_checkpoint_model(checkpoint)
    cfg = dict(ckpt["config"])
    reg = ckpt.get("reg_stats") or {}
    horizons = [int(h) for h in cfg["horizons"]]
    mean = np.asarray(reg.get("mean", [0.0] * len(horizons)), dtype=np.float64)
    std = np.asarray(reg.get("std", [1.0] * len(horizons)), dtype=np.float64)
    return LoadedModel(model.eval(), cfg["input_mode"], horizons, mean, std, cfg)


def forward_image(lm: LoadedModel, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities [H, 3] and predicted returns [H] (original units) for one [512, 512, 3] image."""
    from finnex_ml.evaluation.interpret import image_outputs

    p, r = image_outputs(
        lm.model, image, lm.input_mode, patch_positions=bool(lm.config.get("use_patch_positions", True))
    )
    return p, r * lm.reg_std + lm.reg_mean  # the trainer standardised returns with train statistics


def predict_set(
    lm: LoadedModel, set_file: Path | str, *, transform: ImageTransform | None = None, threads: int = 1
) -> SetPredictions:
    """Predict every image of a set file (``finnex_ml.datasets_io``); ``transform`` alters each
    image first (e.g. a blanked channel for an ablation)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with h5py.File(set_file, "r") as f:
            stored = [int(h) for h in json.loads(f.attrs["horizons"])]
            cols = [stored.index(h) for h in lm.horizons]
            dates = [d.decode() for d in f["dates"][:]]
            labels = f["image_labels"][:][:, cols].astype(np.int64)
            true_ret = f["image_returns"][:][:, cols].astype(np.float64)
            n, H = len(dates), len(lm.horizons)
            probs, rets = np.empty((n, H, 3)), np.empty((n, H))
            buf = np.empty(IMAGE_SHAPE, dtype=np.float32)
            for i in range(n):
                f["images"].read_direct(buf, np.s_[i])
                if not np.isfinite(buf).all():
                    raise ValueError(f"{set_file}: image {dates[i]} has non-finite pixels (source file missing?)")
                img = transform(buf.copy()) if transform is not None else buf
                probs[i], rets[i] = forward_image(lm, img)
    finally:
        torch.set_num_threads(prev)
    return SetPredictions(dates, probs, rets, labels, true_ret, list(lm.horizons))


def blank_channel(channel: int, fill: float) -> ImageTransform:
    """Replace one channel by a constant (the training mean of that channel), which removes its
    information without pushing the input off the distribution the way zeros would."""

    def _t(image: np.ndarray) -> np.ndarray:
        image[..., channel] = fill
        return image

    return _t


__all__ = ["LoadedModel", "SetPredictions", "blank_channel", "forward_image", "load_model", "predict_set"]
