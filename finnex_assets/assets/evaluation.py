"""Evaluation and reports: ``model_evaluation``, ``evaluation_report``, ``qa_report``.

``model_evaluation`` scores every trained model (``cnn_model``, ``vit_model``: those with a
checkpoint) next to the baselines on the test split and the walk-forward folds
(``finnex_ml.evaluation.evaluate``), writes ``{data}/datasets/evaluation/`` and logs the test
metrics to each model's own MLflow run (with the per-period Sharpe and the split hash, so later
evaluations of the same dataset count it as a trial in the deflated Sharpe). Its two blocking
checks stop the reports when a leak is suspected (implausible skill, or skill that survives the
label-shift placebo) or a permuted-label control beats chance; a feature correlating with the
forward return beyond the permutation bar only warns. The data source and which modalities are
synthetic are read from the latest ingestion materialisations and named at the top of the report. The reports are self-contained HTML files
under ``{data}/reports/``, linked from metadata and logged to an MLflow run.
"""

import base64
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
from pydantic import Field

from finnex_assets.assets.datasets import read_all_labels
from finnex_assets.resources import MlflowTracking
from finnex_assets.storage import FinnexStorage
from finnex_ml import schemas, table_store
from finnex_ml.errors import DataInputError
from finnex_ml.evaluation import report
from finnex_ml.evaluation.evaluate import EvalConfig, EvalInputs, run_evaluation, train_network_controls
from finnex_ml.models import MODEL_REGISTRY
from finnex_ml.storage import TableStore

MODEL_ASSETS = tuple(f"{e.name}_model" for e in MODEL_REGISTRY.values())  # the training assets' names
EVAL_CHECKS = {
    "no_leakage_detected": "no model's (network or tabular) balanced-accuracy interval lies wholly above the "
    "plausibility bar and no skill survives the label-shift placebo (ERROR, blocks the "
    "reports); a daily feature correlating with a forward return beyond the permutation "
    "bar is a WARN (a strong legitimate signal does that too)",
    "permuted_labels_at_chance": "models and baselines trained on shuffled labels score at chance: no "
    "family-wise (Bonferroni) balanced-accuracy interval lies wholly above 1/3 "
    "(ERROR, blocks the reports: a leak) or wholly below (WARN: luck or too few "
    "test dates)",
}


class EvaluationConfig(dg.Config):
    cost_bps: float = Field(default=5.0, description="Transaction cost per unit of turnover, in basis points.")
    short_on_sell: bool = Field(default=True, description="Sell means short (True) or flat (False).")
    position_sizing: bool = Field(default=False, description="Scale positions by |predicted return| / sizing_scale.")
    sizing_scale: float = Field(default=0.01)
    n_boot: int = Field(default=1000, description="Block-bootstrap resamples for the intervals.")
    seed: int = Field(default=7)
    regime_window: int = Field(default=63, description="Sessions of trailing return that define the regime.")
    regime_band: float = Field(default=0.05, description="Trailing return above +band is bull, below -band bear.")
    walk_forward_epochs: int = Field(
        default=20, description="Pooled walk-forward: epochs (at most) to retrain each network per fold; 0 skips."
    )
    walk_forward_seeds: list[int] = Field(default=[0, 1, 2], description="Seed ensemble per walk-forward fold.")
    permuted_label_epochs: int = Field(default=4, description="Epochs of the permuted-label control; 0 skips.")
    permuted_label_runs: int = Field(default=2, description="Permutations of the network's permuted-label control.")
    interpret_images: int = Field(default=4, description="Test images explained per model (occlusion, saliency).")
    leak_min_abs_corr: float = Field(default=0.0, description="Optional floor on the leak scan's permutation bar.")
    leak_alpha: float = Field(default=0.05, description="Family-wise level of the leak scan (its flags only warn).")
    leak_permutations: int = Field(default=200, description="Block permutations of the leak scan's null.")
    max_balanced_accuracy: float = Field(
        default=0.6, description="A model whose whole interval beats this is a suspect."
    )
    execution_lag: int = Field(default=1, description="Sessions between a signal's close and its trade (headline).")
    staggered: bool = Field(default=True, description="h staggered sub-portfolios for h-session horizons.")
    borrow_bps: float = Field(default=50.0, description="Annual borrow fee on short notional, basis points.")
    n_permutations: int = Field(default=1000, description="Block permutations of the test labels per row.")
    refit_permutations: int = Field(default=100, description="Refits on permuted training labels, tabular models.")
    refit_jobs: int = Field(default=1, description="Processes for the refit permutation test (joblib).")
    refit_stop_after: int = Field(
        default=10,
        description="Stop a refit permutation test once this many permuted refits match the real fit "
        "(Besag-Clifford sequential p-value, p = this / refits done; 0: always all refits).",
    )
    placebo_shifts: list[int] = Field(default=[1, 2], description="Label-shift placebo at k = m * h sessions.")
    degenerate_threshold: float = Field(default=0.9, description="One class on more than this share: degenerate.")
    pooled_min_train: int = Field(
        default=240, description="Pooled walk-forward: rows before the first test year; 0 off."
    )
    pooled_block_sessions: int = Field(default=0, description="Pooled walk-forward test blocks: 0 = calendar years.")

    def eval_config(self) -> EvalConfig:
        fields = EvalConfig.__dataclass_fields__
        values = {k: v for k, v in self.model_dump().items() if k in fields}
        values["placebo_shifts"] = tuple(values.get("placebo_shifts", ()))
        values["walk_forward_seeds"] = tuple(values.get("walk_forward_seeds", ()))
        return EvalConfig(**values)


