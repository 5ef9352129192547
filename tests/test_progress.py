"""Progress reporting: the library's loop counter, the Dagster loggers that carry step events
and every log line to a file, and the CLI's terminal display."""

import io
import re
from pathlib import Path

import dagster as dg
import pytest
from rich.console import Console

from finnex_assets.loggers import LOGGERS
from finnex_assets.terminal import TerminalProgress
from finnex_ml import progress


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def start(self, stage, total, unit):
        self.events.append(("start", stage, total, unit))

    def advance(self, stage, done):
        self.events.append(("advance", stage, done))

    def finish(self, stage, done, seconds):
        self.events.append(("finish", stage, done))

    def stage_started(self, stage):
        self.events.append(("stage_started", stage))

    def stage_finished(self, stage, ok):
        self.events.append(("stage_finished", stage, ok))


def test_track_counts_each_finished_body_and_logs_about_ten_lines():
    lines: list[str] = []
    rec = Recorder()
    seen = []
    with progress.showing(rec):
        for i in progress.track(range(95), "encode", unit="dates", log=lines.append):
            # the item is counted once its body is done: nothing counted for it yet
            assert rec.events[-1][:2] == (("advance", "encode") if i else ("start", "encode"))
            seen.append(i)
    assert seen == list(range(95))
    assert rec.events[0] == ("start", "encode", 95, "dates")
    assert [e[2] for e in rec.events if e[0] == "advance"] == list(range(1, 96))
    assert rec.events[-1] == ("finish", "encode", 95)
    assert len(lines) == 10  # every 10th of 95 (rounded up) and the last
    assert lines[0].startswith("encode: 10/95 dates (") and "ETA" in lines[0]
    assert lines[-1].startswith("encode: 95/95 dates (") and "done in" in lines[-1]
    assert progress._sinks == []  # uninstalled after the block


def test_track_reports_a_loop_left_early_and_needs_a_total_for_generators():
    rec = Recorder()
    with progress.showing(rec):
        for i in progress.track([1, 2, 3, 4], "epochs", unit="epochs"):
            if i == 2:
                break
    assert rec.events[-1] == ("finish", "epochs", 1)  # left during item 2: 1 of 4 done
    with pytest.raises(TypeError, match="pass total="):
        list(progress.track((x for x in range(3)), "gen"))
    assert list(progress.track((x for x in range(3)), "gen", total=3)) == [0, 1, 2]


@dg.asset
def looping(context: dg.AssetExecutionContext) -> int:
    return sum(progress.track(range(7), "looping items", unit="items", log=context.log.info))


@dg.asset
def failing() -> int:
    raise ValueError("planned failure")


def test_dagster_loggers_send_steps_to_the_display_and_every_line_to_the_run_file(tmp_path):
    job = dg.Definitions(assets=[looping, failing], loggers=LOGGERS).resolve_implicit_global_asset_job_def()
    log_file = tmp_path / "run.log"
    rec = Recorder()
    with progress.showing(rec):
        result = job.execute_in_process(
            run_config={
                "loggers": {
                    "console": {"config": {"log_level": "WARNING"}},
                    "run_log_file": {"config": {"path": str(log_file)}},
                    "stage_progress": {},
                }
            },
            raise_on_error=False,
        )
    assert not result.success
    stages = [e for e in rec.events if e[0].startswith("stage")]
    assert sorted(stages) == sorted(
        [("stage_started", "looping"), ("stage_finished", "looping", True)]
        + [("stage_started", "failing"), ("stage_finished", "failing", False)]
    )
    assert ("finish", "looping items", 7) in rec.events
    text = log_file.read_text(encoding="utf-8")
    assert "STEP_START" in text and " DEBUG " in text  # the events the terminal no longer shows
    assert "looping items: 7/7 items" in text and "planned failure" in text


@pytest.mark.parametrize("terminal", [True, False], ids=["live-bars", "plain-lines"])
def test_terminal_progress_draws_stages_and_loops_and_sums_them_up(terminal):
    out = io.StringIO()
    bars = TerminalProgress(Console(file=out, width=120, force_terminal=terminal))
    assert bars.live is terminal
    with bars, progress.showing(bars):
        progress.stage_started("mega_images")
        for _ in progress.track(range(12), "mega_images", unit="dates"):
            pass
        progress.stage_finished("mega_images", ok=True)
        progress.stage_started("cnn_model")
        for e in progress.track(range(5), "cnn epochs", unit="epochs"):
            if e == 2:
                break
        progress.stage_finished("cnn_model", ok=False)
    bars.console.print(bars.summary())
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # colours and cursor moves
    assert "✓ mega_images" in text and "✗ FAILED cnn_model" in text
    assert "12/12 dates" in text and "2/5 epochs" in text
    summary = text.split("finnex: stages and loops")[1]
    rows = [line for line in summary.splitlines() if "│" in line]
    assert [r.split("│")[1].strip() for r in rows] == ["mega_images", "mega_images", "cnn_model", "cnn epochs"]
    assert "stopped" in rows[3] and "FAILED" in rows[2] and "ok" in rows[0]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak RSS windows need Linux /proc")
def test_summary_shows_each_stages_own_peak_memory():
    """A stage's peak RSS is its own: a 300 MB array in the first stage, freed before the second,
    shows in the first row and not in the second (the mark is reset at each stage start)."""
    import numpy as np

    bars = TerminalProgress(Console(file=io.StringIO(), width=120, force_terminal=False))
    with bars, progress.showing(bars):
        progress.stage_started("big")
        block = np.ones(300 * 2**20, dtype=np.uint8)  # written, so resident
        assert block.sum() == 300 * 2**20
        del block
        progress.stage_finished("big", ok=True)
        progress.stage_started("small")
        progress.stage_finished("small", ok=True)
    big, small = (r.peak_rss for r in bars.rows)
    assert big - small > 250 * 2**20
    assert "peak RSS" in str(bars.summary().columns[4].header)
