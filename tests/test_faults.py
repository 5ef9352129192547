"""Faults through the real CLI: a backfill killed with -9 mid-write, and two first runs at once
on a fresh home. Each run is a ``finnex materialize`` subprocess on a temp home and data dir."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

REPO = Path(__file__).resolve().parent.parent
ASSETS = "market_data,peer_data,sentiment_data,macro_data,fundamental_data,daily_features"
RANGE = ("2024-03-01", "2024-03-28")  # 20 sessions: 120 partition files


def _home(root: Path) -> Path:
    home = root / "home"
    home.mkdir(parents=True)
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    return home


def _materialize(
    home: Path, data: Path, start: str = RANGE[0], end: str = RANGE[1], select: str = ASSETS
) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FINNEX_", "MLFLOW_"))}
    env.update(PYTHONPATH=str(REPO), DAGSTER_HOME=str(home), FINNEX_DATA_DIR=str(data))
    return subprocess.Popen(
        [sys.executable, "-m", "finnex_assets.cli", "materialize", "--select", select, "--start", start, "--end", end],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _finals(data: Path) -> dict[str, bytes]:
    return {str(p.relative_to(data)): p.read_bytes() for p in sorted((data / "tables").rglob("*.parquet"))}


def test_kill_9_mid_backfill_then_rerun_gives_the_clean_bytes_and_no_orphan(tmp_path):
    home, data = _home(tmp_path / "killed"), tmp_path / "killed" / "data"
    proc = _materialize(home, data)
    market = data / "tables" / "market_data"
    # wait (no time limit asserted) until the IO manager is writing partitions, then kill -9
    while proc.poll() is None and len(list(market.rglob("*.parquet"))) < 3:
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before any partition was written: " + proc.communicate()[0][-2000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    written = _finals(data)
    assert 0 < len(written) < 6 * 20  # stopped midway
    for rel in written:  # every file under a final name is complete (atomic rename)
        pl.read_parquet(data / rel)

    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert [r.status for r in instance.get_runs()] == [dg.DagsterRunStatus.STARTED]  # orphaned
    sweep = subprocess.run(
        [sys.executable, "-m", "finnex_assets.cli", "sweep-runs"],
        cwd=REPO,
        text=True,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "DAGSTER_HOME": str(home)},
    )
    assert sweep.returncode == 0 and "marked run" in sweep.stdout, sweep.stdout + sweep.stderr

    rerun = _materialize(home, data)
    out = rerun.communicate()[0]
    assert rerun.returncode == 0, out[-3000:]
    clean_home, clean_data = _home(tmp_path / "clean"), tmp_path / "clean" / "data"
    clean = _materialize(clean_home, clean_data)
    out = clean.communicate()[0]
    assert clean.returncode == 0, out[-3000:]
    _assert_terminal_and_log_file(out)
    assert _finals(data) == _finals(clean_data)  # byte-identical to a run never killed
    with dg.DagsterInstance.from_config(str(home)) as instance:
        statuses = sorted(r.status.value for r in instance.get_runs())
    assert statuses == ["FAILURE", "SUCCESS"]  # the killed run failed by the sweep, none left STARTED


def _assert_terminal_and_log_file(out: str) -> None:
    """The terminal shows one line per stage and the summary, not Dagster's DEBUG events; those
    go to the run's log file, whose path the CLI prints."""
    assert " - DEBUG - " not in out and "STEP_START" not in out, out[-3000:]
    assert "finnex: stages and loops" in out
    summary = out.split("finnex: stages and loops")[1]
    rows = {
        cells[1].strip(): cells[-2].strip()
        for cells in (line.split("│") for line in summary.splitlines())
        if len(cells) > 3
    }
    # the run's two steps (ingestion is one multi-asset), each finished ok in the summary table
    if rows != {"modalities": "ok", "daily_features": "ok"}:
        pytest.fail(f"summary rows {rows}; the whole output:\n{out}")
    log_line = next(line for line in out.splitlines() if line.strip().startswith("log: "))
    log_file = Path(log_line.strip()[len("log: ") :])
    text = log_file.read_text(encoding="utf-8")
    assert log_file.parent.name == "logs" and "STEP_START" in text and " DEBUG " in text
    assert text.count("STEP_SUCCESS") == 2


def test_two_first_runs_at_once_on_a_fresh_home(tmp_path):
    """Two backfills launched together on a home nobody set up: both succeed and runs.db has one
    alembic head (the CLI initialises the home once, under a lock, before any run)."""
    home = _home(tmp_path)
    procs = [_materialize(home, tmp_path / f"data{i}", "2024-03-04", "2024-03-05", "market_data") for i in range(2)]
    for p in procs:
        out = p.communicate()[0]
        assert p.returncode == 0, out[-3000:]
    with sqlite3.connect(home / "history" / "runs.db") as db:
        assert len(db.execute("select version_num from alembic_version").fetchall()) == 1
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert [r.status for r in instance.get_runs()] == [dg.DagsterRunStatus.SUCCESS] * 2
