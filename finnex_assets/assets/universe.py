"""Universe mode: every stage over the cross-section of tickers trading on each date.

Partitions stay NYSE trading dates: partition t holds every ticker of the universe that trades
at t (tickers are configuration of the source, never a partition dimension; thousands of
ticker x date partitions make the UI unresponsive, dagster issue #23076). Asset bodies delegate
to ``finnex_ml.panel`` and ``finnex_ml.panel_model``.
"""

import os
import shutil
from collections.abc import Iterator
from datetime import date
from functools import partial
from pathlib import Path
from typing import Literal

import dagster as dg
import polars as pl
from pydantic import Field

from finnex_assets import checks
from finnex_assets.assets.images import IMAGE_CHECKS, LOOKBACK, NORM
from finnex_assets.partitions import trading_days
from finnex_assets.resources import MlflowTracking
from finnex_assets.storage import FinnexStorage
from finnex_ml import calendar, panel, panel_model
from finnex_ml.data.universe import UniverseSource, universe_source
from finnex_ml.encoding import build_layout, write_spec
from finnex_ml.errors import ConfigError, DataInputError
from finnex_ml.panel_images import stage_cross_sections, stored_previous
from finnex_ml.paths import REPO_ROOT, fsync_dir, fsync_file, resolve_under, write_json_atomic, write_parquet_atomic

GROUP = "universe"


class UniverseResource(dg.ConfigurableResource):
    """Which universe feeds universe mode: ``synthetic`` (default), ``packaged-panel`` or ``files``.
    Its files live in the storage resource's universe store (``storage.universe``)."""

    kind: Literal["synthetic", "packaged-panel", "files"] = Field(
        default="synthetic",
        description="synthetic (N simulated tickers) | packaged-panel (skfolio's S&P 500 20) | files (your exports)",
    )
    mapping_path: str = Field(
        default="", description="files: universe mapping YAML/TOML, relative to the repo or FINNEX_FILES_ROOT."
    )
    n_tickers: int = Field(default=24, description="synthetic: tickers in the universe.")
    seed: int = Field(default=7, description="synthetic: seed of the simulated universe.")
    planted_signal: float = Field(
        default=0.0,
        description="synthetic: strength in [0, 1] of a planted cross-sectional signal (positive control); 0 = none.",
    )

    def source(self) -> UniverseSource:
        if self.kind == "synthetic":
            from finnex_ml.data.universe import CrossSectionalSignal

            plant = CrossSectionalSignal(self.planted_signal) if self.planted_signal else None
            return universe_source(
                "synthetic", n_tickers=self.n_tickers, seed=self.seed, n_sectors=min(4, self.n_tickers), plant=plant
            )
        if self.kind == "files":
            if not self.mapping_path:
                raise ConfigError("the files universe needs mapping_path (FINNEX_UNIVERSE_MAPPING)")
            root = os.environ.get("FINNEX_FILES_ROOT", str(REPO_ROOT))
            return universe_source("files", mapping_path=resolve_under(root, self.mapping_path))
        return universe_source(self.kind)


def default_universe() -> UniverseResource:
    """From the environment, so ``finnex demo --universe ...`` and the UI agree."""
    return UniverseResource(
        kind=os.environ.get("FINNEX_UNIVERSE", "synthetic"),  # type: ignore[arg-type]
        n_tickers=int(os.environ.get("FINNEX_UNIVERSE_TICKERS", "24")),
        seed=int(os.environ.get("FINNEX_SEED", "7")),
        planted_signal=float(os.environ.get("FINNEX_UNIVERSE_PLANT", "0") or 0),
        mapping_path=os.environ.get("FINNEX_UNIVERSE_MAPPING", ""),
    )


def _keys(context: dg.AssetExecutionContext) -> list[date]:
    return [date.fromisoformat(k) for k in context.partition_keys]


def _frame_result(asset: str, name: str, bad: pl.DataFrame, rule: str, total: int) -> dg.AssetCheckResult:
    first = bad.head(5).to_dicts()
    return dg.AssetCheckResult(
        asset_key=asset,
        check_name=name,
        passed=bad.height == 0,
        metadata={
            "rule": rule,
            "rows_checked": total,
            "failing_rows": bad.height,
            "first_failures": dg.MetadataValue.json([{k: str(v) for k, v in r.items()} for r in first]),
        },
    )


PANEL_CHECKS = {
    "unique_ticker_date": "one row per (date, ticker) in universe_prices and universe_features",
    "features_match_membership": "universe_features has a row exactly for each (date, ticker) with a price",
    "positive_close": "every close in universe_prices is finite and > 0",
}


