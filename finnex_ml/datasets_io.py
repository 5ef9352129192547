"""``cnn_ready/`` files: one HDF5 file per set, arrays that point at the stored images and shards.

``{root}/cnn_ready/{train,val,test}.h5`` hold

* ``images``   float32 [n, 512, 512, 3]      virtual dataset -> each date's mega-image file
* ``patches``  float32 [n*256, 32, 32, 3]    virtual dataset -> each date's patch shard
* ``labels``   int8    [n*256, H]  class per patch and horizon (0 Sell, 1 Hold, 2 Buy)
* ``returns``  float32 [n*256, H]  forward return per patch and horizon
* ``image_labels`` int8 [n, H], ``image_returns`` float32 [n, H]: the same per image
* ``patch_image`` int32 [n*256] (row of ``dates``), ``patch_index`` int16 [n*256] (0..255)
* ``dates`` fixed-width ASCII [n]; attributes ``horizons``, ``class_names``, ``set``,
  ``spec_hash``, ``split_hash``.

Why both pixel arrays are virtual: the per-date image files and patch shards already are the
chunked stores (a patch shard is one chunk of 256 patches, the unit a loader reads), so copying
them again would double the disk for no new layout; the only arrays written for real are the
labels, which are tiny and set-specific. Source paths are stored relative to the ``cnn_ready``
folder (HDF5 resolves them against the virtual file's directory), so the data root can be
moved as a whole. A virtual file reads whatever the source files hold *now*: rebuild it
(``dataset_splits``) after re-materialising images or shards. Everything is streamed: writing a
set touches no pixels at all.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import h5py
import numpy as np

from finnex_ml.encoding.store import IMAGE_SHAPE, image_path
from finnex_ml.errors import DataInputError
from finnex_ml.labels import CLASS_NAMES
from finnex_ml.patches import N_PATCHES, PATCHES_SHAPE, shard_path
from finnex_ml.paths import atomic_path


def _rel(src: Path, vds_dir: Path) -> str:
    return os.path.relpath(Path(src).resolve(), vds_dir.resolve())


def write_set_file(
    path: Path | str,
    name: str,
    dates: Sequence[date],
    image_root: Path | str,
    shard_root: Path | str,
    classes: np.ndarray,
    returns: np.ndarray,
    horizons: Sequence[int],
    *,
    spec_hash: str,
    split_hash: str,
) -> Path:
    """Atomically write one set's file (module docstring). ``classes``/``returns`` are per image,
    [n, H]; they are broadcast to the 256 patches of each image."""
    out = Path(path)
    n, H = len(dates), len(horizons)
    classes = np.asarray(classes, dtype=np.int8).reshape(n, H)
    returns = np.asarray(returns, dtype=np.float32).reshape(n, H)
    if n and (classes < 0).any():
        i = int(np.argwhere(classes < 0)[0, 0])
        raise DataInputError(f"set {name}: date {dates[i]} has no label", date=str(dates[i]))
    img_layout = h5py.VirtualLayout(shape=(n, *IMAGE_SHAPE), dtype=np.float32)
    patch_layout = h5py.VirtualLayout(shape=(n * N_PATCHES, *PATCHES_SHAPE[1:]), dtype=np.float32)
    folder = out.parent
    for i, d in enumerate(dates):
        ip, sp = image_path(image_root, d), shard_path(shard_root, d)
        for p, what in ((ip, "mega-image"), (sp, "patch shard")):
            if not p.exists():
                raise DataInputError(f"set {name}: no {what} for {d}", file=str(p), date=d.isoformat())
        img_layout[i] = h5py.VirtualSource(_rel(ip, folder), "image", shape=IMAGE_SHAPE)
        patch_layout[i * N_PATCHES : (i + 1) * N_PATCHES] = h5py.VirtualSource(
            _rel(sp, folder), "patches", shape=PATCHES_SHAPE
        )
    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w", libver="latest") as f:
            # fillvalue NaN: a source file that disappears reads as NaN, never as plausible zeros
            f.create_virtual_dataset("images", img_layout, fillvalue=np.nan)
            f.create_virtual_dataset("patches", patch_layout, fillvalue=np.nan)
            f.create_dataset("labels", data=np.repeat(classes, N_PATCHES, axis=0), track_times=False)
            f.create_dataset("returns", data=np.repeat(returns, N_PATCHES, axis=0), track_times=False)
            f.create_dataset("image_labels", data=classes, track_times=False)
            f.create_dataset("image_returns", data=returns, track_times=False)
            f.create_dataset("patch_image", data=np.repeat(np.arange(n, dtype=np.int32), N_PATCHES), track_times=False)
            f.create_dataset("patch_index", data=np.tile(np.arange(N_PATCHES, dtype=np.int16), n), track_times=False)
            f.create_dataset("dates", data=np.array([d.isoformat() for d in dates], dtype="S10"), track_times=False)
            f.attrs.update(
                {
                    "set": name,
                    "horizons": json.dumps(list(horizons)),
                    "class_names": json.dumps(list(CLASS_NAMES)),
                    "spec_hash": spec_hash,
                    "split_hash": split_hash,
                }
            )
    return out


def set_horizons(path: Path | str) -> list[int]:
    """The label horizons stored in a set file, in column order."""
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["horizons"])


def set_dataset(path: Path | str, input_mode: str, horizons: Sequence[int]):
    """A :class:`finnex_ml.training.H5ArrayDataset` over one set file with the batch names the
    trainer expects: ``label_h{h}`` / ``return_h{h}`` per horizon; patches (with their
    image grouping) in ``"patch"`` mode, whole images in ``"image"`` mode."""
    from finnex_ml.training import H5ArrayDataset

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: materialise dataset_splits first")
    stored = set_horizons(path)
    missing = [h for h in horizons if h not in stored]
    if missing:
        raise DataInputError(
            f"horizons {missing} are not in the labels of {path.name} ({stored}); re-materialise labels", file=str(path)
        )
    patch = input_mode == "patch"
    lab, ret = ("labels", "returns") if patch else ("image_labels", "image_returns")
    keys = {}
    for h in horizons:
        col = stored.index(h)
        keys[f"label_h{h}"], keys[f"return_h{h}"] = (lab, col), (ret, col)
    kwargs = {"patches_per_image": N_PATCHES} if patch else {}
    return H5ArrayDataset(path, "patches" if patch else "images", keys, **kwargs)


__all__ = ["set_dataset", "set_horizons", "write_set_file"]
