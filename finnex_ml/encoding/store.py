"""HDF5 storage of mega-images: one file per date, atomic writes, lazy range views (VDS).

Layout under ``root``::

    {root}/{YYYY}/{MM}/{YYYY-MM-DD}.h5        one image per file (parallel writers never share one)
    {root}/metadata/channel_encoding_spec.json  the encoder's spec, plus ``encoder`` (its registry name)
    {root}/metadata/normalization_parameters.json
    {root}/.vds_cache/range_*.h5              virtual datasets built by open_range (disposable)

Each per-date file holds

* ``image``: float32 of the spec's shape ((512, 512, 3) for the default ``tiles`` encoder).
  ``DEFAULT_COMPRESSION`` is None: stored uncompressed and contiguous (3 MB, ~0.74 GB per year
  of 252 sessions). With ``compression="gzip"`` (level 1) or ``"lzf"`` it is chunked
  (32, 512, 3) (one 32-pixel patch row per chunk) and ~14x (gzip) or
  ~10x (lzf) smaller, because the images are piecewise constant. Why uncompressed by default:
  the issue's target is a whole encode + write stage at >= 0.5x a bare numpy + h5py write of the
  same bytes, i.e. at most ~2-3 ms per image here, and one core needs ~6-7 ms just to deflate or
  lzf-compress 3 MB, so no compressed store can get near it. Measured on the 2-core dev VM
  (benchmarks/bench_mega_images.py), ms per image write / read / MB on disk: none 2.3 / 0.5 /
  3.02 (the bare write alone: 1.0-1.5); lzf ~8 / 4.1 / 0.30; gzip-1 ~8.7 / 4.4 / 0.21. Training
  reads are ~8x faster uncompressed too. Pass ``compression="gzip"`` (``MegaImageIOManager``
  config ``compression: gzip``) where disk matters more, e.g. an archive: standard deflate,
  readable by any HDF5 tool (lzf is an h5py-only filter) and smaller than lzf;
* ``missing``: uint8 [L, F], 1 where the normalised cell was filled (see normalize.py); gzip-1
  when the image is compressed;
* ``norm_center``, ``norm_scale``: float64 [F], the trailing statistics at the image date
  (with every date stored, these give the statistics of every column of every image);
* attributes ``date``, ``spec_hash``, ``normalization_hash`` (config), ``normalization_params_hash``
  (per date), ``feature_count``, ``sessions``, ``missing_cells``, ``code_version``, ``format_version``.

A write goes to a temp file in the target folder and is renamed over the final name only once
complete and closed (``finnex_ml.paths.atomic_path``): a crash leaves the previous file intact and
at most a stray ``.{name}.*.tmp`` file, which readers never list.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import h5py
import numpy as np

import finnex_ml
from finnex_ml.encoding.encoder import EncodedImage
from finnex_ml.encoding.encoders import DEFAULT_ENCODER, ImageEncoder, ImageSpec, create_encoder
from finnex_ml.encoding.normalize import NormConfig, _config_hash, normalization_parameters
from finnex_ml.errors import ConfigError, DataInputError
from finnex_ml.geometry import IMAGE_SHAPE  # noqa: F401  (re-exported)
from finnex_ml.paths import as_date as _as_date
from finnex_ml.paths import atomic_path, date_shard_path, resolve_under

FORMAT_VERSION = 1
CHUNKS = (32, 512, 3)
DEFAULT_COMPRESSION: str | None = None  # see the module docstring
DEFAULT_GZIP_LEVEL = 1
SPEC_FILE = "channel_encoding_spec.json"
NORM_FILE = "normalization_parameters.json"
METADATA_DIR = "metadata"
VDS_DIR = ".vds_cache"
_FILE_RE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.h5$")


def image_path(root: Path | str, d: date | str) -> Path:
    return date_shard_path(root, d)


def _compression_kwargs(compression: str | None, level: int | None) -> dict[str, Any]:
    if compression is None:
        return {}
    if compression == "lzf":
        return {"compression": "lzf"}
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": DEFAULT_GZIP_LEVEL if level is None else level}
    raise ConfigError(f"compression must be None, 'lzf' or 'gzip', got {compression!r}")


def _write_payload(f: h5py.File, image: np.ndarray, compression: str | None, level: int | None) -> None:
    # uncompressed images are stored contiguous, like a bare write: one 3 MB write, no chunk
    # index; a row slab is still one contiguous read. Filters need chunks (one patch row each).
    if compression is None:
        _new_dataset(f, "image", image)
    else:
        # one 32-row slab per chunk: (32, 512, 3) for tiles; a smaller image of another encoder fits
        chunks = (min(CHUNKS[0], image.shape[0]), *image.shape[1:])
        f.create_dataset(
            "image", data=image, chunks=chunks, track_times=False, **_compression_kwargs(compression, level)
        )


def _write_metadata(
    f: h5py.File,
    attrs: dict[str, Any],
    missing: np.ndarray | None,
    center: np.ndarray | None,
    scale: np.ndarray | None,
    compress_missing: bool = True,
) -> None:
    if missing is not None:
        mask = np.asarray(missing, dtype=np.uint8)
        if compress_missing:  # matters next to a 0.2 MB compressed image, not next to 3 MB raw
            f.create_dataset("missing", data=mask, track_times=False, compression="gzip", compression_opts=1)
        else:
            _new_dataset(f, "missing", mask)
    if center is not None:
        _new_dataset(f, "norm_center", np.asarray(center, dtype=np.float64))
    if scale is not None:
        _new_dataset(f, "norm_scale", np.asarray(scale, dtype=np.float64))
    _create_attrs(f, attrs)


# Per-object costs dominate a 3 MB write: h5py's high-level create_dataset / attrs[k] = v spend
# ~100 / ~60 us each in Python (property lists, a temporary attribute renamed into place to
# allow replacing one), against ~1 ms for the image bytes. A new file needs neither, so these
# two helpers call the low-level API with the same creation properties the high-level calls use
# (no timestamps: files must be byte-identical across runs; tests compare them).
_DCPL = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
_DCPL.set_obj_track_times(False)
_SCALAR = h5py.h5s.create(h5py.h5s.SCALAR)


def _new_dataset(f: h5py.File, name: str, data: np.ndarray) -> None:
    """A contiguous, unfiltered dataset ``name`` = ``data`` (as ``f.create_dataset(name,
    data=data, track_times=False)`` stores it)."""
    arr = np.ascontiguousarray(data)
    space = h5py.h5s.create_simple(arr.shape)
    dset = h5py.h5d.create(f.id, name.encode(), h5py.h5t.py_create(arr.dtype), space, dcpl=_DCPL)
    dset.write(h5py.h5s.ALL, h5py.h5s.ALL, arr)


def _create_attrs(obj: h5py.HLObject, attrs: dict[str, Any]) -> None:
    """Scalar str / int attributes on a new object, stored as ``obj.attrs[k] = v`` stores them
    (variable-length UTF-8 strings, int64)."""
    for k, v in attrs.items():
        if isinstance(v, str):
            data = np.array(v, dtype=h5py.string_dtype())
        elif isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            data = np.array(v, dtype=np.int64)
        else:
            raise TypeError(f"attribute {k!r}: only str and int are stored, got {type(v).__name__}")
        h5py.h5a.create(obj.id, k.encode(), h5py.h5t.py_create(data.dtype, logical=True), _SCALAR).write(data)


def write_image(
    root: Path | str,
    d: date | str,
    image: np.ndarray,
    *,
    spec: ImageSpec,
    norm_config: NormConfig,
    missing: np.ndarray | None = None,
    center: np.ndarray | None = None,
    scale: np.ndarray | None = None,
    params_hash: str = "",
    compression: str | None = DEFAULT_COMPRESSION,
    compression_level: int | None = None,
) -> Path:
    """Atomically write one date's image (and its metadata) to ``image_path(root, d)``."""
    d = _as_date(d)
    img = np.asarray(image)
    if img.shape != tuple(spec.shape) or img.dtype != np.float32:
        raise ValueError(
            f"{d}: image must be float32 {tuple(spec.shape)} (the spec's shape), got {img.dtype} {img.shape}"
        )
    if missing is not None and np.shape(missing) != (spec.sessions, spec.n_features):
        raise ValueError(f"missing mask shape {np.shape(missing)} != {(spec.sessions, spec.n_features)}")
    attrs = {
        "date": d.isoformat(),
        "spec_hash": spec.spec_hash(),
        "normalization_hash": _config_hash(norm_config),
        "normalization_params_hash": params_hash,
        "feature_count": spec.n_features,
        "sessions": spec.sessions,
        "missing_cells": int(np.count_nonzero(missing)) if missing is not None else -1,
        "code_version": finnex_ml.__version__,
        "format_version": FORMAT_VERSION,
    }
    final = image_path(root, d)
    with atomic_path(final) as tmp:
        with h5py.File(tmp, "w", track_order=True) as f:
            _write_payload(f, img, compression, compression_level)
            _write_metadata(f, attrs, missing, center, scale, compress_missing=compression is not None)
    return final


