"""Datasets, block-shuffled sampling and read-ahead loading for the trainer (see the package docstring)."""

from __future__ import annotations

import bisect
import math
import os
import queue
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from finnex_ml.errors import ConfigError, DataInputError
from finnex_ml.geometry import IMAGE_SHAPE
from finnex_ml.models import (
    GRID,
)

PATCHES_PER_IMAGE = GRID * GRID  # 256


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


def _all_finite(x: np.ndarray) -> bool:
    """True when ``x`` has no NaN/inf. One summing pass and no boolean temporary (about half the
    time of ``np.isfinite(x).all()`` on a 100 MB batch, measured): a NaN or inf anywhere makes the sum
    non-finite; only a sum that overflows from finite values needs the element-wise check."""
    if x.size == 0 or not np.issubdtype(x.dtype, np.floating):
        return True
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.add.reduce(x, axis=None)):
            return True
    return bool(np.isfinite(x).all())


def _empty_batch(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised tensor in numpy-allocated memory. Why: numpy asks the kernel for huge pages
    on large buffers (``madvise``), torch's CPU allocator does not, so a fresh 100 MB torch tensor
    (one batch of 32 mega-images) pays ~25,000 page faults when first written: measured 190 ms
    against 11 ms for the same copy into a numpy buffer."""
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    return torch.from_numpy(np.empty(shape, dtype=np_dtype))


def _check_out(out: np.ndarray | None, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if out is not None and (tuple(out.shape) != shape or out.dtype != dtype or not out.flags.c_contiguous):
        raise ConfigError(
            f"batch buffer must be a C-contiguous {shape} {dtype} array, got {tuple(out.shape)} {out.dtype}"
            f"{'' if out.flags.c_contiguous else ' (not contiguous)'}"
        )


def _torch_dtype_for(dt: np.dtype) -> np.dtype:
    # labels become int64 (what CE wants), everything else float32
    return np.dtype(np.int64) if np.issubdtype(dt, np.integer) or np.issubdtype(dt, np.bool_) else np.dtype(np.float32)


# A run of rows stored as raw bytes: (first row, end row, file, byte offset of the first row, and
# the file's (inode, mtime, size) when the offset was read: a replaced file is not read blindly)
_DirectRun = tuple[int, int, str, int, tuple[int, int, int]]


def _file_id(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _raw_offset(ds: h5py.Dataset, dtype: np.dtype) -> int | None:
    """Byte offset of ``ds``'s data in its file when it is contiguous, unfiltered, allocated and
    stored as ``dtype`` (native byte order); else None."""
    dcpl = ds.id.get_create_plist()
    if dcpl.get_layout() != h5py.h5d.CONTIGUOUS or dcpl.get_nfilters() or ds.dtype != dtype:
        return None  # ('>f4' != '=f4' on this little-endian machine: byte-swapped data goes through HDF5)
    off = ds.id.get_offset()
    return None if off is None else int(off)


def _direct_runs(f: h5py.File, path: Path, key: str) -> list[_DirectRun] | None:
    """Where every row of ``f[key]`` lies as raw bytes: one run per contiguous unfiltered dataset
    (the array itself, or each source of a virtual array, e.g. the per-date image files behind a
    ``cnn_ready`` set). None when any part is chunked, filtered, missing or not a whole-row
    mapping: the caller then reads through HDF5 (which also turns a missing source into NaN)."""
    ds = f[key]
    dtype = np.dtype(ds.dtype).newbyteorder("=")
    if not np.issubdtype(dtype, np.floating):
        return None
    if not ds.is_virtual:
        off = _raw_offset(ds, dtype)
        return None if off is None else [(0, int(ds.shape[0]), str(path), off, _file_id(os.stat(path)))]
    runs: list[_DirectRun] = []
    row_points = int(np.prod(ds.shape[1:], dtype=np.int64))
    for m in ds.virtual_sources():
        if m.src_space.get_select_type() != h5py.h5s.SEL_ALL:
            return None
        lo, hi = m.vspace.get_select_bounds()
        if any(lo[1:]) or tuple(h + 1 for h in hi[1:]) != tuple(ds.shape[1:]):
            return None  # not whole rows
        first, end = int(lo[0]), int(hi[0]) + 1
        if m.vspace.get_select_npoints() != (end - first) * row_points:
            return None
        src = (path.parent / m.file_name) if m.file_name != "." else path
        if not src.is_file():
            return None
        try:
            ident = _file_id(os.stat(src))
            with h5py.File(src, "r") as sf:
                sd = sf.get(m.dset_name)
                if not isinstance(sd, h5py.Dataset) or sd.size != (end - first) * row_points:
                    return None
                off = _raw_offset(sd, dtype)
        except OSError:  # not readable as HDF5: HDF5's own read reports it (as NaN fill)
            return None
        if off is None:
            return None
        runs.append((first, end, str(src), off, ident))
    runs.sort()
    covered = 0
    for first, end, *_ in runs:
        if first != covered:
            return None  # a gap (fill value) or an overlap
        covered = end
    return runs if covered == ds.shape[0] else None


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

    Inputs stored contiguous and unfiltered (a plain array, or the uncompressed per-date image
    files behind a ``cnn_ready`` virtual set) are read with ``os.preadv`` straight into the batch
    (``direct_reads`` counts them): HDF5's virtual-dataset and hyperslab machinery cost 3-5x a
    plain copy per 3 MB image here. Chunked or compressed stores, and sets with a missing source
    file, go through HDF5 as before. Either way the bytes are the same.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        x_key: str,
        y_keys: Sequence[str] | Mapping[str, str] = (),
        indices: Sequence[int] | np.ndarray | slice | range | None = None,
        *,
        patches_per_image: int | None = None,
        rdcc_nbytes: int = 64 * 2**20,
        check_finite: bool = True,
    ) -> None:
        self.path = Path(path)
        self.check_finite = check_finite
        self.x_key = x_key
        raw = dict(y_keys) if isinstance(y_keys, Mapping) else {k: k for k in y_keys}
        # name -> (dataset path, column or None)
        self.y_keys: dict[str, tuple[str, int | None]] = {
            name: ((v, None) if isinstance(v, str) else (str(v[0]), int(v[1]))) for name, v in raw.items()
        }
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
        self._direct: list[_DirectRun] | None = None  # resolved per process with the handle
        # direct reads check each row for NaN/inf once (its file cannot change unnoticed, see
        # _DirectRun): re-checking 100 MB of pixels every batch cost as much CPU as reading them
        self._checked: np.ndarray | None = None  # per row of the file
        self.rows_read = 0
        self.read_calls = 0
        self.direct_reads = 0  # preadv calls (a subset of read_calls)

    # --- file handle ------------------------------------------------------------------------
    def _h5(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            # a handle inherited through fork is not safe to use: open our own
            self._file = h5py.File(self.path, "r", rdcc_nbytes=self.rdcc_nbytes, rdcc_nslots=10007)
            self._pid = os.getpid()
            self._direct = _direct_runs(self._file, self.path, self.x_key)
            self._checked = np.zeros(self.n_rows, dtype=bool)
        return self._file

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        state["_direct"] = None
        state["_checked"] = None
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

    def _read_rows(
        self,
        key: str,
        rows: np.ndarray,
        item_shape: tuple[int, ...],
        src_dtype: np.dtype,
        into: np.ndarray | None = None,
    ) -> np.ndarray:
        """Rows ``rows`` (any order, repeats allowed) of ``key``; into ``into`` (``[len(rows), *item_shape]``)
        when given: read there directly when ``rows`` are sorted and unique (the sampler's batches)."""
        uniq, inverse = np.unique(rows, return_inverse=True)
        dtype = _torch_dtype_for(src_dtype)
        in_order = uniq.size == rows.size and np.array_equal(uniq, rows)
        if into is not None and in_order:
            out = into
        else:
            out = np.empty((uniq.size, *item_shape), dtype=dtype)
        ds = self._h5()[key]
        direct = self._direct if key == self.x_key and src_dtype == dtype else None
        for a, b, o in _runs(uniq):
            if direct is not None:
                self._read_direct(direct, a, b, out[o : o + (b - a)])
            elif src_dtype == dtype:
                ds.read_direct(out, np.s_[a:b], np.s_[o : o + (b - a)])  # no intermediate copy
            else:
                out[o : o + (b - a)] = ds[a:b]
            self.read_calls += 1
        if key == self.x_key:
            self.rows_read += int(uniq.size)
        if in_order:
            return out
        if into is not None:
            return np.take(out, inverse, axis=0, out=into)
        return out[inverse]

    def _read_direct(self, runs: list[_DirectRun], a: int, b: int, out: np.ndarray) -> None:
        """Rows ``[a, b)`` into ``out`` (contiguous, ``b - a`` rows) with one ``preadv`` per source
        file they span; the GIL is released, so a read-ahead thread overlaps the training step."""
        row_bytes = out.itemsize * int(np.prod(out.shape[1:], dtype=np.int64))
        buf = memoryview(out.reshape(-1).view(np.uint8))
        i = bisect.bisect_right(runs, (a, np.iinfo(np.int64).max)) - 1  # the run holding row a
        done = 0
        while a < b:
            first, end, file, offset, ident = runs[i]
            stop = min(b, end)
            want = (stop - a) * row_bytes
            # opened per read: a set may span more files than a process may hold open
            try:
                fd = os.open(file, os.O_RDONLY)
            except FileNotFoundError as exc:
                raise DataInputError(
                    f"source of rows {a}..{stop - 1} of {self.x_key!r} is gone; re-materialise it or rebuild "
                    f"{self.path.name}",
                    file=file,
                    row=int(a),
                ) from exc
            try:
                st = os.fstat(fd)
                got = os.preadv(fd, [buf[done : done + want]], offset + (a - first) * row_bytes)
            finally:
                os.close(fd)
            if _file_id(st) != ident:
                raise DataInputError(
                    f"rows {a}..{stop - 1} of {self.x_key!r}: the file was replaced after this dataset opened it; "
                    "open the set again (a new dataset, or restart training)",
                    file=file,
                    row=int(a),
                )
            if got != want:
                raise DataInputError(
                    f"read {got} of {want} bytes of rows {a}..{stop - 1} of {self.x_key!r} "
                    f"(a truncated image file?); re-materialise it or rebuild {self.path.name}",
                    file=file,
                    row=int(a),
                )
            self.direct_reads += 1
            if self.check_finite:
                self._check_rows(file, a, stop, out, done)
            done += want
            a, i = stop, i + 1

    def _check_rows(self, file: str, a: int, stop: int, out: np.ndarray, at: int) -> None:
        """Rows ``[a, stop)``, just read to byte ``at`` of ``out``: NaN/inf is an error naming them;
        rows checked before are skipped."""
        assert self._checked is not None
        if self._checked[a:stop].all():
            return
        k = at // (out.itemsize * int(np.prod(out.shape[1:], dtype=np.int64)))
        part = out[k : k + (stop - a)]
        if not _all_finite(part):
            bad = a + np.flatnonzero(~np.isfinite(part.reshape(len(part), -1)).all(axis=1))
            raise DataInputError(
                f"non-finite pixels in rows {bad[:10].tolist()} of {self.x_key!r} (a damaged source file?)",
                file=file,
                row=int(bad[0]),
            )
        self._checked[a:stop] = True

    @property
    def input_dtype(self) -> np.dtype:
        """dtype of a batch's ``"x"`` (what an ``out`` buffer of :meth:`__getitems__` must hold)."""
        return _torch_dtype_for(self._x_dtype)

    def __getitems__(self, positions: Sequence[int], out: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """The batch at ``positions``; with ``out`` (``[len(positions), *sample_shape]`` of
        :attr:`input_dtype`, C-contiguous) ``"x"`` is read into it and shares its memory."""
        rows = self.indices[np.asarray(positions, dtype=np.int64)]
        _check_out(out, (rows.size, *self._sample_shape), self.input_dtype)
        x = self._read_rows(self.x_key, rows, self._sample_shape, self._x_dtype, into=out)
        # direct reads were checked per source file in _read_direct
        if self.check_finite and self._direct is None and not _all_finite(x):
            # the cnn_ready virtual datasets read a missing source file as NaN (their fill value)
            bad = rows[~np.isfinite(x.reshape(len(rows), -1)).all(axis=1)]
            raise DataInputError(
                f"non-finite pixels in rows {bad[:10].tolist()} of {self.x_key!r} (a missing or damaged source file?)",
                file=str(self.path),
                row=int(bad[0]),
            )
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
                out[o : o + (b - a)] = ds[a:b]
        out = out[inverse]
        return out if col is None else out[:, col]

    def group_ids(self) -> np.ndarray | None:
        """Image id of each row (``row // patches_per_image``) for patch datasets, else None."""
        return None if not self.patches_per_image else self.indices // self.patches_per_image


def _target_tensors(targets: Mapping[str, Any], n_rows: int, what: str) -> dict[str, torch.Tensor]:
    """Class targets as int64, the rest float32, each with one value per row (a copy: arrays may be
    read-only views)."""
    out = {}
    for name, arr in targets.items():
        t = arr.clone() if isinstance(arr, torch.Tensor) else torch.as_tensor(np.array(arr))
        t = t.long() if not t.is_floating_point() else t.float()
        if t.shape[0] != n_rows:
            raise ConfigError(f"target {name!r} has {t.shape[0]} rows, {what} {n_rows}")
        out[name] = t
    return out


class ArrayDataset(Dataset):
    """In-memory counterpart of :class:`H5ArrayDataset` (same batches, same interface)."""

    def __init__(
        self,
        x: np.ndarray | torch.Tensor,
        targets: Mapping[str, np.ndarray | torch.Tensor] | None = None,
        indices: Sequence[int] | np.ndarray | slice | range | None = None,
        *,
        patches_per_image: int | None = None,
    ) -> None:
        self.x = torch.as_tensor(x)
        if self.x.dtype != torch.float32:
            self.x = self.x.float()
        self.targets = _target_tensors(targets or {}, int(self.x.shape[0]), "x has")
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

    @property
    def input_dtype(self) -> np.dtype:
        """dtype of a batch's ``"x"`` (what an ``out`` buffer of :meth:`__getitems__` must hold)."""
        return torch.empty(0, dtype=self.x.dtype).numpy().dtype

    def __getitems__(self, positions: Sequence[int], out: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """The batch at ``positions`` (a copy); with ``out`` (``[len(positions), *sample_shape]`` of
        :attr:`input_dtype`, C-contiguous) ``"x"`` is gathered into it and shares its memory."""
        rows = self.indices[np.asarray(positions, dtype=np.int64)]
        r = torch.from_numpy(rows)
        _check_out(out, (rows.size, *self.x.shape[1:]), self.input_dtype)
        x = _empty_batch((rows.size, *self.x.shape[1:]), self.x.dtype) if out is None else torch.from_numpy(out)
        torch.index_select(self.x, 0, r, out=x)
        batch = {"x": x}
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


class CellDataset(ArrayDataset):
    """The ``[F, L]`` cells (a layout-aware model's :class:`~finnex_ml.models.LayoutCells` output)
    of every sample of ``source``, with its targets: the same batches as ``source`` with ``"x"``
    replaced by the cells, and ``"row"`` still ``source``'s rows.

    Why: the layout stem has no parameters, so a trainer that reads each image every epoch and
    recomputes its cells (about a third of a small CNN's step here) repeats the same work epoch
    after epoch and seed after seed. Built in one sequential pass over ``source``; a cell matrix
    is ~46 KB against 3 MB for the image."""

    def __init__(self, source: Any, stem: torch.nn.Module, device: torch.device, batch_size: int = 16) -> None:
        n = len(source)
        cells = torch.empty((n, stem.n_features, stem.sessions), dtype=torch.float32)
        rows = np.empty(n, dtype=np.int64)
        targets: dict[str, list[torch.Tensor]] = {}
        chunks = [range(a, min(n, a + batch_size)) for a in range(0, n, batch_size)]
        # the next batch is read by a background thread while the stem runs on this one (three
        # buffers of 16 images: 150 MB, where the trainer's own image buffers held up to 800 MB)
        batches = (
            PooledBatches(source, chunks, BatchBuffers(3, batch_size), depth=1)
            if accepts_batch_buffer(source)
            else (source.__getitems__(list(c)) for c in chunks)
        )
        with torch.no_grad():
            for i, b in enumerate(batches):  # to its end: the read-ahead thread finishes
                c = chunks[i]
                x = b["x"].to(device).permute(0, 3, 1, 2)
                cells[c.start : c.stop] = stem(x).float().cpu()
                rows[c.start : c.stop] = b["row"].numpy()
                for k, v in b.items():
                    if k not in ("x", "row", "patch_pos"):
                        targets.setdefault(k, []).append(v.clone())
        super().__init__(cells, {k: torch.cat(v) for k, v in targets.items()})
        self.source_rows = rows

    def __getitems__(self, positions: Sequence[int], out: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        batch = super().__getitems__(positions, out)
        batch["row"] = torch.from_numpy(self.source_rows[np.asarray(positions, dtype=np.int64)])
        return batch


# per source dataset object: its CellDataset per (layout, device), so the members of a seed
# ensemble (and the validation pass of each epoch) share one pass over the images
_CELLS: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], CellDataset]] = weakref.WeakKeyDictionary()


def cell_dataset(source: Any, stem: torch.nn.Module, device: torch.device) -> CellDataset:
    """``source``'s :class:`CellDataset` for ``stem``, computed once per source object."""
    memo = _CELLS.setdefault(source, {})
    key = (stem.layout_key, str(device))
    if key not in memo:
        memo[key] = CellDataset(source, stem, device)
    return memo[key]


class PanelDataset(Dataset):
    """Universe samples: (date, ticker) images in the per-date cross-section files.

    ``reader`` gives images by position in its sample index (``read_batch``, grouped by file);
    ``rows`` are this set's positions in that index and ``targets`` one value per row, in order.
    """

    def __init__(self, reader: Any, rows: Sequence[int] | np.ndarray, targets: Mapping[str, np.ndarray]) -> None:
        self.reader = reader
        self.indices = np.asarray(rows, dtype=np.int64)
        self.targets = _target_tensors(targets, int(self.indices.size), "the set has")

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return IMAGE_SHAPE

    @property
    def target_names(self) -> tuple[str, ...]:
        return tuple(self.targets)

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitems__(self, positions: Sequence[int]) -> dict[str, torch.Tensor]:
        pos = np.asarray(positions, dtype=np.int64)
        batch = {"x": torch.from_numpy(np.ascontiguousarray(self.reader.read_batch(self.indices[pos])))}
        p = torch.from_numpy(pos)
        batch.update({k: v[p] for k, v in self.targets.items()})
        batch["row"] = p.clone()
        return batch

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([int(position)]).items()}

    def target_array(self, name: str) -> np.ndarray:
        if name not in self.targets:
            raise ConfigError(f"no target {name!r} (have {sorted(self.targets)})")
        return self.targets[name].numpy()

    def group_ids(self) -> np.ndarray | None:
        return None


class BagDataset(Dataset):
    """Patch mode: each sample is the bag of one image's patches, read from a patch dataset
    (:class:`H5ArrayDataset` or :class:`ArrayDataset` built with ``patches_per_image``).

    A batch holds ``"x"`` ``[b, N, 32, 32, 3]``, ``"patch_pos"`` ``[b, N]``, the image's targets
    (one value per bag: its patches carry the image's label) and ``"row"`` = the image id
    (``first patch row // N``). The patch dataset's rows must be whole images, in order (what the
    ``cnn_ready`` set files and their splits give); a bag is one contiguous read of N rows.
    """

    def __init__(self, patches: Any) -> None:
        ppi = getattr(patches, "patches_per_image", None)
        where = str(getattr(patches, "path", type(patches).__name__))
        if not ppi:
            raise ConfigError(
                f"{where}: input_mode='patch' trains on bags of an image's patches; build the patch "
                f"dataset with patches_per_image={PATCHES_PER_IMAGE}"
            )
        idx = np.asarray(patches.indices, dtype=np.int64)
        n = idx.size // ppi
        whole = idx.size % ppi == 0 and np.array_equal(
            idx.reshape(n, ppi), (idx[::ppi] // ppi * ppi)[:, None] + np.arange(ppi)
        )
        if not whole:
            raise ConfigError(
                f"{where}: the patch rows are not whole images of {ppi} patches in grid order "
                f"({idx.size} rows); select whole images (rows k*{ppi} .. k*{ppi}+{ppi - 1})"
            )
        self.patches, self.patches_per_image = patches, int(ppi)
        self.images = idx[::ppi] // ppi  # image id of each bag
        self.path = getattr(patches, "path", None)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.patches_per_image, *self.patches.sample_shape)

    @property
    def target_names(self) -> tuple[str, ...]:
        return tuple(self.patches.target_names)

    def __len__(self) -> int:
        return int(self.images.size)

    def _per_image(self, name: str, values: np.ndarray, images: np.ndarray) -> np.ndarray:
        per = values.reshape(len(images), self.patches_per_image, *values.shape[1:])
        first = per[:, :1]
        bad = ~np.all((per == first) | (np.isnan(per) & np.isnan(first)), axis=tuple(range(1, per.ndim)))
        if bad.any():
            raise DataInputError(
                f"target {name!r} differs between the patches of image {int(images[bad][0])}: a bag needs "
                "one label per image (were the patch rows shuffled?)",
                file=str(self.path) if self.path else None,
            )
        return per[:, 0]

    def __getitems__(self, positions: Sequence[int]) -> dict[str, torch.Tensor]:
        pos = np.asarray(positions, dtype=np.int64)
        ppi = self.patches_per_image
        rows = (pos[:, None] * ppi + np.arange(ppi)).reshape(-1)  # positions in the patch dataset
        flat = self.patches.__getitems__(rows)
        b = pos.size
        batch = {"x": flat["x"].reshape(b, ppi, *flat["x"].shape[1:])}
        for name in self.target_names:
            batch[name] = torch.from_numpy(
                np.ascontiguousarray(self._per_image(name, flat[name].numpy(), self.images[pos]))
            )
        batch["patch_pos"] = flat["patch_pos"].reshape(b, ppi)
        batch["row"] = torch.from_numpy(self.images[pos].copy())
        return batch

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([int(position)]).items()}

    def target_array(self, name: str) -> np.ndarray:
        return self._per_image(name, np.asarray(self.patches.target_array(name)), self.images)

    def group_ids(self) -> np.ndarray | None:
        return None


