"""Per-model interpretability for the evaluation: importance maps on evenly spaced test images,
averaged, and attributed to sections, tiles and named features through the layout spec."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from finnex_ml.encoding.layout import LayoutSpec
from finnex_ml.evaluation import interpret as ip
from finnex_ml.evaluation.predict import LoadedModel
from finnex_ml.geometry import GRID, IMAGE_SHAPE
from finnex_ml.paths import atomic_path


def _write_png(path: Path, data: bytes) -> str:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return str(path)


def explain_model(
    name: str,
    lm: LoadedModel,
    set_file: Path | str,
    spec: LayoutSpec,
    out_dir: Path | str,
    *,
    fill: Sequence[float],
    n_images: int = 4,
    threads: int = 1,
) -> dict[str, Any]:
    """Occlusion and gradient saliency (and ViT attention rollout in image mode, the bag pooling's
    attention in patch mode) for the predicted class of ``n_images`` evenly spaced images of
    ``set_file``; mean maps as PNGs and aggregates."""
    out = Path(out_dir)
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with h5py.File(set_file, "r") as f:
            n = f["images"].shape[0]
            picks = sorted(set(np.linspace(0, n - 1, num=min(n_images, n)).round().astype(int).tolist())) if n else []
            dates = [f["dates"][i].decode() for i in picks]
            images = [f["images"][i] for i in picks]
        fill_arr = np.asarray(fill, dtype=np.float32)
        occ, sal, roll = np.zeros((GRID, GRID)), np.zeros(IMAGE_SHAPE), np.zeros((GRID, GRID))
        rollout_note = ""
        patch_mode = lm.input_mode == "patch"
        for img in images:
            probs = ip.image_probabilities(lm.model, img, lm.input_mode)
            target = int(np.argmax(probs))
            occ += np.abs(ip.occlusion_importance(lm.model, img, lm.input_mode, target, fill=fill_arr))
            s = ip.gradient_saliency(lm.model, img, lm.input_mode, target)
            sal += s / max(float(s.sum()), 1e-12)  # each image weighs the same
            if patch_mode:  # where the attention pooling looked (sums to 1 per image)
                roll += ip.bag_attention_map(lm.model, img)
                continue
            try:
                roll += ip.attention_rollout(lm.model, img)
            except ValueError as exc:
                rollout_note = str(exc)
    finally:
        torch.set_num_threads(prev)
    if not images:
        return {"images": [], "note": "no test image to explain"}
    k = len(images)
    maps = {"occlusion": ip.patch_map_to_pixels(occ / k), "saliency": sal / k}
    if patch_mode:
        maps["bag_attention"] = ip.patch_map_to_pixels(roll / k)
    elif not rollout_note:
        maps["attention_rollout"] = ip.patch_map_to_pixels(roll / k)
    aggregates, pngs = {}, {}
    for kind, m in maps.items():
        aggregates[kind] = ip.aggregate_importance(m, spec)
        pngs[kind] = _write_png(
            out / f"{name}_{kind}.png", ip.importance_png(m, spec, title=f"{name} {kind} (mean of {k} test images)")
        )
    note = (
        f"Importance for the predicted class on {k} test images ({', '.join(dates)}): occlusion replaces each "
        "32x32 patch by the training channel means; saliency is |d log p / d pixel|."
    )
    if patch_mode:
        note += " bag_attention is the attention pooling's weight of each patch (where the model looked)."
    if rollout_note:
        note += f" No attention rollout: {rollout_note}"
    return {"images": dates, "aggregates": aggregates, "pngs": pngs, "note": note}


__all__ = ["explain_model"]
