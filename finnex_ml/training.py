"""Training of the FinNeX models: lazy HDF5 datasets, block-shuffled loading, a seeded,
resumable trainer (AdamW, warm-up + cosine, clipping, early stopping, AMP on CUDA).

Pure library (torch, numpy, h5py; scikit-learn for the confusion matrix); never imports dagster.

Data
----
A dataset yields batches as dicts: ``"x"`` (float32 ``[b, H, W, 3]``, the stores' layout),
the named targets (int64 class labels 0 Sell / 1 Hold / 2 Buy, float32 returns), ``"row"`` (the
row in the file) and, for patch datasets built with ``patches_per_image``, ``"patch_pos"`` (the
patch's index in its image's 16×16 grid, ``row % 256``). :class:`H5ArrayDataset` reads batches
from HDF5 lazily (contiguous runs with ``read_direct``, never the whole dataset);
:class:`ArrayDataset` is the in-memory equivalent. :class:`BlockBatchSampler` shuffles *runs* of
consecutive rows rather than single rows, so a batch is a few contiguous reads instead of a
scattered fancy index.

Augmentation (why no flips)
---------------------------
Only Gaussian noise and mixup. The spec's random flips are not used: on this layout the columns
are time (oldest session left, newest right), so a horizontal flip reverses time and shows the
model a future it must not see; the rows are the macro / behavioural / fundamental sections and
the feature bands inside them, so a vertical flip moves features into another section's place.
Colour jitter mixes channel scales that carry meaning (each channel is a modality). Noise
(std ``noise_std``) leaves the layout intact; mixup blends two samples pixel-wise and blends their
targets the same way (soft class targets, blended returns).

Determinism and resume
----------------------
Shuffling and augmentation draw from generators seeded by ``(seed, epoch)``, so epoch ``k``
sees the same batches and noise whether or not the run was restarted before it. Dropout uses the
global torch RNG, whose state (with numpy's, Python's and CUDA's) is saved in every checkpoint.
``last.pt`` is written after each epoch (model, loss parameters, optimizer, scheduler, AMP scaler,
RNG states, epoch, best metric, early-stopping counter, history); resuming from it continues
bit-for-bit on CPU. ``torch.use_deterministic_algorithms(True)`` is on during training (warn-only
on CUDA, where a few kernels have no deterministic version) and restored afterwards.

Monitoring
----------
Early stopping and the best checkpoint follow ``monitor`` on validation, by default
``val_loss`` = the *unweighted* sum of the task losses (CE + Huber on standardised returns): the
learned uncertainty weights change during training, so the weighted total is not comparable
across epochs.
"""

from __future__ import annotations

import math
import os
import queue
import random
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence

import h5py
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from finnex_ml.errors import ConfigError, DataInputError
from finnex_ml.losses import MultiTaskLoss
from finnex_ml.models import (
    BUY, CLASS_NAMES, GRID, HOLD, NUM_CLASSES, PATCH_SIZE, SELL, create_model, model_from_spec, model_spec,
)
from finnex_ml.paths import atomic_path

__all__ = [
    "SELL", "HOLD", "BUY", "CLASS_NAMES", "ArrayDataset", "BlockBatchSampler", "H5ArrayDataset", "TrainConfig",
    "TrainResult", "EnsembleResult", "confusion_matrix", "load_checkpoint_model", "make_loader", "train_ensemble",
    "train_model",
]

CHECKPOINT_FORMAT = 1
BEST_NAME = "best.pt"
LAST_NAME = "last.pt"
PATCHES_PER_IMAGE = GRID * GRID  # 256

EpochCallback = Callable[[int, dict[str, float]], Any]


# ============================================================================================
# Datasets
# ============================================================================================

class BatchDataset(Protocol):
    """What the trainer needs from a dataset (both classes below implement it)."""

    def __len__(self) -> int: ...
    def __getitems__(self, positions: Sequence[int]) -> dict[str, torch.Tensor]: ...
    def target_array(self, name: str) -> np.ndarray: ...
    def group_ids(self) -> np.ndarray | None: ...
    @property
    def sample_shape(self) -> tuple[int, ...]: ...
    @property
    def target_names(self) -> tuple[str, ...]: ...


def _as_indices(indices: Sequence[int] | np.ndarray | slice | range | None, n_rows: int, what: str) -> np.ndarray:
    if indices is None:
        return np.arange(n_rows, dtype=np.int64)
    if isinstance(indices, slice):
        return np.arange(n_rows, dtype=np.int64)[indices]
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= n_rows):
        raise ConfigError(f"{what}: indices must lie in [0, {n_rows}), got {idx.min()}..{idx.max()}")
    return idx


def _runs(sorted_unique: np.ndarray) -> list[tuple[int, int, int]]:
    """Split sorted unique rows into contiguous runs ``(first_row, end_row, offset_in_output)``."""
    if sorted_unique.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(sorted_unique) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [sorted_unique.size]])
    return [(int(sorted_unique[s]), int(sorted_unique[e - 1]) + 1, int(s)) for s, e in zip(starts, ends)]


def _torch_dtype_for(dt: np.dtype) -> np.dtype:
    # labels become int64 (what CE wants), everything else float32
    return np.dtype(np.int64) if np.issubdtype(dt, np.integer) or np.issubdtype(dt, np.bool_) else np.dtype(np.float32)