def _read_features(tables: TableStore, dates: list[date]) -> pl.DataFrame:
    paths = []
    for d in dates:
        path = tables.path("daily_features", d)
        if not path.exists():
            raise DataInputError(
                f"daily_features for {d} is not materialised (the tabular baselines need it)",
                file=str(path),
                date=d.isoformat(),
            )
        paths.append(path)
    try:  # one multi-file read when every date has the same columns (the usual case)
        frame = table_store.read_partitions(paths)
    except pl.exceptions.PolarsError:  # columns grew between dates: per file, missing values null
        frame = table_store.read_partitions(paths, how="diagonal_relaxed")
    return frame.sort("date")


def provenance(instance: dg.DagsterInstance) -> dict[str, Any]:
    """Where the evaluated data came from: the source and, per modality, whether it is synthetic,
    from the latest ingestion materialisations; the configured source when none is recorded."""
    from finnex_assets.resources import default_data_source
    from finnex_ml.modalities import asset_names

    modalities: dict[str, dict[str, Any]] = {}
    for name in asset_names():
        ev = instance.get_latest_materialization_event(dg.AssetKey(name))
        mat = ev.asset_materialization if ev is not None else None
        if mat is None:
            continue
        md = {k: getattr(v, "value", v) for k, v in mat.metadata.items() if k in ("source", "provenance", "synthetic")}
        modalities[name] = md
    if modalities:
        sources = sorted({str(m.get("source")) for m in modalities.values() if m.get("source") is not None})
        return {
            "source": ", ".join(sources) or "unknown",
            "how": "latest ingestion materialisations",
            "modalities": modalities,
            "synthetic_modalities": sorted(n for n, m in modalities.items() if m.get("synthetic")),
        }
    ds = default_data_source()
    return {
        "source": ds.kind,
        "how": "configured source (FINNEX_SOURCE); no ingestion materialisation recorded",
        "modalities": {},
        "synthetic_modalities": ds.synthetic_modalities(),
    }


TRIAL_TAG = "finnex_eval_split_hash"


def logged_trial_sharpes(tracking: MlflowTracking, split_hash: str, exclude_runs: set[str]) -> list[float]:
    """Per-period test Sharpes logged by earlier evaluations of this dataset (runs tagged with
    its split hash), other than the runs evaluated now: the configurations already tried."""
    import mlflow

    mlflow.set_tracking_uri(tracking.uri())
    runs = mlflow.search_runs(
        experiment_ids=[tracking.experiment_id()],
        filter_string=f"tags.{TRIAL_TAG} = '{split_hash}'",
        output_format="list",
    )
    out = []
    for run in runs:
        if run.info.run_id in exclude_runs:
            continue
        out += [float(v) for k, v in run.data.metrics.items() if k.startswith("test_sharpe_per_period_h")]
    return out


def _model_run_id(instance: dg.DagsterInstance, name: str) -> str | None:
    ev = instance.get_latest_materialization_event(dg.AssetKey(name))
    mat = ev.asset_materialization if ev is not None else None
    value = mat.metadata.get("mlflow_run_id") if mat is not None else None
    return None if value is None else str(value.value)