def write_encoded(
    root: Path | str,
    item: EncodedImage,
    spec: ImageSpec,
    norm_config: NormConfig,
    compression: str | None = DEFAULT_COMPRESSION,
    compression_level: int | None = None,
) -> Path:
    """Write one :class:`EncodedImage` from ``encode_dates``."""
    return write_image(
        root,
        item.date,
        item.image,
        spec=spec,
        norm_config=norm_config,
        missing=item.missing,
        center=item.center,
        scale=item.scale,
        params_hash=item.params_hash,
        compression=compression,
        compression_level=compression_level,
    )


def read_image(root: Path | str, d: date | str) -> np.ndarray:
    path = image_path(root, d)
    if not path.exists():
        raise DataInputError(f"no mega-image stored for {_as_date(d)}", file=str(path), date=str(d))
    with h5py.File(path, "r") as f:
        return f["image"][...]


def read_record(root: Path | str, d: date | str) -> dict[str, Any]:
    """Image, attributes and metadata datasets of one date."""
    path = image_path(root, d)
    if not path.exists():
        raise DataInputError(f"no mega-image stored for {_as_date(d)}", file=str(path), date=str(d))
    with h5py.File(path, "r") as f:
        out: dict[str, Any] = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        out["image"] = f["image"][...]
        for k in ("missing", "norm_center", "norm_scale"):
            if k in f:
                out[k] = f[k][...].astype(bool) if k == "missing" else f[k][...]
    return out