class H5ArrayDataset(Dataset):
    """Rows ``indices`` of HDF5 arrays: inputs ``x_key`` ``[n, ...]`` and targets ``y_keys``.

    ``y_keys`` is a sequence of dataset paths (each also its batch name) or a mapping
    ``{batch name: dataset path}`` or ``{batch name: (dataset path, column)}`` for one column of
    a 2-D ``[n, H]`` array, e.g. for the ``cnn_ready`` set files (``labels`` / ``returns`` hold
    one column per horizon)::

        H5ArrayDataset(path, "patches", {"label_h1": ("labels", 0), "return_h1": ("returns", 0),
                                         "label_h5": ("labels", 1), "return_h5": ("returns", 1)},
                       patches_per_image=256)
    ``indices`` (rows of the file this dataset exposes, e.g. a split) default to all rows.

    With ``check_finite`` (default) a batch with a NaN/inf pixel raises :class:`DataInputError`
    naming the rows (about 1 ms per 256 patches, done in the reading thread or worker).

    Reads are lazy: the file is opened on first use in each process (so DataLoader workers each
    get their own handle), and a batch is read as contiguous runs of sorted unique rows with
    ``read_direct`` into one preallocated array. ``rows_read`` / ``read_calls`` count what this
    process actually read. ``rdcc_nbytes`` sizes HDF5's chunk cache (default 1 MiB in HDF5,
    smaller than one compressed 256-patch chunk, which would then be decompressed again for every
    run inside it).
    """

    def __init__(self, path: str | os.PathLike[str], x_key: str, y_keys: Sequence[str] | Mapping[str, str] = (),
                 indices: Sequence[int] | np.ndarray | slice | range | None = None, *,
                 patches_per_image: int | None = None, rdcc_nbytes: int = 64 * 2**20,
                 check_finite: bool = True) -> None:
        self.path = Path(path)
        self.check_finite = check_finite
        self.x_key = x_key
        raw = dict(y_keys) if isinstance(y_keys, Mapping) else {k: k for k in y_keys}
        # name -> (dataset path, column or None)
        self.y_keys: dict[str, tuple[str, int | None]] = {
            name: ((v, None) if isinstance(v, str) else (str(v[0]), int(v[1]))) for name, v in raw.items()}
        self.patches_per_image = patches_per_image
        self.rdcc_nbytes = int(rdcc_nbytes)
        if not self.path.is_file():
            raise ConfigError(f"HDF5 file not found: {self.path}")
        with h5py.File(self.path, "r") as f:
            for key in [x_key, *(k for k, _ in self.y_keys.values())]:
                if key not in f or not isinstance(f[key], h5py.Dataset):
                    raise ConfigError(f"{self.path}: no dataset {key!r}")
            xd = f[x_key]
            self.n_rows = int(xd.shape[0])
            self._sample_shape = tuple(int(s) for s in xd.shape[1:])
            self._x_dtype = xd.dtype
            self._y_meta: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
            for name, (key, col) in self.y_keys.items():
                yd = f[key]
                if yd.shape[0] != self.n_rows:
                    raise ConfigError(f"{self.path}: {key!r} has {yd.shape[0]} rows, {x_key!r} has {self.n_rows}")
                if col is not None and (yd.ndim != 2 or not 0 <= col < yd.shape[1]):
                    raise ConfigError(f"{self.path}: {key!r} {yd.shape} has no column {col}")
                self._y_meta[name] = (tuple(int(s) for s in yd.shape[1:]), yd.dtype)
        self.indices = _as_indices(indices, self.n_rows, str(self.path))
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self.rows_read = 0
        self.read_calls = 0

    # --- file handle ------------------------------------------------------------------------
    def _h5(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            # a handle inherited through fork is not safe to use: open our own
            self._file = h5py.File(self.path, "r", rdcc_nbytes=self.rdcc_nbytes, rdcc_nslots=10007)
            self._pid = os.getpid()
        return self._file

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    # --- reading ----------------------------------------------------------------------------
    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self._sample_shape

    @property
    def target_names(self) -> tuple[str, ...]:
        return tuple(self.y_keys)

    def __len__(self) -> int:
        return int(self.indices.size)

    def _read_rows(self, key: str, rows: np.ndarray, item_shape: tuple[int, ...], src_dtype: np.dtype) -> np.ndarray:
        uniq, inverse = np.unique(rows, return_inverse=True)
        dtype = _torch_dtype_for(src_dtype)
        out = np.empty((uniq.size, *item_shape), dtype=dtype)
        ds = self._h5()[key]
        for a, b, o in _runs(uniq):
            if src_dtype == dtype:
                ds.read_direct(out, np.s_[a:b], np.s_[o:o + (b - a)])  # no intermediate copy
            else:
                out[o:o + (b - a)] = ds[a:b]
            self.read_calls += 1
        if key == self.x_key:
            self.rows_read += int(uniq.size)
        if uniq.size == rows.size and np.array_equal(uniq, rows):
            return out
        return out[inverse]

    def __getitems__(self, positions: Sequence[int]) -> dict[str, torch.Tensor]:
        rows = self.indices[np.asarray(positions, dtype=np.int64)]
        x = self._read_rows(self.x_key, rows, self._sample_shape, self._x_dtype)
        if self.check_finite and not np.isfinite(x).all():
            # the cnn_ready virtual datasets read a missing source file as NaN (their fill value)
            bad = rows[~np.isfinite(x.reshape(len(rows), -1)).all(axis=1)]
            raise DataInputError(f"non-finite pixels in rows {bad[:10].tolist()} of {self.x_key!r} "
                                 "(a missing or damaged source file?)", file=str(self.path), row=int(bad[0]))
        batch = {"x": torch.from_numpy(x)}
        for name, (key, col) in self.y_keys.items():
            shape, dt = self._y_meta[name]
            y = self._read_rows(key, rows, shape, dt)
            batch[name] = torch.from_numpy(y if col is None else np.ascontiguousarray(y[:, col]))
        batch["row"] = torch.from_numpy(rows.copy())
        if self.patches_per_image:
            batch["patch_pos"] = torch.from_numpy(rows % self.patches_per_image)
        return batch

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([int(position)]).items()}

    def target_array(self, name: str) -> np.ndarray:
        """All values of target ``name`` for this dataset's rows (small: one value per row)."""
        if name not in self.y_keys:
            raise ConfigError(f"{self.path}: no target {name!r} (have {sorted(self.y_keys)})")
        key, col = self.y_keys[name]
        with h5py.File(self.path, "r") as f:  # a short-lived handle: never leak one into forked workers
            ds = f[key]
            uniq, inverse = np.unique(self.indices, return_inverse=True)
            out = np.empty((uniq.size, *ds.shape[1:]), dtype=ds.dtype)
            for a, b, o in _runs(uniq):
                out[o:o + (b - a)] = ds[a:b]
        out = out[inverse]
        return out if col is None else out[:, col]

    def group_ids(self) -> np.ndarray | None:
        """Image id of each row (``row // patches_per_image``) for patch datasets, else None."""
        return None if not self.patches_per_image else self.indices // self.patches_per_image


