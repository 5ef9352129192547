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
* ``patch_dataset`` (partitioned by date, own storage under ``DatasetStore``): one HDF5 shard of
  256 patches plus a 256-row Parquet table per date, and the static patch layout once per spec
  hash (``finnex_ml.patches``).
* ``dataset_splits`` (unpartitioned): reads the stores directly (every date that has an image,
  a patch shard and complete labels; the ``AllPartitionMapping`` deps are lineage), cuts
  train/val/test and walk-forward folds with a purge gap (``finnex_ml.splits``), fits pixel
  statistics and class weights on training dates only, and writes ``splits/`` and
  ``cnn_ready/`` (``finnex_ml.datasets_io``).

Resources needed: ``io_manager`` (PartitionedParquetIOManager), ``image_store`` (ImageStore),
``dataset_store`` (DatasetStore, below).
"""

import hashlib
import json
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import h5py
import numpy as np
import pandera.polars as pa
import polars as pl
from pydantic import Field

from finnex_assets import checks
from finnex_assets.io_managers import ImageStore, PartitionedParquetIOManager
from finnex_assets.partitions import trading_days
from finnex_ml import calendar, progress
from finnex_ml import labels as lb
from finnex_ml import patches as pt
from finnex_ml import splits as sp
from finnex_ml.datasets_io import write_set_file
from finnex_ml.encoding.store import image_path, list_dates, read_spec
from finnex_ml.errors import DataInputError
from finnex_ml.paths import atomic_path, data_root
from finnex_ml.schemas import CheckOutcome, run_schema

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
MAX_LISTED = 20


class DatasetStore(dg.ConfigurableResource):
    """Root of the modelling datasets: ``patch_datasets/``, ``splits/``, ``cnn_ready/``."""

    base_dir: str = Field(default="", description="Dataset root; empty means FINNEX_DATA_DIR/datasets.")

    def root(self) -> Path:
        return Path(self.base_dir) if self.base_dir else data_root() / "datasets"

    def patches_root(self) -> Path:
        return self.root() / "patch_datasets"

    def splits_root(self) -> Path:
        return self.root() / "splits"

    def cnn_ready_root(self) -> Path:
        return self.root() / "cnn_ready"


def _outcome_result(
    asset: str,
    name: str,
    outcome: CheckOutcome,
    frame: pl.DataFrame,
    date_column: str | None,
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR,
    extra: dict[str, Any] | None = None,
) -> dg.AssetCheckResult:
    meta: dict[str, Any] = {"rows_checked": outcome.rows_checked, **(extra or {})}
    if not outcome.passed:
        rows = outcome.failing_rows
        meta["failing_rows"] = len(rows)
        if date_column is not None:
            meta["failing_dates"] = dg.MetadataValue.json(
                sorted({str(frame[date_column][i]) for i in rows if i < frame.height})[:MAX_LISTED]
            )
        fc = outcome.failures
        if "check" in fc.columns:
            meta["failing_checks"] = dg.MetadataValue.json(
                sorted(set(fc["check"].cast(pl.String).to_list()))[:MAX_LISTED]
            )
    return dg.AssetCheckResult(
        asset_key=asset, check_name=name, passed=outcome.passed, severity=severity, metadata=meta
    )


def _frame_check(expr: pl.Expr, name: str) -> pa.Check:
    return pa.Check(lambda data: data.lazyframe.select(expr), name=name)


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


def _market_path(io_manager: PartitionedParquetIOManager, d: date) -> Path:
    return io_manager.partition_path(dg.AssetKey("market_data"), d.isoformat())


def _load_snapshots(io_manager: PartitionedParquetIOManager, days: list[date]) -> dict[date, pl.DataFrame]:
    """market_data partitions among ``days`` that are materialised (missing ones are skipped)."""
    out = {}
    for d in days:
        path = _market_path(io_manager, d)
        if path.exists():
            out[d] = pl.read_parquet(path, columns=["asof", "date", "close"])
    return out


def _future_sessions(t: date, n: int) -> list[date]:
    """The n sessions after t (fewer at the calendar's end); the same calendar as the partitions."""
    if not calendar.is_session(t):
        raise DataInputError(f"{t} is not an NYSE session", date=t.isoformat())
    return calendar.sessions(t + timedelta(days=1), t + timedelta(days=2 * n + 10))[:n]


def build_labels(io_manager: PartitionedParquetIOManager, days: list[date], cfg: lb.LabelConfig) -> pl.DataFrame:
    """Labels for ``days`` from the stored market_data partitions, with the QA helper columns
    ``sigma_check``, ``expected_fwd_{h}d`` and ``fwd_available_{h}d``."""
    hmax = max(cfg.horizons)
    future = {t: _future_sessions(t, hmax) for t in days}
    need = sorted(set(days) | {s for f in future.values() for s in f})
    snaps = _load_snapshots(io_manager, need)
    frames = []
    for t in days:
        snap = snaps.get(t)
        if snap is None:
            raise DataInputError(
                f"labels for {t} need market_data for {t}; materialise it first",
                file=str(_market_path(io_manager, t)),
                date=t.isoformat(),
            )
        late = snap.filter(pl.col("date") > t)
        if late.height:
            raise DataInputError(
                f"market_data snapshot {t} holds rows after its date ({late['date'][0]})",
                file=str(_market_path(io_manager, t)),
                date=t.isoformat(),
            )
        hist = snap.select("date", "close").sort("date").tail(cfg.vol_window + 1)
        fut_rows, avail = [], {}
        for s in future[t]:
            row = snaps[s].filter(pl.col("date") == s) if s in snaps else None
            avail[s] = row is not None and row.height == 1 and row["close"][0] is not None
            if avail[s]:
                fut_rows.append(row.select("date", "close"))
        series = pl.concat([hist, *fut_rows], how="vertical")
        cal = calendar.sessions(hist["date"][0], future[t][-1]) if future[t] else calendar.sessions(hist["date"][0], t)
        row = lb.compute_labels(series, [t], cfg, sessions=cal)
        closes = hist["close"].to_numpy()
        # independent recomputation for QA: numpy on partition t's own rows (dates <= t only)
        tail = closes[-(cfg.vol_window + 1) :]
        check = float(np.std(np.diff(tail) / tail[:-1], ddof=1)) if tail.size == cfg.vol_window + 1 else None
        check = check if check is not None and np.isfinite(check) else None
        extra: dict[str, Any] = {"sigma_check": check}
        for h in cfg.horizons:
            exp = future[t][h - 1] if h <= len(future[t]) else None
            extra[f"expected_fwd_{h}d"] = exp
            extra[f"fwd_available_{h}d"] = bool(exp is not None and avail.get(exp, False))
        frames.append(row.with_columns(**{k: pl.lit(v) for k, v in extra.items()}))
    out = pl.concat(frames, how="vertical_relaxed")
    casts = {"sigma_check": pl.Float64} | {f"expected_fwd_{h}d": pl.Date for h in cfg.horizons}
    return out.with_columns(
        [pl.col(c).cast(t) for c, t in casts.items()] + [pl.lit(cfg.config_hash()).alias("config_hash")]
    )


QA_COLUMNS = ("sigma_check", "expected_fwd_", "fwd_available_")


def stored_columns(frame: pl.DataFrame) -> list[str]:
    return [c for c in frame.columns if not c.startswith(QA_COLUMNS)]


@dg.asset(
    deps=[dg.AssetDep("market_data", partition_mapping=MARKET_WINDOW)],
    required_resource_keys={"io_manager"},
    partitions_def=trading_days,
    backfill_policy=dg.BackfillPolicy.single_run(),
    check_specs=[dg.AssetCheckSpec(n, asset="labels", description=d, blocking=b) for n, (d, b) in LABEL_CHECKS.items()],
    group_name="labels",
    kinds={"polars"},
    metadata={"partition_column": "date"},
)
def labels(context: dg.AssetExecutionContext, config: LabelsConfig) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Buy/Hold/Sell and forward return per horizon; null where close(t+h) is not yet known."""
    cfg = config.label_config()
    days = [date.fromisoformat(k) for k in context.partition_keys]
    full = build_labels(context.resources.io_manager, days, cfg)
    table = full.select(stored_columns(full))
    dist = lb.class_distribution(table)
    pending = table.filter(pl.any_horizontal([pl.col(lb.class_col(h)).is_null() for h in cfg.horizons]))
    for rec in table.iter_rows(named=True):
        waiting = [h for h in cfg.horizons if rec[lb.class_col(h)] is None]
        context.add_asset_metadata(
            partition_key=rec["date"].isoformat(),
            metadata={
                **{
                    f"class_{h}d": (
                        lb.CLASS_NAMES[rec[lb.class_col(h)]] if rec[lb.class_col(h)] is not None else "none"
                    )
                    for h in cfg.horizons
                },
                "unlabeled_horizons": dg.MetadataValue.json(waiting),
            },
        )
    context.log.info(f"labels: {table.height} dates, {pending.height} with an unlabeled horizon; {dist}")
    # checks before the output: a failing blocking check writes no labels partition
    yield from checks.gate("labels", _label_checks(context, cfg, full, dist, pending), len(days))
    yield dg.Output(
        table,
        metadata={
            "rows": table.height,
            "horizons": dg.MetadataValue.json(list(cfg.horizons)),
            "label_config": dg.MetadataValue.json(cfg.to_dict()),
            "config_hash": cfg.config_hash(),
            "class_distribution": dg.MetadataValue.json(dist),
            "unlabeled_dates": dg.MetadataValue.json([d.isoformat() for d in pending["date"].to_list()]),
            "revisit": "dates in unlabeled_dates get their labels once market_data for t+h is materialised; "
            "re-materialise labels (and patch_dataset) for them then",
        },
    )


def _label_checks(
    context: dg.AssetExecutionContext, cfg: lb.LabelConfig, full: pl.DataFrame, dist: dict, pending: pl.DataFrame
) -> Iterator[dg.AssetCheckResult]:
    selected = {k.name for k in context.selected_asset_check_keys}
    if "past_volatility_only" in selected:
        out = run_schema(lb.past_volatility_schema(cfg.horizons, cfg), full)
        yield _outcome_result("labels", "past_volatility_only", out, full, "date")
    if "no_label_without_future_price" in selected:
        out = run_schema(lb.future_price_schema(cfg.horizons, needs_sigma=cfg.threshold == "volatility"), full)
        yield _outcome_result(
            "labels", "no_label_without_future_price", out, full, "date", extra={"unlabeled_dates": pending.height}
        )
    if "class_distribution_within_bounds" in selected:
        shares = lb.class_share_frame(dist).filter(pl.col("labeled") >= MIN_LABELED_FOR_DISTRIBUTION)
        out = run_schema(lb.class_bounds_schema(cfg.horizons, *CLASS_SHARE_BOUNDS), shares)
        yield _outcome_result(
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


def _image_attrs(path: Path) -> dict[str, str]:
    with h5py.File(path, "r") as f:
        return {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in f.attrs.items()}


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
    image_store: ImageStore,
    dataset_store: DatasetStore,
) -> Iterator[dg.MaterializeResult]:
    """256 non-overlapping 32x32 patches per image with their labels and per-patch metadata."""
    image_root, root = image_store.root(), dataset_store.patches_root()
    spec = read_spec(image_root)
    layout_file = pt.write_layout(root, spec)
    layout = pl.read_parquet(layout_file)
    horizons = lb.horizons_of(labels)
    by_date = {r["date"]: r for r in labels.iter_rows(named=True)}
    image = np.empty(pt.IMAGE_SHAPE, dtype=np.float32)  # reused buffers: one image in memory at a time
    patches = np.empty(pt.PATCHES_SHAPE, dtype=np.float32)
    back = np.empty(pt.IMAGE_SHAPE, dtype=np.float32)
    counts, round_trip, diversity = [], [], []
    for key in progress.track(context.partition_keys, "patch_dataset", log=context.log.info):
        d = date.fromisoformat(key)
        path = image_path(image_root, d)
        if not path.exists():
            raise DataInputError(
                f"patch_dataset for {d} needs its mega-image; materialise mega_images first", file=str(path), date=key
            )
        if d not in by_date:
            raise DataInputError(f"patch_dataset for {d}: no labels row", date=key)
        with h5py.File(path, "r") as f:
            attrs = {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in f.attrs.items()}
            if attrs.get("spec_hash") != spec.spec_hash():
                raise DataInputError(
                    f"image {d} was encoded with layout {attrs.get('spec_hash', '?')[:12]}, the store's "
                    f"spec is {spec.spec_hash()[:12]}; re-materialise mega_images",
                    file=str(path),
                    date=key,
                )
            f["image"].read_direct(image)
        pt.extract_patches(image, out=patches)
        pt.patches_to_image(patches, out=back)
        round_trip.append({"date": d, "exact": bool(np.array_equal(back, image))})
        row = by_date[d]
        cls = [row[lb.class_col(h)] for h in horizons]
        ret = [row[lb.return_col(h)] for h in horizons]
        shard = pt.PatchShard(
            d,
            patches,
            tuple(horizons),
            np.array([-1 if c is None else c for c in cls], dtype=np.int8),
            np.array([np.nan if r is None else r for r in ret], dtype=np.float64),
            spec.spec_hash(),
            attrs.get("normalization_params_hash", ""),
        )
        shard_file = pt.write_shard(root, shard)
        table = pt.patch_table(d, patches, layout, spec.spec_hash(), horizons, cls, ret)
        with atomic_path(pt.table_path(root, d)) as tmp:
            table.write_parquet(tmp)
        informative = int(table["informative"].sum())
        dups = int(table["duplicate"].sum())
        diversity.append(
            {
                "date": d,
                "informative": informative,
                "duplicates": dups,
                "duplicate_share": dups / informative if informative else 0.0,
            }
        )
        with h5py.File(shard_file, "r") as f:  # count what was stored, not what was meant to be
            stored = f["patches"].shape[0]
        counts.append({"date": d, "patches": stored, "table_rows": pl.read_parquet(pt.table_path(root, d)).height})
        context.add_asset_metadata(
            partition_key=key,
            metadata={
                "shard": dg.MetadataValue.path(str(shard_file)),
                "spec_hash": spec.spec_hash(),
                "duplicate_patches": dups,
                "informative_patches": informative,
                **{f"class_{h}d": (lb.CLASS_NAMES[c] if c is not None else "none") for h, c in zip(horizons, cls)},
            },
        )
    count_frame, rt_frame, div_frame = pl.DataFrame(counts), pl.DataFrame(round_trip), pl.DataFrame(diversity)
    sections = layout.group_by("section").len().sort("section")
    yield dg.MaterializeResult(
        metadata={
            "images": len(counts),
            "patches": int(count_frame["patches"].sum()),
            "root": dg.MetadataValue.path(str(root)),
            "layout_table": dg.MetadataValue.path(str(layout_file)),
            "patches_per_section": dg.MetadataValue.json(dict(sections.iter_rows())),
            "straddling_patch_rows": dg.MetadataValue.json(
                sorted(set(layout.filter("straddles")["grid_row"].to_list()))
            ),
            "horizons": dg.MetadataValue.json(horizons),
            "max_duplicate_share": float(div_frame["duplicate_share"].max()),
        }
    )
    selected = {k.name for k in context.selected_asset_check_keys}
    n_img = count_frame.height
    schemas = {
        "patch_count": (
            pa.DataFrameSchema(
                checks=[
                    _frame_check(pl.col("patches") == pt.N_PATCHES, "256_patches_per_shard"),
                    _frame_check(pl.col("table_rows") == pt.N_PATCHES, "256_rows_per_table"),
                    _frame_check(pl.col("patches").sum() == pt.N_PATCHES * n_img, "patches_eq_256_x_images"),
                ]
            ),
            count_frame,
        ),
        "patch_round_trip": (pa.DataFrameSchema(checks=[_frame_check(pl.col("exact"), "exact_round_trip")]), rt_frame),
        "patch_diversity": (
            pa.DataFrameSchema(
                checks=[_frame_check(pl.col("duplicate_share") <= MAX_DUPLICATE_SHARE, "duplicate_share_bound")]
            ),
            div_frame,
        ),
    }
    for name, (schema, frame) in schemas.items():
        if name in selected:
            severity = dg.AssetCheckSeverity.ERROR if PATCH_CHECKS[name][1] else dg.AssetCheckSeverity.WARN
            yield _outcome_result(
                "patch_dataset",
                name,
                run_schema(schema, frame),
                frame,
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


def _labels_dir(io_manager: PartitionedParquetIOManager) -> Path:
    return io_manager.asset_dir(dg.AssetKey("labels"))


def read_all_labels(io_manager: PartitionedParquetIOManager) -> pl.DataFrame:
    """Every materialised labels partition (one row each), sorted by date."""
    files = sorted(
        _labels_dir(io_manager).glob("[0-9][0-9][0-9][0-9]/[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9].parquet")
    )
    if not files:
        raise DataInputError("no labels partitions are materialised", file=str(_labels_dir(io_manager)))
    return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed").sort("date")


def eligible_dates(table: pl.DataFrame, image_root: Path, shard_root: Path) -> tuple[list[date], dict[str, Any]]:
    """Dates with complete labels, an image and a patch shard; the rest counted by reason."""
    horizons = lb.horizons_of(table)
    complete = table.filter(pl.all_horizontal([pl.col(lb.class_col(h)).is_not_null() for h in horizons]))
    images, shards = set(list_dates(image_root)), set(pt.list_shard_dates(shard_root))
    dates = [d for d in complete["date"].to_list() if d in images and d in shards]
    info = {
        "labeled_dates": table.height,
        "complete_labels": complete.height,
        "without_image": sum(d not in images for d in complete["date"].to_list()),
        "without_shard": sum(d in images and d not in shards for d in complete["date"].to_list()),
        "incomplete_labels": table.height - complete.height,
    }
    return dates, info


def _moments(image_root: Path, dates: list[date]) -> dict[date, tuple[int, np.ndarray, np.ndarray]]:
    """Per-image channel count/mean/M2, reading one image at a time."""
    out, buf = {}, np.empty(pt.IMAGE_SHAPE, dtype=np.float32)
    for d in dates:
        with h5py.File(image_path(image_root, d), "r") as f:
            f["image"].read_direct(buf)
        rm = sp.RunningMoments()
        rm.add(buf)
        out[d] = (rm.n, rm.mean, rm.m2)
    return out


def _fit(
    moments: dict[date, tuple[int, np.ndarray, np.ndarray]],
    dates: tuple[date, ...],
    table: pl.DataFrame,
    horizons: list[int],
) -> dict[str, Any]:
    rm = sp.RunningMoments()
    for d in dates:  # date order: the merge is deterministic
        rm.merge_moments(*moments[d])
        rm.items += 1
    sub = table.filter(pl.col("date").is_in(list(dates)))
    weights = {}
    for h in horizons:
        w, n = sp.class_weights(sub[lb.class_col(h)].to_numpy())
        weights[f"{h}d"] = {"weights": dict(zip(lb.CLASS_NAMES, w)), "counts": dict(zip(lb.CLASS_NAMES, n))}
    return {
        **rm.to_dict(),
        "class_weights": weights,
        "fitted_dates": [dates[0].isoformat(), dates[-1].isoformat()],
        "n_dates": len(dates),
    }


def _atomic_json(path: Path, doc: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True), encoding="utf-8")


def _atomic_parquet(path: Path, frame: pl.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp)


@dg.asset(
    deps=[
        dg.AssetDep(a, partition_mapping=dg.AllPartitionMapping()) for a in ("labels", "patch_dataset", "mega_images")
    ],
    required_resource_keys={"io_manager", "image_store", "dataset_store"},
    check_specs=[
        dg.AssetCheckSpec(n, asset="dataset_splits", description=d, blocking=b) for n, (d, b) in SPLIT_CHECKS.items()
    ],
    group_name="datasets",
    kinds={"hdf5", "parquet", "json"},
)
def dataset_splits(context: dg.AssetExecutionContext, config: SplitsConfig) -> Iterator[dg.MaterializeResult]:
    """Leak-free train/val/test and walk-forward folds over every ready date; train-only statistics;
    ``cnn_ready/`` set files (virtual image and patch arrays, real label arrays)."""
    io_manager = context.resources.io_manager
    image_root: Path = context.resources.image_store.root()
    store: DatasetStore = context.resources.dataset_store
    shard_root, splits_root, ready_root = store.patches_root(), store.splits_root(), store.cnn_ready_root()
    table = read_all_labels(io_manager)
    horizons = lb.horizons_of(table)
    hmax = max(horizons)
    dates, info = eligible_dates(table, image_root, shard_root)
    if not dates:
        raise DataInputError(f"no date has an image, a patch shard and complete labels ({info})")
    used = table.filter(pl.col("date").is_in(dates))
    if "config_hash" in used.columns and used["config_hash"].n_unique() > 1:
        raise DataInputError(
            f"labels of the eligible dates come from {used['config_hash'].n_unique()} different "
            "label configs; re-materialise labels over the whole range with one config"
        )
    # a shard is stale if its image was re-encoded since (normalisation hash or layout changed)
    stale, stale_labels, spec_hashes = [], [], set()
    lab = {r["date"]: r for r in used.iter_rows(named=True)}
    for d in dates:
        ia, sa = _image_attrs(image_path(image_root, d)), pt.shard_attrs(shard_root, d)
        spec_hashes.add(ia.get("spec_hash"))
        if sa["spec_hash"] != ia.get("spec_hash") or sa["image_params_hash"] != ia.get("normalization_params_hash", ""):
            stale.append(d)
        stored_h = json.loads(sa["horizons"])
        want = [lab[d][lb.class_col(h)] for h in stored_h if lb.class_col(h) in lab[d]]
        if stored_h != horizons or [int(x) for x in sa["label_class"]] != want:
            stale_labels.append(d.isoformat())
    if stale:
        raise DataInputError(
            f"{len(stale)} patch shard(s) predate their image (first {stale[0]}); "
            "re-materialise patch_dataset for them",
            date=stale[0].isoformat(),
        )
    if len(spec_hashes) > 1:
        raise DataInputError(f"eligible images mix {len(spec_hashes)} layouts; re-materialise mega_images")
    sessions = calendar.all_sessions()
    split = sp.temporal_split(
        dates, sessions, hmax, train=config.train_fraction, val=config.val_fraction, embargo=config.embargo_sessions
    )
    dev = sp.development_dates(split)
    folds = sp.walk_forward(dev, sessions, hmax, folds=config.folds, embargo=config.embargo_sessions)
    sets = split.sets()
    doc = {
        "gap_rule": f"pos(first date of a set) - pos(last date of the previous set) > {split.gap} sessions "
        f"(max horizon {hmax} + embargo {config.embargo_sessions}); the previous set's last dates are purged",
        "gap": split.gap,
        "max_horizon": hmax,
        "embargo": config.embargo_sessions,
        "horizons": horizons,
        "fractions": {
            "train": config.train_fraction,
            "val": config.val_fraction,
            "test": round(1 - config.train_fraction - config.val_fraction, 10),
        },
        "sets": {k: [d.isoformat() for d in v] for k, v in sets.items()},
        "purged": [d.isoformat() for d in split.purged],
        "folds": [
            {
                "fold": f.index,
                "train": [d.isoformat() for d in f.train],
                "val": [d.isoformat() for d in f.val],
                "purged": [d.isoformat() for d in f.purged],
            }
            for f in folds
        ],
        "eligibility": info,
    }
    split_hash = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
    doc["split_hash"] = split_hash
    # statistics: read only the images of training dates (main split and each fold's training dates)
    fit_dates = sorted(set(split.train) | {d for f in folds for d in f.train})
    moments = _moments(image_root, fit_dates)
    stats = {
        "fitted_on": "train",
        "split_hash": split_hash,
        "pixel_stats_over": "every pixel of every training image",
        "class_names": list(lb.CLASS_NAMES),
        "class_weight_rule": "n / (K * n_class), K = classes present in train; 0 for an absent class",
        "train": _fit(moments, split.train, used, horizons),
        "folds": [{"fold": f.index, **_fit(moments, f.train, used, horizons)} for f in folds],
    }
    by_set_rows = [{"date": d, "set": name, "position": i} for name, v in sets.items() for i, d in enumerate(v)]
    by_set_rows += [{"date": d, "set": "purged", "position": None} for d in split.purged]
    dates_frame = pl.DataFrame(by_set_rows, schema={"date": pl.Date, "set": pl.String, "position": pl.Int32}).sort(
        "date"
    )
    folds_frame = pl.DataFrame(
        [
            {"fold": f.index, "date": d, "role": role}
            for f in folds
            for role, ds in (("train", f.train), ("val", f.val), ("purged", f.purged))
            for d in ds
        ],
        schema={"fold": pl.Int16, "date": pl.Date, "role": pl.String},
    ).sort("fold", "date")
    _atomic_json(splits_root / "splits.json", doc)
    _atomic_parquet(splits_root / "dates.parquet", dates_frame)
    _atomic_parquet(splits_root / "folds.parquet", folds_frame)
    _atomic_json(ready_root / "statistics.json", stats)
    spec_hash = next(iter(spec_hashes))
    shapes = []
    for name, ds in sets.items():
        sub = used.filter(pl.col("date").is_in(list(ds))).sort("date")
        cls = sub.select([pl.col(lb.class_col(h)) for h in horizons]).to_numpy()
        ret = sub.select([pl.col(lb.return_col(h)) for h in horizons]).to_numpy()
        path = write_set_file(
            ready_root / f"{name}.h5",
            name,
            list(ds),
            image_root,
            shard_root,
            cls,
            ret,
            horizons,
            spec_hash=spec_hash,
            split_hash=split_hash,
        )
        with h5py.File(path, "r") as f:
            shapes.append(
                {
                    "set": name,
                    "dates": len(ds),
                    "images": f["images"].shape[0],
                    "patches": f["patches"].shape[0],
                    "labels": f["labels"].shape[0],
                    "date_rows": f["dates"].shape[0],
                }
            )
    yield dg.MaterializeResult(
        metadata={
            "eligible_dates": len(dates),
            **{f"{k}_dates": len(v) for k, v in sets.items()},
            "purged_dates": len(split.purged),
            "gap_sessions": split.gap,
            "folds": len(folds),
            "first_date": dates[0].isoformat(),
            "last_date": dates[-1].isoformat(),
            "set_ranges": dg.MetadataValue.json({k: [v[0].isoformat(), v[-1].isoformat()] for k, v in sets.items()}),
            "train_channel_mean": dg.MetadataValue.json(stats["train"]["channel_mean"]),
            "train_channel_std": dg.MetadataValue.json(stats["train"]["channel_std"]),
            "class_weights": dg.MetadataValue.json(stats["train"]["class_weights"]),
            "eligibility": dg.MetadataValue.json(info),
            "shards_with_stale_labels": dg.MetadataValue.json(stale_labels[:MAX_LISTED]),
            "split_hash": split_hash,
            "root": dg.MetadataValue.path(str(store.root())),
        }
    )
    if stale_labels:
        context.log.warning(
            f"{len(stale_labels)} patch shard(s) carry older labels than the labels table "
            f"(first {stale_labels[0]}); cnn_ready uses the labels table. Re-materialise patch_dataset."
        )
    selected = {k.name for k in context.selected_asset_check_keys}
    if "splits_disjoint_with_gap" in selected:
        frame = _boundary_frame(split, folds, sessions, hmax)
        schema = pa.DataFrameSchema(
            checks=[
                _frame_check(pl.col("shared") == 0, "disjoint"),
                _frame_check(pl.col("later_first_pos") - pl.col("earlier_last_pos") > split.gap, f"gap_gt_{split.gap}"),
                _frame_check(pl.col("window_violations") == 0, "label_windows_isolated"),
            ]
        )
        yield _outcome_result(
            "dataset_splits",
            "splits_disjoint_with_gap",
            run_schema(schema, frame),
            frame,
            None,
            extra={"gap": split.gap, "boundaries": frame.height},
        )
    if "statistics_fit_on_train_only" in selected:
        frame = pl.DataFrame(
            [
                {
                    "scope": "train",
                    "fitted": stats["train"]["n_dates"],
                    "expected": len(split.train),
                    "images_read_for_scope": stats["train"]["images"],
                    "first": stats["train"]["fitted_dates"][0],
                    "last": stats["train"]["fitted_dates"][1],
                    "want_first": split.train[0].isoformat(),
                    "want_last": split.train[-1].isoformat(),
                    "eval_dates_read": len(set(moments) & set(split.test)),
                }
            ]
            + [
                {
                    "scope": f"fold{f.index}",
                    "fitted": s["n_dates"],
                    "expected": len(f.train),
                    "images_read_for_scope": s["images"],
                    "first": s["fitted_dates"][0],
                    "last": s["fitted_dates"][1],
                    "want_first": f.train[0].isoformat(),
                    "want_last": f.train[-1].isoformat(),
                    "eval_dates_read": len(set(moments) & set(split.test)),
                }
                for f, s in zip(folds, stats["folds"])
            ]
        )
        schema = pa.DataFrameSchema(
            checks=[
                _frame_check(
                    (pl.col("fitted") == pl.col("expected")) & (pl.col("images_read_for_scope") == pl.col("expected")),
                    "fitted_on_all_and_only_training_dates",
                ),
                _frame_check(
                    (pl.col("first") == pl.col("want_first")) & (pl.col("last") == pl.col("want_last")), "date_range"
                ),
                _frame_check(pl.col("eval_dates_read") == 0, "no_test_image_read"),
            ]
        )
        yield _outcome_result("dataset_splits", "statistics_fit_on_train_only", run_schema(schema, frame), frame, None)
    if "cnn_ready_shapes" in selected:
        frame = pl.DataFrame(shapes)
        schema = pa.DataFrameSchema(
            checks=[
                _frame_check(
                    (pl.col("images") == pl.col("dates")) & (pl.col("date_rows") == pl.col("dates")),
                    "one_image_per_date",
                ),
                _frame_check(pl.col("patches") == pt.N_PATCHES * pl.col("images"), "patches_eq_256_x_images"),
                _frame_check(pl.col("labels") == pl.col("patches"), "one_label_row_per_patch"),
            ]
        )
        yield _outcome_result("dataset_splits", "cnn_ready_shapes", run_schema(schema, frame), frame, None)


def _boundary_frame(split: sp.Split, folds: list[sp.Fold], sessions: tuple[date, ...], hmax: int) -> pl.DataFrame:
    """One row per pair of consecutive sets (main split and each fold), for the gap check."""
    pos = {d: i for i, d in enumerate(sessions)}
    pairs = [("train", split.train, "val", split.val), ("val", split.val, "test", split.test)]
    pairs += [(f"fold{f.index}.train", f.train, f"fold{f.index}.val", f.val) for f in folds]
    rows = []
    for a, A, b, B in pairs:
        rows.append(
            {
                "earlier": a,
                "later": b,
                "earlier_last_pos": pos[max(A)],
                "later_first_pos": pos[min(B)],
                "shared": len(set(A) & set(B)),
                "window_violations": len(sp.check_no_leak({a: A, b: B}, sessions, hmax, split.gap)),
            }
        )
    return pl.DataFrame(rows)


def dataset_resources() -> dict[str, object]:
    """Resources these assets add to ``io_manager`` and ``image_store`` (already registered)."""
    return {"dataset_store": DatasetStore()}


DATASET_ASSETS = [labels, patch_dataset, dataset_splits]

__all__ = [
    "DATASET_ASSETS",
    "DatasetStore",
    "LabelsConfig",
    "MARKET_WINDOW",
    "MAX_HORIZON",
    "SplitsConfig",
    "build_labels",
    "dataset_resources",
    "dataset_splits",
    "eligible_dates",
    "labels",
    "patch_dataset",
    "read_all_labels",
]
