"""Patch mode (attention-pooled bags of 256 patches) on the positive control's planted level rule.

Builds the planted world of ``finnex_ml.positive_control`` (one ticker, image dates 2022-2023),
cuts every image into its 256 32x32 patches, trains a patch-mode model (one image = one bag,
gated-attention pooling) on the chronological train split and reports the test balanced
accuracy beside the oracle and the majority class. The model gets the images' layout spec, as
the training assets hand it over in patch mode (its patch stem reads each patch's layout cells);
``--pixels`` trains the pixel stem instead. The recipe is main's image recipe (lr 5e-4, weight
decay 1e-4, 1 warm-up epoch, patience 6, no noise or mixup, label smoothing 0.1, fixed task
weights 1 / 0.1, 32 images a batch).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/mil_control.py [--model cnn] [--epochs 30] [--case level:1.0]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from finnex_ml.data.synthetic import PlantedSignal
from finnex_ml.evaluation.interpret import image_outputs
from finnex_ml.evaluation.metrics import balanced_accuracy
from finnex_ml.models import layout_json
from finnex_ml.patches import extract_patches
from finnex_ml.positive_control import build_control_data, split_dates
from finnex_ml.training import ArrayDataset, TrainConfig, train_model

SIZES = {"tiny": {"widths": (8, 16, 16, 16), "token_dim": 16, "attn_heads": 2, "fusion_dim": 32}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", default="level:1.0")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--overrides", default="none", help="'tiny' (a narrow pixel CNN for 2 CPU cores) or 'none'")
    parser.add_argument("--pixels", action="store_true", help="no layout: the pixel patch stem")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--patience", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    form, strength = args.case.split(":")
    plant = None if form == "none" else PlantedSignal(form, float(strength))
    data = build_control_data(plant, "2022-01-01", "2023-12-31")
    split = split_dates(len(data.dates), data.horizon)
    patches = np.concatenate([extract_patches(img) for img in data.images])  # [n * 256, 32, 32, 3]
    h = data.horizon
    targets = {
        f"label_h{h}": np.repeat(data.labels, 256),
        f"return_h{h}": np.repeat(data.returns, 256).astype(np.float32),
    }

    def rows(images: np.ndarray) -> np.ndarray:
        return (images[:, None] * 256 + np.arange(256)).reshape(-1)

    train = ArrayDataset(patches, targets, indices=rows(split.train), patches_per_image=256)
    val = ArrayDataset(patches, targets, indices=rows(split.val), patches_per_image=256)
    cfg = TrainConfig(
        model=args.model,
        input_mode="patch",
        horizons=(h,),
        class_targets=(f"label_h{h}",),
        reg_targets=(f"return_h{h}",),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=1e-4,
        warmup_epochs=1,
        patience=args.patience,
        seed=args.seed,
        noise_std=0.0,
        mixup_alpha=0.0,
        label_smoothing=0.1,
        loss_weighting="fixed",
        fixed_weights=(1.0, 0.1),
        num_threads=1,
        model_overrides={
            **SIZES.get(args.overrides, {}),
            **({} if args.pixels else {"layout": layout_json(data.spec)}),
        },
    )
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        res = train_model(cfg, train, val, checkpoint_dir=tmp)
    minutes = (time.perf_counter() - t0) / 60
    probs, _ = image_outputs(res.model.cpu().eval(), data.images[split.test], "patch", batch_size=1024)
    pred = probs[:, 0].argmax(-1)
    y = data.labels[split.test]
    majority = int(np.bincount(data.labels[split.train], minlength=3).argmax())
    oracle = data.oracle[split.test] if plant is not None else np.full(len(y), majority)
    print("history val_accuracy", [round(r["val_accuracy"], 3) for r in res.history], "best epoch", res.best_epoch)
    stem = "pixels" if args.pixels else "layout cells"
    print(
        f"| {args.case} | {args.model} ({stem}, {args.overrides}) | {len(split.train)} / {len(y)} | "
        f"{res.epochs_run} (best {res.best_epoch}) | "
        f"{balanced_accuracy(y, pred):.3f} | {balanced_accuracy(y, oracle):.3f} | "
        f"{balanced_accuracy(y, np.full(len(y), majority)):.3f} | {np.bincount(pred, minlength=3).max() / len(y):.2f} | "
        f"{minutes:.1f} |",
        flush=True,
    )


if __name__ == "__main__":
    main()
