"""Where every artifact of the pipeline lives under one data root, as typed stores.

``Storage(root)`` hands out one store per kind of artifact; each store owns its folder and
offers public ``path`` / ``read`` / ``write`` methods, so no caller builds a path by hand or
reaches into another component. The layout (unchanged from the date-only code)::

    {root}/tables/{asset}/{YYYY}/{date}.parquet           TableStore (Parquet partitions)
    {root}/mega_images/{YYYY}/{MM}/{date}.h5             ImageStore (+ metadata/, previews/)
    {root}/datasets/patch_datasets/{YYYY}/{MM}/{date}.h5 PatchStore (+ .parquet tables, layouts)
    {root}/datasets/splits/                             SplitStore
    {root}/datasets/cnn_ready/                          CnnReadyStore
    {root}/datasets/models/{model}/                     ModelStore (checkpoints)
    {root}/datasets/evaluation/                         EvaluationStore
    {root}/reports/{name}.html                          ReportStore
    {root}/universe/{images,datasets,reports}/          UniverseStore

Per-series methods take a ``SeriesKey`` (``finnex_ml.series``); a plain date or ISO string is
the single-stock series. The single-stock stores hold that one series only (their files carry
no ticker); the universe store holds every ticker of a date in one file.

Pure library: Dagster reaches it through ``finnex_assets.storage.FinnexStorage``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from finnex_ml import patches as pt
from finnex_ml import table_store
from finnex_ml.encoding import panel_store
from finnex_ml.encoding import store as image_io
from finnex_ml.errors import ConfigError, DataInputError
from finnex_ml.paths import (
    atomic_path,
    resolve_under,
    safe_name,
    sweep_stale_temps,
    validate_partition_key,
    write_json_atomic,
    write_parquet_atomic,
)
from finnex_ml.series import SeriesKey, single_date

Key = SeriesKey | dt.date | str  # a plain date or ISO string: the single-stock series


def _asset_parts(asset: str | Sequence[str]) -> str:
    parts = [asset] if isinstance(asset, str) else list(asset)
    if not parts:
        raise ConfigError("an asset name is needed to address a table")
    return "/".join(safe_name(p) for p in parts)


def _key_date(key: Key, where: str) -> dt.date:
    # an ISO string is checked strictly (it may come from a partition key), then as a series key
    if isinstance(key, str):
        return validate_partition_key(key)
    return single_date(key, where)


class _Folder:
    """A store's folder; created lazily by the first write."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def sweep(self, max_age_s: float = 3600.0) -> list[Path]:
        """Delete temp files left by writers killed midway (``paths.sweep_stale_temps``)."""
        return sweep_stale_temps(self.root, max_age_s)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"


class TableStore(_Folder):
    """Partitioned tables: ``{root}/{asset}/{YYYY}/{date}.parquet``, one file per trading date."""

    def asset_dir(self, asset: str | Sequence[str]) -> Path:
        """The folder of every partition of ``asset`` (a name, or a Dagster asset key's path)."""
        return resolve_under(self.root, _asset_parts(asset))

    def path(self, asset: str | Sequence[str], key: Key) -> Path:
        """The file of one partition (a key that is no ISO date, or an asset name that would
        leave the root, is a ConfigError)."""
        day = _key_date(key, f"table {asset!r}")
        return resolve_under(self.root, f"{_asset_parts(asset)}/{day.year:04d}/{day.isoformat()}.parquet")

    def exists(self, asset: str | Sequence[str], key: Key) -> bool:
        return self.path(asset, key).exists()

    def write(self, asset: str | Sequence[str], key: Key, frame: pl.DataFrame) -> Path:
        """One partition's rows, atomically (with column statistics, as the IO manager always wrote)."""
        path = self.path(asset, key)
        with atomic_path(path) as tmp:
            frame.write_parquet(tmp, statistics=True)
        return path

    def write_many(
        self, asset: str | Sequence[str], parts: Iterable[tuple[str, pl.DataFrame]] | Mapping[str, pl.DataFrame]
    ) -> list[Path]:
        """Many partitions as one atomic batch (``table_store.write_partitions``: temps, one
        flush, renames): a run's range costs one flush, not one fsync per date."""
        return table_store.write_partitions(parts, lambda key: self.path(asset, key))

    def read(self, asset: str | Sequence[str], key: Key, columns: list[str] | None = None) -> pl.DataFrame:
        path = self.path(asset, key)
        if not path.exists():
            day = _key_date(key, f"table {asset!r}")
            raise DataInputError(
                f"{_asset_parts(asset)} has no materialisation for {day} (expected {path}); materialise it first",
                file=str(path),
                date=day.isoformat(),
            )
        return pl.read_parquet(path, columns=columns)

    def read_all(self, asset: str | Sequence[str]) -> pl.DataFrame:
        """Every materialised partition of ``asset``, concatenated in date order."""
        folder = self.asset_dir(asset)
        files = sorted(folder.glob("[0-9][0-9][0-9][0-9]/[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9].parquet"))
        if not files:
            raise FileNotFoundError(f"{asset} has no materialised partition under {folder}; materialise it first")
        return table_store.read_partitions(files, how="diagonal_relaxed")


