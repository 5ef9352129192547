"""Ingestion: one asset per modality, each a point-in-time snapshot per trading date.

Partition t of every modality holds that modality's trailing ``history`` sessions as known
at t's close. That is how downstream assets get their lookback: each date carries its own,
so any date can be materialised alone, and gives the same bytes as in a backfill.

The outputs are the modality table's (``finnex_ml.modalities``): ``modalities_asset()`` builds
the multi-asset for the table as it is when called (``modalities`` below: the built-ins, plus any
modality registered before this module was imported).
"""

from collections.abc import Iterator
from datetime import date

import dagster as dg

from finnex_assets import checks
from finnex_assets.partitions import trading_days
from finnex_assets.resources import DataSourceResource
from finnex_ml import modalities as md
from finnex_ml import pipeline
from finnex_ml.errors import DataInputError


def modalities_asset(mods: tuple[md.Modality, ...] | None = None) -> dg.AssetsDefinition:
    """The ingestion multi-asset: one output per modality of ``mods`` (default: the table now)."""
    table = md.current() if mods is None else tuple(mods)
    by_asset = {m.asset: m for m in table}

    @dg.multi_asset(
        name="modalities",
        outs={
            m.asset: dg.AssetOut(
                description=m.description,
                group_name="ingestion",
                kinds={"polars"},
                metadata={"partition_column": "asof"},
                is_required=False,
            )
            for m in table
        },
        check_specs=checks.specs("market_data", checks.MARKET_CHECKS),
        partitions_def=trading_days,
        backfill_policy=dg.BackfillPolicy.single_run(),
        can_subset=True,
    )
    def _modalities(
        context: dg.AssetExecutionContext, data_source: DataSourceResource
    ) -> Iterator[dg.Output | dg.AssetCheckResult]:
        """Load the source once for the whole partition range and cut per-date snapshots."""
        yield from _ingest(context, data_source, by_asset)

    return _modalities


def _ingest(
    context: dg.AssetExecutionContext, data_source: DataSourceResource, by_asset: dict[str, md.Modality]
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    asof = [date.fromisoformat(k) for k in context.partition_keys]
    selected = {k.path[-1] for k in context.selected_asset_keys}
    source = data_source.source()
    context.log.info(f"{source.name}: {len(asof)} sessions {asof[0]}..{asof[-1]} for {sorted(selected)}")
    snaps, provenance = pipeline.modality_snapshots(source, asof, mods=tuple(by_asset.values()))
    for note in getattr(source, "warnings", ()):  # accepted input the user should look at (files source)
        context.log.warning(f"{source.name}: {note}")
    for name in sorted(selected):  # the IO manager refuses an empty partition: say so before any write
        have = set(snaps[name]["asof"].to_list()) if snaps[name].height else set()
        missing = [d for d in asof if d not in have]
        if missing:
            raise DataInputError(
                f"{name} has no rows for {len(missing)} of the run's {len(asof)} partition(s), first {missing[0]}; "
                f"the {source.name} source holds no {by_asset[name].provenance} data up to then (files source: add an "
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
    for name, mod in by_asset.items():
        if name not in selected:
            continue
        frame = snaps[name]
        origin = provenance.get(mod.provenance, "")
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


modalities = modalities_asset()
