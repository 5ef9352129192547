"""Image encoders: the interface every way of turning a feature window into an image implements,
and a small registry of them by name (``"tiles"``, the mega-image tile layout, is the default).

An encoder owns its spec (a JSON-serialisable description of the image: shape, sessions,
features, and whatever its geometry needs), and everything that depends on the geometry: encode a
normalised ``[sessions, features]`` window into an image, decode an image back into the window,
map each pixel to the (feature, lag) it shows, and check its own images (QA). The store saves the
encoder's name next to its spec (``metadata/channel_encoding_spec.json``), so whoever reads images
later gets the encoder and the spec from the store (:func:`finnex_ml.encoding.store.read_encoder`)
rather than from module constants.

Adding one::

    class GafEncoder(ImageEncoder):
        name = "gaf"
        spec_type = GafSpec
        def build_spec(self, feature_names): ...
        def spec_from_dict(self, doc): ...
        def encode(self, window, spec, out=None): ...
        def decode(self, image, spec): ...
        def pixel_lookup(self, spec): ...

    register_encoder("gaf", GafEncoder)
    # mega_images config: {"encoder": "gaf"}

The base class derives dates -> images (the leak-free trailing normalisation is shared), QA,
previews and statistics from those five methods; the tile encoder overrides them with its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import polars as pl

from finnex_ml.encoding import encoder as _enc
from finnex_ml.encoding import preview as _preview
from finnex_ml.encoding import qa as _qa
from finnex_ml.encoding.encoder import EncodedImage, PixelLookup
from finnex_ml.encoding.layout import LayoutSpec, build_layout
from finnex_ml.encoding.normalize import NormConfig
from finnex_ml.errors import ConfigError
from finnex_ml.paths import atomic_path

QAResult = tuple[bool, dict[str, Any]]
DEFAULT_ENCODER = "tiles"

# The checks every encoder answers for each image; mega_images turns them into blocking asset
# checks of these names (an asset's checks are fixed when the code location loads).
QA_CHECKS: dict[str, str] = {
    "dtype_shape_range": "float32, the spec's shape, every value in [0, 1]",
    "spatial_integrity": "the image is exactly the encoding of its normalised feature window",
    "temporal_continuity": "image t shows image t-1's sessions shifted by one (same trailing "
    "normalisation per session makes this exact)",
    "feature_preservation": "decode(image) equals the normalised feature window within 1e-6",
}


@runtime_checkable
class ImageSpec(Protocol):
    """What the store, the normaliser and the encoders need of any encoder's spec."""

    sessions: int  # L: sessions per image, oldest first, the image date last
    features: tuple[str, ...]  # window column order
    unassigned: tuple[str, ...]  # table columns the spec leaves out on purpose
    fill_value: float

    @property
    def shape(self) -> tuple[int, int, int]: ...

    @property
    def n_features(self) -> int: ...

    @property
    def feature_index(self) -> dict[str, int]: ...

    def spec_hash(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


class ImageEncoder:
    """Base of every encoder: subclasses set ``name`` and ``spec_type`` and implement the five
    geometry methods; the rest has working defaults built on them."""

    name: ClassVar[str] = ""
    spec_type: ClassVar[type] = object

    # ---- geometry (each encoder's own) ---------------------------------------------------
    def build_spec(self, feature_names: Iterable[str]) -> ImageSpec:
        """The spec for a feature table with these columns (meta columns are ignored)."""
        raise NotImplementedError

    def spec_from_dict(self, doc: Mapping[str, Any]) -> ImageSpec:
        """Inverse of ``spec.to_dict()`` (the stored JSON); ConfigError when malformed."""
        raise NotImplementedError

    def encode(self, window: np.ndarray, spec: ImageSpec, out: np.ndarray | None = None) -> np.ndarray:
        """Normalised float32 ``[sessions, features]`` window in [0, 1] -> float32 image of ``spec.shape``."""
        raise NotImplementedError

    def decode(self, image: np.ndarray, spec: ImageSpec) -> np.ndarray:
        """Image -> the ``[sessions, features]`` window it encodes."""
        raise NotImplementedError

    def pixel_lookup(self, spec: ImageSpec) -> PixelLookup:
        """Per pixel: feature index, lag (sessions before the image date) and region index; -1 unused."""
        raise NotImplementedError

    # ---- derived -------------------------------------------------------------------------
    def history_needed(self, spec: ImageSpec, norm_config: NormConfig) -> int:
        """Feature-table rows needed up to and including an image date."""
        return spec.sessions + norm_config.window - 1

    def encode_dates(
        self,
        table: pl.DataFrame,
        dates: Iterable[date | str],
        spec: ImageSpec,
        norm_config: NormConfig | None = None,
        *,
        reuse_buffer: bool = False,
    ) -> Iterator[EncodedImage]:
        """One :class:`EncodedImage` per date: the shared trailing normalisation, painted by ``encode``."""
        return _enc.encode_dates(table, dates, spec, norm_config, reuse_buffer=reuse_buffer, painter=self.encode)

    def qa(
        self,
        image: np.ndarray,
        spec: ImageSpec,
        window: np.ndarray | None = None,
        prev_image: np.ndarray | None = None,
    ) -> dict[str, QAResult]:
        """The :data:`QA_CHECKS` the inputs allow, from the interface alone: re-encoding the window
        must give the image bit for bit, decoding must give the window, and consecutive images
        must share their overlapping sessions."""
        out = {"dtype_shape_range": _image_check(image, spec)}
        if window is not None:
            win = np.asarray(window, dtype=np.float32)
            again = self.encode(win, spec)
            n_bad = int(np.count_nonzero(again != np.asarray(image, dtype=np.float32)))
            out["spatial_integrity"] = (n_bad == 0, {"mismatched_pixels": n_bad})
            err = float(np.abs(self.decode(image, spec).astype(np.float64) - win).max()) if win.size else 0.0
            out["feature_preservation"] = (err <= 1e-6, {"max_abs_error": err, "atol": 1e-6})
        if prev_image is not None:
            old, new = self.decode(prev_image, spec), self.decode(image, spec)
            n_bad = int(np.count_nonzero(old[1:] != new[:-1]))
            out["temporal_continuity"] = (n_bad == 0, {"mismatched_cells": n_bad})
        return out

    def preview(self, path: Path | str, image: np.ndarray, spec: ImageSpec, *, title: str = "") -> Path:
        """A PNG of the image (channels as RGB), written atomically."""
        data = _preview.png_bytes(_to_rgb(image))
        with atomic_path(Path(path)) as tmp:
            tmp.write_bytes(data)
        return Path(path)

    def stats(self, image: np.ndarray, spec: ImageSpec) -> dict[str, Any]:
        """Per-channel summary of the image, for asset metadata."""
        img = np.asarray(image, dtype=np.float64)
        return {
            f"channel_{c}": {
                "mean": float(img[..., c].mean()),
                "std": float(img[..., c].std()),
                "min": float(img[..., c].min()),
                "max": float(img[..., c].max()),
            }
            for c in range(img.shape[-1])
        }


def _image_check(image: np.ndarray, spec: ImageSpec) -> QAResult:
    img = np.asarray(image)
    d: dict[str, Any] = {"dtype": str(img.dtype), "shape": list(img.shape), "expected_shape": list(spec.shape)}
    if img.dtype != np.float32 or tuple(img.shape) != tuple(spec.shape):
        return False, d
    finite = np.isfinite(img)
    d["non_finite"] = int(img.size - np.count_nonzero(finite))
    d["below_0"], d["above_1"] = int(np.count_nonzero(img < 0)), int(np.count_nonzero(img > 1))
    return d["non_finite"] == 0 and d["below_0"] == 0 and d["above_1"] == 0, d


def _to_rgb(image: np.ndarray) -> np.ndarray:
    img = np.clip(np.nan_to_num(np.asarray(image, dtype=np.float32)), 0.0, 1.0)
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    elif img.shape[-1] != 3:
        img = img[..., :3] if img.shape[-1] > 3 else np.concatenate([img, np.zeros_like(img[..., :1])], axis=-1)
    return np.ascontiguousarray((img * 255 + 0.5).astype(np.uint8))


class TileEncoder(ImageEncoder):
    """Today's mega-image: the 512x512x3 tile layout of ``finnex_ml.encoding.layout``, by the
    existing functions (same bytes); options go to :func:`build_layout` (``assignment``,
    ``sessions``, ``allow_unassigned``, ``fill_value``)."""

    name = "tiles"
    spec_type = LayoutSpec

    def __init__(self, **layout_options: Any) -> None:
        self.layout_options = layout_options

    def build_spec(self, feature_names: Iterable[str]) -> LayoutSpec:
        return build_layout(feature_names, **self.layout_options)

    def spec_from_dict(self, doc: Mapping[str, Any]) -> LayoutSpec:
        return LayoutSpec.from_dict(doc)

    def encode(self, window: np.ndarray, spec: ImageSpec, out: np.ndarray | None = None) -> np.ndarray:
        return _enc.encode(window, spec, out)  # type: ignore[arg-type]

    def decode(self, image: np.ndarray, spec: ImageSpec) -> np.ndarray:
        return _enc.decode(image, spec)  # type: ignore[arg-type]

    def pixel_lookup(self, spec: ImageSpec) -> PixelLookup:
        return _enc.pixel_lookup(spec)  # type: ignore[arg-type]

    def history_needed(self, spec: ImageSpec, norm_config: NormConfig) -> int:
        return _enc.history_needed(spec, norm_config)  # type: ignore[arg-type]

    def encode_dates(
        self,
        table: pl.DataFrame,
        dates: Iterable[date | str],
        spec: ImageSpec,
        norm_config: NormConfig | None = None,
        *,
        reuse_buffer: bool = False,
    ) -> Iterator[EncodedImage]:
        return _enc.encode_dates(table, dates, spec, norm_config, reuse_buffer=reuse_buffer)  # type: ignore[arg-type]

    def qa(
        self,
        image: np.ndarray,
        spec: ImageSpec,
        window: np.ndarray | None = None,
        prev_image: np.ndarray | None = None,
    ) -> dict[str, QAResult]:
        # the tile checks re-derive pixel positions from the tile geometry (qa.py), a stronger
        # test of this encoder than re-encoding; same names as every encoder's QA
        out = _qa.run_qa(image, spec, window, prev_image)  # type: ignore[arg-type]
        out["dtype_shape_range"] = out.pop("image")
        return out

    def preview(self, path: Path | str, image: np.ndarray, spec: ImageSpec, *, title: str = "") -> Path:
        return _preview.write_preview(path, image, spec, title=title, step=2)  # type: ignore[arg-type]

    def stats(self, image: np.ndarray, spec: ImageSpec) -> dict[str, Any]:
        return _preview.channel_section_stats(image, spec)  # type: ignore[arg-type]


# ---- registry ---------------------------------------------------------------------------

ENCODER_REGISTRY: dict[str, Callable[..., ImageEncoder]] = {}


def register_encoder(name: str, factory: Callable[..., ImageEncoder]) -> None:
    """Make ``factory`` (an ImageEncoder subclass or a function returning one) selectable as
    ``name`` (``mega_images`` config ``encoder: name``)."""
    if not name or name != name.strip():
        raise ConfigError(f"encoder name {name!r} must be a non-empty string without surrounding spaces")
    if name in ENCODER_REGISTRY:
        raise ConfigError(f"encoder {name!r} is already registered")
    ENCODER_REGISTRY[name] = factory


def unregister_encoder(name: str) -> None:
    """Remove an added encoder (tests); ``tiles`` stays."""
    if name == DEFAULT_ENCODER:
        raise ConfigError(f"encoder {name!r} is built in")
    ENCODER_REGISTRY.pop(name, None)


def create_encoder(name: str = DEFAULT_ENCODER, **options: Any) -> ImageEncoder:
    """A registered encoder by name; ConfigError naming the registered ones otherwise."""
    factory = ENCODER_REGISTRY.get(name)
    if factory is None:
        raise ConfigError(
            f"unknown image encoder {name!r}; registered: {sorted(ENCODER_REGISTRY)} "
            "(register one with finnex_ml.encoding.register_encoder)"
        )
    enc = factory(**options)
    if enc.name != name:  # the stored spec records this name: it must find the same encoder again
        raise ConfigError(f"encoder registered as {name!r} calls itself {enc.name!r}; give both one name")
    return enc


def encoder_of(spec: ImageSpec) -> ImageEncoder:
    """The registered encoder whose spec type ``spec`` is (for code handed a spec alone)."""
    for name, factory in ENCODER_REGISTRY.items():
        spec_type = getattr(factory, "spec_type", None)  # an ImageEncoder subclass says it unbuilt
        if spec_type is None:  # a factory function: build it with its defaults
            spec_type = create_encoder(name).spec_type
        if isinstance(spec, spec_type):
            return create_encoder(name)
    raise ConfigError(f"no registered image encoder builds {type(spec).__name__} specs")


def encoder_names() -> Sequence[str]:
    return sorted(ENCODER_REGISTRY)


register_encoder(DEFAULT_ENCODER, TileEncoder)


__all__ = [
    "DEFAULT_ENCODER",
    "ENCODER_REGISTRY",
    "QA_CHECKS",
    "ImageEncoder",
    "ImageSpec",
    "TileEncoder",
    "create_encoder",
    "encoder_names",
    "encoder_of",
    "register_encoder",
    "unregister_encoder",
]
