"""``finnex``: common operations, run against the project's Dagster instance so they show in the UI."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from finnex_ml.budget import BUDGET_NAMES
from finnex_ml.modalities import asset_names as modality_assets
from finnex_ml.paths import REPO_ROOT, validate_partition_key

DEFAULT_RANGE = {
    # the pooled walk-forward trains on 2022 and scores 2023, 2024 and 2025's first quarter out of
    # sample: over two years of split dates once the purge gaps and the unlabelled last dates go
    # (2023-2024 alone pooled 492 sessions, 1.95 years); tests/test_demo_range.py counts them
    "synthetic": ("2022-01-03", "2025-03-31"),
    "packaged": ("2016-01-04", "2016-12-30"),
}
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def _use_project_instance() -> None:
    os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT / "dagster_home"))


def _ensure_initialised() -> None:
    """Storage and MLflow schemas created once, under a lock, before any run (see home.py)."""
    from finnex_assets.home import ensure_home

    _use_project_instance()
    ensure_home(os.environ["DAGSTER_HOME"])


def _data_dir() -> Path:
    """The storage resource's root as runs will see it (FINNEX_DATA_DIR as set by now, else data/)."""
    from finnex_assets.storage import default_storage

    return default_storage().root_path()


LATER_STAGES = ["mega_images", "labels", "patch_dataset"]
UNPARTITIONED = ("dataset_splits", "cnn_model")
UNIVERSE_FEATURES = ["universe_prices", "universe_features"]
UNIVERSE_LATER = ["universe_images", "universe_labels"]
UNIVERSE_FINAL = ("universe_splits", "universe_model", "universe_walk_forward", "universe_evaluation")
# the network retraining steps first (each cached), then the scoring that reads them and the reports
EVALUATION = ("walk_forward_networks", "permuted_label_control", "model_evaluation", "evaluation_report", "qa_report")
# the modality table's ingestion assets (finnex_ml.modalities), then the feature table
FEATURE_STAGE = [*modality_assets(), "daily_features"]


def _keys(start: str, end: str) -> list[str]:
    from finnex_assets.partitions import trading_days
    from finnex_ml import calendar

    lo, hi = validate_partition_key(start), validate_partition_key(end)
    first = trading_days.start.date()
    keys = [d.isoformat() for d in calendar.sessions(max(lo, first), hi)]
    if not keys:
        raise SystemExit(f"no trading-date partitions between {start} and {end}")
    return keys


def _job_for(selection: list[str] | None):
    """The job a run of ``selection`` uses: the per-date stages' named job, or, when the selection
    holds an unpartitioned asset (alone, or after per-date ones in one run: the range tags then
    apply to the partitioned assets only), the implicit job of every asset."""
    from finnex_assets.definitions import defs, main_job, universe_job

    unpartitioned = bool(selection) and any(s in UNPARTITIONED + EVALUATION + UNIVERSE_FINAL for s in selection)
    universe = bool(selection) and all(s.startswith("universe_") for s in selection)
    if unpartitioned:
        return defs.resolve_implicit_global_asset_job_def()
    return defs.resolve_job_def(universe_job.name if universe else main_job.name)


def _execute(selection: list[str] | None, tags: dict[str, str], what: str, ops: dict | None = None) -> bool:
    _ensure_initialised()
    import dagster as dg

    from finnex_assets.loggers import log_dir

    job = _job_for(selection)
    selection_keys = [dg.AssetKey(s) for s in selection] if selection else None
    # the terminal shows warnings and the progress display (--verbose: every event); every event
    # also goes to the instance (the UI's run logs) and to $DAGSTER_HOME/logs/<run id>.log
    level = "DEBUG" if os.environ.get("FINNEX_VERBOSE") else "WARNING"
    loggers = {"console": {"config": {"log_level": level}}, "run_log_file": {}, "stage_progress": {}}
    result = job.execute_in_process(
        # a budget's config for the assets this run selects
        run_config={"loggers": loggers, "ops": {k: v for k, v in (ops or {}).items() if k in (selection or [])}},
        instance=dg.DagsterInstance.get(),
        tags=tags,
        asset_selection=selection_keys,
        raise_on_error=False,
    )
    print(f"run {result.run_id}: {'SUCCESS' if result.success else 'FAILURE'} ({what})")
    print(f"  log: {log_dir() / (result.run_id + '.log')}")
    for ev in result.get_asset_check_evaluations():
        verdict = (
            "passed"
            if ev.passed
            else ("FAILED" if ev.severity == dg.AssetCheckSeverity.ERROR else "failed (warning, not blocking)")
        )
        print(f"  check {ev.asset_key.to_user_string()}:{ev.check_name} {verdict}")
    return result.success


