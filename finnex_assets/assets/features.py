"""The daily feature table: one leak-free row per trading date, from every modality's snapshots.

Its inputs are the modality table's ingestion assets (``finnex_ml.modalities``);
``daily_features_asset()`` builds it for the table as it is when called.
"""

from collections.abc import Iterator

import dagster as dg
import polars as pl

from finnex_assets import checks
from finnex_assets.partitions import trading_days
from finnex_assets.resources import DataSourceResource
from finnex_ml import modalities as md
from finnex_ml import pipeline, schemas


def daily_features_asset(mods: tuple[md.Modality, ...] | None = None) -> dg.AssetsDefinition:
    """``daily_features`` with one input per modality of ``mods`` (default: the table now)."""
    table = md.current() if mods is None else tuple(mods)
    assets = md.asset_names(table)

    @dg.asset(
        name="daily_features",
        ins={name: dg.AssetIn(name) for name in assets},
        partitions_def=trading_days,
        backfill_policy=dg.BackfillPolicy.single_run(),
        check_specs=checks.specs("daily_features", checks.FEATURE_CHECKS),
        group_name="features",
        kinds={"polars"},
        metadata={"partition_column": "date"},
    )
    def _daily_features(
        context: dg.AssetExecutionContext, data_source: DataSourceResource, **snapshots: pl.DataFrame
    ) -> Iterator[dg.Output | dg.AssetCheckResult]:
        """Technical, sentiment, macro, fundamental and peer features (and any added modality's),
        each from data up to t."""
        yield from _features(context, data_source, snapshots, table)

    return _daily_features


def _features(
    context: dg.AssetExecutionContext,
    data_source: DataSourceResource,
    snapshots: dict[str, pl.DataFrame],
    mods: tuple[md.Modality, ...],
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    table = pipeline.daily_features_from_snapshots(snapshots, mods)
    features = schemas.feature_columns(table)
    groups = pl.Series([c.split("__", 1)[0] for c in features]).value_counts().sort("count", descending=True)
    context.log.info(
        f"{table.height} dates x {len(features)} features; warm-up rows: "
        f"{table.filter(~pl.col('warmup_complete')).height}"
    )
    # checks before the output: a failing blocking check writes no partition (checks.gate)
    yield from checks.gate(
        "daily_features",
        checks.results(context, "daily_features", table, checks.FEATURE_CHECKS, "date"),
        len(context.partition_keys),
    )
    yield dg.Output(
        table,
        metadata={
            "rows": table.height,
            "features": len(features),
            "source": data_source.kind,
            "synthetic_modalities": dg.MetadataValue.json(data_source.synthetic_modalities()),
            "features_by_group": dg.MetadataValue.json(dict(groups.iter_rows())),
            "warmup_rows": table.filter(~pl.col("warmup_complete")).height,
            "first_date": str(table["date"].min()),
            "last_date": str(table["date"].max()),
        },
    )


daily_features = daily_features_asset()
