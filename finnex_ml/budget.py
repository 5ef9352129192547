"""Compute budgets for training and evaluation, and what one costs before it starts.

``standard`` is every asset's default config. ``quick`` is for a first look (one seed, few
epochs, a few hundred resamples: intervals and p-values are coarse); ``thorough`` is for a
result to report (more seeds and epochs, 5,000 resamples, longer walk-forward retraining).
The cost printed before training is measured, not guessed: a few training steps of the model
on this machine (from cells for a layout-aware model, as the trainer takes them), times the
number of image passes the budget allows, plus reading the images.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from finnex_ml.encoding.layout import LayoutSpec


@dataclass(frozen=True)
class Budget:
    name: str
    epochs: int  # at most: early stopping can end a member sooner
    seeds: tuple[int, ...]  # one ensemble member per seed
    n_boot: int  # bootstrap resamples per interval
    n_permutations: int  # permutations per test
    walk_forward_epochs: int  # epochs (at most) to retrain the network per walk-forward fold (0 skips)
    permuted_label_epochs: int  # single stock: epochs of the permuted-label control (0 skips)
    refit_permutations: int  # single stock: refits of each tabular baseline on permuted labels
    leak_permutations: int  # single stock: permutations of the leak scan's null
    permuted_label_runs: int  # single stock: permutations of the network's permuted-label control


# per mode: the single-stock pipeline (cnn_model + model_evaluation) and universe mode
# (universe_model + universe_evaluation) have different defaults for epochs and seeds
BUDGETS: dict[str, dict[str, Budget]] = {
    "quick": {
        # the walk-forward retrains the network per fold on the full budget: its epochs and seeds
        "single": Budget("quick", 4, (0,), 300, 300, 4, 2, 20, 100, 1),
        "universe": Budget("quick", 2, (0,), 300, 300, 1, 0, 0, 0, 0),
    },
    "standard": {
        "single": Budget("standard", 20, (0, 1, 2), 1000, 1000, 20, 4, 100, 200, 2),
        "universe": Budget("standard", 5, (0,), 1000, 1000, 2, 0, 0, 0, 0),
    },
    "thorough": {
        "single": Budget("thorough", 40, (0, 1, 2, 3, 4), 5000, 5000, 40, 10, 500, 1000, 5),
        "universe": Budget("thorough", 20, (0, 1, 2), 5000, 5000, 5, 0, 0, 0, 0),
    },
}
BUDGET_NAMES = tuple(BUDGETS)


def budget(name: str, mode: str) -> Budget:
    if name not in BUDGETS:
        raise ValueError(f"unknown budget {name!r}; use one of {', '.join(BUDGET_NAMES)}")
    return BUDGETS[name][mode]


def run_config(b: Budget, mode: str) -> dict[str, dict]:
    """The ``ops`` run config that applies ``b`` to the training and evaluation assets."""
    train = {"epochs": b.epochs, "seeds": list(b.seeds)}
    if mode == "universe":
        walk = {"walk_forward": b.walk_forward_epochs > 0, "epochs": max(1, b.walk_forward_epochs)}
        return {
            "universe_model": {"config": train},
            "universe_walk_forward": {"config": walk},
            "universe_evaluation": {"config": {"n_boot": b.n_boot, "n_perm": b.n_permutations}},
        }
    evaluation = {
        "n_boot": b.n_boot,
        "n_permutations": b.n_permutations,
        "walk_forward_epochs": b.walk_forward_epochs,
        "walk_forward_seeds": list(b.seeds),
        "permuted_label_epochs": b.permuted_label_epochs,
        "permuted_label_runs": b.permuted_label_runs,
        "refit_permutations": b.refit_permutations,
        "leak_permutations": b.leak_permutations,
    }
    # the network retraining steps share model_evaluation's config, so their caches are the ones it reads
    return {
        "cnn_model": {"config": train},
        **{k: {"config": evaluation} for k in ("walk_forward_networks", "permuted_label_control", "model_evaluation")},
    }


@dataclass(frozen=True)
class StepCost:
    """Measured wall seconds per image of training a model on a layout, on this machine."""

    per_image: float  # one training pass (forward, backward, step) from the image's pixels
    # a layout-aware model trains from its images' cells (training.data.CellDataset) when they
    # fit in TrainConfig.cell_cache_mb: its pass from cells, the one-off cell computation per
    # image and run, and one image's cells in bytes (all 0 for a model that reads pixels)
    from_cells_per_image: float = 0.0
    cells_per_image: float = 0.0
    cell_bytes: int = 0

    def trains_from_cells(self, images: int) -> bool:
        from finnex_ml.training.config import TrainConfig

        return self.cell_bytes > 0 and images * self.cell_bytes <= TrainConfig.cell_cache_mb * 2**20


def seconds_per_image(spec: LayoutSpec, model: str = "cnn", batch_size: int = 32, steps: int = 2) -> StepCost:
    """Measured cost of training ``model`` on ``spec``'s geometry with the current torch threads:
    a step from pixels and, for a layout-aware model, a step from cells and the cell pass."""
    import torch

    from finnex_ml.models import create_model

    torch.manual_seed(0)
    net = create_model(model, "small", horizons=(1,), layout=spec)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    height, width, channels = spec.shape
    # stored NHWC, seen as NCHW: the trainer's view of a batch (the stem's fast path)
    x = torch.randn(batch_size, height, width, channels).permute(0, 3, 1, 2)

    def per_image(forward, inputs: torch.Tensor) -> float:
        def step() -> None:
            out = forward(inputs)
            loss = out["classification"].logsumexp(-1).mean() + out["regression"].square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

        step()  # the first step allocates; not timed
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - t0) / (steps * batch_size)

    pixels = per_image(net, x)
    stem = net.cell_stem
    if stem is None:
        return StepCost(pixels)
    with torch.no_grad():
        stem(x)  # the first call allocates; not timed
        t0 = time.perf_counter()
        cells = stem(x)
        cells_per_image = (time.perf_counter() - t0) / batch_size
    return StepCost(pixels, per_image(net.forward_cells, cells), cells_per_image, cells[0].numel() * 4)


def read_seconds_per_image(image_root: str | Path, max_files: int = 4) -> float:
    """Measured wall seconds to read one stored image: every image array (``[..., H, W, 3]``
    floats) of up to ``max_files`` image files under ``image_root`` (the per-date mega-images, or
    the universe's cross-section files), read through HDF5 as a whole. 0.0 when there is none.

    Files just written come from the page cache: a cold disk reads slower. The trainer's read
    of an uncompressed image is faster than HDF5's (``H5ArrayDataset`` reads it raw), so this
    errs on the high side, as a budget should."""
    import h5py
    import numpy as np

    def image_arrays(f: h5py.File) -> list[h5py.Dataset]:
        found: list[h5py.Dataset] = []

        def visit(_: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset) and obj.ndim >= 3 and obj.shape[-1] == 3:
                if min(obj.shape[-3:-1]) >= 32 and np.issubdtype(obj.dtype, np.floating):
                    found.append(obj)

        f.visititems(visit)
        return found

    files = sorted(p for p in Path(image_root).rglob("*.h5") if not p.name.startswith("."))[:max_files]
    seconds, images = 0.0, 0
    for path in files:
        t0 = time.perf_counter()
        with h5py.File(path, "r") as f:
            for ds in image_arrays(f):
                ds[...]
                images += int(np.prod(ds.shape[:-3], dtype=np.int64))
        seconds += time.perf_counter() - t0
    return seconds / images if images else 0.0


@dataclass(frozen=True)
class TrainingCost:
    budget: str
    passes: int  # image passes at most: epochs x seeds x (train + val images)
    seconds: float  # at most, at the measured rates: compute plus reading
    per_image: float  # compute seconds per training image
    read_per_image: float = 0.0  # seconds to read one stored image
    cells_per_image: float = 0.0  # > 0: the images are read once and trained from their cells

    def describe(self, n_train: int, n_val: int, b: Budget) -> str:
        minutes = self.seconds / 60
        reads = (
            f"{self.read_per_image * 1000:.1f} ms to read an image and {self.cells_per_image * 1000:.1f} ms for its "
            "cells, once per image (the ensemble trains from the cells)"
            if self.cells_per_image
            else f"{self.read_per_image * 1000:.1f} ms to read an image, every pass"
        )
        return (
            f"budget {self.budget}: up to {b.epochs} epochs x {len(b.seeds)} seed(s) over {n_train:,} training "
            f"and {n_val:,} validation images = {self.passes:,} image passes; measured {self.per_image * 1000:.1f} ms "
            f"of compute per training image and {reads} here, so "
            f"~{minutes:.1f} min of compute and reading if every epoch runs (early stopping can end sooner; each "
            f"epoch's checkpoint and logging, and other load on the machine, add to it); evaluation: "
            f"{b.n_boot:,} bootstrap resamples, {b.n_permutations:,} permutations"
            + (
                f"; the pooled walk-forward retrains the network per fold with the same epochs and seeds (a fold "
                f"costs about the training above times its share of the dates; cached folds cost nothing), and "
                f"the permuted-label control trains {b.permuted_label_runs} network(s) for {b.permuted_label_epochs} "
                "epoch(s)"
                # single stock only (universe budgets have no permuted-label control; the CLI
                # announces the universe walk-forward's folds and cost itself)
                if b.walk_forward_epochs and b.permuted_label_runs
                else ""
            )
        )

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class WalkForwardCost:
    folds: int
    fit_images: int  # over all folds, one epoch
    val_images: int
    test_images: int
    seconds: float  # at most: every epoch of every fold runs, plus predicting each block
    per_image: float

    def describe(self, b: Budget) -> str:
        return (
            f"walk-forward: {self.folds} yearly folds, up to {b.walk_forward_epochs} epoch(s) x {len(b.seeds)} seed(s) "
            f"over {self.fit_images:,} fitted and {self.val_images:,} inner-validation images in all, then "
            f"{self.test_images:,} test images predicted = ~{self.seconds / 60:.1f} min of compute and reading at "
            f"the measured rates (finished folds are cached: a re-run skips them)"
        )


def walk_forward_cost(
    b: Budget, folds: list[tuple[int, int, int]], step: StepCost, read_per_image: float = 0.0
) -> WalkForwardCost:
    """Upper bound for ``folds`` of (fitted, validation, test) images: every epoch of every seed
    trains the fitted images and validates; each seed then predicts the test block once (the
    fold keeps only the test block's predictions). A forward pass is counted as half a training
    pass: measured 4.7 against 8.8 ms per image for the CNN on this machine (one thread), where
    the test block's forward passes dominate. A model trained from cells reads each fitted and
    validation image once per fold and computes its cells; otherwise every training pass reads its
    image (``read_per_image``, see :func:`read_seconds_per_image`). The test block is predicted
    from its images."""
    fit, val, test = (sum(f[i] for f in folds) for i in range(3))
    epochs, seeds = b.walk_forward_epochs, len(b.seeds)
    # pixels: test blocks are predicted from images; the fold's training from cells if they fit
    cells = bool(folds) and all(step.trains_from_cells(f[0] + f[1]) for f in folds)
    per = step.from_cells_per_image if cells else step.per_image
    if cells:
        seconds = epochs * seeds * (fit + val / 2) * per + (fit + val) * (read_per_image + step.cells_per_image)
    else:
        seconds = epochs * seeds * (fit + val / 2) * per + epochs * seeds * (fit + val) * read_per_image
    seconds += seeds * test * (step.per_image / 2 + read_per_image)
    return WalkForwardCost(len(folds), fit, val, test, seconds, per)


def training_cost(b: Budget, n_train: int, n_val: int, step: StepCost, read_per_image: float = 0.0) -> TrainingCost:
    """An upper bound: every epoch of every seed runs; a validation pass costs about a third of
    a training pass (forward only); a model trained from cells reads every image once and
    computes its cells, another reads its image every pass, training or validation."""
    passes = b.epochs * len(b.seeds) * (n_train + n_val)
    if step.trains_from_cells(n_train + n_val):
        seconds = b.epochs * len(b.seeds) * (n_train + n_val / 3) * step.from_cells_per_image
        seconds += (n_train + n_val) * (read_per_image + step.cells_per_image)
        return TrainingCost(b.name, passes, seconds, step.from_cells_per_image, read_per_image, step.cells_per_image)
    seconds = b.epochs * len(b.seeds) * (n_train + n_val / 3) * step.per_image + passes * read_per_image
    return TrainingCost(b.name, passes, seconds, step.per_image, read_per_image)