def run_range(start: str, end: str, selection: list[str] | None = None) -> bool:
    """Materialise ``selection`` (default: every per-date asset) over [start, end] as ONE run."""
    keys = _keys(start, end)
    return _execute(
        selection,
        {RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]},
        f"{len(keys)} sessions {keys[0]}..{keys[-1]}: {', '.join(selection or ['all'])}",
    )


def run_pipeline(start: str, end: str, budget: str = "standard") -> bool:
    """The main pipeline for [start, end]: the feature stage from the images' lookback
    before ``start`` in one run, then every later stage over [start, end] in one run, the
    splits, then training and evaluation at ``budget`` in one run (its cost printed before it
    starts)."""
    from finnex_assets.assets.images import LOOKBACK
    from finnex_assets.storage import default_storage
    from finnex_ml import calendar

    feature_start = calendar.sessions_back(validate_partition_key(start), LOOKBACK).isoformat()
    if not run_range(feature_start, end, FEATURE_STAGE):
        return False
    if not run_range(start, end, LATER_STAGES):
        return False
    if not _execute(["dataset_splits"], {}, "every date with images and labels: dataset_splits"):
        return False
    storage = default_storage()  # resolved now: FINNEX_DATA_DIR as this process set it
    sets = storage.splits.read_splits()["sets"]
    ops = _announce_budget(budget, "single", storage.images.root, len(sets["train"]), len(sets["val"]))
    # training and evaluation as one run (one start-up, one event stream); each stays its own step
    return _execute(["cnn_model", *EVALUATION], {}, f"budget {budget}: cnn_model, then " + ", ".join(EVALUATION), ops)


def _announce_budget(name: str, mode: str, image_root: Path, n_train: int, n_val: int) -> dict:
    """Print what training and evaluation at budget ``name`` will cost (measured on this
    machine) before they start; return the run config that applies it."""
    from finnex_ml import budget
    from finnex_ml.encoding.store import read_spec

    b = budget.budget(name, mode)
    step = budget.seconds_per_image(read_spec(image_root))
    read = budget.read_seconds_per_image(image_root)
    print(budget.training_cost(b, n_train, n_val, step, read).describe(n_train, n_val, b))
    return budget.run_config(b, mode)


def run_universe(start: str, end: str, budget: str = "standard") -> bool:
    """Universe mode for [start, end]: prices and features from the images' lookback, images and
    labels over [start, end], then splits, then the model(s) and the evaluation at ``budget``
    (their cost printed before they start; see ``universe_final_selection`` for which)."""
    from finnex_assets.assets.images import LOOKBACK
    from finnex_assets.partitions import trading_days
    from finnex_ml import calendar

    feature_start = calendar.sessions_back(validate_partition_key(start), LOOKBACK).isoformat()
    first = trading_days.start.date()
    if date.fromisoformat(feature_start) < first:
        earliest = calendar.sessions_forward(first, LOOKBACK - 1)
        raise SystemExit(
            f"images from {start} need features from {feature_start}, before the first partition {first}: "
            f"start at {earliest} or later, or set FINNEX_PARTITION_START earlier"
        )
    _announce_universe_estimate(start, end, feature_start, budget)
    # three runs: the splits join the images and labels run (one run's fixed cost less); the
    # budget line still prints after them and before training
    return (
        run_range(feature_start, end, UNIVERSE_FEATURES)
        and run_range(start, end, [*UNIVERSE_LATER, "universe_splits"])
        and run_universe_training(budget, splits=False)
    )


