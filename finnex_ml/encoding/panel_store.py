"""Universe-mode HDF5 store: one compressed file per date holding that date's cross-section.

Layout under ``root`` (the same date sharding as :mod:`finnex_ml.encoding.store`)::

    {root}/{YYYY}/{MM}/{YYYY-MM-DD}.h5        every ticker's image of that date, one file
    {root}/metadata/...                       layout spec, as store.write_spec / read_spec

Each per-date file holds, for the ``n`` tickers trading that day (rows sorted by ticker):

* ``images``: float32 [n, 512, 512, 3], chunked ``PANEL_CHUNKS`` = (1, 32, 512, 3) (one 32-pixel
  patch row of one image per chunk, as store.CHUNKS), filtered by ``compression``;
* ``tickers``: [n] variable-length UTF-8 strings, strictly ascending (unique);
* ``missing``: uint8 [n, L, F] (1 where the normalised cell was filled), same filter;
* ``norm_center``, ``norm_scale``: float64 [n, F]; ``normalization_params_hash``: [n] strings;
* attributes ``date``, ``n_tickers``, ``spec_hash``, ``normalization_hash``, ``feature_count``,
  ``sessions``, ``compression``, ``format_version``, ``code_version`` (and the caller's ``attrs``).

Writes stream: ``write_cross_section`` holds one image at a time (the images dataset grows by one
row per ticker), so a 500-ticker day needs ~3 MB of image memory, not 1.5 GB (the masks and norm
stats, ~12 KB per ticker at the default layout, are collected and written at the end). Writes are atomic
(``finnex_ml.paths.atomic_path``): a failure midway leaves no file and keeps an existing one.

Why compressed, and which filter
--------------------------------
Uncompressed a cross-section costs 3 MB per image: 20 tickers x 5 years ~ 75 GB. The budget is
<= 5 GB for the default demo (24 tickers x 1 year) and <= 20 GB for 20 tickers x 5 years, so the
store must be >= ~4x smaller than raw. The images are piecewise constant (bands of identical
pixels), so every candidate clears that easily (10-35x); the choice is about speed. The rule:
among filters at <= 1/4 of raw, the least CPU time per image to write it and read it back at
random (the training loader's pattern); within 15% of that counts as a tie, and among ties the
smallest file wins. CPU rather than wall time because on the shared 2-core dev VM other users'
load moved wall times by up to ~3x in bursts (CPU / wall ~0.4 over a run), unevenly between
candidates. Measured by ``benchmarks/bench_panel_store.py`` (committed run in
``benchmarks/panel_store.md``) on 240 distinct real encoder images as 24 tickers x 10 dates; wall
medians per image, write / full cross-section read / random single read (ms), CPU write + random
(ms), MB per image and x smaller than raw. Baseline in the same run, interleaved date by date: a
bare numpy -> h5py write of the same cross-section (contiguous, no temp file, no fsync), 5.8 ms
write (page-cache speed varied 1-11 ms between blocks), 1.4 ms full read, 2.2 ms random read:

    none        10.8 /  2.4 /  2.9   CPU  3.1 + 2.4   3.016 MB   1x   (fsync of 3 MB per image)
    lz4          4.3 /  2.1 /  3.1   CPU  3.5 + 3.0   0.201 MB  15x   <- DEFAULT
    blosc-lz4    5.4 /  4.6 /  6.8   CPU  3.2 + 3.3   0.246 MB  12x   tied with lz4 on CPU, 22% bigger
    zstd         9.1 /  4.8 /  5.5   CPU  4.8 + 3.8   0.085 MB  35x   smallest; ~1.35x lz4's CPU
    blosc-zstd  13.0 /  3.6 /  4.7   CPU  6.2 + 4.5   0.129 MB  23x
    gzip        31.1 / 13.5 / 15.5   CPU 15.0 + 7.8   0.198 MB  15x   (level 1; no plugin needed)
    lzf         37.4 / 28.4 / 28.0   CPU 17.9 + 14.9  0.287 MB  10x

lz4 and blosc-lz4 cost the same CPU (6.4 ms per image written and read back); lz4 wins the tie on
size and is the simpler filter (the registered HDF5 LZ4 filter 32004, no meta-compressor). In three
earlier runs ranked by wall clock, blosc-lz4 was ahead of lz4 by 4%, 10% and 34% (in the last, lz4's
blocks were hit by load: its paired ratio to the interleaved bare write was better than
blosc-lz4's), in the committed run lz4 was ahead on wall time; zstd was third or fourth in all. At lz4's size a ticker-year is ~0.053 GB: the demo
~1.3 GB, 20 tickers x 5 years ~5.3 GB, 500 tickers x 5 years ~130 GB. ``zstd`` is the choice
where disk matters more than ~2 ms of CPU per image (2.4x smaller again). The Blosc variants use
no byte shuffle: on these images shuffle made every filter larger and slower (piecewise-constant
float32 runs compress better as whole 4-byte words). All but ``none``, ``gzip`` and ``lzf`` need
``hdf5plugin`` to read (imported here); ``gzip`` and ``none`` files open in any HDF5 tool.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (registers the Blosc / LZ4 / Zstd filters for readers too)
import numpy as np
import polars as pl

import finnex_ml
from finnex_ml.encoding.encoder import EncodedImage
from finnex_ml.encoding.layout import LayoutSpec
from finnex_ml.encoding.normalize import NormConfig, _config_hash
from finnex_ml.encoding.store import _create_attrs, list_dates
from finnex_ml.errors import ConfigError, DataInputError
from finnex_ml.geometry import IMAGE_SHAPE
from finnex_ml.paths import as_date as _as_date
from finnex_ml.paths import atomic_path, date_shard_path

PANEL_FORMAT_VERSION = 1
PANEL_CHUNKS = (1, 32, 512, 3)
PANEL_COMPRESSIONS = ("none", "lz4", "zstd", "blosc-lz4", "blosc-zstd", "gzip", "lzf")
DEFAULT_PANEL_COMPRESSION = "lz4"  # see the module docstring and benchmarks/panel_store.md
_RESERVED_ATTRS = frozenset(
    {
        "date",
        "n_tickers",
        "spec_hash",
        "normalization_hash",
        "feature_count",
        "sessions",
        "compression",
        "format_version",
        "code_version",
    }
)


def panel_path(root: Path | str, d: date | str) -> Path:
    """``{root}/{YYYY}/{MM}/{date}.h5``: the file of one date's cross-section."""
    return date_shard_path(root, d)


