"""A layout-aware model trains from its images' cells, computed in one pass (CellDataset): the
same training as reading every image every step, the images read once per seed ensemble, and
the fallback to images where the cells would not be the same training."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from finnex_ml.encoding.encoder import encode
from finnex_ml.encoding.layout import build_layout
from finnex_ml.models import layout_json
from finnex_ml.training import ArrayDataset, TrainConfig, train_model
from finnex_ml.training.data import CellDataset
from finnex_ml.training.ensemble import train_ensemble

pytestmark = pytest.mark.usefixtures("one_thread")

N, TRAIN = 36, 28


class CountingDataset(ArrayDataset):
    """Counts the images it hands out."""

    reads = 0

    def __getitems__(self, positions, out=None):
        self.reads += len(positions)
        return super().__getitems__(positions, out)


def planted() -> tuple[np.ndarray, dict[str, np.ndarray], str]:
    names = ["macro__control_a", "macro__control_b", "macro__cpi", "price__close"]
    spec = build_layout(names)
    rng = np.random.default_rng(0)
    windows = rng.random((N, spec.sessions, spec.n_features), dtype=np.float32)
    v = windows[:, -1, spec.features.index("macro__control_a")]
    y = np.digitize(v, [1 / 3, 2 / 3])
    x = np.stack([encode(w, spec) for w in windows])
    return x, {"label_h1": y, "return_h1": (0.02 * (v - 0.5)).astype(np.float32)}, layout_json(spec)


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, dict[str, np.ndarray], str]:
    return planted()


def config(layout: str, **kw) -> TrainConfig:
    base = dict(
        model="cnn",
        input_mode="image",
        model_overrides={"layout": layout, "fusion_dim": 16},
        epochs=3,
        batch_size=8,
        lr=3e-3,
        warmup_epochs=0,
        patience=None,
        seed=0,
        noise_std=0.0,
        mixup_alpha=0.2,  # linear, like the cells: applied to cells it is the same augmentation
    )
    return TrainConfig(**{**base, **kw})


def datasets(x, targets) -> tuple[CountingDataset, CountingDataset]:
    # val on rows 28..35 of the same array: the predictions must name those rows, not 0..7
    return CountingDataset(x, targets, range(TRAIN)), CountingDataset(x, targets, range(TRAIN, N))


def test_training_from_cells_is_training_from_images(tmp_path: Path, images) -> None:
    x, targets, layout = images
    cfg = config(layout)
    tr, va = datasets(x, targets)
    from_cells = train_model(cfg, tr, va, checkpoint_dir=tmp_path / "cells")
    # one pass over every image, then none
    assert (tr.reads, va.reads) == (TRAIN, N - TRAIN)
    tr2, va2 = datasets(x, targets)
    from_images = train_model(replace(cfg, cell_cache_mb=0), tr2, va2, checkpoint_dir=tmp_path / "images")
    assert tr2.reads == 3 * (TRAIN // 8) * 8  # every epoch's batches (the short last one dropped)
    a, b = from_cells.val_predictions, from_images.val_predictions
    np.testing.assert_array_equal(a["row"], np.arange(TRAIN, N))
    np.testing.assert_array_equal(a["row"], b["row"])
    np.testing.assert_array_equal(a["class_target"], b["class_target"])
    # the same steps on the same means: equal up to float rounding of the two summation orders
    np.testing.assert_allclose(a["probs"], b["probs"], atol=2e-4)
    for ha, hb in zip(from_cells.history, from_images.history):
        assert ha["train_loss"] == pytest.approx(hb["train_loss"], rel=1e-4)
    # the weights moved: the comparison is not between two untrained models
    assert from_cells.history[-1]["train_cls_loss"] < from_cells.history[0]["train_cls_loss"]
    # and the trained model still reads images: its forward from pixels gives the cells' answer
    model = from_cells.model.eval()
    with torch.no_grad():
        px = torch.from_numpy(x[TRAIN:]).permute(0, 3, 1, 2)
        via_pixels = model(px)["classification"]
        via_cells = model.forward_cells(model.cell_stem(px))["classification"]
    torch.testing.assert_close(via_pixels, via_cells)


def test_a_seed_ensemble_reads_the_images_once(tmp_path: Path, images) -> None:
    x, targets, layout = images
    tr, va = datasets(x, targets)
    train_ensemble(config(layout, epochs=2), tr, va, seeds=(0, 1, 2), checkpoint_dir=tmp_path)
    assert (tr.reads, va.reads) == (TRAIN, N - TRAIN)


@pytest.mark.parametrize(
    "change",
    [
        {"noise_std": 0.02},  # pixel noise: its cells would be another draw
        {"cell_cache_mb": 0.01},  # 36 images x 4 features x 56 sessions x 4 bytes = 32 KB
    ],
)
def test_images_every_step_where_cells_are_not_the_same_or_do_not_fit(tmp_path: Path, images, change) -> None:
    x, targets, layout = images
    tr, va = datasets(x, targets)
    cfg = config(layout, epochs=2, **change)
    train_model(cfg, tr, va, checkpoint_dir=tmp_path)
    assert tr.reads == 2 * (TRAIN // 8) * 8


def test_cell_dataset_batches_are_the_stems_cells_of_the_sources_rows(images) -> None:
    x, targets, layout = images
    from finnex_ml.models import create_model

    stem = create_model("cnn", "small", horizons=(1,), layout=layout).cell_stem
    src = ArrayDataset(x, targets, range(5, 17))
    cells = CellDataset(src, stem, torch.device("cpu"), batch_size=5)
    batch = cells.__getitems__([0, 7, 3])
    np.testing.assert_array_equal(batch["row"].numpy(), [5, 12, 8])
    np.testing.assert_array_equal(batch["label_h1"].numpy(), targets["label_h1"][[5, 12, 8]])
    with torch.no_grad():
        want = stem(torch.from_numpy(x[[5, 12, 8]]).permute(0, 3, 1, 2))
    torch.testing.assert_close(batch["x"], want)
    assert tuple(cells.sample_shape) == (stem.n_features, stem.sessions)


def test_an_ensemble_computes_its_members_cells_once(images) -> None:
    """SeedEnsemble runs the shared layout stem once; every member's output is what it gives alone."""
    from finnex_ml.models import SeedEnsemble, create_model

    x, _, layout = images
    members = []
    for seed, name in ((0, "cnn"), (1, "cnn"), (2, "vit")):
        torch.manual_seed(seed)
        members.append(create_model(name, "small", horizons=(1,), layout=layout).eval())
    ens = SeedEnsemble(members).eval()
    calls = []
    for m in members:
        m.cell_stem.register_forward_hook(lambda *a: calls.append(1))
    px = torch.from_numpy(x[:6]).permute(0, 3, 1, 2)
    with torch.no_grad():
        out = ens(px)
        assert len(calls) == 1
        alone = [m(px) for m in members]
    assert len(calls) == 4  # each member alone computes its own
    probs = torch.stack([o["classification_by_horizon"].softmax(-1) for o in alone]).mean(0)
    torch.testing.assert_close(out["classification_by_horizon"], probs.clamp_min(1e-12).log(), rtol=0, atol=0)
    reg = torch.stack([o["regression_by_horizon"] for o in alone]).mean(0)
    torch.testing.assert_close(out["regression_by_horizon"], reg, rtol=0, atol=0)
