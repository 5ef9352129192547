"""Labels, 32x32 patch datasets and leak-free temporal splits (the modelling inputs).

* ``labels`` (partitioned by date, Parquet through ``io_manager``): Buy/Hold/Sell and forward
  return per horizon (``finnex_ml.labels``). Label t needs close(t+h), so it depends on
  ``market_data`` partitions t..t+MAX_HORIZON (``TimeWindowPartitionMapping``). Those are read
  here, not through the IO manager (whose ``load_input`` raises on a missing partition), with
  the IO manager's own path scheme: partition t is required; a missing future partition leaves
  that horizon unlabeled (null, never Hold). Labels near the data's end are therefore
  incomplete until the future sessions are materialised: re-materialise ``labels`` for those
  dates then (the UI marks them stale once the mapped ``market_data`` partitions change;
  ``unlabeled_dates`` in the metadata lists them). close(t+h) is the price as published in
  partition t+h; sigma(t) uses partition t only.
* ``patch_dataset`` (partitioned by date, own storage: ``storage.patches``): one HDF5 shard of
  256 patches plus a 256-row Parquet table per date, and the static patch layout once per spec
  hash (``finnex_ml.patches``).
* ``dataset_splits`` (unpartitioned): reads the stores directly (every date that has an image,
  a patch shard and complete labels; the ``AllPartitionMapping`` deps are lineage), cuts
  train/val/test and walk-forward folds with a purge gap (``finnex_ml.splits``), fits pixel
  statistics and class weights on training dates only, and writes ``splits/`` and
  ``cnn_ready/`` (``finnex_ml.datasets_io``).

The work itself is in the library (``finnex_ml.label_build``, ``finnex_ml.patch_build``,
``finnex_ml.dataset_splits``); the assets here turn its results into outputs, metadata and checks.

Resources needed: ``io_manager`` (PartitionedParquetIOManager) and ``storage`` (FinnexStorage,
``finnex_assets.storage``), which both IO managers share.
"""

from collections.abc import Iterator
from datetime import date
from typing import Literal

import dagster as dg
import polars as pl
from pydantic import Field

from finnex_assets import checks
from finnex_assets.partitions import trading_days
from finnex_assets.resources import DataSourceResource
from finnex_assets.storage import FinnexStorage
from finnex_ml import dataset_splits as dsp
from finnex_ml import label_build as lbb
from finnex_ml import labels as lb
from finnex_ml import patches as pt
from finnex_ml import progress
from finnex_ml.patch_build import PatchBuilder
from finnex_ml.patch_build import check_frames as patch_check_frames
from finnex_ml.patch_build import check_schemas as patch_check_schemas
from finnex_ml.schemas import run_schema
from finnex_ml.series import SeriesKey, series_keys

MARKET_DATA = dg.AssetKey("market_data")
MAX_HORIZON = max(lb.DEFAULT_HORIZONS)  # the mapping below is static; horizons must not exceed it
MARKET_WINDOW = dg.TimeWindowPartitionMapping(
    start_offset=0, end_offset=MAX_HORIZON, allow_nonexistent_upstream_partitions=True
)
MIN_LABELED_FOR_DISTRIBUTION = 50  # fewer labeled dates say nothing about class balance
CLASS_SHARE_BOUNDS = (0.10, 0.70)
# Of an image's informative patches. Real images measure 0 exact duplicates; a degenerate image
# (everything filled) approaches 1. Non-blocking: a source with very few features legitimately
# repeats patches inside tall single-feature bands.
MAX_DUPLICATE_SHARE = 0.25


# ==== labels ===================================================================================

LABEL_CHECKS = {
    "past_volatility_only": (
        "sigma(t) recomputed from the market_data snapshot of t alone (returns <= t) "
        "equals the stored sigma, and every threshold is k*sigma*sqrt(h)",
        True,
    ),
    "no_label_without_future_price": (
        "a class/return exists only when close(t+h) was read from partition t+h, "
        "t+h is the h-th session after t, and the class follows from return and "
        "threshold; unlabeled only for a missing future price or sigma",
        True,
    ),
    "class_distribution_within_bounds": (
        f"each class between {CLASS_SHARE_BOUNDS[0]:.0%} and "
        f"{CLASS_SHARE_BOUNDS[1]:.0%} of labeled dates, per horizon (assessed from "
        f"{MIN_LABELED_FOR_DISTRIBUTION} labeled dates in the run)",
        False,
    ),
}