class ImageStore(_Folder):
    """Single-stock mega-images: one HDF5 file per date, the layout spec under ``metadata/`` and
    PNG previews under ``previews/`` (``finnex_ml.encoding.store``)."""

    def path(self, key: Key) -> Path:
        return image_io.image_path(self.root, _key_date(key, "the image store"))

    def exists(self, key: Key) -> bool:
        return self.path(key).exists()

    def preview_path(self, key: Key) -> Path:
        return self.root / "previews" / f"{_key_date(key, 'the image store').isoformat()}.png"

    def spec_path(self) -> Path:
        return self.root / image_io.METADATA_DIR / image_io.SPEC_FILE

    def read(self, key: Key) -> np.ndarray:
        return image_io.read_image(self.root, _key_date(key, "the image store"))

    def read_record(self, key: Key) -> dict[str, Any]:
        return image_io.read_record(self.root, _key_date(key, "the image store"))

    def write(self, item: Any, spec: Any, norm_config: Any, compression: str | None = None) -> Path:
        """One ``EncodedImage`` (its date is its key), atomically."""
        return image_io.write_encoded(self.root, item, spec, norm_config, compression=compression)

    def read_spec(self) -> Any:
        """The stored ``LayoutSpec`` (DataInputError naming the file when there is none)."""
        return image_io.read_spec(self.root)

    def write_spec(self, spec: Any, norm_config: Any = None) -> tuple[Path, Path]:
        return image_io.write_spec(self.root, spec, norm_config)

    def open_range(self, keys: Iterable[Key]) -> Any:
        """A lazy [N, 512, 512, 3] view over ``keys`` in order (``encoding.store.open_range``)."""
        return image_io.open_range(self.root, [_key_date(k, "the image store") for k in keys])


class PatchStore(_Folder):
    """Patch shards: ``{YYYY}/{MM}/{date}.h5`` (256 patches) beside a 256-row ``.parquet`` table,
    and the static layout table per spec hash (``finnex_ml.patches``)."""

    def shard_path(self, key: Key) -> Path:
        return pt.shard_path(self.root, _key_date(key, "the patch store"))

    def table_path(self, key: Key) -> Path:
        return pt.table_path(self.root, _key_date(key, "the patch store"))

    def read_shard(self, key: Key) -> pt.PatchShard:
        return pt.read_shard(self.root, _key_date(key, "the patch store"))

    def read_table(self, key: Key) -> pl.DataFrame:
        path = self.table_path(key)
        if not path.exists():
            raise DataInputError(
                f"no patch table for {key} (expected {path}); materialise patch_dataset first", file=str(path)
            )
        return pl.read_parquet(path)

    def layout_path(self, spec_hash: str) -> Path:
        return pt.layout_path(self.root, spec_hash)

    def dates(self) -> list[dt.date]:
        """Every date with a stored shard, sorted."""
        return pt.list_shard_dates(self.root)


class _JsonFolder(_Folder):
    def path(self, name: str) -> Path:
        return self.root / safe_name(name)  # one safe component: cannot leave the folder

    def read_json(self, name: str, hint: str) -> Any:
        """A JSON file of this store; a missing one is a DataInputError naming it and ``hint``."""
        path = self.path(name)
        if not path.exists():
            raise DataInputError(f"{path} is missing: {hint}", file=str(path))
        return json.loads(path.read_text(encoding="utf-8"))


class SplitStore(_JsonFolder):
    """``splits.json`` (sets and walk-forward folds) and ``dates.parquet``."""

    def splits_path(self) -> Path:
        return self.path("splits.json")

    def read_splits(self) -> dict[str, Any]:
        return self.read_json("splits.json", "materialise dataset_splits first")


class CnnReadyStore(_JsonFolder):
    """The training set files ``{set}.h5`` and the train-only ``statistics.json``."""

    def set_path(self, name: str) -> Path:
        return self.path(f"{name}.h5")

    def statistics_path(self) -> Path:
        return self.path("statistics.json")

    def read_statistics(self) -> dict[str, Any]:
        return self.read_json("statistics.json", "materialise dataset_splits first")