@dg.multi_asset(
    outs={
        "universe_prices": dg.AssetOut(
            group_name=GROUP,
            kinds={"polars"},
            description="Universe membership and prices: one row per ticker trading that date (no survivorship).",
            metadata={"partition_column": "date"},
            is_required=False,
        ),
        "universe_features": dg.AssetOut(
            group_name=GROUP,
            kinds={"polars"},
            description="Per (date, ticker): the single-stock features plus cross-sectional peer__xs_* ones.",
            metadata={"partition_column": "date"},
            is_required=False,
        ),
    },
    check_specs=[
        dg.AssetCheckSpec(n, asset="universe_features", description=d, blocking=True) for n, d in PANEL_CHECKS.items()
    ],
    partitions_def=trading_days,
    backfill_policy=dg.BackfillPolicy.single_run(),
    can_subset=True,
)
def universe_panel(
    context: dg.AssetExecutionContext, universe: UniverseResource
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Per ticker, point-in-time snapshots from the source for the run's dates and their features;
    then the cross-sectional features of each date's universe."""
    asof = _keys(context)
    source = universe.source()
    context.log.info(f"{source.name}: {source.members().height} tickers, {len(asof)} sessions {asof[0]}..{asof[-1]}")
    prices, features = panel.panel_features(source, asof, log=context.log.info)
    for note in getattr(source, "warnings", ()):
        context.log.warning(f"{source.name}: {note}")
    keys = features.select("date", "ticker")
    results = [
        _frame_result(
            "universe_features",
            "unique_ticker_date",
            _dupes(prices, keys),
            PANEL_CHECKS["unique_ticker_date"],
            prices.height,
        ),
        _frame_result(
            "universe_features",
            "features_match_membership",
            pl.concat(
                [
                    prices.select("date", "ticker")
                    .join(keys, on=["date", "ticker"], how="anti")
                    .with_columns(pl.lit("price without features").alias("problem")),
                    keys.join(prices.select("date", "ticker"), on=["date", "ticker"], how="anti").with_columns(
                        pl.lit("features without price").alias("problem")
                    ),
                ]
            ),
            PANEL_CHECKS["features_match_membership"],
            keys.height,
        ),
        _frame_result(
            "universe_features",
            "positive_close",
            prices.filter(~(pl.col("close").is_finite() & (pl.col("close") > 0))).select("date", "ticker", "close"),
            PANEL_CHECKS["positive_close"],
            prices.height,
        ),
    ]
    chosen = {k.name for k in context.selected_asset_check_keys}  # a subset run evaluates only its checks
    yield from checks.gate("universe_features", [r for r in results if r.check_name in chosen], len(asof))
    per_date = prices.group_by("date").len().sort("date")
    selected = {k.path[-1] for k in context.selected_asset_keys}
    for name, frame in (("universe_prices", prices), ("universe_features", features)):
        if name in selected:
            yield dg.Output(
                frame,
                output_name=name,
                metadata={
                    "rows": frame.height,
                    "tickers": frame["ticker"].n_unique(),
                    "tickers_per_date_min": int(per_date["len"].min()),
                    "tickers_per_date_max": int(per_date["len"].max()),
                    "source": source.name,
                    "columns": frame.width,
                },
            )


def _dupes(prices: pl.DataFrame, keys: pl.DataFrame) -> pl.DataFrame:
    return pl.concat(
        [
            prices.select("date", "ticker").filter(pl.struct("date", "ticker").is_duplicated()),
            keys.filter(pl.struct("date", "ticker").is_duplicated()),
        ]
    ).unique()


class UniverseImageConfig(dg.Config):
    preview_ticker: str = Field(
        default="", description="Ticker whose images get PNG previews; empty = the first ticker of each date."
    )
    compression: str = Field(default="", description="Cross-section file compression; empty = the measured default.")
    workers: int = Field(
        default=2,
        description="Processes encoding, checking and writing spans of dates side by side (same files as 1; "
        "a span needs at least panel_images.MIN_SPAN_DATES dates).",
    )


@dg.asset(
    ins={
        "universe_features": dg.AssetIn(
            partition_mapping=dg.TimeWindowPartitionMapping(
                start_offset=-(LOOKBACK - 1), allow_nonexistent_upstream_partitions=True
            )
        )
    },
    partitions_def=trading_days,
    backfill_policy=dg.BackfillPolicy.single_run(),
    check_specs=[
        dg.AssetCheckSpec(n, asset="universe_images", description=f"per ticker: {d}", blocking=True)
        for n, d in IMAGE_CHECKS.items()
    ],
    group_name=GROUP,
    kinds={"hdf5", "numpy"},
)
def universe_images(
    context: dg.AssetExecutionContext,
    config: UniverseImageConfig,
    universe_features: pl.DataFrame,
    storage: FinnexStorage,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """One file per date with the day's cross-section ``[n_tickers, 512, 512, 3]``, its ticker index
    and per-ticker missing masks. Files are staged, every check runs on every image, and only when
    all pass are the staged files renamed into place (a failing check writes nothing)."""
    dates = _keys(context)
    table = universe_features.sort("date", "ticker")
    spec = build_layout([c for c in table.columns if c != "ticker"])
    store = storage.universe
    root = store.images_root
    staging = root / ".staging" / context.run.run_id
    shutil.rmtree(staging, ignore_errors=True)
    universe_size = table.group_by("date").len()
    sizes = dict(zip(universe_size["date"].to_list(), universe_size["len"].to_list()))
    try:
        staged = stage_cross_sections(
            table,
            dates,
            spec,
            NORM,
            staging,
            previous=partial(stored_previous, store),
            compression=_compression(config),
            preview_ticker=config.preview_ticker,
            workers=config.workers,
            log=context.log.info,
        )
        failures, counts = {n: staged.failures.get(n, []) for n in IMAGE_CHECKS}, staged.counts
        for d, n in counts.items():
            if n < sizes.get(d, 0):
                context.log.debug(f"universe_images {d}: {n} of {sizes.get(d, 0)} tickers imaged")
        results = [
            dg.AssetCheckResult(
                asset_key="universe_images",
                check_name=name,
                passed=not bad,
                metadata={
                    "images_checked": sum(counts.values()),
                    "failing_images": len(bad),
                    "first_failures": dg.MetadataValue.json(bad[:20]),
                },
            )
            for name, bad in failures.items()
        ]
        yield from checks.gate("universe_images", results, len(dates))
        write_spec(root, spec, NORM)
        _commit(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for d, n in counts.items():
        context.add_asset_metadata(
            partition_key=d.isoformat(),
            metadata={
                "tickers_imaged": n,
                "universe_size": sizes.get(d, 0),
                "excluded_short_history": sizes.get(d, 0) - n,
            },
        )
    yield dg.MaterializeResult(
        metadata={
            "root": dg.MetadataValue.path(str(root)),
            "images": sum(counts.values()),
            "spec_hash": spec.spec_hash(),
            "previews": dg.MetadataValue.path(str(root / "previews")),
        }
    )


def _compression(config: UniverseImageConfig) -> dict:
    return {"compression": config.compression} if config.compression else {}


def _commit(staging: Path, root: Path) -> None:
    """Rename every staged file into place (same filesystem: each rename is atomic), each only
    once its data is on disk (fsync; the staged writes skip theirs, so most of a long run's files
    were written back by the kernel meanwhile), then one fsync per folder that received files."""
    folders: set[Path] = set()
    for src in sorted(staging.rglob("*")):
        if src.is_file():
            dst = root / src.relative_to(staging)
            if dst.parent not in folders:
                dst.parent.mkdir(parents=True, exist_ok=True)
                folders.add(dst.parent)
            fsync_file(src)
            os.replace(src, dst)
    for folder in sorted(folders):
        fsync_dir(folder)


LABEL_CHECKS = {
    "labels_match_membership": "one label row exactly for each (date, ticker) in universe_prices",
    "excess_mean_zero": "per date and horizon, the excess returns average to zero over the tickers with a return",
    "terciles_balanced": "per date and horizon, the cross-sectional classes' counts differ by at most one",
}


@dg.asset(
    ins={"universe_prices": dg.AssetIn()},
    partitions_def=trading_days,
    backfill_policy=dg.BackfillPolicy.single_run(),
    check_specs=[
        dg.AssetCheckSpec(n, asset="universe_labels", description=d, blocking=True) for n, d in LABEL_CHECKS.items()
    ],
    group_name=GROUP,
    kinds={"polars"},
    metadata={"partition_column": "date"},
)
def universe_labels(
    context: dg.AssetExecutionContext, universe_prices: pl.DataFrame, universe: UniverseResource
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Per (date, ticker) and horizon 1/5/20: class, return, excess return over the universe's
    equal-weight mean and its cross-sectional tercile. Future closes come from the source, so the
    last dates of a range are labelled as far as the source knows (null past that, never guessed)."""
    dates = _keys(context)
    source = universe.source()
    start = calendar.sessions_back(dates[0], 40)
    end = calendar.sessions_forward(dates[-1], max(panel.PANEL_HORIZONS))
    prices = panel.panel_prices(source, start, end)
    table = panel.panel_labels(prices, dates)
    have = universe_prices.select("date", "ticker")
    keys = table.select("date", "ticker")
    mismatch = pl.concat(
        [have.join(keys, on=["date", "ticker"], how="anti"), keys.join(have, on=["date", "ticker"], how="anti")]
    )
    excess_bad, tercile_bad = [], []
    for h in panel.PANEL_HORIZONS:
        by = table.group_by("date").agg(
            pl.col(panel.excess_col(h)).mean().abs().alias("mean"),
            *[(pl.col(panel.xs_class_col(h)) == k).sum().alias(f"c{k}") for k in range(panel.XS_QUANTILES)],
        )
        excess_bad.append(by.filter(pl.col("mean") > 1e-12).select("date", pl.lit(h).alias("horizon")))
        spread = pl.max_horizontal("c0", "c1", "c2") - pl.min_horizontal("c0", "c1", "c2")
        tercile_bad.append(by.filter(spread > 1).select("date", pl.lit(h).alias("horizon")))
    yield from checks.gate(
        "universe_labels",
        [
            _frame_result(
                "universe_labels",
                "labels_match_membership",
                mismatch,
                LABEL_CHECKS["labels_match_membership"],
                have.height,
            ),
            _frame_result(
                "universe_labels",
                "excess_mean_zero",
                pl.concat(excess_bad),
                LABEL_CHECKS["excess_mean_zero"],
                table.height,
            ),
            _frame_result(
                "universe_labels",
                "terciles_balanced",
                pl.concat(tercile_bad),
                LABEL_CHECKS["terciles_balanced"],
                table.height,
            ),
        ],
        len(dates),
    )
    pending = table.filter(pl.col(panel.xs_class_col(max(panel.PANEL_HORIZONS))).is_null())
    yield dg.Output(
        table,
        metadata={
            "rows": table.height,
            "horizons": dg.MetadataValue.json(list(panel.PANEL_HORIZONS)),
            "rows_with_unlabelled_horizon": pending.height,
        },
    )


class UniverseSplitsConfig(dg.Config):
    horizon: int = Field(
        default=panel_model.DEFAULT_HORIZON,
        description=f"Label horizon (sessions) the universe model learns: one of {list(panel.PANEL_HORIZONS)}.",
    )
    train_fraction: float = Field(default=0.6)
    val_fraction: float = Field(default=0.2)
    embargo_sessions: int = Field(default=0)


@dg.asset(
    deps=[dg.AssetDep(a, partition_mapping=dg.AllPartitionMapping()) for a in ("universe_images", "universe_labels")],
    required_resource_keys={"storage"},
    group_name=GROUP,
    kinds={"parquet", "json"},
)
def universe_splits(context: dg.AssetExecutionContext, config: UniverseSplitsConfig) -> dg.MaterializeResult:
    """Train / val / test by date over every (date, ticker) with an image and a known label, with
    the purge by date; statistics from the training set only."""
    storage: FinnexStorage = context.resources.storage
    store = storage.universe
    labels = storage.tables.read_all("universe_labels").sort("date", "ticker")
    index = store.index()
    samples = panel_model.panel_samples(labels, index, config.horizon)
    if samples.height == 0:
        raise DataInputError("no (date, ticker) has both a universe image and a label; materialise both first")
    samples = samples.join(index, on=["date", "ticker"], how="left")
    samples, split = panel_model.split_panel(
        samples, config.horizon, train=config.train_fraction, val=config.val_fraction, embargo=config.embargo_sessions
    )
    stats = panel_model.train_statistics(samples)
    # the single split's predictions belong to the split they were made on: a new split drops them
    # (universe_evaluation must never score an old model on new sets; the walk-forward's folds are
    # keyed by the samples' hash and need no such step)
    stale = store.dataset_path("predictions.parquet")
    if stale.exists():
        stale.unlink()
        context.log.info(f"universe_splits: removed {stale.name} of the previous split (rematerialise universe_model)")
    store.write_dataset_parquet("samples.parquet", samples)
    doc = {
        "horizon": config.horizon,
        "gap": split.gap,
        "purged_dates": [d.isoformat() for d in split.purged],
        "sets": {
            name: {
                "dates": len(ds),
                "first": ds[0].isoformat(),
                "last": ds[-1].isoformat(),
                "samples": samples.filter(pl.col("set") == name).height,
            }
            for name, ds in split.sets().items()
        },
        "train_statistics": stats,
    }
    store.write_dataset_json("splits.json", doc)
    return dg.MaterializeResult(
        metadata={
            "samples": samples.height,
            "sets": dg.MetadataValue.json(doc["sets"]),
            "train_class_share": dg.MetadataValue.json(stats["class_share"]),
            "path": dg.MetadataValue.path(str(store.datasets_root)),
        }
    )


class UniverseModelConfig(dg.Config):
    model: str = Field(default="cnn", description="Registered model name (finnex_ml.models.MODEL_REGISTRY).")
    epochs: int = Field(default=5)
    patience: int = Field(default=2)
    batch_size: int = Field(default=32)
    lr: float = Field(default=2e-3)
    seeds: list[int] = Field(default=[0], description="One ensemble member per seed, probabilities averaged.")
    num_threads: int = Field(default=2)


@dg.asset(
    deps=["universe_splits"],
    group_name=GROUP,
    kinds={"pytorch", "mlflow"},
)
def universe_model(
    context: dg.AssetExecutionContext,
    config: UniverseModelConfig,
    universe: UniverseResource,
    storage: FinnexStorage,
    mlflow_tracking: MlflowTracking,
) -> dg.MaterializeResult:
    """The layout-aware model on the universe's train dates (early stopping on val), learning the
    cross-sectional tercile of the excess return; predictions for every val and test sample."""
    import json

    import mlflow

    from finnex_ml.encoding.panel_store import PanelReader
    from finnex_ml.evaluation.metrics import is_degenerate, prediction_diversity

    store = storage.universe
    samples = pl.read_parquet(store.dataset_path("samples.parquet"))
    horizon = json.loads(store.dataset_path("splits.json").read_text(encoding="utf-8"))["horizon"]
    spec = store.read_spec()
    settings = panel_model.PanelTrainSettings(
        model=config.model,
        epochs=config.epochs,
        patience=config.patience,
        batch_size=config.batch_size,
        lr=config.lr,
        seeds=tuple(config.seeds),
        num_threads=config.num_threads,
    )
    mlflow.set_tracking_uri(mlflow_tracking.uri())
    with (
        mlflow.start_run(
            experiment_id=mlflow_tracking.experiment_id(),
            run_name=f"universe_model-{context.run.run_id[:8]}",
            tags={"dagster_run_id": context.run.run_id, "asset": "universe_model", "universe": universe.kind},
        ) as run,
        PanelReader(store.images_root, samples) as reader,
    ):
        mlflow.log_params(
            {
                **config.model_dump(),
                "horizon": horizon,
                "train_samples": samples.filter(pl.col("set") == "train").height,
            }
        )

        def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
            mlflow.log_metrics(metrics, step=epoch)
            shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if "loss" in k or "acc" in k)
            context.log.info(f"universe_model epoch {epoch}/{config.epochs}: {shown}")

        preds, history = panel_model.train_and_predict(
            reader,
            samples,
            spec,
            horizon,
            settings,
            checkpoint_root=store.dataset_path("model"),
            on_epoch_end=on_epoch_end,
        )
        test = preds.filter(pl.col("set") == "test")
        degenerate = is_degenerate(test["pred_class"].to_numpy())
        shares = prediction_diversity(test["pred_class"].to_numpy())["shares"]
        mlflow.set_tag("degenerate", str(degenerate).lower())
        pred_file = store.write_dataset_parquet("predictions.parquet", preds)
        mlflow.log_artifact(str(pred_file), artifact_path="predictions")
        run_id = run.info.run_id
    if degenerate:
        context.log.warning("universe_model predicts one class on most test samples: degenerate, not interpreted")
    return dg.MaterializeResult(
        metadata={
            "mlflow_run_id": run_id,
            "horizon": horizon,
            "best_epochs": dg.MetadataValue.json([h["best_epoch"] for h in history]),
            "test_samples": test.height,
            "test_pred_class_shares": dg.MetadataValue.json([round(float(x), 4) for x in shares]),
            "degenerate": degenerate,
            "predictions": dg.MetadataValue.path(str(pred_file)),
        }
    )


class UniverseWalkForwardConfig(dg.Config):
    walk_forward: bool = Field(
        default=True, description="Retrain the model per yearly test block and pool the blocks (off: skip)."
    )
    epochs: int = Field(default=2, description="Epochs per fold at most (early stopping on the inner block).")
    patience: int = Field(default=1)
    window_years: float = Field(
        default=2.0,
        description="Training window before each block, years; 0 = expanding (every earlier date, costlier each year).",
    )
    train_stride: int = Field(
        default=0, description="Fit on every k-th date of the window; 0 = the horizon (overlapping labels)."
    )
    val_fraction: float = Field(default=0.2, description="Inner validation block: the window's last share of dates.")
    min_train_sessions: int = Field(default=250, description="Dates before the first test block, at least.")
    block_sessions: int = Field(default=0, description="Test blocks of this many dates instead of calendar years.")
    batch_size: int = Field(default=32)
    lr: float = Field(default=2e-3)
    seeds: list[int] = Field(default=[0])
    num_threads: int = Field(default=2)


def walk_forward_folds(samples: pl.DataFrame, horizon: int, config: UniverseWalkForwardConfig) -> list:
    from finnex_ml.panel_walkforward import panel_folds

    return panel_folds(
        samples["date"].unique().sort().to_list(),
        horizon,
        min_train=config.min_train_sessions,
        window_years=config.window_years,
        val_fraction=config.val_fraction,
        train_stride=config.train_stride or horizon,
        block_sessions=config.block_sessions or None,
    )


@dg.asset(
    deps=["universe_splits"],
    group_name=GROUP,
    kinds={"pytorch", "parquet", "mlflow"},
)
def universe_walk_forward(
    context: dg.AssetExecutionContext,
    config: UniverseWalkForwardConfig,
    storage: FinnexStorage,
    mlflow_tracking: MlflowTracking,
) -> dg.MaterializeResult:
    """The model retrained before each yearly test block (a window ending h sessions before it,
    early stopping on an inner purged validation block) and its predictions of the block, pooled
    over the blocks into one out-of-sample panel. Each fold is cached under (fold, config hash,
    data hash): a re-run skips finished folds, a killed run resumes."""
    import json

    from finnex_ml import panel_walkforward as pw
    from finnex_ml.encoding.panel_store import PanelReader
    from finnex_ml.encoding.store import read_spec

    store = storage.universe
    out = store.datasets_root
    wf = out / "walk_forward"
    pooled_path, doc_path = wf / "pooled_predictions.parquet", wf / "walk_forward.json"
    samples = pl.read_parquet(out / "samples.parquet").drop("set")
    horizon = json.loads((out / "splits.json").read_text(encoding="utf-8"))["horizon"]
    folds = walk_forward_folds(samples, horizon, config) if config.walk_forward else []
    if not folds:  # off, or too few dates for a block after a first window: nothing stale stays behind
        pooled_path.unlink(missing_ok=True)
        why = "off" if not config.walk_forward else "too few dates for a test block after a first training window"
        write_json_atomic(doc_path, {"enabled": False, "reason": why, "horizon": horizon, "folds": []})
        context.log.info(f"universe_walk_forward: skipped ({why})")
        return dg.MaterializeResult(metadata={"folds": 0, "skipped": why})
    spec = read_spec(store.images_root)
    settings = panel_model.PanelTrainSettings(
        model="cnn",
        epochs=config.epochs,
        patience=config.patience,
        batch_size=config.batch_size,
        lr=config.lr,
        seeds=tuple(config.seeds),
        num_threads=config.num_threads,
    )
    rules = config.model_dump(exclude={"walk_forward", "num_threads"})
    with PanelReader(store.images_root, samples) as reader:
        learner = pw.cnn_fit_predict(
            reader,
            spec,
            horizon,
            settings,
            on_epoch_end=lambda e, m: context.log.info(
                f"universe_walk_forward epoch {e}: "
                + ", ".join(f"{k}={v:.4f}" for k, v in sorted(m.items()) if "loss" in k)
            ),
        )
        pooled, infos = pw.walk_forward_predictions(
            samples,
            folds,
            learner,
            cache_dir=wf / "folds",
            config_key=pw.config_hash(rules, horizon),
            data_key=pw.data_hash(samples, spec.spec_hash()),
            log=context.log.info,
        )
    write_parquet_atomic(pooled_path, pooled)
    dates = pooled["date"].unique().sort()
    doc = {
        "enabled": True,
        "horizon": horizon,
        "config": rules,
        "span": [dates[0].isoformat(), dates[-1].isoformat()],
        "dates": dates.len(),
        "rows": pooled.height,
        "folds": infos,
    }
    write_json_atomic(doc_path, doc)
    run_id = _log_walk_forward(context, mlflow_tracking, samples, pooled, doc, [pooled_path, doc_path])
    return dg.MaterializeResult(
        metadata={
            "mlflow_run_id": run_id,
            "folds": len(folds),
            "folds_cached": sum(bool(i["cached"]) for i in infos),
            "pooled_span": f"{doc['span'][0]}..{doc['span'][1]}",
            "pooled_dates": doc["dates"],
            "pooled_rows": pooled.height,
            "predictions": dg.MetadataValue.path(str(pooled_path)),
        }
    )


def _log_walk_forward(
    context: dg.AssetExecutionContext,
    tracking: MlflowTracking,
    samples: pl.DataFrame,
    pooled: pl.DataFrame,
    doc: dict,
    artifacts: list[Path],
) -> str:
    """One MLflow run per walk-forward: its rules, each fold's mean daily IC on its test block
    (step = fold), the pooled IC, and the pooled predictions. Every configuration tried on a
    dataset is then in the log, which is what a count of trials must read."""
    import mlflow

    from finnex_ml.evaluation.cross_section import daily_ic

    scored = pooled.join(
        samples.select("date", "ticker", pl.col("excess").alias("excess_return")), on=["date", "ticker"], how="left"
    )
    ic = daily_ic(scored).join(scored.select("date", "fold").unique(), on="date", how="left")
    mlflow.set_tracking_uri(tracking.uri())
    with mlflow.start_run(
        experiment_id=tracking.experiment_id(),
        run_name=f"universe_walk_forward-{context.run.run_id[:8]}",
        tags={"dagster_run_id": context.run.run_id, "asset": "universe_walk_forward"},
    ) as run:
        mlflow.log_params({**doc["config"], "horizon": doc["horizon"], "folds": len(doc["folds"])})
        for info in doc["folds"]:
            fold_ic = ic.filter(pl.col("fold") == info["fold"])["ic"].drop_nulls()
            metrics = {"test_rows": float(info["test_rows"])}
            if fold_ic.len():
                metrics["mean_ic"] = float(fold_ic.mean())
            mlflow.log_metrics(metrics, step=int(info["fold"]))
        pooled_ic = ic["ic"].drop_nulls()
        if pooled_ic.len():
            mlflow.log_metric("pooled_mean_ic", float(pooled_ic.mean()))
        mlflow.set_tag("pooled_span", "..".join(doc["span"]))
        for path in artifacts:
            mlflow.log_artifact(str(path), artifact_path="walk_forward")
        return run.info.run_id


CAVEATS = {
    "packaged-panel": ". Caveats: survivorship-biased as shipped (20 large caps all listed through 2022); closes "
    "only (open/high/low/volume features are missing); arch.data's daily macro ends 2018-12-28 (later dates carry "
    "its last values, with their age)",
}


class UniverseEvaluationConfig(dg.Config):
    n_quantiles: int = Field(default=10, description="Quantile portfolios per date (fewer when fewer tickers).")
    cost_bps: float = Field(default=10.0, description="Cost per unit of long-short turnover, basis points.")
    n_boot: int = Field(default=1000, description="Block-bootstrap resamples for every interval.")
    n_perm: int = Field(default=1000, description="Permutations of scores within dates for the model's IC test.")


@dg.asset(
    deps=["universe_model", "universe_walk_forward"],
    required_resource_keys={"storage", "universe"},
    group_name=GROUP,
    kinds={"html"},
)
def universe_evaluation(context: dg.AssetExecutionContext, config: UniverseEvaluationConfig) -> dg.MaterializeResult:
    """The model's out-of-sample IC and long-short beside momentum, reversal, random and a ridge
    (and the oracle when a signal is planted): on the pooled walk-forward panel first when
    ``universe_walk_forward`` produced one (ridge refitted per fold), then on the single split
    (ridge fitted on train dates); HTML and JSON report under reports/."""
    import json

    from finnex_ml.evaluation.report import write_html
    from finnex_ml.evaluation.universe_report import evaluate_pooled, evaluate_universe, summary_json, universe_html

    universe: UniverseResource = context.resources.universe
    storage: FinnexStorage = context.resources.storage
    store = storage.universe
    out = store.datasets_root
    samples = pl.read_parquet(out / "samples.parquet")
    horizon = json.loads((out / "splits.json").read_text(encoding="utf-8"))["horizon"]
    wf = _walk_forward_result(out, horizon)
    split_preds = out / "predictions.parquet"
    if wf is None and not split_preds.exists():
        raise DataInputError("no predictions to evaluate: materialise universe_model or universe_walk_forward first")
    features = storage.tables.read_all("universe_features")
    if wf is None:  # only the split's dates are needed
        used = samples.filter(pl.col("set").is_in(["train", "test"])).select("date").unique()
        features = features.join(used, on="date", how="semi")
    source = universe.source()
    planted = universe.kind == "synthetic" and bool(universe.planted_signal)

    def oracle_for(scored: pl.DataFrame) -> pl.DataFrame | None:
        if not planted:
            return None
        return source.oracle_scores(scored["date"].min(), scored["date"].max(), (horizon,)).rename(
            {f"oracle_h{horizon}": "score"}
        )

    kwargs = {"n_quantiles": config.n_quantiles, "cost_bps": config.cost_bps, "n_boot": config.n_boot}
    doc = None  # the single split, when universe_model ran (the walk-forward alone is enough)
    if split_preds.exists():
        preds = pl.read_parquet(split_preds)
        doc = evaluate_universe(
            samples,
            preds,
            features,
            horizon,
            oracle=oracle_for(preds.filter(pl.col("set") == "test")),
            n_perm=config.n_perm,
            **kwargs,
        )
    pooled = None
    if wf is not None:
        pooled_preds, folds, infos = wf
        pooled = evaluate_pooled(
            samples.drop("set"),
            pooled_preds,
            features,
            horizon,
            folds,
            infos,
            oracle=oracle_for(pooled_preds),
            n_perm=config.n_perm,
            **kwargs,
        )
    provenance = (
        f"{source.name} ({'SYNTHETIC: simulated tickers' if universe.kind == 'synthetic' else 'real closes'}), "
        f"{source.members().height} tickers; benchmark {source.benchmark}"
        + (f"; planted cross-sectional signal, strength {universe.planted_signal:g}" if planted else "")
        + CAVEATS.get(universe.kind, "")
    )
    path = write_html(store.report_path(), universe_html(doc, provenance, pooled=pooled))
    write_json_atomic(
        store.report_path().with_suffix(".json"),
        {"provenance": provenance, "pooled": summary_json(pooled), "single_split": summary_json(doc)},
    )
    lead = pooled if pooled is not None else doc
    assert lead is not None  # one of them exists (checked above)
    model = lead["table"].row(0, named=True)
    if lead["degenerate"]:
        context.log.warning("universe_model is degenerate (one class or constant score): flagged, not interpreted")
    meta = {
        "report": dg.MetadataValue.path(str(path)),
        "test_span": f"{lead['test_span'][0]}..{lead['test_span'][1]}"
        if doc is None
        else f"{doc['test_span'][0]}..{doc['test_span'][1]}",
        "model_mean_ic": model["mean_ic"],
        "model_ic_p_value": model["p_value"],
        "best_baseline": str(lead["tests"]["best_baseline"]),
        "paired_vs_best_p_value": lead["tests"]["paired"]["p_value"],
        "permutation_p_value": lead["tests"]["permutation"]["p_value"],
        "degenerate": lead["degenerate"],
        "table": dg.MetadataValue.md(_markdown(lead["table"])),
    }
    if pooled is not None:
        meta.update(
            pooled_span=f"{pooled['test_span'][0]}..{pooled['test_span'][1]}",
            pooled_years=round(pooled["span_years"], 2),
            pooled_dates=pooled["n_test_dates"],
            pooled_independent_decisions=pooled["independent_decisions"],
        )
        if doc is not None:
            meta["single_split_table"] = dg.MetadataValue.md(_markdown(doc["table"]))
    return dg.MaterializeResult(metadata=meta)


def _walk_forward_result(out: Path, horizon: int) -> tuple[pl.DataFrame, list, list[dict]] | None:
    """The pooled walk-forward predictions, their folds and fold infos, when universe_walk_forward
    ran at this horizon on these samples; None when it was off or skipped."""
    import json

    wf = out / "walk_forward"
    doc_path, pooled_path = wf / "walk_forward.json", wf / "pooled_predictions.parquet"
    if not (doc_path.exists() and pooled_path.exists()):
        return None
    doc = json.loads(doc_path.read_text(encoding="utf-8"))
    if not doc.get("enabled") or doc.get("horizon") != horizon:
        return None
    samples_dates = pl.read_parquet(out / "samples.parquet", columns=["date"])["date"].unique().sort().to_list()
    cfg = UniverseWalkForwardConfig(**doc["config"])
    folds = walk_forward_folds(pl.DataFrame({"date": samples_dates}), horizon, cfg)
    if len(folds) != len(doc["folds"]) or [f.describe() for f in folds] != [
        {k: i[k] for k in f.describe()} for f, i in zip(folds, doc["folds"])
    ]:
        return None  # the samples changed since the walk-forward: its folds are not these
    return pl.read_parquet(pooled_path), folds, doc["folds"]


def _markdown(table: pl.DataFrame) -> str:
    cols = ["predictor", "mean_ic", "t_hac", "p_value", "sharpe_net", "degenerate"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in table.select(cols).iter_rows():
        lines.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in r) + " |")
    return "\n".join(lines)


UNIVERSE_ASSETS = [
    universe_panel,
    universe_images,
    universe_labels,
    universe_splits,
    universe_model,
    universe_walk_forward,
    universe_evaluation,
]
