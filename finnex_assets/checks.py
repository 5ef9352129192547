"""QA asset checks built from the pandera schemas in ``finnex_ml.schemas``.

Checks run inside the asset's step on the data just computed (no re-reading every partition
through the IO manager) and are blocking: a failure stops downstream assets in the same run.
They are also evaluated BEFORE the asset yields its output (:func:`gate`): Dagster's own
blocking only stops the steps after this one, once the IO manager has written every partition,
so a bad row would be on disk and recorded as materialised.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import dagster as dg
import polars as pl

from finnex_ml import schemas
from finnex_ml.schemas import FEATURE_CHECKS, MARKET_CHECKS

__all__ = ["FEATURE_CHECKS", "MARKET_CHECKS", "BlockingCheckError", "gate", "results", "specs"]

MAX_LISTED = 20


def specs(asset: str, checks: dict[str, tuple[str, object]]) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(name, asset=asset, description=desc, blocking=True) for name, (desc, _) in checks.items()]


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
                    sorted(set(outcome.failures["check"].cast(pl.String).to_list()))[:MAX_LISTED]
                ),
                "failure_cases": dg.MetadataValue.md(_markdown(cases)),
                "first_failure": _first_case(cases),
            }
        yield dg.AssetCheckResult(
            asset_key=asset, check_name=name, passed=outcome.passed, severity=dg.AssetCheckSeverity.ERROR, metadata=meta
        )


def outcome_result(
    asset: str,
    name: str,
    outcome: schemas.CheckOutcome,
    frame: pl.DataFrame,
    date_column: str | None,
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR,
    extra: dict[str, Any] | None = None,
) -> dg.AssetCheckResult:
    """A check result from a pandera outcome on ``frame``: rows checked, and for a failure the
    failing rows, their dates (from ``date_column``) and the failing rules; ``extra`` is added."""
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


class BlockingCheckError(Exception):
    """A blocking check failed on the computed data; nothing of the asset was persisted."""


def gate(asset: str, results: Iterable[dg.AssetCheckResult], partitions: int) -> Iterator[dg.AssetCheckResult]:
    """Yield the check results, then raise if an ERROR-severity (blocking) one failed.

    Call it before yielding the asset's output: the step then fails without handing anything
    to the IO manager, so no partition file is written and no materialisation is recorded,
    while the failed evaluations still show in the UI with their failing rows and dates."""
    done = list(results)
    yield from done
    failed = [r for r in done if not r.passed and r.severity == dg.AssetCheckSeverity.ERROR]
    if failed:
        raise BlockingCheckError(
            f"{asset}: blocking check(s) failed, nothing written for the run's {partitions} partition(s): "
            + "; ".join(_describe(r) for r in failed)
            + ". Hint: fix those rows in the source data (the check's failure_cases metadata lists them) "
            "and re-run."
        )


def _describe(result: dg.AssetCheckResult) -> str:
    meta = {k: getattr(v, "value", v) for k, v in (result.metadata or {}).items()}
    if "failing_images" in meta:  # the image assets' checks count images, named date/ticker
        parts = [f"{result.check_name} on {meta['failing_images']} image(s)"]
        tags = [v for v in meta.get("first_failures") or [] if isinstance(v, str)]
        if tags:
            parts.append(f"images {', '.join(tags[:5])}" + (" ..." if len(tags) > 5 else ""))
    else:
        parts = [f"{result.check_name} on {meta.get('failing_rows', '?')} row(s)"]
    # failing_columns holds pandera's check names (a column's or a frame-wide rule)
    for key, label in (("failing_dates", "dates"), ("failing_columns", "rules"), ("failing_checks", "rules")):
        vals = meta.get(key)
        if vals:
            parts.append(f"{label} {', '.join(map(str, vals[:5]))}" + (" ..." if len(vals) > 5 else ""))
    if meta.get("first_failure"):
        parts.append(f"first case {meta['first_failure']}")
    return ", ".join(parts)


def _markdown(frame: pl.DataFrame) -> str:
    head = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns) + "\n"
    return head + "".join("| " + " | ".join("" if v is None else str(v) for v in row) + " |\n" for row in frame.rows())


def _first_case(cases: pl.DataFrame) -> str:
    """The first failure case in one line, for the error message (column, rule and value)."""
    if cases.height == 0:
        return ""
    row = cases.row(0, named=True)
    keys = [k for k in ("check", "column", "failure_case") if row.get(k) is not None]
    text = ", ".join(f"{k}={row[k]}" for k in keys)
    return text[:300] + (" ..." if len(text) > 300 else "")
