"""One date's patch shard from its mega-image (the ``patch_dataset`` asset's work per date).

``PatchBuilder`` reads the image store's spec once, writes the static layout table once, and per
date opens the image, cuts its 256 patches, checks the exact round trip, writes the HDF5 shard
and the 256-row Parquet table, and reports what was stored (``PatchDateResult``) for the checks.
One image is in memory at a time (reused buffers).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandera.polars as pa
import polars as pl

from finnex_ml import labels as lb
from finnex_ml import patches as pt
from finnex_ml.encoding.layout import LayoutSpec
from finnex_ml.encoding.store import image_path, read_encoder
from finnex_ml.errors import ConfigError, DataInputError
from finnex_ml.paths import write_parquet_atomic
from finnex_ml.schemas import frame_check
from finnex_ml.series import SeriesKey, single_date


def image_attrs(path: Path) -> dict[str, str]:
    """The attributes of a stored mega-image, as strings."""
    with h5py.File(path, "r") as f:
        return _str_attrs(f)


def _str_attrs(f: h5py.File) -> dict[str, str]:
    return {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in f.attrs.items()}


@dataclass(frozen=True)
class PatchDateResult:
    """What was written for one date, as read back (counts) or measured (round trip, diversity)."""

    date: date
    shard_file: Path
    exact_round_trip: bool
    informative: int
    duplicates: int
    stored_patches: int
    table_rows: int
    classes: tuple[int | None, ...]  # per horizon, None where unlabeled

    @property
    def key(self) -> SeriesKey:
        """The series this shard belongs to (shards hold the single-stock series)."""
        return SeriesKey.of(self.date)

    @property
    def duplicate_share(self) -> float:
        return self.duplicates / self.informative if self.informative else 0.0


class PatchBuilder:
    """Writes patch shards under ``root`` from the images under ``image_root``."""

    def __init__(self, image_root: Path, root: Path) -> None:
        self.image_root, self.root = image_root, root
        encoder, spec = read_encoder(image_root)
        if not isinstance(spec, LayoutSpec):
            # patch tables describe each patch by the tile layout's sections and tiles
            raise ConfigError(
                f"patch_dataset cuts 32x32 patches from the tile layout; the images under {image_root} were "
                f"built by encoder {encoder.name!r} (shape {tuple(spec.shape)}): materialise mega_images with "
                "encoder 'tiles' into this store, or train on whole images"
            )
        self.spec = spec
        self.spec_hash = self.spec.spec_hash()
        self.layout_file = pt.write_layout(root, self.spec)
        self.layout = pl.read_parquet(self.layout_file)
        self._image = np.empty(pt.IMAGE_SHAPE, dtype=np.float32)
        self._patches = np.empty(pt.PATCHES_SHAPE, dtype=np.float32)
        self._back = np.empty(pt.IMAGE_SHAPE, dtype=np.float32)

    def build(self, series: SeriesKey | date, label_row: dict[str, Any] | None, horizons: list[int]) -> PatchDateResult:
        """Shard and table of the series key (or date) ``series`` with the labels of
        ``label_row`` (a labels table row)."""
        d = single_date(series, "patch_dataset")
        key = d.isoformat()
        path = image_path(self.image_root, d)
        if not path.exists():
            raise DataInputError(
                f"patch_dataset for {d} needs its mega-image; materialise mega_images first", file=str(path), date=key
            )
        if label_row is None:
            raise DataInputError(f"patch_dataset for {d}: no labels row", date=key)
        image, patches, back = self._image, self._patches, self._back
        with h5py.File(path, "r") as f:
            attrs = _str_attrs(f)
            if attrs.get("spec_hash") != self.spec_hash:
                raise DataInputError(
                    f"image {d} was encoded with layout {attrs.get('spec_hash', '?')[:12]}, the store's "
                    f"spec is {self.spec_hash[:12]}; re-materialise mega_images",
                    file=str(path),
                    date=key,
                )
            f["image"].read_direct(image)
        pt.extract_patches(image, out=patches)
        pt.patches_to_image(patches, out=back)
        exact = bool(np.array_equal(back, image))
        cls = [label_row[lb.class_col(h)] for h in horizons]
        ret = [label_row[lb.return_col(h)] for h in horizons]
        shard = pt.PatchShard(
            d,
            patches,
            tuple(horizons),
            np.array([-1 if c is None else c for c in cls], dtype=np.int8),
            np.array([np.nan if r is None else r for r in ret], dtype=np.float64),
            self.spec_hash,
            attrs.get("normalization_params_hash", ""),
        )
        shard_file = pt.write_shard(self.root, shard)
        table = pt.patch_table(d, patches, self.layout, self.spec_hash, horizons, cls, ret)
        write_parquet_atomic(pt.table_path(self.root, d), table)
        with h5py.File(shard_file, "r") as f:  # count what was stored, not what was meant to be
            stored = f["patches"].shape[0]
        return PatchDateResult(
            date=d,
            shard_file=shard_file,
            exact_round_trip=exact,
            informative=int(table["informative"].sum()),
            duplicates=int(table["duplicate"].sum()),
            stored_patches=stored,
            table_rows=pl.read_parquet(pt.table_path(self.root, d)).height,
            classes=tuple(cls),
        )


def check_frames(results: list[PatchDateResult]) -> dict[str, pl.DataFrame]:
    """The per-date frames of the three patch checks: counts, round trip, diversity."""
    return {
        "patch_count": pl.DataFrame(
            [{"date": r.date, "patches": r.stored_patches, "table_rows": r.table_rows} for r in results]
        ),
        "patch_round_trip": pl.DataFrame([{"date": r.date, "exact": r.exact_round_trip} for r in results]),
        "patch_diversity": pl.DataFrame(
            [
                {
                    "date": r.date,
                    "informative": r.informative,
                    "duplicates": r.duplicates,
                    "duplicate_share": r.duplicate_share,
                }
                for r in results
            ]
        ),
    }


def check_schemas(n_images: int, max_duplicate_share: float) -> dict[str, pa.DataFrameSchema]:
    """The pandera schemas of the three patch checks, for ``check_frames``' frames."""
    return {
        "patch_count": pa.DataFrameSchema(
            checks=[
                frame_check(pl.col("patches") == pt.N_PATCHES, "256_patches_per_shard"),
                frame_check(pl.col("table_rows") == pt.N_PATCHES, "256_rows_per_table"),
                frame_check(pl.col("patches").sum() == pt.N_PATCHES * n_images, "patches_eq_256_x_images"),
            ]
        ),
        "patch_round_trip": pa.DataFrameSchema(checks=[frame_check(pl.col("exact"), "exact_round_trip")]),
        "patch_diversity": pa.DataFrameSchema(
            checks=[frame_check(pl.col("duplicate_share") <= max_duplicate_share, "duplicate_share_bound")]
        ),
    }


__all__ = ["PatchBuilder", "PatchDateResult", "check_frames", "check_schemas", "image_attrs"]
