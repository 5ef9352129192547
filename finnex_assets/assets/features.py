"""The daily feature table: one leak-free row per trading date."""

from collections.abc import Iterator

import dagster as dg
import polars as pl

from finnex_assets import checks
from finnex_assets.partitions import trading_days
from finnex_assets.resources import DataSourceResource
from finnex_ml import pipeline, schemas


@dg.asset(
    ins={name: dg.AssetIn(name) for name in pipeline.MODALITIES},
    partitions_def=trading_days,
    backfill_policy=dg.BackfillPolicy.single_run(),
    check_specs=checks.specs("daily_features", checks.FEATURE_CHECKS),
    group_name="features",
    kinds={"polars"},
    metadata={"partition_column": "date"},
)
def daily_features(
    context: dg.AssetExecutionContext,
    market_data: pl.DataFrame,
    peer_data: pl.DataFrame,
    sentiment_data: pl.DataFrame,
    macro_data: pl.DataFrame,
    fundamental_data: pl.DataFrame,
    data_source: DataSourceResource,
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Technical, sentiment, macro, fundamental and peer features, each from data up to t."""
    table = pipeline.daily_features_from_snapshots(
        {
            "market_data": market_data,
            "peer_data": peer_data,
            "sentiment_data": sentiment_data,
            "macro_data": macro_data,
            "fundamental_data": fundamental_data,
        }
    )
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
