"""Image batches read straight from contiguous files (``os.preadv``) equal HDF5's own reads,
and every case the fast path cannot serve falls back to HDF5 or fails with a clear error."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from finnex_ml.errors import DataInputError
from finnex_ml.training import ArrayDataset, H5ArrayDataset
from finnex_ml.training.data import _all_finite

SHAPE = (8, 6, 3)  # small stand-ins for 512x512x3 mega-images


def images(n: int) -> np.ndarray:
    # every pixel distinct, so a row or byte offset that is off by one shows
    return np.arange(n * int(np.prod(SHAPE)), dtype=np.float32).reshape(n, *SHAPE) / 7.0


def per_date_set(tmp: Path, x: np.ndarray, compression: str | None = None, per_file: int = 1) -> Path:
    """A cnn_ready-style set: ``per_file`` images per source file, a virtual ``images`` array over them."""
    n = len(x)
    layout = h5py.VirtualLayout(shape=x.shape, dtype=np.float32)
    (tmp / "img").mkdir(exist_ok=True)
    for i in range(0, n, per_file):
        part = x[i : i + per_file] if per_file > 1 else x[i]
        src = tmp / "img" / f"{i:03d}.h5"
        with h5py.File(src, "w") as f:
            f.create_dataset("image", data=part, compression=compression)
        layout[i : i + len(x[i : i + per_file])] = h5py.VirtualSource(f"img/{src.name}", "image", shape=part.shape)
    path = tmp / "set.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f.create_virtual_dataset("images", layout, fillvalue=np.nan)
        f.create_dataset("image_labels", data=(np.arange(n) % 3)[:, None].astype(np.int8))
    return path


KEYS = {"label_h1": ("image_labels", 0)}
POSITIONS = [9, 2, 3, 4, 3, 0, 11]  # unsorted, a duplicate, runs across source files


@pytest.mark.parametrize("per_file", [1, 3])
def test_virtual_set_over_contiguous_files_reads_directly_and_exactly(tmp_path: Path, per_file: int) -> None:
    x = images(12)
    ds = H5ArrayDataset(per_date_set(tmp_path, x, per_file=per_file), "images", KEYS, indices=np.arange(12))
    b = ds.__getitems__(POSITIONS)
    assert ds._direct is not None and len(ds._direct) == 12 // per_file
    np.testing.assert_array_equal(b["x"].numpy(), x[POSITIONS])
    assert b["label_h1"].tolist() == [p % 3 for p in POSITIONS]
    # unique rows 0, 2-4, 9, 11: runs [0], [2..4], [9], [11], each split where a source file ends
    runs = {1: 6, 3: 5}[per_file]
    assert ds.direct_reads == runs and ds.rows_read == 6


def test_compressed_sources_fall_back_to_hdf5_with_the_same_bytes(tmp_path: Path) -> None:
    x = images(6)
    ds = H5ArrayDataset(per_date_set(tmp_path, x, compression="gzip"), "images", KEYS)
    b = ds.__getitems__([5, 1, 2])
    assert ds._direct is None and ds.direct_reads == 0 and ds.read_calls > 0
    np.testing.assert_array_equal(b["x"].numpy(), x[[5, 1, 2]])


def test_plain_contiguous_file_reads_directly_chunked_does_not(tmp_path: Path) -> None:
    x = images(10)
    for chunks, direct in ((None, True), ((2, *SHAPE), False)):
        path = tmp_path / f"plain_{direct}.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("images", data=x, chunks=chunks)
            f.create_dataset("image_labels", data=np.zeros((10, 1), np.int8))
        ds = H5ArrayDataset(path, "images", KEYS)
        np.testing.assert_array_equal(ds.__getitems__([7, 8, 1])["x"].numpy(), x[[7, 8, 1]])
        assert (ds._direct is not None) == direct and (ds.direct_reads == 2) == direct


def test_missing_source_still_reads_as_nan_and_raises(tmp_path: Path) -> None:
    path = per_date_set(tmp_path, images(6))
    os.remove(tmp_path / "img" / "004.h5")
    ds = H5ArrayDataset(path, "images", KEYS)
    with pytest.raises(DataInputError, match=r"rows \[4\]"):
        ds.__getitems__([3, 4])
    assert ds._direct is None  # the gap sends every read through HDF5


def test_a_source_changed_or_removed_after_opening_is_a_clear_error(tmp_path: Path) -> None:
    path = per_date_set(tmp_path, images(6))
    ds = H5ArrayDataset(path, "images", KEYS)
    ds.__getitems__([0])  # resolves the sources and their byte offsets
    src = tmp_path / "img" / "002.h5"
    os.truncate(src, ds._direct[2][3] + 10)  # cut inside the image's bytes: never read blindly
    with pytest.raises(DataInputError, match="replaced after this dataset opened it") as err:
        ds.__getitems__([1, 2])
    assert err.value.file == str(src) and err.value.row == 2
    os.remove(tmp_path / "img" / "003.h5")
    with pytest.raises(DataInputError, match="is gone") as err:
        ds.__getitems__([3])
    assert err.value.row == 3


def test_nan_in_a_directly_read_source_names_row_and_file_and_is_checked_once(tmp_path: Path) -> None:
    x = images(6)
    x[4, 1, 2, 0] = np.nan
    ds = H5ArrayDataset(per_date_set(tmp_path, x), "images", KEYS)
    with pytest.raises(DataInputError, match=r"rows \[4\]") as err:
        ds.__getitems__([1, 4, 5])
    assert err.value.file == str(tmp_path / "img" / "004.h5")
    ds.__getitems__([1, 5])
    assert ds._checked.tolist() == [False, True, False, False, False, True]  # 4 failed, 5 now read
    unchecked = H5ArrayDataset(ds.path, "images", KEYS, check_finite=False)
    assert np.isnan(unchecked.__getitems__([4])["x"].numpy()).sum() == 1  # what check_finite=False asks for


def test_all_finite_sees_nan_and_inf_and_tolerates_an_overflowing_sum() -> None:
    x = np.ones((4, 5), np.float32)
    assert _all_finite(x)
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[2, 3] = bad
        assert not _all_finite(y)
    huge = np.full((4, 5), 3e38, np.float32)  # finite values whose float32 sum overflows
    assert _all_finite(huge)
    assert _all_finite(np.zeros((0, 3), np.float32)) and _all_finite(np.arange(4))


def test_array_dataset_batches_are_fresh_copies() -> None:
    x = images(5)
    ds = ArrayDataset(x, {"label_h1": np.arange(5) % 3})
    a, b = ds.__getitems__([4, 0]), ds.__getitems__([1, 2])
    np.testing.assert_array_equal(a["x"].numpy(), x[[4, 0]])
    np.testing.assert_array_equal(b["x"].numpy(), x[[1, 2]])
    a["x"].zero_()  # a batch is the caller's: changing it leaves the dataset alone
    assert torch.equal(ds.__getitems__([4])["x"][0], torch.from_numpy(x[4]))


def test_pixel_buffers_are_reused_only_once_released(tmp_path: Path) -> None:
    """Issue 18: a batch's pixel buffer is handed out again only when no tensor (or view, or
    prefetched batch) references it; a held batch keeps its values while later batches are read."""
    x = images(12)
    ds = H5ArrayDataset(per_date_set(tmp_path, x), "images", KEYS, indices=np.arange(12))
    held = ds.__getitems__([0, 1, 2])
    view = ds.__getitems__([3, 4, 5])["x"].permute(0, 3, 1, 2)  # only a view of the second batch is kept
    for start in (6, 9, 6, 9):
        b = ds.__getitems__([start, start + 1, start + 2])
        np.testing.assert_array_equal(b["x"].numpy(), x[start : start + 3])
        del b  # released: its buffer may serve the next read
    np.testing.assert_array_equal(held["x"].numpy(), x[:3])
    np.testing.assert_array_equal(view.permute(0, 2, 3, 1).numpy(), x[3:6])
    # the first two buffers were never handed out again; the third served the last three reads
    assert ds._buffers.reused == 3 and len(ds._buffers._bufs) == 3
    del held, view
    ds.__getitems__([0, 1, 2])
    assert ds._buffers.reused == 4


def test_read_ahead_thread_batches_match_the_file_with_buffer_reuse(tmp_path: Path) -> None:
    from finnex_ml.training.data import _ThreadPrefetcher

    x = images(12)
    ds = H5ArrayDataset(per_date_set(tmp_path, x), "images", KEYS, indices=np.arange(12))
    order = [[i, (i + 1) % 12] for i in range(12)] * 3
    got = []
    for b in _ThreadPrefetcher((ds.__getitems__(p) for p in order), 2):
        got.append(b["x"].numpy().copy())  # the consumer copies, then lets the batch go
    for p, g in zip(order, got, strict=True):
        np.testing.assert_array_equal(g, x[p])
    assert ds._buffers.reused > 0