class ArrayDataset(Dataset):
    """In-memory counterpart of :class:`H5ArrayDataset` (same batches, same interface)."""

    def __init__(self, x: np.ndarray | torch.Tensor, targets: Mapping[str, np.ndarray | torch.Tensor] | None = None,
                 indices: Sequence[int] | np.ndarray | slice | range | None = None, *,
                 patches_per_image: int | None = None) -> None:
        self.x = torch.as_tensor(x)
        if self.x.dtype != torch.float32:
            self.x = self.x.float()
        self.targets: dict[str, torch.Tensor] = {}
        for name, arr in (targets or {}).items():
            t = torch.as_tensor(np.asarray(arr) if not isinstance(arr, torch.Tensor) else arr)
            t = t.long() if not t.is_floating_point() else t.float()
            if t.shape[0] != self.x.shape[0]:
                raise ConfigError(f"target {name!r} has {t.shape[0]} rows, x has {self.x.shape[0]}")
            self.targets[name] = t
        self.n_rows = int(self.x.shape[0])
        self.indices = _as_indices(indices, self.n_rows, "ArrayDataset")
        self.patches_per_image = patches_per_image

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def target_names(self) -> tuple[str, ...]:
        return tuple(self.targets)

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitems__(self, positions: Sequence[int]) -> dict[str, torch.Tensor]:
        rows = self.indices[np.asarray(positions, dtype=np.int64)]
        r = torch.from_numpy(rows)
        batch = {"x": self.x[r]}
        batch.update({k: v[r] for k, v in self.targets.items()})
        batch["row"] = r.clone()
        if self.patches_per_image:
            batch["patch_pos"] = r % self.patches_per_image
        return batch

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([int(position)]).items()}

    def target_array(self, name: str) -> np.ndarray:
        if name not in self.targets:
            raise ConfigError(f"no target {name!r} (have {sorted(self.targets)})")
        return self.targets[name][torch.from_numpy(self.indices)].numpy()

    def group_ids(self) -> np.ndarray | None:
        return None if not self.patches_per_image else self.indices // self.patches_per_image


# ============================================================================================
# Sampling and loading
# ============================================================================================

def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed from ``seed`` and keys (e.g. epoch, stream), independent per key tuple."""
    a, b = np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(2, np.uint32)
    return (int(a) << 31) ^ int(b)


def _run_starts(lo: int, hi: int, run_length: int, offset: int) -> np.ndarray:
    """Starts of the runs cutting ``[lo, hi)``: the first run is ``offset`` long (if > 0)."""
    if hi <= lo:
        return np.zeros(0, dtype=np.int64)
    first = lo + offset if 0 < offset < hi - lo else lo + run_length
    return np.concatenate([[lo], np.arange(first, hi, run_length)]).astype(np.int64)


class BlockBatchSampler(Sampler[list[int]]):
    """Batches of dataset positions built from shuffled runs of consecutive positions.

    * ``run_length``: positions are cut into runs of this many consecutive positions (at a random
      offset per epoch) and whole runs are shuffled, so a batch reads as a few contiguous slices.
      ``run_length=1`` is a plain shuffle.
    * ``block_size`` / ``window`` (chunk-aware shuffling): with a ``block_size`` (e.g. 256 = one
      stored patch chunk = one image), the blocks are shuffled, taken ``window`` at a time, and
      the runs are shuffled only inside each window of ``window`` blocks. A compressed chunk is
      then decompressed once per epoch (its window's batches follow each other while the chunk
      cache holds it) instead of once per run, and a batch still mixes up to ``window``
      randomly chosen images. Without ``block_size`` runs are shuffled over the whole dataset.

    Positions inside a batch are sorted (contiguous reads). Without ``shuffle`` the batches are
    consecutive. Everything is a function of ``(seed, epoch)``, set with ``set_epoch``.

    Patches of one image share its label, so many patches of one image in a batch are
    correlated samples: keep ``run_length`` well below ``batch_size`` (a batch then mixes
    ``batch_size / run_length`` runs).
    """

    def __init__(self, n: int, batch_size: int, *, run_length: int = 1, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, block_size: int | None = None, window: int = 8) -> None:
        if batch_size < 1 or run_length < 1 or window < 1 or (block_size is not None and block_size < 1):
            raise ValueError("batch_size, run_length, block_size and window must be >= 1")
        self.n, self.batch_size, self.run_length = int(n), int(batch_size), int(run_length)
        self.shuffle, self.seed, self.drop_last = shuffle, int(seed), drop_last
        self.block_size, self.window = (int(block_size) if block_size else None), int(window)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def _shuffled_runs(self, lo_hi: list[tuple[int, int]], rng: np.random.Generator) -> list[np.ndarray]:
        L = self.run_length
        runs = []
        for lo, hi in lo_hi:
            starts = _run_starts(lo, hi, L, int(rng.integers(0, L)) if L > 1 else 0)
            ends = np.append(starts[1:], hi)
            runs += [np.arange(a, b, dtype=np.int64) for a, b in zip(starts, ends)]
        return [runs[i] for i in rng.permutation(len(runs))]

    def order(self) -> np.ndarray:
        if not self.shuffle or self.n == 0:
            return np.arange(self.n, dtype=np.int64)
        rng = np.random.default_rng(derive_seed(self.seed, self.epoch, 0))
        if self.block_size is None:
            return np.concatenate(self._shuffled_runs([(0, self.n)], rng))
        B = self.block_size
        blocks = rng.permutation(math.ceil(self.n / B))
        parts: list[np.ndarray] = []
        for g in range(0, blocks.size, self.window):
            spans = [(int(b) * B, min((int(b) + 1) * B, self.n)) for b in blocks[g:g + self.window]]
            parts += self._shuffled_runs(spans, rng)
        return np.concatenate(parts)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order()
        for i in range(0, self.n, self.batch_size):
            b = order[i:i + self.batch_size]
            if self.drop_last and b.size < self.batch_size:
                break
            yield np.sort(b).tolist() if self.shuffle else b.tolist()


def _identity_collate(batch: Any) -> Any:
    return batch  # __getitems__ already returns a batched dict


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, run_length: int = 1,
                block_size: int | None = None, window: int = 8, num_workers: int = 0, drop_last: bool = False,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader over :class:`BlockBatchSampler` batches (call ``loader.batch_sampler.set_epoch``).

    With ``num_workers > 0`` the workers are persistent and prefetch 2 batches each; the sampler
    runs in the main process, so the batch order does not depend on ``num_workers``.
    """
    sampler = BlockBatchSampler(len(dataset), batch_size, run_length=run_length, shuffle=shuffle, seed=seed,
                                drop_last=drop_last, block_size=block_size, window=window)
    kw: dict[str, Any] = {}
    if num_workers > 0:
        kw.update(persistent_workers=True, prefetch_factor=2)
    # a private generator: DataLoader otherwise draws its worker base seed from the global RNG
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=_identity_collate,
                      pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed), **kw)


