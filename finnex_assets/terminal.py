"""The ``finnex`` CLI's terminal: one line per stage, a bar under it for each loop (dates,
tickers, epochs, folds: done/total, rate, elapsed, ETA), and a summary table at the end with
each stage's peak memory.

A :class:`finnex_ml.progress.Sink` drawn with rich (already installed with Dagster). On a
terminal the lines update in place; piped to a file or a CI log, it prints plain lines instead:
each stage's start and end, and about ten lines per loop (done/total, rate, ETA).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from finnex_ml.progress import LOG_LINES, rate_line, rate_text

_PROC = Path("/proc/self")


def reset_peak_rss() -> None:
    """Start a new peak-RSS window for this process (Linux: ``5`` to ``clear_refs`` sets the
    high-water mark to the current RSS); nothing where that is not available."""
    try:
        (_PROC / "clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_bytes() -> int | None:
    """This process's peak RSS since start or the last :func:`reset_peak_rss` (``VmHWM``)."""
    try:
        for line in (_PROC / "status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@dataclass
class Row:
    name: str
    kind: str  # "stage" or the loop's unit
    started: float
    done: int = 0
    total: int = 0
    seconds: float = 0.0
    status: str = "running"
    peak_rss: int | None = None  # stages: bytes, the process's high-water mark while it ran


class TerminalProgress:
    """Use as ``with TerminalProgress() as bars, progress.showing(bars): ...``."""

    def __init__(self, console: Console | None = None):
        if console is None:
            console = Console(stderr=True)
            if not console.is_terminal:  # a log file: rich's 80 columns would cut the summary's names
                console = Console(stderr=True, width=120)
        self.console = console
        self.bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            TextColumn("{task.fields[count]}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.rows: list[Row] = []
        self._tasks: dict[tuple[str, str], TaskID] = {}
        self.live = self.console.is_terminal  # else plain lines: nothing to redraw in a log file

    def __enter__(self) -> TerminalProgress:
        if self.live:
            self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.stop()

    # stages: Dagster steps
    def stage_started(self, stage: str) -> None:
        # the CLI runs the steps in its own process, one at a time: the mark is this stage's
        reset_peak_rss()
        self.rows.append(Row(stage, "stage", time.monotonic()))
        if not self.live:
            self.console.print(f"▶ {stage}", highlight=False)
        self._tasks[(stage, "stage")] = self.bars.add_task(f"[bold]{stage}[/]", total=None, count="", rate="")

    def stage_finished(self, stage: str, ok: bool) -> None:
        row = self._row(stage, "stage")
        if row is None:
            return
        row.seconds, row.status = time.monotonic() - row.started, "ok" if ok else "FAILED"
        row.peak_rss = peak_rss_bytes()
        mark = "[green]✓[/]" if ok else "[red]✗ FAILED[/]"
        if not self.live:
            self.console.print(f"{mark} {stage} ({row.seconds:.1f} s)", highlight=False)
        self.bars.update(
            self._tasks[(stage, "stage")], total=1, completed=1, description=f"{mark} [bold]{stage}[/]", rate=""
        )

    # loops inside a stage
    def start(self, stage: str, total: int, unit: str) -> None:
        self.rows.append(Row(stage, unit, time.monotonic(), total=total))
        self._tasks[(stage, unit)] = self.bars.add_task(f"  {stage}", total=total, count=f"0/{total} {unit}", rate="")

    def advance(self, stage: str, done: int) -> None:
        row = self._loop(stage)
        if row is None:
            return
        row.done = done
        elapsed = time.monotonic() - row.started
        if not self.live and (done % max(1, -(-row.total // LOG_LINES)) == 0 or done == row.total):
            self.console.print("  " + rate_line(stage, done, row.total, row.kind, elapsed), highlight=False)
        self.bars.update(
            self._tasks[(stage, row.kind)],
            completed=done,
            count=f"{done}/{row.total} {row.kind}",
            rate=rate_text(done, elapsed),
        )

    def finish(self, stage: str, done: int, seconds: float) -> None:
        row = self._loop(stage)
        if row is not None:
            row.done, row.seconds, row.status = done, seconds, "ok" if done == row.total else "stopped"

    def _row(self, name: str, kind: str) -> Row | None:
        return next((r for r in reversed(self.rows) if r.name == name and r.kind == kind), None)

    def _loop(self, name: str) -> Row | None:
        return next((r for r in reversed(self.rows) if r.name == name and r.kind != "stage"), None)

    def summary(self) -> Table:
        table = Table(title="finnex: stages and loops", title_justify="left")
        columns = ("stage", "left"), ("work", "right"), ("time", "right"), ("rate", "right"), ("peak RSS", "right")
        for col, justify in (*columns, ("", "left")):
            table.add_column(col, justify=justify)
        for r in self.rows:
            if r.kind == "stage":
                rss = "" if r.peak_rss is None else f"{r.peak_rss / 2**30:.2f} GB"
                table.add_row(r.name, "", f"{r.seconds:.1f} s", "", rss, r.status)
            else:
                rate = rate_text(r.done, r.seconds)
                table.add_row(f"  {r.name}", f"{r.done}/{r.total} {r.kind}", f"{r.seconds:.1f} s", rate, "", r.status)
        return table