def compression_kwargs(compression: str) -> dict[str, Any]:
    """``create_dataset`` keyword arguments of a ``PANEL_COMPRESSIONS`` name."""
    if compression == "none":
        return {}
    if compression == "lz4":
        return dict(hdf5plugin.LZ4())
    if compression == "zstd":
        return dict(hdf5plugin.Zstd(clevel=1))
    if compression == "blosc-lz4":
        return dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.NOSHUFFLE))
    if compression == "blosc-zstd":
        return dict(hdf5plugin.Blosc(cname="zstd", clevel=1, shuffle=hdf5plugin.Blosc.NOSHUFFLE))
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 1}
    if compression == "lzf":
        return {"compression": "lzf"}
    raise ConfigError(f"compression must be one of {PANEL_COMPRESSIONS}, got {compression!r}")


def _sorted_items(
    items: Iterable[tuple[str, EncodedImage]] | Mapping[str, EncodedImage],
) -> Iterable[tuple[str, EncodedImage]]:
    """Items in memory already (a mapping, list or tuple) are sorted here for free; an iterator
    is consumed lazily and must arrive sorted (checked while writing)."""
    if isinstance(items, Mapping):
        return sorted(items.items(), key=lambda kv: str(kv[0]))
    if isinstance(items, (list, tuple)):
        return sorted(items, key=lambda kv: str(kv[0]))
    return items