class _ThreadPrefetcher:
    """Iterate ``iterable`` in a background thread, ``depth`` items ahead.

    Torch ops release the GIL, so HDF5 reads (and decompression) overlap the training step
    without worker processes and their copies through shared memory.
    """

    _END = object()

    def __init__(self, iterable: Iterable[Any], depth: int) -> None:
        self._q: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iter(iterable),), daemon=True)
        self._thread.start()

    def _run(self, it: Iterator[Any]) -> None:
        try:
            for item in it:
                while not self._stop.is_set():
                    try:
                        self._q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._q.put(self._END)
        except BaseException as exc:  # re-raised in the consumer
            self._q.put(exc)

    def __iter__(self) -> Iterator[Any]:
        try:
            while True:
                item = self._q.get()
                if item is self._END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._q.get_nowait()
            except queue.Empty:
                self._thread.join(timeout=0.05)


# ============================================================================================
# Config and result
# ============================================================================================

@dataclass
class TrainConfig:
    """Training settings. Defaults follow the spec's training configuration where it is sound
    (AdamW lr 1e-4, weight decay 1e-5, 100 epochs, 10 warm-up, batch 16 for 512×512 images,
    noise 0.02, mixup alpha 0.2); flips and colour jitter are not offered (module docstring)."""

    model: str = "cnn"  # "cnn" (MultiScaleCNN) or "vit" (FinNeXViT)
    size: str = "small"  # "small" (CPU) or "full" (spec sizes, GPU)
    model_overrides: dict[str, Any] = field(default_factory=dict)  # config fields, e.g. {"dim": 64}
    input_mode: str = "image"  # "image" (x [n,512,512,3]) or "patch" (x [n*256,32,32,3])
    horizons: tuple[int, ...] = (1,)
    class_targets: tuple[str, ...] = ("label_h1",)  # batch names of the class labels, one per horizon
    reg_targets: tuple[str, ...] | None = ("return_h1",)  # returns, one per horizon; None: classification only
    epochs: int = 100
    batch_size: int = 16
    eval_batch_size: int | None = None  # default 2 × batch_size
    lr: float = 1e-4
    weight_decay: float = 1e-5
    warmup_epochs: float = 10
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    grad_clip: float | None = 1.0  # max global grad norm; None: no clipping
    patience: int | None = 10  # epochs without improvement of `monitor` before stopping; None: never
    min_delta: float = 0.0
    monitor: str = "val_loss"  # "val_loss" (unweighted task sum) or "val_cls_loss"
    seed: int = 7
    noise_std: float = 0.02
    mixup_alpha: float = 0.2  # 0 disables mixup
    loss_weighting: str = "uncertainty"  # "uncertainty" | "fixed" | "softmax" (ablation only)
    fixed_weights: tuple[float, float] = (1.0, 1.0)  # (classification, regression) for "fixed"
    regression_loss: str = "huber"  # "huber" | "mse"
    huber_delta: float = 1.0  # in standard deviations when standardize_regression
    standardize_regression: bool = True  # fit mean/std of each return target on train
    use_patch_positions: bool = True  # pass "patch_pos" to the model when the batch has it
    run_length: int | None = None  # rows per contiguous read; None: 1 for images, 16 for patches
    # chunk-aware shuffling (BlockBatchSampler): runs are shuffled within windows of
    # `shuffle_window` blocks of `shuffle_block` rows; None: 256 (one image's patches = one
    # stored chunk) in patch mode, off (global shuffle) in image mode; 0: off
    shuffle_block: int | None = None
    shuffle_window: int = 8
    num_workers: int = 0  # DataLoader worker processes
    prefetch: int = 2  # batches read ahead by a background thread when num_workers == 0 (0: off)
    num_threads: int | None = None  # torch intra-op threads during training (restored after); None: unchanged
    deterministic: bool = True
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16 + GradScaler)
    device: str | None = None  # None: CUDA when available, else CPU

    def __post_init__(self) -> None:
        self.horizons = tuple(int(h) for h in self.horizons)
        self.class_targets = tuple(self.class_targets)
        if self.reg_targets is not None:
            self.reg_targets = tuple(self.reg_targets)
        self.fixed_weights = tuple(self.fixed_weights)  # type: ignore[assignment]
        if len(self.class_targets) != len(self.horizons):
            raise ConfigError(f"class_targets {self.class_targets} must name one target per horizon {self.horizons}")
        if self.reg_targets is not None and len(self.reg_targets) != len(self.horizons):
            raise ConfigError(f"reg_targets {self.reg_targets} must name one target per horizon {self.horizons}")
        if self.input_mode not in ("image", "patch"):
            raise ConfigError(f"input_mode must be 'image' or 'patch', got {self.input_mode!r}")
        if self.monitor not in ("val_loss", "val_cls_loss"):
            raise ConfigError(f"monitor must be 'val_loss' or 'val_cls_loss', got {self.monitor!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be >= 1")

    @property
    def effective_run_length(self) -> int:
        if self.run_length is not None:
            return int(self.run_length)
        return 1 if self.input_mode == "image" else 16

    @property
    def effective_shuffle_block(self) -> int | None:
        if self.shuffle_block is not None:
            return int(self.shuffle_block) or None
        return None if self.input_mode == "image" else PATCHES_PER_IMAGE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# fields that may differ between a run and its resumption without changing the trajectory
# (num_threads may change CPU reduction order: bit-for-bit resumption needs the same value)
_RESUME_FREE_FIELDS = {"num_workers", "prefetch", "device", "num_threads"}


@dataclass
class TrainResult:
    model: nn.Module  # best weights, on the training device
    history: list[dict[str, float]]
    best_epoch: int  # 1-based
    best_metrics: dict[str, float]
    checkpoint_path: Path  # best.pt
    last_checkpoint_path: Path
    epochs_run: int
    stopped_early: bool
    val_predictions: dict[str, np.ndarray]  # of the best model; see evaluate()
    confusion_matrix: np.ndarray  # [3, 3] first horizon, rows true, columns predicted (Sell, Hold, Buy)
    confusion_matrices: dict[int, np.ndarray]  # per horizon
    image_confusion_matrix: np.ndarray | None  # patch mode: after averaging patch probabilities per image
    reg_stats: dict[str, list[float]]  # {"mean": [...], "std": [...]} per horizon (train)
    class_weights: list[float]
    device: str
    config: dict[str, Any]