def _network_inputs(storage: FinnexStorage) -> tuple[EvalInputs, list[str]]:
    """What the network retraining steps need (no features: they fit images), and the models
    not trained yet."""
    models = {n: storage.models.best_checkpoint(n) for n in MODEL_ASSETS}
    trained = {n: p for n, p in models.items() if p.exists()}
    stats = storage.cnn_ready.read_statistics()
    inputs = EvalInputs(
        labels=read_all_labels(storage),
        features=pl.DataFrame(),
        feature_columns=[],
        splits=storage.splits.read_splits(),
        ready_root=storage.cnn_ready.root,
        image_root=storage.images.root,
        shard_root=storage.patches.root,
        work_dir=storage.evaluation.root / "work",
        channel_means=stats["train"]["channel_mean"],
        models=trained,
    )
    return inputs, sorted(set(models) - set(trained))


def _network_step(context: dg.AssetExecutionContext, config: EvaluationConfig, what: str) -> dg.MaterializeResult:
    storage: FinnexStorage = context.resources.storage
    inputs, missing = _network_inputs(storage)
    if missing:
        context.log.warning(f"not trained yet, so not retrained: {missing}")
    done = train_network_controls(inputs, config.eval_config(), what=what, log=context.log.info)
    return dg.MaterializeResult(
        metadata={k: dg.MetadataValue.json(v) if isinstance(v, list | dict) else v for k, v in done.items()}
    )


@dg.asset(
    deps=["dataset_splits", *MODEL_ASSETS],
    required_resource_keys={"storage"},
    group_name="evaluation",
    kinds={"pytorch"},
)
def walk_forward_networks(context: dg.AssetExecutionContext, config: EvaluationConfig) -> dg.MaterializeResult:
    """Every trained network retrained per pooled walk-forward fold (the budget's epochs and
    seeds, early-stopped on an inner purged block) and its predictions of the fold's test block,
    cached per fold under ``{data}/datasets/evaluation/work/walk_forward``: its own step, so its
    cost shows apart from the scoring and a re-run skips finished folds. ``model_evaluation``
    reads the folds from that cache (and trains any missing fold itself)."""
    return _network_step(context, config, "walk_forward")


@dg.asset(
    deps=["dataset_splits", *MODEL_ASSETS],
    required_resource_keys={"storage"},
    group_name="evaluation",
    kinds={"pytorch"},
)
def permuted_label_control(context: dg.AssetExecutionContext, config: EvaluationConfig) -> dg.MaterializeResult:
    """The permuted-label control's networks (each model retrained on shuffled training labels,
    ``permuted_label_runs`` times) and their test predictions, cached under
    ``{data}/datasets/evaluation/work/permuted``; ``model_evaluation`` scores them (and trains
    any missing one itself)."""
    return _network_step(context, config, "permuted_labels")