def _announce_universe_estimate(start: str, end: str, feature_start: str, budget_name: str) -> None:
    """Print the whole universe demo's wall-time estimate before anything starts, every image
    date holding every ticker (an upper bound), at the measured rates (universe_estimate)."""
    import polars as pl

    from finnex_assets.assets.universe import UniverseWalkForwardConfig, default_universe, walk_forward_folds
    from finnex_ml import budget, calendar
    from finnex_ml.panel_model import DEFAULT_HORIZON
    from finnex_ml.universe_estimate import estimate_universe_demo

    n = default_universe().source().members().height
    dates = calendar.sessions(start, end)
    b = budget.budget(budget_name, "universe")
    cfg = UniverseWalkForwardConfig(**budget.run_config(b, "universe")["universe_walk_forward"]["config"])
    folds = walk_forward_folds(pl.DataFrame({"date": dates}), DEFAULT_HORIZON, cfg) if cfg.walk_forward else []
    sizes = [(len(f.fit) * n, len(f.val) * n, len(f.test) * n) for f in folds]
    # without folds universe_model trains on the single split's 60 / 20 / 20 % of the dates
    split = (
        None
        if folds
        else (round(0.6 * len(dates)) * n, round(0.2 * len(dates)) * n, round(0.2 * len(dates)) * n, b.epochs)
    )
    sessions = len(calendar.sessions(feature_start, end))
    print(estimate_universe_demo(n, sessions, len(dates), sizes, cfg.epochs, len(b.seeds), split).describe())


def run_universe_training(budget: str = "standard", splits: bool = True) -> bool:
    """Universe mode after the images and labels: the splits (unless ``splits`` is False: the
    images and labels run made them), then the model(s) and the evaluation at ``budget`` (their
    cost printed before they start)."""
    import polars as pl

    from finnex_assets.storage import default_storage
    from finnex_ml import budget as budgets

    if splits and not _execute(
        ["universe_splits"], {}, "every (date, ticker) with an image and a label: universe_splits"
    ):
        return False
    store = default_storage().universe
    samples = pl.read_parquet(store.dataset_path("samples.parquet"))
    n_train, n_val = int((samples["set"] == "train").sum()), int((samples["set"] == "val").sum())
    ops = budgets.run_config(budgets.budget(budget, "universe"), "universe")
    folds = _announce_walk_forward(budget, samples, store.datasets_root, store.images_root, ops)
    selection = universe_final_selection(folds)
    if "universe_model" in selection:
        ops = _announce_budget(budget, "universe", store.images_root, n_train, n_val)
    else:
        print(
            f"single-split universe_model skipped: the walk-forward's {folds} fold(s) score every test block out "
            "of sample with a model trained before it (materialise universe_model from the UI for the single split)"
        )
    return _execute(selection, {}, f"budget {budget}: " + ", ".join(selection), ops)


def universe_final_selection(walk_forward_folds: int) -> list[str]:
    """The assets after ``universe_splits``: with walk-forward folds, the walk-forward and the
    evaluation only. The single-split ``universe_model`` trains on 60 % of every date (on the
    packaged panel over an hour on 2 cores: shuffled reads over thousands of files) to score one
    test block that the pooled folds already score out of sample; without folds (a year or less
    of images) it is the only model, so it runs."""
    if walk_forward_folds > 0:
        return ["universe_walk_forward", "universe_evaluation"]
    return list(UNIVERSE_FINAL[1:])


def _announce_walk_forward(name: str, samples, datasets_root: Path, image_root: Path, ops: dict) -> int:
    """Print the walk-forward's folds and their cost at the measured rate before it starts;
    return the number of folds (0: off or no fold)."""
    import json

    import polars as pl

    from finnex_assets.assets.universe import UniverseWalkForwardConfig, walk_forward_folds
    from finnex_ml import budget
    from finnex_ml.encoding.store import read_spec

    b = budget.budget(name, "universe")
    cfg = UniverseWalkForwardConfig(**ops.get("universe_walk_forward", {}).get("config", {}))
    if not cfg.walk_forward:
        print("walk-forward: off at this budget")
        return 0
    horizon = json.loads((datasets_root / "splits.json").read_text(encoding="utf-8"))["horizon"]
    folds = walk_forward_folds(samples, horizon, cfg)
    if not folds:
        print(
            f"walk-forward: no fold ({samples['date'].n_unique()} image dates leave no test year after a first window)"
        )
        return 0
    per_date = samples.group_by("date").len()
    count = lambda ds: int(per_date.filter(pl.col("date").is_in(ds))["len"].sum())  # noqa: E731
    sizes = [(count(f.fit), count(f.val), count(f.test)) for f in folds]
    step = budget.seconds_per_image(read_spec(image_root))
    read = budget.read_seconds_per_image(image_root)
    print(budget.walk_forward_cost(b, sizes, step, read).describe(b))
    return len(folds)


FILES_EXAMPLE = ("2021-01-04", 1070)  # first session, sessions: 307 of lookback + three years of images