# ============================================================================================
# Helpers
# ============================================================================================

def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Counts ``[true, predicted]`` over ``0..num_classes-1`` (scikit-learn when installed)."""
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    try:
        from sklearn.metrics import confusion_matrix as sk_cm
    except ImportError:  # pragma: no cover - scikit-learn is a dependency
        return np.bincount(y_true * num_classes + y_pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)
    return sk_cm(y_true, y_pred, labels=list(range(num_classes)))


def _balanced_accuracy(cm: np.ndarray) -> float:
    support = cm.sum(axis=1)
    recalls = np.diag(cm)[support > 0] / support[support > 0]
    return float(recalls.mean()) if recalls.size else float("nan")


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    # On a shared 2-core machine 2 intra-op threads ran this trainer ~10× slower than 1 (OpenMP
    # threads wait on each other when another process holds a core), so callers may pin it.
    prev = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if n is not None:
            torch.set_num_threads(prev)


@contextmanager
def _determinism(enabled: bool, device: torch.device) -> Iterator[None]:
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_bench, prev_det = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    if enabled:
        if device.type == "cuda":
            # only effective before cuBLAS starts; warn-only because some CUDA kernels
            # (e.g. index_add backward) have no deterministic version
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = prev_bench, prev_det


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _lr_lambda(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps  # linear warm-up, first step at lr/warmup
        span = max(1, total_steps - warmup_steps)
        t = min(1.0, (step - warmup_steps) / span)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
    return f


def _param_groups(model: nn.Module, criterion: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices and conv kernels only: not biases, norms, embeddings or the loss weights
    (decaying the log-variances would pull every task weight towards 1)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "embed" in name or "cls_token" in name or "pos_unknown" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    loss_params = [p for p in criterion.parameters() if p.requires_grad]
    if loss_params:
        groups.append({"params": loss_params, "weight_decay": 0.0})
    return groups


def _save(obj: dict[str, Any], path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _load(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)


def load_checkpoint_model(path: str | os.PathLike[str], map_location: Any = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved in ``best.pt`` / ``last.pt``; returns ``(model in eval mode, checkpoint)``.

    The checkpoint also holds ``reg_stats`` (to undo the return standardisation),
    ``class_weights``, ``config`` (the TrainConfig as a dict), ``epoch`` and ``metrics``.
    """
    ckpt = _load(Path(path), map_location)
    model = model_from_spec(ckpt["model_spec"])
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