def as_bags(dataset: Any) -> BagDataset:
    """``dataset`` as bags of its images' patches (a :class:`BagDataset` is returned as it is)."""
    return dataset if isinstance(dataset, BagDataset) else BagDataset(dataset)


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

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        run_length: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        block_size: int | None = None,
        window: int = 8,
    ) -> None:
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
            spans = [(int(b) * B, min((int(b) + 1) * B, self.n)) for b in blocks[g : g + self.window]]
            parts += self._shuffled_runs(spans, rng)
        return np.concatenate(parts)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order()
        for i in range(0, self.n, self.batch_size):
            b = order[i : i + self.batch_size]
            if self.drop_last and b.size < self.batch_size:
                break
            yield np.sort(b).tolist() if self.shuffle else b.tolist()


def _identity_collate(batch: Any) -> Any:
    return batch  # __getitems__ already returns a batched dict


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    run_length: int = 1,
    block_size: int | None = None,
    window: int = 8,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over :class:`BlockBatchSampler` batches (call ``loader.batch_sampler.set_epoch``).

    With ``num_workers > 0`` the workers are persistent and prefetch 2 batches each; the sampler
    runs in the main process, so the batch order does not depend on ``num_workers``.
    """
    sampler = BlockBatchSampler(
        len(dataset),
        batch_size,
        run_length=run_length,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
        block_size=block_size,
        window=window,
    )
    kw: dict[str, Any] = {}
    if num_workers > 0:
        kw.update(persistent_workers=True, prefetch_factor=2)
    # a private generator: DataLoader otherwise draws its worker base seed from the global RNG
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=_identity_collate,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
        **kw,
    )


_END = object()  # a read-ahead thread's last item


def _drain(q: queue.Queue[Any]) -> Iterator[Any]:
    """The items a read-ahead thread queued, up to its end marker; an exception it queued is
    raised here, in the consumer."""
    while True:
        item = q.get()
        if item is _END:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


class _ThreadPrefetcher:
    """Iterate ``iterable`` in a background thread, ``depth`` items ahead.

    Torch ops release the GIL, so HDF5 reads (and decompression) overlap the training step
    without worker processes and their copies through shared memory.
    """

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
            self._q.put(_END)
        except BaseException as exc:  # re-raised in the consumer
            self._q.put(exc)

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from _drain(self._q)
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._q.get_nowait()
            except queue.Empty:
                self._thread.join(timeout=0.05)


def accepts_batch_buffer(dataset: Any) -> bool:
    """True when ``dataset.__getitems__`` can read a batch's inputs into a given buffer (``out=``)."""
    return isinstance(dataset, (H5ArrayDataset, ArrayDataset))