class ModelStore(_Folder):
    """Checkpoints the library's trainer writes, one folder per model asset."""

    def checkpoint_dir(self, name: str) -> Path:
        return self.root / safe_name(name)

    def best_checkpoint(self, name: str) -> Path:
        return self.checkpoint_dir(name) / "best.pt"


class EvaluationStore(_JsonFolder):
    """``evaluation.json``, its prediction and equity tables, and the work and interpretation folders."""

    def write_json(self, name: str, doc: Any, indent: int = 1) -> Path:
        """``doc`` as JSON in insertion order (the report reads it back as written), atomically."""
        path = self.path(name)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(doc, indent=indent), encoding="utf-8")
        return path

    def write_parquet(self, name: str, frame: pl.DataFrame) -> Path:
        path = self.path(name)
        write_parquet_atomic(path, frame)
        return path

    def read_parquet(self, name: str) -> pl.DataFrame:
        path = self.path(name)
        if not path.exists():
            raise DataInputError(f"{path} is missing: materialise model_evaluation first", file=str(path))
        return pl.read_parquet(path)


class ReportStore(_Folder):
    """Self-contained HTML reports, ``{name}.html``."""

    def path(self, name: str) -> Path:
        return self.root / safe_name(f"{name}.html")

    def write_html(self, name: str, text: str) -> Path:
        path = self.path(name)
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
        return path


class UniverseStore(_Folder):
    """Universe mode: one cross-section file per date under ``images/`` (every ticker of the
    date, so a ``SeriesKey`` addresses a row of a file), ``datasets/`` and the report."""

    @property
    def images_root(self) -> Path:
        return self.root / "images"

    @property
    def datasets_root(self) -> Path:
        return self.root / "datasets"

    def report_path(self) -> Path:
        return self.root / "reports" / "universe_report.html"

    def dataset_path(self, name: str) -> Path:
        return self.datasets_root / safe_name(name)

    def image_path(self, key: Key) -> Path:
        """The file holding ``key``'s image: its date's cross-section (any ticker of the date)."""
        day = validate_partition_key(key) if isinstance(key, str) else SeriesKey.of(key).date
        return panel_store.panel_path(self.images_root, day)

    def read_record(self, key: SeriesKey) -> dict[str, Any]:
        """Image, missing mask, normalisation and attributes of one (ticker, date)."""
        if not isinstance(key, SeriesKey):
            raise ConfigError(f"the universe store needs a SeriesKey (ticker, date), got {key!r}")
        return panel_store.read_panel_record(self.images_root, key.date, key.ticker)

    def read_image(self, key: SeriesKey) -> np.ndarray:
        return self.read_record(key)["image"]

    def keys(self, start: dt.date | None = None, end: dt.date | None = None) -> list[SeriesKey]:
        """Every stored (ticker, date), in date then ticker order."""
        index = self.index(start, end)
        return [SeriesKey(t, d) for d, t in zip(index["date"].to_list(), index["ticker"].to_list())]

    def index(self, start: dt.date | None = None, end: dt.date | None = None) -> pl.DataFrame:
        """``panel_index``: one row per stored (date, ticker) with its row in the date's file."""
        return panel_store.panel_index(self.images_root, start, end)

    def read_spec(self) -> Any:
        return image_io.read_spec(self.images_root)

    def write_dataset_json(self, name: str, doc: Any) -> Path:
        path = self.dataset_path(name)
        write_json_atomic(path, doc)
        return path

    def write_dataset_parquet(self, name: str, frame: pl.DataFrame) -> Path:
        path = self.dataset_path(name)
        write_parquet_atomic(path, frame)
        return path


class Storage:
    """Every store under one data root (see the module docstring for the layout)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        datasets = self.root / "datasets"
        self.tables = TableStore(self.root / "tables")
        self.images = ImageStore(self.root / "mega_images")
        self.datasets_root = datasets
        self.patches = PatchStore(datasets / "patch_datasets")
        self.splits = SplitStore(datasets / "splits")
        self.cnn_ready = CnnReadyStore(datasets / "cnn_ready")
        self.models = ModelStore(datasets / "models")
        self.evaluation = EvaluationStore(datasets / "evaluation")
        self.reports = ReportStore(self.root / "reports")
        self.universe = UniverseStore(self.root / "universe")

    def __repr__(self) -> str:
        return f"Storage({str(self.root)!r})"