class _Augment:
    """Gaussian noise + mixup from generators seeded by ``(seed, epoch)``."""

    def __init__(self, noise_std: float, mixup_alpha: float, seed: int, epoch: int, device: torch.device) -> None:
        self.noise_std, self.alpha = float(noise_std), float(mixup_alpha)
        self.gen = torch.Generator(device=device).manual_seed(derive_seed(seed, epoch, 1))
        self.rng = np.random.default_rng(derive_seed(seed, epoch, 2))

    def __call__(self, x: torch.Tensor, y_soft: torch.Tensor, y_reg: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if self.noise_std > 0:
            x = x + self.noise_std * torch.randn(x.shape, generator=self.gen, device=x.device, dtype=x.dtype)
        b = x.shape[0]
        if self.alpha > 0 and b > 1:
            lam = torch.from_numpy(self.rng.beta(self.alpha, self.alpha, size=b).astype(np.float32)).to(x.device)
            perm = torch.from_numpy(self.rng.permutation(b)).to(x.device)
            x = lam.view(-1, 1, 1, 1) * x + (1 - lam).view(-1, 1, 1, 1) * x[perm]
            y_soft = lam.view(-1, 1, 1) * y_soft + (1 - lam).view(-1, 1, 1) * y_soft[perm]
            if y_reg is not None:
                y_reg = lam.view(-1, 1) * y_reg + (1 - lam).view(-1, 1) * y_reg[perm]
        return x, y_soft, y_reg


# ============================================================================================
# Trainer
# ============================================================================================

class _Run:
    """State of one training run (kept in one object so train_model stays readable)."""

    def __init__(self, cfg: TrainConfig, train_ds: Dataset, val_ds: Dataset, checkpoint_dir: Path,
                 class_weights: Sequence[float] | torch.Tensor | None, model: nn.Module | None) -> None:
        self.cfg = cfg
        self.train_ds, self.val_ds = train_ds, val_ds
        self.ckpt_dir = Path(checkpoint_dir)
        dev = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(dev)
        self.amp_dtype: torch.dtype | None = None
        if cfg.amp and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self._validate_data()
        self.reg_mean, self.reg_std = self._fit_reg_stats()
        self.class_weights = (torch.ones(NUM_CLASSES) if class_weights is None
                              else torch.as_tensor(class_weights, dtype=torch.float32).reshape(-1))
        if self.class_weights.numel() != NUM_CLASSES:
            raise ConfigError(f"class_weights needs {NUM_CLASSES} values, got {self.class_weights.numel()}")

        torch.manual_seed(cfg.seed)
        self.model = (model if model is not None else
                      create_model(cfg.model, cfg.size, horizons=cfg.horizons, **cfg.model_overrides)).to(self.device)
        self.criterion = MultiTaskLoss(
            len(cfg.horizons), self.class_weights, regression=cfg.reg_targets is not None,
            regression_loss=cfg.regression_loss, huber_delta=cfg.huber_delta, weighting=cfg.loss_weighting,
            fixed_weights=cfg.fixed_weights).to(self.device)
        self.optimizer = torch.optim.AdamW(_param_groups(self.model, self.criterion, cfg.weight_decay), lr=cfg.lr)

        run_len = cfg.effective_run_length
        self.train_loader = make_loader(train_ds, cfg.batch_size, shuffle=True, seed=cfg.seed, run_length=run_len,
                                        block_size=cfg.effective_shuffle_block, window=cfg.shuffle_window,
                                        num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda",
                                        # a last batch of a few samples gives BatchNorm noisy statistics;
                                        # the shuffle drops different samples each epoch
                                        drop_last=len(train_ds) > cfg.batch_size)
        self.val_loader = make_loader(val_ds, cfg.eval_batch_size or 2 * cfg.batch_size, shuffle=False,
                                      num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda")
        self.steps_per_epoch = len(self.train_loader)
        total = cfg.epochs * self.steps_per_epoch
        warm = int(round(cfg.warmup_epochs * self.steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(total, warm, cfg.min_lr_ratio))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        self.epoch = 0  # completed epochs
        self.best_metric = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.history: list[dict[str, float]] = []
        self.stopped_early = False

    # --- data checks ------------------------------------------------------------------------
    def _validate_data(self) -> None:
        cfg = self.cfg
        for label, ds in (("train", self.train_ds), ("val", self.val_ds)):
            if len(ds) == 0:
                raise ConfigError(f"{label} dataset is empty")
            shape = tuple(ds.sample_shape)
            if len(shape) != 3 or shape[2] != 3:
                raise ConfigError(f"{label}: samples must be [H, W, 3] (the stores' layout), got {shape}")
            if cfg.input_mode == "patch" and shape[:2] != (PATCH_SIZE, PATCH_SIZE):
                raise ConfigError(f"{label}: input_mode='patch' needs 32×32 samples, got {shape}")
            if cfg.input_mode == "image" and shape[:2] == (PATCH_SIZE, PATCH_SIZE):
                raise ConfigError(f"{label}: 32×32 samples with input_mode='image'; use input_mode='patch'")
            needed = list(cfg.class_targets) + list(cfg.reg_targets or ())
            missing = [n for n in needed if n not in ds.target_names]
            if missing:
                raise ConfigError(f"{label} dataset lacks targets {missing} (has {list(ds.target_names)})")
            for name in cfg.class_targets:
                y = ds.target_array(name)
                if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
                    raise ConfigError(f"{label}: {name!r} must hold class ids 0..{NUM_CLASSES - 1} "
                                      f"(Sell, Hold, Buy), got {y.min()}..{y.max()}")
            for name in cfg.reg_targets or ():
                y = ds.target_array(name)
                if not np.all(np.isfinite(y)):
                    raise ConfigError(f"{label}: {name!r} has {int((~np.isfinite(y)).sum())} non-finite values; "
                                      "drop rows without a realised return")

    def _fit_reg_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        names = self.cfg.reg_targets or ()
        if not names or not self.cfg.standardize_regression:
            return torch.zeros(len(names)), torch.ones(len(names))
        ys = [self.train_ds.target_array(n).astype(np.float64).reshape(-1) for n in names]
        mean = torch.tensor([y.mean() for y in ys], dtype=torch.float32)
        std = torch.tensor([max(y.std(), 1e-12) for y in ys], dtype=torch.float32)
        return mean, std

    # --- batches ----------------------------------------------------------------------------
    def _unpack(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None,
                                                                   torch.Tensor | None]:
        nb = self.device.type == "cuda"
        # [b, H, W, 3] -> [b, 3, H, W]: a channels-last view, no copy
        x = batch["x"].to(self.device, non_blocking=nb).permute(0, 3, 1, 2)
        y_cls = torch.stack([batch[n].reshape(-1) for n in self.cfg.class_targets], dim=1).to(self.device)
        y_reg = None
        if self.cfg.reg_targets is not None:
            y_reg = torch.stack([batch[n].reshape(-1).float() for n in self.cfg.reg_targets], dim=1).to(self.device)
            y_reg = (y_reg - self.reg_mean.to(self.device)) / self.reg_std.to(self.device)
        pos = batch.get("patch_pos") if self.cfg.use_patch_positions else None
        if pos is not None:
            pos = pos.to(self.device)
        return x, y_cls, y_reg, pos

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def _iterate(self, loader: DataLoader) -> Iterator[Any]:
        if self.cfg.num_workers == 0 and self.cfg.prefetch > 0:
            return iter(_ThreadPrefetcher(loader, self.cfg.prefetch))
        return iter(loader)

    # --- one epoch --------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, float]:
        cfg, epoch = self.cfg, self.epoch
        self.train_loader.batch_sampler.set_epoch(epoch)
        aug = _Augment(cfg.noise_std, cfg.mixup_alpha, cfg.seed, epoch, self.device)
        self.model.train()
        self.criterion.train()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        # summed on the device: a float() per step would synchronise a GPU every step
        sums = {k: torch.zeros((), device=self.device) for k in ("loss", "cls_loss", "reg_loss", "unweighted")}
        n_seen, wait = 0, 0.0
        t0 = time.perf_counter()
        it = self._iterate(self.train_loader)
        while True:
            tw = time.perf_counter()
            batch = next(it, None)
            wait += time.perf_counter() - tw
            if batch is None:
                break
            x, y_cls, y_reg, pos = self._unpack(batch)
            y_soft = torch.nn.functional.one_hot(y_cls, NUM_CLASSES).float()
            x, y_soft, y_reg = aug(x, y_soft, y_reg)
            with self._autocast():
                out = self.model(x, patch_pos=pos)
            out = {k: (v.float() if torch.is_tensor(v) else v) for k, v in out.items()}
            losses = self.criterion(out, y_soft, y_reg)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(losses["loss"]).backward()
            if cfg.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            b = x.shape[0]
            n_seen += b
            for k in sums:
                sums[k] += losses[k].detach() * b
        elapsed = time.perf_counter() - t0
        metrics = {f"train_{k}": float(v) / max(n_seen, 1) for k, v in sums.items()}
        weights = self.criterion.task_weights().cpu().tolist()
        for name, w in zip(self.criterion.task_names(cfg.horizons), weights):
            metrics[f"weight_{name}"] = float(w)
        metrics.update(lr=float(self.optimizer.param_groups[0]["lr"]), epoch_seconds=elapsed,
                       samples_per_s=n_seen / elapsed if elapsed > 0 else float("nan"),
                       data_wait_share=wait / elapsed if elapsed > 0 else float("nan"))
        return metrics

    @torch.no_grad()
    def evaluate(self) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Validation metrics and predictions (probabilities, classes, returns in original units)."""
        cfg = self.cfg
        self.model.eval()
        self.criterion.eval()
        logits, regs, ycls, yreg, rows = [], [], [], [], []
        for batch in self._iterate(self.val_loader):
            x, y_cls, y_reg, pos = self._unpack(batch)
            with self._autocast():
                out = self.model(x, patch_pos=pos)
            logits.append(out["classification_by_horizon"].float())
            regs.append(out["regression_by_horizon"].float())
            ycls.append(y_cls)
            if y_reg is not None:
                yreg.append(y_reg)
            rows.append(batch["row"])
        lg, rg, yc = torch.cat(logits), torch.cat(regs), torch.cat(ycls)
        yr = torch.cat(yreg) if yreg else None
        losses = self.criterion({"classification_by_horizon": lg, "regression_by_horizon": rg}, yc, yr)
        metrics = {"val_loss": float(losses["unweighted"]), "val_cls_loss": float(losses["cls_loss"]),
                   "val_reg_loss": float(losses["reg_loss"]), "val_weighted_loss": float(losses["loss"])}
        probs = torch.softmax(lg, dim=-1).cpu().numpy()
        pred = probs.argmax(-1)
        y_true = yc.cpu().numpy()
        preds: dict[str, np.ndarray] = {"row": torch.cat(rows).numpy(), "probs": probs, "pred": pred,
                                        "class_target": y_true}
        if yr is not None:
            mean, std = self.reg_mean.numpy(), self.reg_std.numpy()
            preds["reg_pred"] = rg.cpu().numpy() * std + mean
            preds["reg_target"] = yr.cpu().numpy() * std + mean
        groups = _group_ids(self.val_ds) if cfg.input_mode == "patch" else None
        for j, h in enumerate(cfg.horizons):
            sfx = "" if j == 0 else f"_h{h}"
            cm = confusion_matrix(y_true[:, j], pred[:, j])
            metrics[f"val_accuracy{sfx}"] = float(np.trace(cm) / max(cm.sum(), 1))
            metrics[f"val_balanced_accuracy{sfx}"] = _balanced_accuracy(cm)
            if yr is not None:
                err = preds["reg_pred"][:, j] - preds["reg_target"][:, j]
                metrics[f"val_mae{sfx}"] = float(np.abs(err).mean())
                metrics[f"val_directional_accuracy{sfx}"] = float(
                    (np.sign(preds["reg_pred"][:, j]) == np.sign(preds["reg_target"][:, j])).mean())
            if groups is not None:
                # the val loader is sequential: predictions are in dataset order, like group_ids()
                _, gp, gt = _aggregate_groups(groups, probs[:, j], y_true[:, j])
                metrics[f"val_image_accuracy{sfx}"] = float((gp == gt).mean())
        return metrics, preds

    # --- checkpoints ------------------------------------------------------------------------
    def state(self, metrics: dict[str, float]) -> dict[str, Any]:
        try:
            spec = model_spec(self.model)
        except TypeError:
            spec = None  # a custom model: the checkpoint still resumes, load_checkpoint_model cannot rebuild it
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "model_spec": spec,
            "criterion": self.criterion.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": _rng_state(),
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "stopped_early": self.stopped_early,
            "history": self.history,
            "metrics": metrics,
            "config": self.cfg.to_dict(),
            "reg_stats": {"mean": self.reg_mean.tolist(), "std": self.reg_std.tolist()},
            "class_weights": self.class_weights.tolist(),
            "class_names": list(CLASS_NAMES),
            "horizons": list(self.cfg.horizons),
        }

    def restore(self, path: Path) -> None:
        ckpt = _load(path, map_location=self.device)
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"{path}: checkpoint format {ckpt.get('format')} is not {CHECKPOINT_FORMAT}")
        saved, now = ckpt["config"], self.cfg.to_dict()
        diff = sorted(k for k in now if k not in _RESUME_FREE_FIELDS and _norm(saved.get(k)) != _norm(now[k]))
        if diff:
            raise ConfigError(f"{path}: cannot resume, config differs in {diff}")
        if not torch.allclose(torch.tensor(ckpt["class_weights"]), self.class_weights):
            raise ConfigError(f"{path}: cannot resume with different class weights")
        self.model.load_state_dict(ckpt["model"])
        self.criterion.load_state_dict(ckpt["criterion"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.reg_mean = torch.tensor(ckpt["reg_stats"]["mean"], dtype=torch.float32)
        self.reg_std = torch.tensor(ckpt["reg_stats"]["std"], dtype=torch.float32)
        self.epoch = int(ckpt["epoch"])
        self.best_metric = float(ckpt["best_metric"])
        self.best_epoch = int(ckpt["best_epoch"])
        self.bad_epochs = int(ckpt["bad_epochs"])
        self.stopped_early = bool(ckpt["stopped_early"])
        self.history = list(ckpt["history"])
        _set_rng_state({k: (v.cpu() if torch.is_tensor(v) else [t.cpu() for t in v] if k == "cuda" else v)
                        for k, v in ckpt["rng"].items()})


def _norm(v: Any) -> Any:
    """Compare configs across a save/load round trip (tuples come back as lists)."""
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    return v


def _group_ids(ds: Any) -> np.ndarray | None:
    fn = getattr(ds, "group_ids", None)
    return fn() if callable(fn) else None


def _aggregate_groups(groups: np.ndarray, probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean class probabilities per group (image) -> (group ids, predicted class, label).

    The 256 patches of an image share its label and are not independent samples, so the
    image-level accuracy is the honest one to compare with image-mode models."""
    uniq, first, inv = np.unique(groups, return_index=True, return_inverse=True)
    summed = np.zeros((uniq.size, probs.shape[-1]))
    np.add.at(summed, inv, probs)
    return uniq, summed.argmax(-1), np.asarray(y)[first]


def train_model(config: TrainConfig, train_data: Dataset, val_data: Dataset, *,
                checkpoint_dir: str | os.PathLike[str], class_weights: Sequence[float] | torch.Tensor | None = None,
                on_epoch_end: EpochCallback | None = None, resume: bool | str | os.PathLike[str] = False,
                model: nn.Module | None = None) -> TrainResult:
    """Train with early stopping; return the best model, history and validation predictions.

    * ``train_data`` / ``val_data``: :class:`H5ArrayDataset` or :class:`ArrayDataset` whose target
      names include ``config.class_targets`` (and ``config.reg_targets``).
    * ``class_weights``: 3 values (Sell, Hold, Buy) fitted on the training labels by the caller
      (``finnex_ml.losses.class_weights_from_labels``); None = unweighted.
    * ``checkpoint_dir``: receives ``best.pt`` (best ``config.monitor``) and ``last.pt`` (every
      epoch, for resuming), each written atomically.
    * ``on_epoch_end(epoch, metrics)``: called after each epoch (1-based) once both checkpoints
      are on disk; an exception from it stops training and propagates (``last.pt`` is already
      saved, so the run can be resumed).
    * ``resume``: True resumes from ``checkpoint_dir/last.pt`` if it exists; a path resumes from
      that file. The config must match the saved one (except num_workers, prefetch, device,
      num_threads; bit-for-bit continuation on CPU also needs the same num_threads).
    * ``model``: a prebuilt multi-task model instead of ``create_model(config.model, config.size)``.
    """
    cfg = config
    ckpt_dir = Path(checkpoint_dir)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with _determinism(cfg.deterministic, device), _threads(cfg.num_threads):
        run = _Run(cfg, train_data, val_data, ckpt_dir, class_weights, model)
        resume_path = (ckpt_dir / LAST_NAME if resume is True else Path(resume) if resume else None)
        if resume_path is not None and resume_path.exists():
            run.restore(resume_path)
        elif resume_path is not None and resume is not True:
            raise ConfigError(f"checkpoint to resume from not found: {resume_path}")
        best_path, last_path = ckpt_dir / BEST_NAME, ckpt_dir / LAST_NAME

        while run.epoch < cfg.epochs and not run.stopped_early:
            train_metrics = run.train_epoch()
            val_metrics, _ = run.evaluate()
            run.epoch += 1
            metrics = {"epoch": float(run.epoch), **train_metrics, **val_metrics}
            score = val_metrics[cfg.monitor]
            improved = math.isfinite(score) and score < run.best_metric - cfg.min_delta
            if improved:
                run.best_metric, run.best_epoch, run.bad_epochs = score, run.epoch, 0
            else:
                run.bad_epochs += 1
            if cfg.patience is not None and run.bad_epochs >= cfg.patience:
                run.stopped_early = True
            metrics["best_epoch"] = float(run.best_epoch)
            run.history.append(metrics)
            # RNG and all states are captured here, after the epoch and its validation: a resumed
            # run restarts from exactly this point
            if improved:
                _save(run.state(metrics), best_path)
            _save(run.state(metrics), last_path)
            if on_epoch_end is not None:
                on_epoch_end(run.epoch, dict(metrics))

        if run.best_epoch == 0:  # every validation score was NaN/inf: the run diverged
            raise FloatingPointError(f"validation {cfg.monitor} was never finite; see {last_path} and the history")
        best = _load(best_path, map_location=run.device)
        run.model.load_state_dict(best["model"])
        run.criterion.load_state_dict(best["criterion"])
        val_metrics, preds = run.evaluate()

    cms = {h: confusion_matrix(preds["class_target"][:, j], preds["pred"][:, j]) for j, h in enumerate(cfg.horizons)}
    image_cm = None
    groups = _group_ids(val_data) if cfg.input_mode == "patch" else None
    if groups is not None:
        _, gp, gt = _aggregate_groups(groups, preds["probs"][:, 0], preds["class_target"][:, 0])
        image_cm = confusion_matrix(gt, gp)
    best_metrics = dict(best.get("metrics", {}))
    best_metrics.update(val_metrics)
    return TrainResult(
        model=run.model, history=run.history, best_epoch=run.best_epoch, best_metrics=best_metrics,
        checkpoint_path=best_path, last_checkpoint_path=last_path, epochs_run=run.epoch,
        stopped_early=run.stopped_early, val_predictions=preds, confusion_matrix=cms[cfg.horizons[0]],
        confusion_matrices=cms, image_confusion_matrix=image_cm,
        reg_stats={"mean": run.reg_mean.tolist(), "std": run.reg_std.tolist()},
        class_weights=run.class_weights.tolist(), device=str(run.device), config=cfg.to_dict())


# ============================================================================================
# Seed ensembles
# ============================================================================================

@dataclass
class EnsembleResult:
    model: nn.Module  # SeedEnsemble of the members' best weights
    members: list[TrainResult]
    checkpoint_path: Path  # {checkpoint_dir}/best.pt, loadable by load_checkpoint_model
    val_probs: np.ndarray  # [n_val, H, 3], the members' probabilities averaged
    val_targets: np.ndarray  # [n_val, H]
    confusion_matrix: np.ndarray  # first horizon, of the averaged prediction


def train_ensemble(config: TrainConfig, train_data: Dataset, val_data: Dataset, *, seeds: Sequence[int],
                   checkpoint_dir: str | os.PathLike[str], on_member_epoch_end: Callable[[int, int, dict[str, float]], None]
                   | None = None, **kwargs: Any) -> EnsembleResult:
    """Train one member per seed (``{checkpoint_dir}/seed{s}/``, each resumable and early-stopped
    on ``val_data``) and save their average as ``{checkpoint_dir}/best.pt``.

    Why an ensemble: on a few hundred dates one seed's fit varies a lot; averaging probabilities
    of independently initialised members is the cheapest variance reduction there is."""
    from finnex_ml.models import SeedEnsemble

    if not seeds:
        raise ConfigError("an ensemble needs at least one seed")
    ckpt_dir = Path(checkpoint_dir)
    members: list[TrainResult] = []
    for seed in seeds:
        cb = None if on_member_epoch_end is None else (lambda e, m, s=seed: on_member_epoch_end(s, e, m))
        members.append(train_model(replace(config, seed=int(seed)), train_data, val_data,
                                   checkpoint_dir=ckpt_dir / f"seed{seed}", on_epoch_end=cb, **kwargs))
    ensemble = SeedEnsemble([r.model.cpu().eval() for r in members]).eval()
    probs = np.mean([r.val_predictions["probs"] for r in members], axis=0)
    targets = members[0].val_predictions["class_target"]
    first = members[0]
    path = ckpt_dir / BEST_NAME
    _save({"format": CHECKPOINT_FORMAT, "model": ensemble.state_dict(), "model_spec": model_spec(ensemble),
           "config": {**first.config, "seeds": [int(s) for s in seeds]}, "reg_stats": first.reg_stats,
           "class_weights": first.class_weights, "class_names": list(CLASS_NAMES),
           "members": [{"seed": int(s), "best_epoch": r.best_epoch, "epochs_run": r.epochs_run,
                        "checkpoint": str(r.checkpoint_path)} for s, r in zip(seeds, members)]}, path)
    return EnsembleResult(ensemble, members, path, probs, targets,
                          confusion_matrix(targets[:, 0], probs[:, 0].argmax(-1)))