def list_dates(root: Path | str, start: date | str | None = None, end: date | str | None = None) -> list[date]:
    """Every date in [start, end] with a complete image file under ``root`` (temp files, named
    ``.{date}.h5.*.tmp``, are never listed). ``open_range(root, list_dates(root, q0, q1))`` is a
    quarterly batch view."""
    root = Path(root)
    lo = _as_date(start) if start is not None else date.min
    hi = _as_date(end) if end is not None else date.max
    out = []
    for p in root.glob("[0-9][0-9][0-9][0-9]/[0-9][0-9]/*.h5"):
        m = _FILE_RE.match(p.name)
        if m and lo <= (d := date.fromisoformat(m.group(1))) <= hi:
            out.append(d)
    return sorted(out)


def _atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_spec(
    root: Path | str,
    spec: ImageSpec,
    norm_config: NormConfig | None = None,
    feature_summary: dict[str, dict[str, Any]] | None = None,
    *,
    overwrite: bool = False,
    encoder: str = DEFAULT_ENCODER,
) -> tuple[Path, Path]:
    """Atomically write ``metadata/channel_encoding_spec.json`` and ``normalization_parameters.json``.

    The spec file also records ``encoder``, the registry name of the encoder that built ``spec``
    (outside the hashed spec, so a tile spec keeps its hash). Refuses (ConfigError) to replace a
    spec with a different hash or encoder unless ``overwrite``: images of two layouts under one
    root would be silently mixed.
    """
    cfg = norm_config or NormConfig()
    meta = resolve_under(Path(root), METADATA_DIR)
    spec_path, norm_path = meta / SPEC_FILE, meta / NORM_FILE
    if spec_path.exists() and not overwrite:
        old_doc = json.loads(spec_path.read_text(encoding="utf-8"))
        old_encoder, old_hash = old_doc.get("encoder", DEFAULT_ENCODER), old_doc.get("spec_hash", "")
        if old_encoder != encoder or old_hash != spec.spec_hash():
            raise ConfigError(
                f"{spec_path} holds a different layout (encoder {old_encoder!r}, hash {old_hash[:12]} vs "
                f"encoder {encoder!r}, hash {spec.spec_hash()[:12]}); pass overwrite=True or use another root"
            )
    doc = spec.to_dict()
    doc["spec_hash"] = spec.spec_hash()
    doc["encoder"] = encoder
    _atomic_write_text(spec_path, json.dumps(doc, indent=2, sort_keys=True))
    params = normalization_parameters(cfg, spec.features, feature_summary)
    params["spec_hash"] = spec.spec_hash()
    _atomic_write_text(norm_path, json.dumps(params, indent=2, sort_keys=True))
    return spec_path, norm_path


def read_encoder(root: Path | str) -> tuple[ImageEncoder, Any]:
    """The encoder that built the images under ``root`` (by the name stored with the spec; a
    spec file without one is from the ``tiles`` encoder) and its spec, checked against its hash."""
    path = resolve_under(Path(root), f"{METADATA_DIR}/{SPEC_FILE}")
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: no images were encoded under {root}; materialise mega_images first"
        )
    doc = json.loads(path.read_text(encoding="utf-8"))
    stored = doc.pop("spec_hash", None)
    name = doc.pop("encoder", DEFAULT_ENCODER)
    try:
        encoder = create_encoder(name)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    spec = encoder.spec_from_dict(doc)
    if stored is not None and stored != spec.spec_hash():
        raise ConfigError(f"{path}: stored spec_hash {stored[:12]} does not match its content")
    return encoder, spec