def realistic_files_example() -> Path:
    """The realistic example for ``finnex demo --source files``: the committed example's export
    formats (examples/files_source/make_example.py, seeded) over three years of images, written
    once under data/files_example/. Returns its mapping."""
    import subprocess

    out = REPO_ROOT / "data" / "files_example"
    mapping = out / "mapping.yaml"
    if not mapping.exists():
        start, sessions = FILES_EXAMPLE
        script = REPO_ROOT / "examples" / "files_source" / "make_example.py"
        cmd = [sys.executable, str(script), "--start", start, "--sessions", str(sessions), "--out", str(out)]
        subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    return mapping


MIN_IMAGE_DATES = 120  # fewer image dates leave train/validation/test too small to say anything


@dataclass(frozen=True)
class FilesPlan:
    start: str
    end: str
    full: bool  # every stage; False: the feature stage only
    message: str


def files_plan(start: str | None, end: str | None) -> FilesPlan:
    """What ``finnex demo --source files`` can run on the mapped files: every stage from the first
    date with the images' feature lookback of prices before it, or (too little history) the
    feature stage only, with the numbers and the next step."""
    from finnex_assets.assets.images import LOOKBACK
    from finnex_assets.partitions import trading_days
    from finnex_assets.resources import default_data_source
    from finnex_ml import calendar

    mapping = os.environ.get("FINNEX_FILES_MAPPING", "")
    prices = default_data_source().source().load(date(1900, 1, 1), date.today()).prices
    if prices.is_empty():
        raise SystemExit(f"{mapping}: the mapped price file has no rows")
    first, last = max(prices["date"].min(), trading_days.start.date()), prices["date"].max()
    earliest = calendar.sessions_forward(first, LOOKBACK - 1)  # its lookback starts at `first`
    lo = max(earliest, validate_partition_key(start)) if start else earliest
    hi = min(validate_partition_key(end), last) if end else last
    n = len(calendar.sessions(lo, hi)) if lo <= hi else 0
    have = len(calendar.sessions(first, last))
    if n >= MIN_IMAGE_DATES:
        return FilesPlan(
            lo.isoformat(),
            hi.isoformat(),
            True,
            f"{mapping}: prices {first}..{last} ({have} sessions); features from {calendar.sessions_back(lo, LOOKBACK)}, "
            f"images, labels, model and evaluation over {lo}..{hi} ({n} sessions)",
        )
    need = LOOKBACK + MIN_IMAGE_DATES
    return FilesPlan(
        (validate_partition_key(start) if start else first).isoformat(),
        (hi if end else last).isoformat(),
        False,
        f"{mapping}: prices {first}..{last} hold {have} sessions; images need {LOOKBACK} sessions of features "
        f"before their first date and a model at least {MIN_IMAGE_DATES} image dates, so {need} sessions in all. "
        f"Running the feature stage only. Next step: point FINNEX_FILES_MAPPING at files with {need}+ sessions "
        "(see examples/files_source/mapping.yaml) and run `finnex demo --source files` again.",
    )


def demo_mode(source: str, universe: str, planted_signal: str) -> str:
    """``universe`` (the default) or ``single`` (a --source, or a single-stock planted form)."""
    if universe:
        return "universe"
    single_plant = planted_signal.partition(":")[0] in ("level", "temporal")
    return "single" if source or single_plant else "universe"


def _sweep(dry_run: bool) -> list | None:
    _use_project_instance()
    import dagster as dg

    from finnex_assets.home import sweep_orphaned_runs

    with dg.DagsterInstance.get() as instance:
        orphans = sweep_orphaned_runs(instance, dry_run=dry_run)
    for o in orphans:
        print(f"{'would mark' if dry_run else 'marked'} run {o.run_id} ({o.job}) failed: its process {o.pid} is gone")
    return orphans