def write_cross_section(
    root: Path | str,
    d: date | str,
    items: Iterable[tuple[str, EncodedImage]] | Mapping[str, EncodedImage],
    *,
    spec: LayoutSpec,
    norm_config: NormConfig,
    compression: str = DEFAULT_PANEL_COMPRESSION,
    attrs: dict[str, Any] | None = None,
    durable: bool = True,
) -> Path:
    """Atomically write date ``d``'s cross-section, ``(ticker, EncodedImage)`` pairs, to
    ``panel_path(root, d)`` (``durable=False``: without the fsyncs, for a staged file the
    caller fsyncs before renaming it into place; see ``paths.atomic_path``).

    Streams: one image is held at a time. A mapping, list or tuple is sorted by ticker first; any
    other iterable must yield tickers in strictly ascending order (ValueError otherwise, naming
    the pair and the date). Duplicate tickers, an empty cross-section, an image of another date
    or of the wrong shape are ValueErrors naming the date (and ticker); nothing is written then.
    """
    d = _as_date(d)
    kwargs = compression_kwargs(compression)
    extra = dict(attrs or {})
    clash = sorted(_RESERVED_ATTRS & extra.keys())
    if clash:
        raise ValueError(f"attrs {clash} are set by write_cross_section itself")
    L, F = spec.sessions, spec.n_features
    tickers: list[str] = []
    missing: list[np.ndarray] = []
    centers: list[np.ndarray] = []
    scales: list[np.ndarray] = []
    hashes: list[str] = []
    final = panel_path(root, d)
    with atomic_path(final, durable=durable) as tmp:
        with h5py.File(tmp, "w", track_order=True) as f:
            images = f.create_dataset(
                "images",
                shape=(0, *IMAGE_SHAPE),
                maxshape=(None, *IMAGE_SHAPE),
                dtype=np.float32,
                chunks=PANEL_CHUNKS,
                track_times=False,
                **kwargs,
            )
            for ticker, item in _sorted_items(items):
                _check_item(d, ticker, item, tickers[-1] if tickers else None, L, F)
                i = len(tickers)
                images.resize(i + 1, axis=0)
                images[i] = np.ascontiguousarray(item.image)
                tickers.append(ticker)
                # copies: a stream may reuse its buffers (encode_dates(reuse_buffer=True))
                missing.append(np.array(item.missing, dtype=np.uint8, copy=True))
                centers.append(np.array(item.center, dtype=np.float64, copy=True))
                scales.append(np.array(item.scale, dtype=np.float64, copy=True))
                hashes.append(str(item.params_hash))
            n = len(tickers)
            if n == 0:
                raise ValueError(f"empty cross-section for {d.isoformat()}: no (ticker, image) items to write")
            str_dt = h5py.string_dtype()
            f.create_dataset("tickers", data=np.array(tickers, dtype=object), dtype=str_dt, track_times=False)
            mask_chunks = {"chunks": (1, L, F), **kwargs} if kwargs else {}  # one ticker's mask per chunk
            f.create_dataset("missing", data=np.stack(missing), track_times=False, **mask_chunks)
            f.create_dataset("norm_center", data=np.stack(centers), track_times=False)
            f.create_dataset("norm_scale", data=np.stack(scales), track_times=False)
            f.create_dataset(
                "normalization_params_hash", data=np.array(hashes, dtype=object), dtype=str_dt, track_times=False
            )
            _create_attrs(
                f,
                {
                    "date": d.isoformat(),
                    "n_tickers": n,
                    "spec_hash": spec.spec_hash(),
                    "normalization_hash": _config_hash(norm_config),
                    "feature_count": F,
                    "sessions": L,
                    "compression": compression,
                    "format_version": PANEL_FORMAT_VERSION,
                    "code_version": finnex_ml.__version__,
                    **extra,
                },
            )
    return final


def _check_item(d: date, ticker: Any, item: Any, prev: str | None, L: int, F: int) -> None:
    day = d.isoformat()
    if not isinstance(ticker, str) or not ticker:
        raise ValueError(f"{day}: ticker must be a non-empty str, got {ticker!r}")
    if prev is not None and ticker <= prev:
        if ticker == prev:
            raise ValueError(f"duplicate ticker {ticker!r} in the cross-section of {day}")
        raise ValueError(
            f"tickers of {day} must arrive in ascending order (or pass a list / dict to have them sorted): "
            f"{ticker!r} came after {prev!r}"
        )
    if not isinstance(item, EncodedImage):
        raise ValueError(f"{day} {ticker}: expected an EncodedImage, got {type(item).__name__}")
    if _as_date(item.date) != d:
        raise ValueError(f"{day} {ticker}: the image is of {item.date}, not of the cross-section's date")
    img = item.image
    if not isinstance(img, np.ndarray) or img.shape != IMAGE_SHAPE or img.dtype != np.float32:
        raise ValueError(
            f"{day} {ticker}: image must be float32 {IMAGE_SHAPE}, got {getattr(img, 'dtype', None)} {np.shape(img)}"
        )
    if np.shape(item.missing) != (L, F):
        raise ValueError(f"{day} {ticker}: missing mask shape {np.shape(item.missing)} != {(L, F)}")
    for name in ("center", "scale"):
        if np.shape(getattr(item, name)) != (F,):
            raise ValueError(f"{day} {ticker}: {name} shape {np.shape(getattr(item, name))} != {(F,)}")


