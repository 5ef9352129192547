"""Ingestion: one asset per modality, each a point-in-time snapshot per trading date.

Partition t of every modality holds that modality's trailing ``history`` sessions as known
at t's close. That is how downstream assets get their lookback: each date carries its own,
so any date can be materialised alone, and gives the same bytes as in a backfill.
"""

from collections.abc import Iterator
from datetime import date

import dagster as dg

from finnex_assets import checks
from finnex_assets.partitions import trading_days
from finnex_assets.resources import DataSourceResource
from finnex_ml import pipeline
from finnex_ml.errors import DataInputError

DESCRIPTIONS = {
    "market_data": "Target stock OHLCV (plus any market__* columns), trailing window per date.",
    "peer_data": "Peer closes and volumes (long: ticker column), trailing window per date.",
    "sentiment_data": "VADER sentiment of dated news and social texts per session and source.",
    "macro_data": "Macro series aligned on release dates with age in days, carried forward.",
    "fundamental_data": "Fundamentals aligned on filing dates with age, yoy and TTM, carried forward.",
}
PROVENANCE_KEY = {
    "market_data": "prices",
    "peer_data": "peers",
    "sentiment_data": "texts",
    "macro_data": "macro",
    "fundamental_data": "fundamental",
}


@dg.multi_asset(
    outs={
        name: dg.AssetOut(
            description=desc,
            group_name="ingestion",
            kinds={"polars"},
            metadata={"partition_column": "asof"},
            is_required=False,
        )
        for name, desc in DESCRIPTIONS.items()
    },
    check_specs=checks.specs("market_data", checks.MARKET_CHECKS),
    partitions_def=trading_days,
    backfill_policy=dg.BackfillPolicy.single_run(),
    can_subset=True,
)
def modalities(
    context: dg.AssetExecutionContext, data_source: DataSourceResource
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Load the source once for the whole partition range and cut per-date snapshots."""
    asof = [date.fromisoformat(k) for k in context.partition_keys]
    selected = {k.path[-1] for k in context.selected_asset_keys}
    source = data_source.source()
    context.log.info(f"{source.name}: {len(asof)} sessions {asof[0]}..{asof[-1]} for {sorted(selected)}")
    snaps, provenance = pipeline.modality_snapshots(source, asof)
    for note in getattr(source, "warnings", ()):  # accepted input the user should look at (files source)
        context.log.warning(f"{source.name}: {note}")
    for name in sorted(selected):  # the IO manager refuses an empty partition: say so before any write
        have = set(snaps[name]["asof"].to_list()) if snaps[name].height else set()
        missing = [d for d in asof if d not in have]
        if missing:
            raise DataInputError(
                f"{name} has no rows for {len(missing)} of the run's {len(asof)} partition(s), first {missing[0]}; "
                f"the {source.name} source holds no {PROVENANCE_KEY[name]} data up to then (files source: add an "
                f"entry for it to the mapping, or leave {name} out of the selection). Nothing was written.",
                date=str(missing[0]),
            )
    if "market_data" in selected:
        # before any output: a failing blocking check must leave every modality unwritten
        yield from checks.gate(
            "market_data",
            checks.results(context, "market_data", snaps["market_data"], checks.MARKET_CHECKS, "asof"),
            len(asof),
        )
    for name in DESCRIPTIONS:
        if name not in selected:
            continue
        frame = snaps[name]
        origin = provenance.get(PROVENANCE_KEY[name], "")
        yield dg.Output(
            frame,
            output_name=name,
            metadata={
                "rows": frame.height,
                "partitions": len(asof),
                "columns": frame.width,
                "source": source.name,
                "provenance": origin,
                "synthetic": origin.startswith("synthetic"),
            },
        )
