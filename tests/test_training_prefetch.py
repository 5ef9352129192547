"""Batches read into reused buffers, with or without the read-ahead thread: the same batches, the
same bytes, a bounded number of buffers, and the same trained weights as the plain loader."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from finnex_ml.errors import ConfigError
from finnex_ml.training import ArrayDataset, BlockBatchSampler, H5ArrayDataset, TrainConfig, train_model
from finnex_ml.training.data import BatchBuffers, PooledBatches, accepts_batch_buffer

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 64  # small stand-ins for 512x512x3 mega-images
TINY_CNN = {"widths": (4, 8, 8, 8), "token_dim": 8, "attn_heads": 2, "fusion_dim": 16}


def data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = (0.5 + 0.1 * rng.standard_normal((n, SIZE, SIZE, 3))).astype(np.float32)
    x[y == 2, 8:16, 16:24, 1] += 0.2  # a learnable mark, so the weights move
    ret = ((y - 1) * 0.01 + 0.003 * rng.standard_normal(n)).astype(np.float32)
    return x, y, ret


def per_date_set(tmp: Path, x: np.ndarray, y: np.ndarray, ret: np.ndarray) -> Path:
    """A cnn_ready-style set: one file per image, a virtual ``images`` array over them."""
    layout = h5py.VirtualLayout(shape=x.shape, dtype=np.float32)
    (tmp / "img").mkdir(exist_ok=True)
    for i, im in enumerate(x):
        with h5py.File(tmp / "img" / f"{i:03d}.h5", "w") as f:
            f.create_dataset("image", data=im)
        layout[i] = h5py.VirtualSource(f"img/{i:03d}.h5", "image", shape=im.shape)
    with h5py.File(tmp / "set.h5", "w", libver="latest") as f:
        f.create_virtual_dataset("images", layout, fillvalue=np.nan)
        f.create_dataset("image_labels", data=y[:, None].astype(np.int8))
        f.create_dataset("image_returns", data=ret[:, None])
    return tmp / "set.h5"


KEYS = {"label_h1": ("image_labels", 0), "return_h1": ("image_returns", 0)}


class _Plain:
    """A dataset the trainer cannot hand buffers to: it goes through the DataLoader as before."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitems__(self, positions):
        return self.ds.__getitems__(positions)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ds, name)


@pytest.mark.parametrize("depth", [0, 1, 2])
@pytest.mark.parametrize("source", ["h5", "memory"])
def test_pooled_batches_are_the_datasets_batches_in_bounded_buffers(tmp_path: Path, depth: int, source: str) -> None:
    x, y, ret = data(23, 0)
    ds = (
        H5ArrayDataset(per_date_set(tmp_path, x, y, ret), "images", KEYS)
        if source == "h5"
        else ArrayDataset(x, {"label_h1": y, "return_h1": ret})
    )
    assert accepts_batch_buffer(ds)
    sampler = BlockBatchSampler(len(ds), 5, seed=3)  # 4 batches of 5 and a short one of 3
    # repeats and an unsorted batch take the gather path into the buffer
    batches = [*sampler, [7, 2, 2, 9]]
    buffers = BatchBuffers(depth + 2 if depth else 1, 5)
    seen = 0
    ptrs = set()
    for positions, batch in zip(batches, PooledBatches(ds, batches, buffers, depth), strict=True):
        time.sleep(0.02)  # let the read-ahead thread run ahead: it must not touch this batch's buffer
        want = ds.__getitems__(positions)
        np.testing.assert_array_equal(batch["x"].numpy(), x[positions])
        for k in ("label_h1", "return_h1", "row"):
            assert torch.equal(batch[k], want[k]), k
        ptrs.add(batch["x"].data_ptr())
        seen += 1
    assert seen == len(batches) == 6
    assert buffers.allocations == buffers.count and len(ptrs) <= buffers.count  # memory bounded and reused
    with pytest.raises(ValueError, match="needs 4 buffers"):
        PooledBatches(ds, batches, BatchBuffers(3, 5), 2)
    with pytest.raises(ConfigError, match="C-contiguous"):
        ds.__getitems__([0, 1], out=np.empty((3, SIZE, SIZE, 3), np.float32))


def test_a_read_error_in_the_read_ahead_thread_reaches_the_consumer(tmp_path: Path) -> None:
    x, y, ret = data(6, 1)
    path = per_date_set(tmp_path, x, y, ret)
    ds = H5ArrayDataset(path, "images", KEYS)
    ds.__getitems__([0])  # opens the set and resolves the direct reads
    (tmp_path / "img" / "004.h5").unlink()
    it = iter(PooledBatches(ds, [[0, 1], [2, 3], [4, 5]], BatchBuffers(3, 2), 1))
    next(it), next(it)
    with pytest.raises(Exception, match="004.h5|gone"):
        next(it)


def _history(res) -> list[dict[str, float]]:
    timing = {"epoch_seconds", "samples_per_s", "data_wait_share", "cpu_seconds"}
    return [{k: v for k, v in h.items() if k not in timing} for h in res.history]


@pytest.mark.parametrize("source", ["h5", "memory"])
def test_same_weights_with_and_without_read_ahead_and_as_the_plain_loader(tmp_path: Path, source: str) -> None:
    xt, yt, rt = data(44, 2)
    xv, yv, rv = data(21, 3)
    if source == "h5":
        (tmp_path / "t").mkdir(), (tmp_path / "v").mkdir()
        train = H5ArrayDataset(per_date_set(tmp_path / "t", xt, yt, rt), "images", KEYS)
        val = H5ArrayDataset(per_date_set(tmp_path / "v", xv, yv, rv), "images", KEYS)
    else:
        train = ArrayDataset(xt, {"label_h1": yt, "return_h1": rt})
        val = ArrayDataset(xv, {"label_h1": yv, "return_h1": rv})
    results = {}
    for name, prefetch, wrap in (("plain loader", 0, True), ("buffers", 0, False), ("read-ahead", 2, False)):
        cfg = TrainConfig(
            model="cnn",
            input_mode="image",
            model_overrides=TINY_CNN,
            epochs=3,
            batch_size=8,  # 5 train batches per epoch, validation 16 + 5
            lr=3e-3,
            warmup_epochs=0,
            patience=None,
            seed=4,
            noise_std=0.0,  # the assets' recipe: the batch goes into the model as it was read
            mixup_alpha=0.0,
            prefetch=prefetch,
            device="cpu",
        )
        tr, va = (_Plain(train), _Plain(val)) if wrap else (train, val)
        results[name] = train_model(cfg, tr, va, checkpoint_dir=tmp_path / name.replace(" ", "_"))
    ref = results["plain loader"]
    assert ref.history[-1]["train_loss"] != ref.history[0]["train_loss"]  # it trained
    for name in ("buffers", "read-ahead"):
        res = results[name]
        assert _history(res) == _history(ref), name
        sa, sb = ref.model.state_dict(), res.model.state_dict()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), (name, k)
        np.testing.assert_array_equal(res.val_predictions["probs"], ref.val_predictions["probs"])
