"""The ``finnex`` CLI's terminal: one line per stage, a bar under it for each loop (dates,
tickers, epochs, folds: done/total, rate, elapsed, ETA), and a summary table at the end.

A :class:`finnex_ml.progress.Sink` drawn with rich (already installed with Dagster). On a
terminal the lines update in place; piped to a file or a CI log, it prints plain lines instead:
each stage's start and end, and about ten lines per loop (done/total, rate, ETA).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from finnex_ml.progress import LOG_LINES, rate_line, rate_text


@dataclass
class Row:
    name: str
    kind: str  # "stage" or the loop's unit
    started: float
    done: int = 0
    total: int = 0
    seconds: float = 0.0
    status: str = "running"


class TerminalProgress:
    """Use as ``with TerminalProgress() as bars, progress.showing(bars): ...``."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
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
        self.rows.append(Row(stage, "stage", time.monotonic()))
        if not self.live:
            self.console.print(f"▶ {stage}", highlight=False)
        self._tasks[(stage, "stage")] = self.bars.add_task(f"[bold]{stage}[/]", total=None, count="", rate="")

    def stage_finished(self, stage: str, ok: bool) -> None:
        row = self._row(stage, "stage")
        if row is None:
            return
        row.seconds, row.status = time.monotonic() - row.started, "ok" if ok else "FAILED"
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
        for col, justify in (("stage", "left"), ("work", "right"), ("time", "right"), ("rate", "right"), ("", "left")):
            table.add_column(col, justify=justify)
        for r in self.rows:
            if r.kind == "stage":
                table.add_row(r.name, "", f"{r.seconds:.1f} s", "", r.status)
            else:
                rate = rate_text(r.done, r.seconds)
                table.add_row(f"  {r.name}", f"{r.done}/{r.total} {r.kind}", f"{r.seconds:.1f} s", rate, r.status)
        return table