# ---- reading ------------------------------------------------------------------------------


def _open(root: Path | str, d: date | str) -> tuple[h5py.File, Path, list[str]]:
    d = _as_date(d)
    path = panel_path(root, d)
    if not path.exists():
        raise DataInputError(
            f"no universe cross-section stored for {d.isoformat()}; materialise the universe mega-images for "
            f"that date first",
            file=str(path),
            date=d.isoformat(),
        )
    f = h5py.File(path, "r")
    try:
        tickers = _tickers(f)  # also checks it is a panel file, not e.g. a single-ticker store's
    except BaseException:
        f.close()
        raise
    return f, path, tickers


def _tickers(f: h5py.File) -> list[str]:
    if "tickers" not in f or "images" not in f:
        raise DataInputError(
            "not a universe cross-section file (no 'tickers' / 'images' dataset; a single-ticker store's file?)",
            file=str(f.filename),
            date=str(f.attrs.get("date", "")) or None,
        )
    return [t.decode() if isinstance(t, bytes) else str(t) for t in f["tickers"][...]]


def _rows(stored: list[str], path: Path, d: date | str, tickers: Sequence[str]) -> list[int]:
    pos = {t: i for i, t in enumerate(stored)}
    rows = []
    for t in tickers:
        if t not in pos:
            raise DataInputError(
                f"ticker {t!r} is not in the cross-section of {_as_date(d).isoformat()} ({len(pos)} tickers)",
                file=str(path),
                date=_as_date(d).isoformat(),
            )
        rows.append(pos[t])
    return rows


def read_cross_section(
    root: Path | str, d: date | str, tickers: Sequence[str] | None = None
) -> tuple[list[str], np.ndarray]:
    """``(tickers, images)`` of date ``d``: every stored ticker in ascending order, or ``tickers``
    in the order given; images float32 [k, 512, 512, 3]. An unknown ticker or a missing file is a
    DataInputError naming the date, the file (and the ticker)."""
    if isinstance(tickers, str):
        tickers = [tickers]
    f, path, stored = _open(root, d)
    with f:
        ds = f["images"]
        if tickers is None:
            return stored, ds[...]
        want = list(tickers)
        rows = _rows(stored, path, d, want)
        out = np.empty((len(rows), *IMAGE_SHAPE), dtype=np.float32)
        for i, r in enumerate(rows):
            ds.read_direct(out, source_sel=np.s_[r], dest_sel=np.s_[i])
        return want, out


def read_panel_record(root: Path | str, d: date | str, ticker: str) -> dict[str, Any]:
    """Image, missing mask (bool), norm_center / norm_scale, the file's attributes and the
    ticker's ``ticker``, ``row``, ``normalization_params_hash`` and ``missing_cells``."""
    f, path, stored = _open(root, d)
    with f:
        (row,) = _rows(stored, path, d, [ticker])
        out: dict[str, Any] = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        out["ticker"], out["row"] = ticker, row
        out["image"] = f["images"][row]
        out["missing"] = f["missing"][row].astype(bool)
        out["norm_center"] = f["norm_center"][row]
        out["norm_scale"] = f["norm_scale"][row]
        h = f["normalization_params_hash"][row]
        out["normalization_params_hash"] = h.decode() if isinstance(h, bytes) else str(h)
        out["missing_cells"] = int(np.count_nonzero(out["missing"]))
    return out


_INDEX_SCHEMA = {"date": pl.Date, "ticker": pl.String, "row": pl.Int32}


def panel_index(root: Path | str, start: date | str | None = None, end: date | str | None = None) -> pl.DataFrame:
    """One row per stored (date, ticker) in [start, end]: columns ``date``, ``ticker`` and ``row``
    (its row in that date's file), sorted by date then ticker. Reads only the ``tickers``
    datasets; temp files of unfinished writes are never listed."""
    dates, tickers, rows = [], [], []
    for d in list_dates(root, start, end):
        with h5py.File(panel_path(root, d), "r") as f:
            ts = _tickers(f)
        dates.extend([d] * len(ts))
        tickers.extend(ts)
        rows.extend(range(len(ts)))
    return pl.DataFrame({"date": dates, "ticker": tickers, "row": rows}, schema=_INDEX_SCHEMA)


