"""The project instance's one-time set-up and its recovery from killed runs.

* :func:`init_home` creates or migrates the Dagster instance's storage (what ``dagster
  instance migrate`` does; idempotent) and the MLflow sqlite store with the experiment, once,
  under a file lock. ``scripts/setup.sh`` runs it (``finnex init``), so concurrent first uses
  (two backfills, or ``cnn_model`` and ``vit_model`` in one run) find the schemas in place
  instead of racing to create them (two alembic heads in ``runs.db``; ``table
  _alembic_tmp_experiments already exists`` in MLflow's store).
* :func:`sweep_orphaned_runs` marks runs FAILED that are STARTED in storage but whose process
  is gone (killed with -9, machine rebooted), so they stop holding the run queue's slots.
  ``finnex ui`` sweeps before starting; ``finnex sweep-runs`` does it on demand. Dagster's run
  monitoring (``dagster_home/dagster.yaml``) covers runs stuck while starting or cancelling, and
  fails any run after ``max_runtime_seconds``; the default run launcher cannot report a dead
  worker, hence this sweep.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from finnex_ml.paths import file_lock

INIT_MARKER = ".finnex-init"  # written by init_home: the Dagster version it migrated for


def init_home(home: Path | str) -> dict[str, str]:
    """Create or migrate the Dagster storage under ``home`` and the MLflow store, idempotently."""
    from finnex_assets.resources import MlflowTracking

    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        raise FileNotFoundError(f"{home} has no dagster.yaml; point DAGSTER_HOME at the project's dagster_home/")
    os.environ["DAGSTER_HOME"] = str(home)  # MlflowTracking's default store and artifacts live here
    with file_lock(home / ".init.lock"):
        with dg.DagsterInstance.from_config(str(home)) as instance:
            instance.upgrade()  # the storage's alembic migrations, as `dagster instance migrate`
        tracking = MlflowTracking()
        experiment = tracking.experiment_id()
        (home / INIT_MARKER).write_text(f"{dg.__version__}\n", encoding="utf-8")
    return {"dagster_home": str(home), "mlflow": tracking.uri(), "experiment_id": experiment}


def ensure_home(home: Path | str) -> None:
    """:func:`init_home` unless it already ran for this Dagster version (a marker file says so):
    the CLI calls it before every run, so a home set up without scripts/setup.sh is safe too."""
    home = Path(home)
    marker = home / INIT_MARKER
    try:
        if marker.read_text(encoding="utf-8").strip() == dg.__version__:
            return
    except OSError:
        pass
    if (home / "dagster.yaml").exists():
        init_home(home)


@dataclass(frozen=True)
class Orphan:
    run_id: str
    job: str
    pid: int | None


def _alive(pid: int) -> bool:
    """The process exists and is a Python one (a recycled pid of another program is not ours)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the pid
    return b"python" in cmdline or b"dagster" in cmdline


def sweep_orphaned_runs(instance: dg.DagsterInstance, dry_run: bool = False) -> list[Orphan]:
    """Fail every STARTED run whose worker process (the pid of its RUN_START event) is gone.

    For an instance whose runs execute on this machine (the embedded default); on a cluster,
    run monitoring with a launcher that reports worker health does this."""
    orphans = []
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        run = record.dagster_run
        starts = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_START)
        pid = starts[-1].dagster_event.pid if starts and starts[-1].dagster_event else None
        if pid is not None and _alive(pid):
            continue
        orphans.append(Orphan(run.run_id, run.job_name, pid))
        if not dry_run:
            instance.report_run_failed(
                run,
                f"orphaned: the run's process {pid} is gone (killed or the machine restarted); marked failed "
                "by finnex's start-up sweep so it no longer holds a run-queue slot. Re-launch the run; "
                "partitions it wrote are complete files (atomic writes), the rest were never written.",
            )
    return orphans
