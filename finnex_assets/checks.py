"""QA asset checks built from the pandera schemas in ``finnex_ml.schemas``.

Checks run inside the asset's step on the data just computed (no re-reading every partition
through the IO manager) and are blocking: a failure stops downstream assets in the same run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import dagster as dg
import polars as pl

from finnex_ml import schemas

MAX_LISTED = 20

MARKET_CHECKS: dict[str, tuple[str, Callable[[pl.DataFrame], schemas.CheckOutcome]]] = {
    "ohlc_consistency": ("low <= open, close <= high on every row",
                         lambda f: schemas.run_schema(schemas.OHLC_CONSISTENCY, f)),
    "prices_positive_volume_nonnegative": ("prices > 0 and volume >= 0",
                                           lambda f: schemas.run_schema(schemas.PRICES_POSITIVE, f)),
    "unique_sessions": ("one row per (partition, session)",
                        lambda f: schemas.run_schema(schemas.UNIQUE_SNAPSHOT_ROWS, f)),
}
FEATURE_CHECKS: dict[str, tuple[str, Callable[[pl.DataFrame], schemas.CheckOutcome]]] = {
    "unique_sessions": ("one row per trading date", lambda f: schemas.run_schema(schemas.UNIQUE_SESSIONS, f)),
    "finite_after_warmup": ("no null, NaN or inf in any feature once warm-up is complete",
                            lambda f: schemas.run_schema(schemas.finite_after_warmup(schemas.feature_columns(f)), f)),
    "staleness_within_bounds": ("carried-forward values are younger than their modality's limit",
                                lambda f: schemas.run_schema(schemas.staleness_within_bounds(f), f)),
}


def specs(asset: str, checks: dict[str, tuple[str, object]]) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(name, asset=asset, description=desc, blocking=True)
            for name, (desc, _) in checks.items()]


def results(
    context: dg.AssetExecutionContext,
    asset: str,
    frame: pl.DataFrame,
    checks: dict[str, tuple[str, Callable[[pl.DataFrame], schemas.CheckOutcome]]],
    date_column: str,
) -> Iterable[dg.AssetCheckResult]:
    """Run the selected checks; failing rows, columns and dates go into the check metadata."""
    selected = {k.name for k in context.selected_asset_check_keys if k.asset_key == dg.AssetKey(asset)}
    for name, (_, run) in checks.items():
        if name not in selected:
            continue
        outcome = run(frame)
        meta: dict[str, dg.RawMetadataValue] = {"rows_checked": outcome.rows_checked}
        if not outcome.passed:
            rows = outcome.failing_rows
            dates = sorted({str(frame[date_column][i]) for i in rows if i < frame.height})
            cases = outcome.failures.head(MAX_LISTED).with_columns(pl.all().cast(pl.String))
            meta |= {
                "failing_rows": len(rows),
                "failing_dates": dg.MetadataValue.json(dates[:MAX_LISTED]),
                "failing_columns": dg.MetadataValue.json(
                    sorted(set(outcome.failures["check"].cast(pl.String).to_list()))[:MAX_LISTED]),
                "failure_cases": dg.MetadataValue.md(_markdown(cases)),
            }
        yield dg.AssetCheckResult(asset_key=asset, check_name=name, passed=outcome.passed,
                                  severity=dg.AssetCheckSeverity.ERROR, metadata=meta)


def _markdown(frame: pl.DataFrame) -> str:
    head = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns) + "\n"
    return head + "".join("| " + " | ".join("" if v is None else str(v) for v in row) + " |\n" for row in frame.rows())