def read_spec(root: Path | str) -> Any:
    """The spec of the images under ``root`` (a :class:`LayoutSpec` for the default encoder)."""
    return read_encoder(root)[1]


# ---- range views --------------------------------------------------------------------------


class RangeView:
    """A lazy [N, 512, 512, 3] view over per-date files through an HDF5 virtual dataset.

    Indexing reads only the requested images from their own files; nothing is copied into the
    VDS file, which holds only the mapping. Use as a context manager or call ``close()``.
    """

    def __init__(self, vds_path: Path, dates: list[date]) -> None:
        self.path = vds_path
        self.dates = dates
        self._file = h5py.File(vds_path, "r")
        self.dataset: h5py.Dataset = self._file["images"]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.dataset.shape

    @property
    def dtype(self) -> np.dtype:
        return self.dataset.dtype

    def __len__(self) -> int:
        return self.dataset.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.dataset[key]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self.dataset[...]
        return arr if dtype is None else arr.astype(dtype)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RangeView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_range_vds(root: Path | str, dates: Sequence[date | str], path: Path | str, *, check: bool = True) -> Path:
    """Write a virtual dataset ``images`` [N, H, W, C] mapping each date's file, atomically.

    The shape is the first file's (512x512x3 for the tile encoder). With ``check`` every source
    file is opened once to confirm that shape, dtype and that all share one spec hash (a batch
    must not mix layouts). Source paths are stored absolute.
    """
    root = Path(root).resolve()
    ds = [_as_date(d) for d in dates]
    if not ds:
        raise ConfigError("a range view needs at least one date")
    paths = [image_path(root, d) for d in ds]
    absent = [d for d, p in zip(ds, paths) if not p.exists()]
    if absent:
        raise DataInputError(
            f"{len(absent)} date(s) have no stored image, first {absent[0]}", date=absent[0].isoformat()
        )
    hashes: set[str] = set()
    with h5py.File(paths[0], "r") as f:
        shape = tuple(f["image"].shape)
    if check:
        for d, p in zip(ds, paths):
            with h5py.File(p, "r") as f:
                dset = f["image"]
                if dset.shape != shape or dset.dtype != np.float32:
                    raise DataInputError(f"stored image has {dset.dtype} {dset.shape}", file=str(p), date=d.isoformat())
                hashes.add(str(f.attrs.get("spec_hash")))
        if len(hashes) > 1:
            raise DataInputError(f"range mixes {len(hashes)} layouts (spec hashes {sorted(h[:12] for h in hashes)})")
    layout = h5py.VirtualLayout(shape=(len(ds), *shape), dtype=np.float32)
    for i, p in enumerate(paths):
        layout[i] = h5py.VirtualSource(str(p), "image", shape=shape)
    out = Path(path)
    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w", libver="latest") as f:
            f.create_virtual_dataset("images", layout, fillvalue=np.nan)
            f.attrs["dates"] = json.dumps([d.isoformat() for d in ds])
            if hashes:
                f.attrs["spec_hash"] = next(iter(hashes))
    return out


def open_range(
    root: Path | str, dates: Iterable[date | str], *, cache_dir: Path | str | None = None, check: bool = True
) -> RangeView:
    """Lazy [N, 512, 512, 3] view of ``dates`` (in the given order) without copying images.

    The VDS file goes to ``cache_dir`` (default ``{root}/.vds_cache``), named by a hash of the
    date list, and is rewritten each call (cheap: it holds only the mapping). Quarterly or yearly
    batch tensors are ``open_range(root, sessions_in_quarter)``.
    """
    ds = [_as_date(d) for d in dates]
    root = Path(root).resolve()
    cache = Path(cache_dir) if cache_dir is not None else root / VDS_DIR
    key = hashlib.sha256(("\n".join(d.isoformat() for d in ds) + str(root)).encode()).hexdigest()[:16]
    name = f"range_{ds[0].isoformat()}_{ds[-1].isoformat()}_{len(ds)}_{key}.h5" if ds else "empty.h5"
    path = write_range_vds(root, ds, cache / name, check=check)
    return RangeView(path, ds)


__all__ = [
    "DEFAULT_COMPRESSION",
    "RangeView",
    "image_path",
    "list_dates",
    "open_range",
    "read_image",
    "read_encoder",
    "read_record",
    "read_spec",
    "write_encoded",
    "write_image",
    "write_range_vds",
    "write_spec",
]