def mlflow_hint() -> str:
    from finnex_assets.resources import MlflowTracking

    return f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri {MlflowTracking().uri()} -h 127.0.0.1"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="finnex", description=__doc__)
    parser.add_argument("--verbose", action="store_true", help="print Dagster's DEBUG events to the terminal too")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="backfill the default date range through the latest stage, as one run")
    demo.add_argument(
        "--source",
        choices=(*sorted(DEFAULT_RANGE), "files"),
        default=os.environ.get("FINNEX_SOURCE", ""),
        help="single-stock mode on this source (default without --source: universe mode)",
    )
    demo.add_argument(
        "--planted-signal",
        default="",
        metavar="FORM:STRENGTH",
        help="synthetic data: plant a positive control; single stock: level:1.0 or temporal:0.7, universe: "
        "cross_section:1.0 (data go to data/planted_<form>_<strength> unless FINNEX_DATA_DIR is set)",
    )
    demo.add_argument(
        "--universe",
        choices=("synthetic", "packaged-panel", "files"),
        default="",
        help="universe mode: a cross-section of tickers per date (synthetic: 24 simulated tickers; packaged-panel: "
        "skfolio's 20 S&P 500 closes, images 2015-03..2022-12, walk-forward test years 2017-2022; files: examples/files_universe or FINNEX_UNIVERSE_MAPPING); data go to data/universe_<kind> unless FINNEX_DATA_DIR is set",
    )
    demo.add_argument(
        "--budget",
        choices=BUDGET_NAMES,
        default="standard",
        help="training and evaluation effort: quick (a first look), standard (the defaults), thorough (to report); "
        "the cost is measured and printed before training starts",
    )
    demo.add_argument("--start")
    demo.add_argument("--end")
    run = sub.add_parser(
        "run",
        help="every stage for images over [--from, --to] on the configured source (FINNEX_SOURCE, or "
        "FINNEX_UNIVERSE for universe mode), the feature lookback before --from included, to the reports",
    )
    run.add_argument("--from", dest="start", required=True)
    run.add_argument("--to", dest="end", required=True)
    run.add_argument("--budget", choices=BUDGET_NAMES, default="standard")
    mat = sub.add_parser("materialize", help="materialise assets over a date range as one run")
    mat.add_argument("--select", default="", help="comma-separated asset names (default: all)")
    mat.add_argument("--start", required=True)
    mat.add_argument("--end", required=True)
    ui = sub.add_parser("ui", help="start the Dagster UI on 127.0.0.1")
    ui.add_argument("--port", default="3000")
    sub.add_parser("init", help="create/migrate the instance's storage and the MLflow store once (idempotent)")
    sweep = sub.add_parser("sweep-runs", help="mark STARTED runs whose process is gone as failed")
    sweep.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    # Dagster flags the partition mapping and backfill policy this project relies on as beta
    warnings.filterwarnings("ignore", message=".*currently in beta.*")
    if args.verbose:
        os.environ["FINNEX_VERBOSE"] = "1"

    if args.command == "init":
        from finnex_assets.home import init_home

        _use_project_instance()
        done = init_home(os.environ["DAGSTER_HOME"])
        print(
            f"instance {done['dagster_home']} migrated; MLflow store {done['mlflow']} ready "
            f"(experiment {done['experiment_id']})"
        )
        return 0
    if args.command == "sweep-runs":
        return 0 if _sweep(dry_run=args.dry_run) is not None else 1
    if args.command in ("demo", "run", "materialize"):
        with _progress_display():
            code = _run(args)
        for line in _next_steps(code == 0, args):  # after the summary: what to open next
            print(line)
        return code
    return _ui(args.port)


def _next_steps(ok: bool, args: argparse.Namespace) -> list[str]:
    lines = []
    if ok and args.command != "materialize" and os.environ.get("FINNEX_UNIVERSE"):
        from finnex_assets.storage import default_storage

        lines.append(f"universe_report: {default_storage().universe.report_path()}")
    elif ok and args.command != "materialize" and not getattr(args, "features_only", False):
        from finnex_assets.storage import default_storage

        reports = default_storage().reports
        lines += [f"{name}: {reports.path(name)}" for name in ("evaluation_report", "qa_report")]
    from finnex_assets.loggers import log_dir

    lines.append(f"run logs: {log_dir()}/")
    lines.append(mlflow_hint())
    lines.append("Dagster UI: .venv/bin/finnex ui  (http://127.0.0.1:3000)")
    return lines


@contextmanager
def _progress_display() -> Iterator[None]:
    """One line per stage with bars for its loops, and a summary table at the end; with
    --verbose the terminal gets Dagster's events instead."""
    if os.environ.get("FINNEX_VERBOSE"):
        yield
        return
    from finnex_assets.terminal import TerminalProgress
    from finnex_ml import progress

    with TerminalProgress() as bars, progress.showing(bars):
        try:
            yield
        finally:
            bars.bars.stop()
            bars.console.print(bars.summary())


