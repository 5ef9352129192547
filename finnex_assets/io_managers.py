"""IO managers. Tables are stored one Parquet file per partition, written atomically."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from finnex_ml import table_store
from finnex_ml.paths import (
    data_root,
    resolve_under,
    safe_name,
    sweep_stale_temps,
    validate_partition_key,
)


def _sweep(context: dg.OutputContext, root: Path) -> None:
    removed = sweep_stale_temps(root)
    if removed:
        context.log.warning(
            f"removed {len(removed)} stale temp file(s) left by killed writers under {root}, e.g. {removed[0].name}"
        )


class PartitionedParquetIOManager(dg.ConfigurableIOManager):
    """``{base_dir}/{asset}/{YYYY}/{date}.parquet``, one file per trading-date partition.

    The output's ``partition_column`` (asset metadata, default ``date``) says which rows belong
    to which partition. A run over many partitions writes each file atomically, so a failure
    midway leaves every earlier file complete and every later one untouched.
    """

    base_dir: str = Field(default="", description="Folder for tables; empty means FINNEX_DATA_DIR/tables.")

    def _root(self) -> Path:
        return Path(self.base_dir) if self.base_dir else data_root() / "tables"

    def asset_dir(self, asset_key: dg.AssetKey) -> Path:
        """The folder of every partition of ``asset_key`` (``{base_dir}/{asset}``)."""
        return resolve_under(self._root(), "/".join(safe_name(p) for p in asset_key.path))

    def partition_path(self, asset_key: dg.AssetKey, partition_key: str) -> Path:
        """The file of one partition (validated: a key that is no ISO date, or an asset name
        that would leave ``base_dir``, is a ConfigError)."""
        day = validate_partition_key(partition_key)
        name = "/".join(safe_name(p) for p in asset_key.path)
        return resolve_under(self._root(), f"{name}/{day.year:04d}/{partition_key}.parquet")

    def handle_output(self, context: dg.OutputContext, obj: pl.DataFrame) -> None:
        column = (context.definition_metadata or {}).get("partition_column", "date")
        name = context.asset_key.to_user_string()
        try:
            parts = table_store.split_partitions(obj, column, context.asset_partition_keys)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from e
        _sweep(context, self.asset_dir(context.asset_key))
        # one batch (temps, fsyncs, renames, one fsync per folder); one log line, not one per file
        table_store.write_partitions(parts, lambda key: self.partition_path(context.asset_key, key))
        context.log.debug(f"{name}: {len(parts)} partition(s), {obj.height} rows written")
        context.add_output_metadata({"partitions_written": len(parts), "rows": obj.height})

    def load_input(self, context: dg.InputContext) -> pl.DataFrame:
        key = context.asset_key
        # an input declared with metadata {"missing_partitions": "skip"} gets what exists; its
        # consumer fills the rest (mega_images computes an unmaterialised lookback from the source)
        skip = (context.definition_metadata or {}).get("missing_partitions") == "skip"
        files = []
        for pk in context.asset_partition_keys:
            path = self.partition_path(key, pk)
            if not path.exists() and skip:
                continue
            if not path.exists():
                raise FileNotFoundError(
                    f"{key.to_user_string()} has no materialisation for {pk} (expected {path}); materialise it first"
                )
            files.append(path)
        return table_store.read_partitions(files)

    def read_all(self, asset: str) -> pl.DataFrame:
        """Every materialised partition of ``asset`` (for unpartitioned consumers that use
        whatever dates exist), concatenated in date order."""
        folder = self.asset_dir(dg.AssetKey(asset))
        files = sorted(folder.glob("[0-9][0-9][0-9][0-9]/[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9].parquet"))
        if not files:
            raise FileNotFoundError(f"{asset} has no materialised partition under {folder}; materialise it first")
        return table_store.read_partitions(files, how="diagonal_relaxed")


class ImageStore(dg.ConfigurableResource):
    """Where mega-images, their spec and previews live; shared by the IO manager and the asset."""

    base_dir: str = Field(default="", description="Image root; empty means FINNEX_DATA_DIR/mega_images.")

    def root(self) -> Path:
        return Path(self.base_dir) if self.base_dir else data_root() / "mega_images"


class MegaImageIOManager(dg.ConfigurableIOManager):
    """Mega-images in HDF5, one file per date (``{root}/YYYY/MM/{date}.h5``), so parallel
    writers never share a file. Each file is written to a temp name and renamed.

    The output is an iterable of encoded images (``ImageBatch``) written one at a time, so
    memory does not grow with the range. The input is a lazy [N, 512, 512, 3] view over the
    requested dates (h5py virtual dataset).
    """

    store: ImageStore
    compression: str = Field(
        default="none",
        description="Image compression: none (default: fastest write and read, 3 MB per date), "
        "gzip (level 1, ~14x smaller, ~6x slower to write) or lzf (~10x smaller).",
    )

    def root(self) -> Path:
        return self.store.root()

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        from finnex_ml.encoding import write_encoded

        if self.compression not in ("none", "gzip", "lzf"):  # before any file is touched
            raise ValueError(f"mega_image_io_manager: compression must be none, gzip or lzf, got {self.compression!r}")
        expected = {validate_partition_key(k) for k in context.asset_partition_keys}
        written = set()
        root, compression = self.root(), None if self.compression == "none" else self.compression
        _sweep(context, root)
        for item in obj:  # one image in memory at a time
            if item.date not in expected:
                raise ValueError(f"mega_images: image for {item.date} is outside the run's partitions")
            write_encoded(root, item, obj.spec, obj.norm_config, compression=compression)
            written.add(item.date)
        if written != expected:
            raise ValueError(f"mega_images: no image for partition(s) {sorted(expected - written)[:3]}")
        context.add_output_metadata(
            {"root": dg.MetadataValue.path(str(root)), "images_written": len(written), "compression": self.compression}
        )

    def load_input(self, context: dg.InputContext):
        from finnex_ml.encoding import open_range

        keys = [validate_partition_key(k) for k in context.asset_partition_keys]
        return open_range(self.root(), keys)