class LabelsConfig(dg.Config):
    horizons: list[int] = Field(
        default=list(lb.DEFAULT_HORIZONS), description=f"Forward horizons in sessions (each 1..{MAX_HORIZON})."
    )
    threshold: Literal["volatility", "fixed"] = Field(
        default="volatility", description="volatility: k*sigma*sqrt(h); fixed: +/- fixed_threshold for every h."
    )
    k: float = Field(default=0.5, description="Threshold in trailing sigmas (volatility rule).")
    fixed_threshold: float = Field(default=0.02, description="Threshold of the fixed rule (0.02 = 2%).")
    vol_window: int = Field(default=30, description="Daily returns (ending at t) in the trailing sigma.")

    def label_config(self) -> lb.LabelConfig:
        return lb.LabelConfig(
            tuple(self.horizons), self.threshold, self.k, self.fixed_threshold, self.vol_window, max_horizon=MAX_HORIZON
        )


@dg.asset(
    deps=[dg.AssetDep("market_data", partition_mapping=MARKET_WINDOW)],
    required_resource_keys={"io_manager", "storage", "data_source"},
    partitions_def=trading_days,
    backfill_policy=dg.BackfillPolicy.single_run(),
    check_specs=[dg.AssetCheckSpec(n, asset="labels", description=d, blocking=b) for n, (d, b) in LABEL_CHECKS.items()],
    group_name="labels",
    kinds={"polars"},
    metadata={"partition_column": "date"},
)
def labels(context: dg.AssetExecutionContext, config: LabelsConfig) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Buy/Hold/Sell and forward return per horizon; null where close(t+h) does not exist yet.

    close(t+h) comes from the market_data snapshot of t+h, or from the data source where that
    snapshot was never materialised (a range's last dates, or a date materialised alone)."""
    cfg = config.label_config()
    keys = series_keys(context.partition_keys)  # the single-stock series of each partition
    tables = context.resources.storage.tables
    data_source: DataSourceResource = context.resources.data_source

    def source_closes(sessions: list[date]) -> dict[date, float]:
        prices = data_source.source().load(sessions[0], sessions[-1]).prices
        have = prices.filter(pl.col("date").is_in(sessions) & pl.col("close").is_not_null())
        return dict(zip(have["date"].to_list(), have["close"].to_list()))

    full = lbb.build_labels(lambda d: tables.path(MARKET_DATA.path, d), keys, cfg, source_closes)
    table = full.select(lbb.stored_columns(full))
    dist = lb.class_distribution(table)
    pending = lbb.pending_dates(table, cfg.horizons)
    for rec in table.iter_rows(named=True):
        waiting = [h for h in cfg.horizons if rec[lb.class_col(h)] is None]
        context.add_asset_metadata(
            partition_key=rec["date"].isoformat(),
            metadata={
                **lb.class_names_by_horizon(cfg.horizons, [rec[lb.class_col(h)] for h in cfg.horizons]),
                "unlabeled_horizons": dg.MetadataValue.json(waiting),
            },
        )
    context.log.info(f"labels: {table.height} dates, {pending.height} with an unlabeled horizon; {dist}")
    # checks before the output: a failing blocking check writes no labels partition
    yield from checks.gate("labels", _label_checks(context, cfg, full, dist, pending), len(keys))
    yield dg.Output(
        table,
        metadata={
            "rows": table.height,
            "horizons": dg.MetadataValue.json(list(cfg.horizons)),
            "label_config": dg.MetadataValue.json(cfg.to_dict()),
            "config_hash": cfg.config_hash(),
            "class_distribution": dg.MetadataValue.json(dist),
            "unlabeled_dates": dg.MetadataValue.json([d.isoformat() for d in pending["date"].to_list()]),
            "revisit": "dates in unlabeled_dates get their labels once the source has close(t+h); "
            "re-materialise labels (and patch_dataset) for them then",
        },
    )


def _label_checks(
    context: dg.AssetExecutionContext, cfg: lb.LabelConfig, full: pl.DataFrame, dist: dict, pending: pl.DataFrame
) -> Iterator[dg.AssetCheckResult]:
    selected = {k.name for k in context.selected_asset_check_keys}
    if "past_volatility_only" in selected:
        out = lbb.past_volatility_outcome(cfg, full)
        yield checks.outcome_result("labels", "past_volatility_only", out, full, "date")
    if "no_label_without_future_price" in selected:
        out = lbb.future_price_outcome(cfg, full)
        yield checks.outcome_result(
            "labels", "no_label_without_future_price", out, full, "date", extra={"unlabeled_dates": pending.height}
        )
    if "class_distribution_within_bounds" in selected:
        out, shares = lbb.class_bounds_outcome(cfg, dist, MIN_LABELED_FOR_DISTRIBUTION, CLASS_SHARE_BOUNDS)
        yield checks.outcome_result(
            "labels",
            "class_distribution_within_bounds",
            out,
            shares,
            None,
            severity=dg.AssetCheckSeverity.WARN,
            extra={
                "assessed_horizons": dg.MetadataValue.json(shares["horizon"].to_list()),
                "class_distribution": dg.MetadataValue.json(dist),
            },
        )


# ==== patch_dataset ============================================================================

PATCH_CHECKS = {
    "patch_count": (
        "every date's shard holds exactly 256 patches and its table 256 rows (patches = 256 x images)",
        True,
    ),
    "patch_round_trip": ("patches_to_image(patches) equals the stored image bit for bit", True),
    "patch_diversity": (
        f"share of exactly duplicated patches among an image's informative patches (at least one "
        f"pixel carrying a feature; all-padding patches repeat by construction and are not counted) "
        f"is at most {MAX_DUPLICATE_SHARE:.0%} (warning only)",
        False,
    ),
}


@dg.asset(
    ins={"labels": dg.AssetIn()},
    deps=["mega_images"],
    partitions_def=trading_days,
    backfill_policy=dg.BackfillPolicy.single_run(),
    check_specs=[
        dg.AssetCheckSpec(n, asset="patch_dataset", description=d, blocking=b) for n, (d, b) in PATCH_CHECKS.items()
    ],
    group_name="patches",
    kinds={"hdf5", "parquet"},
)
def patch_dataset(
    context: dg.AssetExecutionContext,
    labels: pl.DataFrame,
    storage: FinnexStorage,
) -> Iterator[dg.MaterializeResult]:
    """256 non-overlapping 32x32 patches per image with their labels and per-patch metadata."""
    root = storage.patches.root
    builder = PatchBuilder(storage.images.root, root)
    horizons = lb.horizons_of(labels)
    by_key = dict(zip(lbb.label_keys(labels), labels.iter_rows(named=True)))
    done = []
    for key in progress.track(context.partition_keys, "patch_dataset", log=context.log.info):
        series = SeriesKey.of(key)
        res = builder.build(series, by_key.get(series), horizons)
        done.append(res)
        context.add_asset_metadata(
            partition_key=key,
            metadata={
                "shard": dg.MetadataValue.path(str(res.shard_file)),
                "spec_hash": builder.spec_hash,
                "duplicate_patches": res.duplicates,
                "informative_patches": res.informative,
                **lb.class_names_by_horizon(horizons, res.classes),
            },
        )
    frames = patch_check_frames(done)
    sections, straddling = pt.layout_summary(builder.layout)
    yield dg.MaterializeResult(
        metadata={
            "images": len(done),
            "patches": int(frames["patch_count"]["patches"].sum()),
            "root": dg.MetadataValue.path(str(root)),
            "layout_table": dg.MetadataValue.path(str(builder.layout_file)),
            "patches_per_section": dg.MetadataValue.json(sections),
            "straddling_patch_rows": dg.MetadataValue.json(straddling),
            "horizons": dg.MetadataValue.json(horizons),
            "max_duplicate_share": float(frames["patch_diversity"]["duplicate_share"].max()),
        }
    )
    selected = {k.name for k in context.selected_asset_check_keys}
    n_img = len(done)
    for name, schema in patch_check_schemas(n_img, MAX_DUPLICATE_SHARE).items():
        if name in selected:
            severity = dg.AssetCheckSeverity.ERROR if PATCH_CHECKS[name][1] else dg.AssetCheckSeverity.WARN
            yield checks.outcome_result(
                "patch_dataset",
                name,
                run_schema(schema, frames[name]),
                frames[name],
                "date",
                severity=severity,
                extra={"images": n_img},
            )


# ==== dataset_splits ===========================================================================

SPLIT_CHECKS = {
    "splits_disjoint_with_gap": (
        "train/val/test and every walk-forward fold are disjoint, in time order, and "
        "pos(next set's first date) - pos(previous set's last date) > max horizon + "
        "embargo, so no label window [t, t+h] reaches another set",
        True,
    ),
    "statistics_fit_on_train_only": (
        "pixel statistics and class weights used exactly the training dates (per fold: that fold's training dates)",
        True,
    ),
    "cnn_ready_shapes": ("each set file has patches = 256 x images, one label row per patch, and its dates", True),
}


class SplitsConfig(dg.Config):
    train_fraction: float = Field(default=0.8, description="Share of eligible dates for training (before purge).")
    val_fraction: float = Field(default=0.1, description="Share for validation; test gets the rest.")
    embargo_sessions: int = Field(default=0, description="Extra sessions on top of the max-horizon purge.")
    folds: int = Field(default=5, description="Expanding-window walk-forward folds over the development dates.")

    def splits_config(self) -> dsp.SplitsConfig:
        return dsp.SplitsConfig(self.train_fraction, self.val_fraction, self.embargo_sessions, self.folds)


def read_all_labels(storage: FinnexStorage) -> pl.DataFrame:
    """Every materialised labels partition (one row each), sorted by date."""
    return dsp.read_all_labels(storage.tables.asset_dir("labels"))


@dg.asset(
    deps=[
        dg.AssetDep(a, partition_mapping=dg.AllPartitionMapping()) for a in ("labels", "patch_dataset", "mega_images")
    ],
    required_resource_keys={"storage"},
    check_specs=[
        dg.AssetCheckSpec(n, asset="dataset_splits", description=d, blocking=b) for n, (d, b) in SPLIT_CHECKS.items()
    ],
    group_name="datasets",
    kinds={"hdf5", "parquet", "json"},
)
def dataset_splits(context: dg.AssetExecutionContext, config: SplitsConfig) -> Iterator[dg.MaterializeResult]:
    """Leak-free train/val/test and walk-forward folds over every ready date; train-only statistics;
    ``cnn_ready/`` set files (virtual image and patch arrays, real label arrays)."""
    storage: FinnexStorage = context.resources.storage
    image_root, shard_root = storage.images.root, storage.patches.root
    res = dsp.build_splits(read_all_labels(storage), image_root, shard_root, config.splits_config())
    shapes = dsp.write_splits(res, image_root, shard_root, storage.splits.root, storage.cnn_ready.root)
    split, sets, train_stats = res.split, res.sets, res.stats["train"]
    yield dg.MaterializeResult(
        metadata={
            "eligible_dates": len(res.dates),
            **{f"{k}_dates": len(v) for k, v in sets.items()},
            "purged_dates": len(split.purged),
            "gap_sessions": split.gap,
            "folds": len(res.folds),
            "first_date": res.dates[0].isoformat(),
            "last_date": res.dates[-1].isoformat(),
            "set_ranges": dg.MetadataValue.json({k: [v[0].isoformat(), v[-1].isoformat()] for k, v in sets.items()}),
            "train_channel_mean": dg.MetadataValue.json(train_stats["channel_mean"]),
            "train_channel_std": dg.MetadataValue.json(train_stats["channel_std"]),
            "class_weights": dg.MetadataValue.json(train_stats["class_weights"]),
            "eligibility": dg.MetadataValue.json(res.info),
            "shards_with_stale_labels": dg.MetadataValue.json(res.stale_labels[: checks.MAX_LISTED]),
            "split_hash": res.split_hash,
            "root": dg.MetadataValue.path(str(storage.storage().datasets_root)),
        }
    )
    if res.stale_labels:
        context.log.warning(
            f"{len(res.stale_labels)} patch shard(s) carry older labels than the labels table "
            f"(first {res.stale_labels[0]}); cnn_ready uses the labels table. Re-materialise patch_dataset."
        )
    selected = {k.name for k in context.selected_asset_check_keys}
    if "splits_disjoint_with_gap" in selected:
        frame = dsp.boundary_frame(split, res.folds, res.sessions, res.max_horizon)
        yield checks.outcome_result(
            "dataset_splits",
            "splits_disjoint_with_gap",
            run_schema(dsp.gap_schema(split.gap), frame),
            frame,
            None,
            extra={"gap": split.gap, "boundaries": frame.height},
        )
    if "statistics_fit_on_train_only" in selected:
        frame = dsp.statistics_frame(res)
        out = run_schema(dsp.STATISTICS_SCHEMA, frame)
        yield checks.outcome_result("dataset_splits", "statistics_fit_on_train_only", out, frame, None)
    if "cnn_ready_shapes" in selected:
        frame = pl.DataFrame(shapes)
        yield checks.outcome_result(
            "dataset_splits", "cnn_ready_shapes", run_schema(dsp.SHAPES_SCHEMA, frame), frame, None
        )


DATASET_ASSETS = [labels, patch_dataset, dataset_splits]

__all__ = [
    "DATASET_ASSETS",
    "LabelsConfig",
    "MARKET_WINDOW",
    "MAX_HORIZON",
    "SplitsConfig",
    "dataset_splits",
    "labels",
    "patch_dataset",
    "read_all_labels",
]