@dg.asset(
    deps=["dataset_splits", *MODEL_ASSETS, "walk_forward_networks", "permuted_label_control"],
    required_resource_keys={"storage", "mlflow_tracking"},
    check_specs=[
        dg.AssetCheckSpec(n, asset="model_evaluation", description=d, blocking=True) for n, d in EVAL_CHECKS.items()
    ],
    group_name="evaluation",
    kinds={"pytorch", "scikitlearn", "mlflow"},
)
def model_evaluation(context: dg.AssetExecutionContext, config: EvaluationConfig):
    """Every trained model against baselines on the test split and walk-forward folds, with
    backtests, bootstrap intervals, regimes, ablations, controls and interpretability."""
    from finnex_ml.evaluation.explain import explain_model

    storage: FinnexStorage = context.resources.storage
    splits = storage.splits.read_splits()
    stats = storage.cnn_ready.read_statistics()
    labels = read_all_labels(storage)
    wanted = sorted(
        {date.fromisoformat(d) for v in splits["sets"].values() for d in v}
        | {date.fromisoformat(d) for f in splits["folds"] for d in f["train"] + f["val"]}
    )
    features = _read_features(storage.tables, wanted)
    models = {n: storage.models.best_checkpoint(n) for n in MODEL_ASSETS}
    trained = {n: p for n, p in models.items() if p.exists()}
    missing = sorted(set(models) - set(trained))
    if missing:
        context.log.warning(f"not trained yet, so not evaluated: {missing}")
    out = storage.evaluation.root
    spec = storage.images.read_spec()
    cfg = config.eval_config()
    prov = provenance(context.instance)
    if any("planted=" in str(m.get("provenance", "")) for m in prov["modalities"].values()):
        # a positive control: high skill is the point, so the implausible-skill bar only warns;
        # the label-shift placebo and the canaries still block
        cfg = replace(cfg, max_balanced_accuracy=1.0)
        context.log.info("planted signal in the data (positive control): the implausible-skill bar is lifted")
    tracking: MlflowTracking = context.resources.mlflow_tracking
    run_ids = {name: _model_run_id(context.instance, name) for name in trained}
    trials = logged_trial_sharpes(tracking, str(splits.get("split_hash", "")), {r for r in run_ids.values() if r})
    inputs = EvalInputs(
        labels=labels,
        features=features,
        feature_columns=schemas.feature_columns(features),
        splits=splits,
        ready_root=storage.cnn_ready.root,
        image_root=storage.images.root,
        shard_root=storage.patches.root,
        work_dir=out / "work",
        channel_means=stats["train"]["channel_mean"],
        models=trained,
        trial_sharpes=trials or None,
        trial_source=f"MLflow: {len(trials)} per-period test Sharpe(s) of earlier runs on split "
        f"{str(splits.get('split_hash', ''))[:12]}, plus this report's strategies",
        provenance=prov,
    )

    def interpret(name, lm, set_file):
        return explain_model(
            name,
            lm,
            set_file,
            spec,
            out / "interpret",
            fill=stats["train"]["channel_mean"],
            n_images=config.interpret_images,
        )

    doc, predictions, equity = run_evaluation(inputs, cfg, log=context.log.info, interpret=interpret)
    doc["not_trained"] = missing
    doc_file = storage.evaluation.write_json("evaluation.json", doc, indent=1)
    storage.evaluation.write_parquet("predictions.parquet", predictions)
    storage.evaluation.write_parquet("equity.parquet", equity)

    import mlflow

    mlflow.set_tracking_uri(tracking.uri())
    logged = {}
    for name in trained:
        run_id = run_ids[name]
        if run_id is None:
            continue
        rows = [r for r in doc["tables"]["test"] if r["model"] == name]
        with mlflow.start_run(run_id=run_id):
            for r in rows:
                mlflow.log_metrics(
                    {
                        f"test_{k}_h{r['horizon']}": float(r[k])
                        for k in ("accuracy", "balanced_accuracy", "macro_f1", "sharpe", "max_drawdown")
                        if r.get(k) is not None
                    }
                )
                dsr = (doc.get("deflated_sharpe") or {}).get(f"{name} ({r['horizon']}d)") or {}
                if dsr.get("sharpe_per_period") is not None:  # this configuration is a trial for the next DSR
                    mlflow.log_metric(f"test_sharpe_per_period_h{r['horizon']}", float(dsr["sharpe_per_period"]))
            mlflow.set_tag(TRIAL_TAG, doc["split_hash"])
            mlflow.log_artifact(str(doc_file), artifact_path="evaluation")
        logged[name] = run_id

    rows = [r for r in doc["tables"]["test"]]
    summary = [
        {k: r.get(k) for k in ("model", "horizon", "balanced_accuracy", "balanced_accuracy_ci", "sharpe", "sharpe_ci")}
        for r in rows
    ]
    meta: dict[str, Any] = {
        "evaluated_models": dg.MetadataValue.json(sorted(trained)),
        "not_trained": dg.MetadataValue.json(missing),
        "test_dates": doc["test"]["n"],
        "test_range": f"{doc['test']['first']}..{doc['test']['last']}",
        "summary": dg.MetadataValue.md(_md_table(summary)),
        "headline": dg.MetadataValue.md(
            _md_table(
                [
                    {
                        k: r.get(k)
                        for k in (
                            "model",
                            "horizon",
                            "best_baseline",
                            "span",
                            "n_days",
                            "n_independent",
                            "balanced_accuracy",
                            "baseline_balanced_accuracy",
                            "p_value",
                            "mde_sharpe",
                            "degenerate",
                        )
                    }
                    for r in doc["tables"]["headline"]
                ]
            )
        ),
        "data_source": str(doc.get("provenance", {}).get("source", "unknown")),
        "evaluation_json": dg.MetadataValue.path(str(doc_file)),
        "mlflow_runs": dg.MetadataValue.json(logged),
    }
    for name, d in doc.get("interpretation", {}).items():
        for kind, png in (d.get("pngs") or {}).items():
            data = base64.b64encode(Path(png).read_bytes()).decode()
            meta[f"{name}_{kind}_map"] = dg.MetadataValue.md(f"![{name} {kind}](data:image/png;base64,{data})")
    yield dg.MaterializeResult(metadata=meta)

    leak = doc["leakage"]
    blocking = bool(leak["blocking"])
    yield dg.AssetCheckResult(
        check_name="no_leakage_detected",
        passed=not blocking and not leak["warnings"],
        severity=dg.AssetCheckSeverity.ERROR if blocking else dg.AssetCheckSeverity.WARN,
        metadata={
            "flagged_features": dg.MetadataValue.json(leak["feature_scan"]["flagged"][:20]),
            "threshold_abs_spearman": leak["feature_scan"]["threshold_abs_spearman"],
            "top_features": dg.MetadataValue.json(leak["feature_scan"]["top"][:5]),
            "suspicious_models": dg.MetadataValue.json(leak["suspicious_models"]),
            "blocking": dg.MetadataValue.json(leak["blocking"]),
            "warnings": dg.MetadataValue.json(leak["warnings"][:20]),
        },
    )
    perm = doc["tables"]["permuted_labels"]
    above = [r for r in perm if r["above_chance"]]
    below = [r for r in perm if r["below_chance"]]
    yield dg.AssetCheckResult(
        check_name="permuted_labels_at_chance",
        passed=not (above or below),
        severity=dg.AssetCheckSeverity.ERROR if above else dg.AssetCheckSeverity.WARN,
        metadata={
            "controls": len(perm),
            "above_chance": dg.MetadataValue.json(above),
            "below_chance": dg.MetadataValue.json(below),
            "outside_95pct_interval": sum(not r["at_chance"] for r in perm),
        },
    )


