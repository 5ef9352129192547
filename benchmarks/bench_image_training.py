"""Image-mode training throughput of the default layout-aware model, from HDF5 against memory.

    .venv/bin/python benchmarks/bench_image_training.py [--model cnn] [--threads 2] [--repeat 2]
    .venv/bin/python benchmarks/bench_image_training.py --quick [--summary-json]   # a quarter of images

Real mega-images (a planted synthetic quarter through the features, default layout and encoder)
are written, not timed, as per-date image files with a virtual set file over them (the
``cnn_ready`` format), and as one contiguous file. ``train_model`` then runs ``--epochs`` epochs
(the last, warm one is reported) from an in-memory tensor (the baseline: no reading at all), from
the contiguous file, and from the virtual set with and without the read-ahead thread. Each case is
repeated ``--repeat`` times round-robin and its fastest pass printed: samples/s, the share of the
epoch spent waiting for data, and the ratio to the baseline. Files come from the page cache, so
this measures HDF5 and loader overhead, not the disk. Prints only; no assertions on time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from finnex_ml.data.synthetic import PlantedSignal  # noqa: E402
from finnex_ml.models import layout_json  # noqa: E402
from finnex_ml.positive_control import build_control_data  # noqa: E402
from finnex_ml.training import ArrayDataset, H5ArrayDataset, TrainConfig, train_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _summary import emit, row  # noqa: E402


def write_files(tmp: Path, images: np.ndarray, labels: np.ndarray, returns: np.ndarray) -> tuple[Path, Path]:
    n = len(images)
    plain = tmp / "plain.h5"
    with h5py.File(plain, "w") as f:
        f.create_dataset("images", data=images)
        f.create_dataset("image_labels", data=labels[:, None].astype(np.int8))
        f.create_dataset("image_returns", data=returns[:, None].astype(np.float32))
    layout = h5py.VirtualLayout(shape=images.shape, dtype=np.float32)
    for i, img in enumerate(images):
        p = tmp / "images" / f"{i:04d}.h5"
        p.parent.mkdir(exist_ok=True)
        with h5py.File(p, "w") as f:
            f.create_dataset("image", data=img)
        layout[i] = h5py.VirtualSource(os.path.relpath(p, tmp), "image", shape=img.shape)
    vds = tmp / "set.h5"
    with h5py.File(vds, "w", libver="latest") as f:
        f.create_virtual_dataset("images", layout, fillvalue=np.nan)
        f.create_dataset("image_labels", data=labels[:, None].astype(np.int8))
        f.create_dataset("image_returns", data=returns[:, None].astype(np.float32))
    assert n == len(labels)
    return plain, vds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="cnn", choices=["cnn", "vit"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--start", default="2023-04-01", help="first image date")
    ap.add_argument("--quick", action="store_true", help="images from 2023-07-03 only (~60)")
    ap.add_argument("--summary-json", action="store_true", help="also print one SUMMARY {json} line")
    args = ap.parse_args()
    if args.quick:
        args.start = "2023-07-03"
    data = build_control_data(PlantedSignal("level", 1.0), args.start, "2023-09-30")
    n = len(data.dates)
    n_val = n // 5
    train_rows, val_rows = range(0, n - n_val), range(n - n_val, n)
    keys = {"label_h1": ("image_labels", 0), "return_h1": ("image_returns", 0)}
    targets = {"label_h1": data.labels, "return_h1": data.returns.astype(np.float32)}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        plain, vds = write_files(tmp, data.images, data.labels, data.returns)
        x = torch.from_numpy(data.images)
        print(
            f"{n} images ({data.images.nbytes / 2**20:.0f} MiB), batch {args.batch}, layout-aware {args.model} small, "
            f"threads {args.threads}"
        )
        cases = [
            ("in-memory tensor (baseline)", lambda rows: ArrayDataset(x, targets, rows), {"prefetch": 0}),
            ("contiguous file, read-ahead", lambda rows: H5ArrayDataset(plain, "images", keys, indices=rows), {}),
            (
                "per-date files (VDS), no read-ahead",
                lambda rows: H5ArrayDataset(vds, "images", keys, indices=rows),
                {"prefetch": 0},
            ),
            (
                "per-date files (VDS), read-ahead (default)",
                lambda rows: H5ArrayDataset(vds, "images", keys, indices=rows),
                {},
            ),
        ]
        best: dict[str, tuple[float, float, float]] = {}
        for _ in range(args.repeat):
            for label, make, extra in cases:
                cfg = TrainConfig(
                    model=args.model,
                    input_mode="image",
                    epochs=args.epochs,
                    batch_size=args.batch,
                    lr=1e-3,
                    warmup_epochs=0,
                    patience=None,
                    num_threads=args.threads,
                    # the training assets' recipe: pixel noise and mixup cost ~4x here
                    noise_std=0.0,
                    mixup_alpha=0.0,
                    model_overrides={"layout": layout_json(data.spec)},
                    **extra,
                )
                res = train_model(cfg, make(train_rows), make(val_rows), checkpoint_dir=tmp / "ckpt")
                m = res.history[-1]
                if label not in best or m["samples_per_s"] > best[label][0]:
                    best[label] = (m["samples_per_s"], m["data_wait_share"], m["epoch_seconds"])
        base = best[cases[0][0]][0]
        print(f"{'case':46s} {'images/s':>10s} {'data wait':>10s} {'vs baseline':>12s}")
        for label, _, _ in cases:
            sps, wait, _ = best[label]
            print(f"{label:46s} {sps:10.0f} {wait:10.1%} {sps / base:11.2f}x")
    if args.summary_json:
        work = (
            f"1 epoch of {len(train_rows)} mega-images, batch {args.batch}, layout-aware {args.model} small, "
            f"best of {args.repeat}"
        )
        emit(
            [
                row(
                    f"image training: {label}",
                    work,
                    best[label][2],
                    "in-memory tensor (ArrayDataset)",
                    best[cases[0][0]][2],
                    best[label][0] / base,
                    "x of the in-memory baseline's images/s (higher = faster)",
                    data_wait_share=best[label][1],
                )
                for label, _, _ in cases[1:]
            ]
        )


if __name__ == "__main__":
    main()