def _run(args: argparse.Namespace) -> int:
    """``finnex demo``, ``finnex run`` and ``finnex materialize``."""
    if args.command == "demo" and demo_mode(args.source, args.universe, args.planted_signal) == "universe":
        from finnex_ml.data.universe import DEFAULT_UNIVERSE_RANGE

        kind = args.universe or "synthetic"
        os.environ["FINNEX_UNIVERSE"] = kind
        if kind == "files":
            os.environ.setdefault("FINNEX_UNIVERSE_MAPPING", "examples/files_universe/mapping.yaml")
        folder = f"universe_{kind}"
        if args.planted_signal:
            form, _, strength = args.planted_signal.partition(":")
            if kind != "synthetic" or form != "cross_section":
                print(
                    "universe mode plants only --planted-signal cross_section:<strength> in the synthetic universe",
                    file=sys.stderr,
                )
                return 2
            os.environ["FINNEX_UNIVERSE_PLANT"] = strength or "1.0"
            folder += f"_planted_{strength or '1.0'}"
        os.environ.setdefault("FINNEX_DATA_DIR", str(REPO_ROOT / "data" / folder))
        start = args.start or DEFAULT_UNIVERSE_RANGE[kind][0]
        end = args.end or DEFAULT_UNIVERSE_RANGE[kind][1]
        print(f"FinNeX universe demo: {kind}, {start}..{end}, data in {_data_dir()}")
        return 0 if run_universe(start, end, args.budget) else 1
    if args.command == "demo":
        args.source = args.source or "synthetic"  # a single-stock planted signal without --source
        os.environ["FINNEX_SOURCE"] = args.source
        if args.planted_signal:
            if args.source != "synthetic":
                print("--planted-signal needs --source synthetic", file=sys.stderr)
                return 2
            os.environ["FINNEX_PLANTED_SIGNAL"] = args.planted_signal
            # a planted world has other features (and so another layout): never mix it with the plain demo's store
            planted_dir = REPO_ROOT / "data" / ("planted_" + args.planted_signal.replace(":", "_"))
            os.environ.setdefault("FINNEX_DATA_DIR", str(planted_dir))
        if args.source != "synthetic":  # each source its own store: dataset_splits reads every stored date
            os.environ.setdefault("FINNEX_DATA_DIR", str(REPO_ROOT / "data" / f"source_{args.source}"))
        if args.source == "files" and not os.environ.get("FINNEX_FILES_MAPPING"):
            os.environ["FINNEX_FILES_MAPPING"] = str(realistic_files_example().relative_to(REPO_ROOT))
        if args.source == "files":  # the range follows from the files' history
            plan = files_plan(args.start, args.end)
            start, end, full = plan.start, plan.end, plan.full
            print(plan.message)
        else:
            start, end, full = (
                args.start or DEFAULT_RANGE[args.source][0],
                args.end or DEFAULT_RANGE[args.source][1],
                True,
            )
        print(f"FinNeX demo: source={args.source}, {start}..{end}, data in {_data_dir()}")
        args.features_only = not full
        ok = run_pipeline(start, end, args.budget) if full else run_range(start, end, FEATURE_STAGE)
        return 0 if ok else 1
    if args.command == "run":
        universe = os.environ.get("FINNEX_UNIVERSE", "")
        what = f"universe {universe}" if universe else f"source {os.environ.get('FINNEX_SOURCE', 'synthetic')}"
        print(f"FinNeX run: {what}, images {args.start}..{args.end}, data in {_data_dir()}")
        ok = (run_universe if universe else run_pipeline)(args.start, args.end, args.budget)
        return 0 if ok else 1
    if args.command == "materialize":
        selection = [s.strip() for s in args.select.split(",") if s.strip()] or None
        return 0 if run_range(args.start, args.end, selection) else 1
    raise ValueError(f"not a run command: {args.command}")


def _ui(port: str) -> int:
    _ensure_initialised()
    _sweep(dry_run=False)  # runs killed since the last start would hold the queue's slots forever
    cmd = [
        sys.executable,
        "-m",
        "dagster",
        "dev",
        "-h",
        "127.0.0.1",
        "-p",
        port,
        "-w",
        str(REPO_ROOT / "workspace.yaml"),
    ]
    # exec, not a child: a SIGTERM from a process manager must reach dagster dev itself, and
    # killing a wrapper would leave the webserver and daemon running
    os.chdir(REPO_ROOT)
    os.execv(cmd[0], cmd)
    return 1  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