def _md_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(none)"
    cols = list(rows[0])

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}"
        if isinstance(v, list) and len(v) == 2 and None not in v:
            return f"[{v[0]:.3f}, {v[1]:.3f}]"
        return str(v)

    return (
        "| "
        + " | ".join(cols)
        + " |\n|"
        + "---|" * len(cols)
        + "\n"
        + "".join("| " + " | ".join(fmt(r[c]) for c in cols) + " |\n" for r in rows)
    )


def _log_report(tracking: MlflowTracking, path: Path, run_name: str) -> str:
    import mlflow

    mlflow.set_tracking_uri(tracking.uri())
    with mlflow.start_run(experiment_id=tracking.experiment_id(), run_name=run_name, tags={"kind": "report"}) as run:
        mlflow.log_artifact(str(path), artifact_path="reports")
        return run.info.run_id


@dg.asset(
    deps=["model_evaluation"],
    required_resource_keys={"storage", "mlflow_tracking"},
    group_name="evaluation",
    kinds={"plotly", "html"},
)
def evaluation_report(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """One self-contained HTML: tables, equity curves against buy-and-hold, confusion matrices, importance."""
    storage: FinnexStorage = context.resources.storage
    doc = storage.evaluation.read_json("evaluation.json", "materialise model_evaluation first")
    equity = storage.evaluation.read_parquet("equity.parquet")
    images = {
        f"{name}: {kind}": Path(p).read_bytes()
        for name, d in (doc.get("interpretation") or {}).items()
        for kind, p in (d.get("pngs") or {}).items()
        if Path(p).exists()
    }
    path = storage.reports.write_html("evaluation_report", report.evaluation_html(doc, equity, images))
    run_id = _log_report(context.resources.mlflow_tracking, path, f"evaluation-report-{context.run.run_id[:8]}")
    context.log.info(f"evaluation report: {path}")
    return dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.path(str(path)),
            "report_url": dg.MetadataValue.url(path.resolve().as_uri()),
            "bytes": path.stat().st_size,
            "mlflow_run_id": run_id,
        }
    )


def _check_records(instance: dg.DagsterInstance, key: dg.AssetCheckKey, status, page: int) -> list:
    """Every execution record of ``key`` with one of ``status``, newest first, page by page."""
    out, cursor = [], None
    while True:
        batch = instance.event_log_storage.get_asset_check_execution_history(
            key, limit=page, cursor=cursor, status=status
        )
        out += batch
        if len(batch) < page:
            return out
        cursor = batch[-1].id