class BatchBuffers:
    """A fixed set of ``count`` reusable input buffers of up to ``rows`` samples each.

    Why: a fresh batch of 32 mega-images is 100 MB of new memory, and the kernel zeroes and maps
    every page of it on first write; reading into a buffer already mapped costs only the copy
    (measured here: 125 ms for a fresh 100 MB copy against 45 ms into a reused buffer, on one
    core). Buffers come from numpy (huge pages, see :func:`_empty_batch`) and are allocated on
    first use, so the memory held is at most ``count * rows`` samples for the buffers' lifetime.
    """

    def __init__(self, count: int, rows: int) -> None:
        if count < 1 or rows < 1:
            raise ValueError("count and rows must be >= 1")
        self.count, self.rows = int(count), int(rows)
        self._arrays: list[np.ndarray | None] = [None] * self.count
        self.allocations = 0  # buffers allocated so far (a test checks that it stays bounded)

    def get(self, slot: int, n: int, sample_shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The first ``n`` samples of buffer ``slot`` (a C-contiguous view)."""
        a = self._arrays[slot]
        if a is None or a.shape[0] < n or a.shape[1:] != tuple(sample_shape) or a.dtype != dtype:
            a = self._arrays[slot] = np.empty((max(n, self.rows), *sample_shape), dtype=dtype)
            self.allocations += 1
        return a[:n]

    def release(self) -> None:
        self._arrays = [None] * self.count


class PooledBatches:
    """The batches of ``dataset`` at the positions ``batches`` yields, in that order, with each
    batch's inputs read into one of the ``buffers`` (see :class:`BatchBuffers`).

    ``depth`` > 0: a background thread reads up to ``depth`` batches ahead (``os.preadv`` and
    torch release the GIL, so the read overlaps the training step), double-buffered through
    ``depth + 2`` buffers: one the consumer holds, ``depth`` waiting, one being filled.
    ``depth`` = 0: read in the caller's thread into one buffer.

    A batch's ``"x"`` shares its buffer's memory and is valid until the next batch is asked for
    (the trainer is done with a batch by then); its buffer is then filled again. The batches,
    their order and their bytes are those of ``dataset.__getitems__(positions)``, whatever
    ``depth``: training gives the same weights with or without read-ahead (a test checks it).
    """

    def __init__(self, dataset: Any, batches: Iterable[Sequence[int]], buffers: BatchBuffers, depth: int) -> None:
        self.dataset, self.depth, self.buffers = dataset, max(0, int(depth)), buffers
        need = self.depth + 2 if self.depth else 1
        if buffers.count < need:
            raise ValueError(f"read-ahead depth {self.depth} needs {need} buffers, the pool has {buffers.count}")
        self._shape = tuple(dataset.sample_shape)
        self._dtype = np.dtype(dataset.input_dtype)
        self._batches = iter(batches)
        self._thread: threading.Thread | None = None
        if self.depth:
            self._q: queue.Queue[Any] = queue.Queue(maxsize=self.depth)
            self._free: queue.Queue[int] = queue.Queue()
            for slot in range(need):
                self._free.put(slot)
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def _read(self, positions: Sequence[int], slot: int) -> dict[str, torch.Tensor]:
        out = self.buffers.get(slot, len(positions), self._shape, self._dtype)
        return self.dataset.__getitems__(positions, out=out)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for positions in self._batches:
                slot = None
                while slot is None:
                    if self._stop.is_set():
                        return
                    try:
                        slot = self._free.get(timeout=0.1)
                    except queue.Empty:
                        continue
                if not self._put((slot, self._read(positions, slot))):
                    return
            self._put(_END)
        except BaseException as exc:  # re-raised in the consumer
            self._put(exc)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if not self.depth:
            for positions in self._batches:
                yield self._read(positions, 0)
            return
        try:
            for slot, batch in _drain(self._q):
                yield batch
                del batch
                self._free.put(slot)  # asked for the next batch: this one's buffer may be refilled
        finally:
            self.close()

    def close(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._q.get_nowait()
            except queue.Empty:
                self._thread.join(timeout=0.05)