class PanelReader:
    """Random access to stored images by sample: sample ``i`` is row ``i`` of ``index`` (a
    ``panel_index`` frame or a filtered / reordered subset of one, default the whole store).

    Keeps up to ``max_open`` h5py files open (LRU). Safe in a torch DataLoader worker: handles
    are opened lazily in the process that reads, dropped on pickling and after a fork (detected by
    the process id), so each worker opens its own. Each row's ticker is checked against the file
    when read (a file rewritten since the index was built is a DataInputError, not a wrong image).
    """

    def __init__(self, root: Path | str, index: pl.DataFrame | None = None, *, max_open: int = 8) -> None:
        self.root = Path(root)
        idx = panel_index(root) if index is None else index
        lacking = {"date", "ticker", "row"} - set(idx.columns)
        if lacking:
            raise ConfigError(f"index lacks column(s) {sorted(lacking)}")
        self.dates: list[date] = idx["date"].to_list()
        self.tickers: list[str] = idx["ticker"].to_list()
        self.rows = idx["row"].to_numpy().astype(np.int64)
        self.max_open = max(1, int(max_open))
        self._files: OrderedDict[date, tuple[h5py.File, list[str]]] = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.rows)

    def _file(self, d: date) -> tuple[h5py.File, list[str]]:
        if self._pid != os.getpid():  # forked: the parent's handles are not ours to use or close
            self._files = OrderedDict()
            self._pid = os.getpid()
        hit = self._files.get(d)
        if hit is not None:
            self._files.move_to_end(d)
            return hit
        f, _, tickers = _open(self.root, d)
        entry = (f, tickers)
        self._files[d] = entry
        while len(self._files) > self.max_open:
            _, (old, _) = self._files.popitem(last=False)
            old.close()
        return entry

    def _row(self, i: int, tickers: list[str]) -> int:
        r, t = int(self.rows[i]), self.tickers[i]
        if not (0 <= r < len(tickers)) or tickers[r] != t:
            d = self.dates[i]
            raise DataInputError(
                f"sample {i}: row {r} of {d.isoformat()} is not ticker {t!r} (file rewritten since the index was built?)",
                file=str(panel_path(self.root, d)),
                date=d.isoformat(),
            )
        return r

    def _check_index(self, i: int) -> int:
        n = len(self)
        j = int(i) + n if int(i) < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"sample {i} out of range for {n} samples")
        return j

    def __getitem__(self, i: int) -> np.ndarray:
        i = self._check_index(i)
        f, tickers = self._file(self.dates[i])
        out = np.empty(IMAGE_SHAPE, dtype=np.float32)
        f["images"].read_direct(out, source_sel=np.s_[self._row(i, tickers)])
        return out

    def read_batch(self, indices: Sequence[int]) -> np.ndarray:
        """float32 [b, 512, 512, 3] of samples ``indices`` (in that order); reads are grouped by
        file (each file opened once per batch, its rows read in ascending order)."""
        idx = [self._check_index(i) for i in indices]
        out = np.empty((len(idx), *IMAGE_SHAPE), dtype=np.float32)
        by_date: dict[date, list[tuple[int, int]]] = {}
        for k, i in enumerate(idx):
            by_date.setdefault(self.dates[i], []).append((i, k))
        for d, pairs in by_date.items():
            f, tickers = self._file(d)
            ds = f["images"]
            for r, k in sorted((self._row(i, tickers), k) for i, k in pairs):
                ds.read_direct(out, source_sel=np.s_[r], dest_sel=np.s_[k])
        return out

    def close(self) -> None:
        if self._pid == os.getpid():
            for f, _ in self._files.values():
                f.close()
        self._files = OrderedDict()

    def __enter__(self) -> PanelReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_files"] = None  # open h5py files do not pickle; the receiver opens its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._files = OrderedDict()
        self._pid = os.getpid()


__all__ = [
    "DEFAULT_PANEL_COMPRESSION",
    "PANEL_CHUNKS",
    "PANEL_COMPRESSIONS",
    "PanelReader",
    "compression_kwargs",
    "panel_index",
    "panel_path",
    "read_cross_section",
    "read_panel_record",
    "write_cross_section",
]