def _status_counts(instance: dg.DagsterInstance) -> dict[tuple[str, str, str], int]:
    """Execution records per (asset key, check name, status), counted by the database. Dagster
    stores a check's verdict as the record's status (SUCCEEDED = passed, FAILED = not passed), so
    counting needs no event: reading every record deserialised each one's evaluation event, 8 s of
    a standard single-stock run and growing with every run. Every Dagster event log (sqlite,
    in-memory, PostgreSQL) is a ``SqlEventLogStorage``."""
    from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable as T
    from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
    from sqlalchemy import func, select

    storage = instance.event_log_storage
    if not isinstance(storage, SqlEventLogStorage):
        raise TypeError(f"qa_report reads check history from a SQL event log, not {type(storage).__name__}")
    query = select(T.c.asset_key, T.c.check_name, T.c.execution_status, func.count()).group_by(
        T.c.asset_key, T.c.check_name, T.c.execution_status
    )
    with storage.index_connection() as conn:
        return {(a, c, st): int(n) for a, c, st, n in conn.execute(query)}


def check_history(instance: dg.DagsterInstance, check_keys, page: int = 1000) -> list[dict[str, Any]]:
    """One row per check: completed evaluations (executions), passes, failures, the latest
    outcome and failing dates, over the whole history; plus the runs where the check was planned
    but never evaluated (the run failed or stopped before it), which are not executions."""
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus as S

    counts = _status_counts(instance)
    rows = []
    for key in sorted(check_keys, key=lambda k: (k.asset_key.to_user_string(), k.name)):
        n = {st: counts.get((key.asset_key.to_string(), key.name, st.value), 0) for st in S}
        passed, failed, planned = n[S.SUCCEEDED], n[S.FAILED], n[S.PLANNED]
        # only the failures' events are read (for their dates), and the newest completed one
        failing_dates: list[str] = []
        for rec in _check_records(instance, key, {S.FAILED}, page) if failed else []:
            ev = rec.event.dagster_event.event_specific_data if rec.event and rec.event.dagster_event else None
            md = getattr(getattr(ev, "evaluation", ev), "metadata", {}) or {}
            fd = md.get("failing_dates")
            if fd is not None:
                failing_dates.extend(str(x) for x in (fd.value if hasattr(fd, "value") else fd))
        latest, latest_run, latest_at = ("planned, never evaluated" if planned else "never run"), "", ""
        newest = instance.event_log_storage.get_asset_check_execution_history(
            key, limit=1, status={S.SUCCEEDED, S.FAILED}
        )
        if newest:
            rec = newest[0]
            latest = "passed" if rec.status == S.SUCCEEDED else "failed"
            latest_run = rec.run_id[:8]
            latest_at = datetime.fromtimestamp(rec.create_timestamp, tz=UTC).strftime("%Y-%m-%d %H:%M")
        rows.append(
            {
                "check": f"{key.asset_key.to_user_string()}:{key.name}",
                "executions": passed + failed,
                "passed": passed,
                "failed": failed,
                "planned_not_evaluated": planned,
                "latest": latest,
                "latest_run": latest_run,
                "latest_at_utc": latest_at,
                "failing_dates": ", ".join(sorted(set(failing_dates))[:20]),
            }
        )
    return rows


@dg.asset(
    deps=["model_evaluation"],
    required_resource_keys={"storage", "mlflow_tracking", "project_checks"},
    group_name="evaluation",
    kinds={"plotly", "html"},
)
def qa_report(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Every asset check of the project across runs and partitions: pass/fail counts, the latest
    outcome and the dates that failed."""
    keys = context.resources.project_checks.check_keys()  # the project's checks, whatever this run selected
    rows = check_history(context.instance, keys)
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    path = context.resources.storage.reports.write_html("qa_report", report.qa_html(rows, generated))
    run_id = _log_report(context.resources.mlflow_tracking, path, f"qa-report-{context.run.run_id[:8]}")
    failing = [r["check"] for r in rows if r["latest"] == "failed"]
    return dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.path(str(path)),
            "report_url": dg.MetadataValue.url(path.resolve().as_uri()),
            "checks": len(rows),
            "never_run": sum(r["latest"] == "never run" for r in rows),
            "planned_not_evaluated": sum(r["planned_not_evaluated"] for r in rows),
            "failing_latest": dg.MetadataValue.json(failing),
            "mlflow_run_id": run_id,
            "summary": dg.MetadataValue.md(
                _md_table([{k: r[k] for k in ("check", "executions", "passed", "failed", "latest")} for r in rows])
            ),
        }
    )


EVALUATION_ASSETS = [walk_forward_networks, permuted_label_control, model_evaluation, evaluation_report, qa_report]

__all__ = [
    "EVALUATION_ASSETS",
    "EvaluationConfig",
    "check_history",
    "evaluation_report",
    "model_evaluation",
    "permuted_label_control",
    "qa_report",
    "walk_forward_networks",
]
