"""Progress of the long loops: dates encoded, tickers loaded, epochs trained, folds evaluated.

A loop reports through :func:`track`. Where progress goes is the caller's choice: the Dagster
layer passes its run log (a line per chunk, shown in the UI's run logs), and the ``finnex`` CLI
installs a terminal bar with :func:`showing`. The library knows neither.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import contextmanager
from typing import Protocol, TypeVar

T = TypeVar("T")

LOG_LINES = 10  # about this many log lines per loop, whatever its length


class Sink(Protocol):
    """A live display of stages and their loops (the CLI's terminal bars)."""

    def start(self, stage: str, total: int, unit: str) -> None: ...

    def advance(self, stage: str, done: int) -> None: ...

    def finish(self, stage: str, done: int, seconds: float) -> None: ...

    def stage_started(self, stage: str) -> None: ...

    def stage_finished(self, stage: str, ok: bool) -> None: ...


_sinks: list[Sink] = []


@contextmanager
def showing(sink: Sink) -> Iterator[Sink]:
    """Send every :func:`track`-ed loop in this process to ``sink`` while the block runs."""
    _sinks.append(sink)
    try:
        yield sink
    finally:
        _sinks.remove(sink)


def stage_started(stage: str) -> None:
    """A pipeline stage (a Dagster step) began; its loops report under it."""
    for s in list(_sinks):
        s.stage_started(stage)


def stage_finished(stage: str, *, ok: bool) -> None:
    for s in list(_sinks):
        s.stage_finished(stage, ok)


def rate_text(done: int, seconds: float) -> str:
    """``4.1/s``, or ``26.3 s each`` for slow units (epochs), where a rate would read 0.0/s."""
    if done and seconds > done:
        return f"{seconds / done:.1f} s each"
    return f"{done / seconds:.1f}/s" if seconds > 0 else ""


def rate_line(stage: str, done: int, total: int, unit: str, seconds: float) -> str:
    """``stage: 63/252 dates (4.1/s, ETA 46 s)``: the log line for a chunk."""
    eta = (total - done) * seconds / done if done else 0.0
    tail = f"ETA {eta:.0f} s" if done < total else f"done in {seconds:.1f} s"
    return f"{stage}: {done}/{total} {unit} ({rate_text(done, seconds)}, {tail})"


def track(
    items: Iterable[T],
    stage: str,
    *,
    total: int | None = None,
    unit: str = "dates",
    log: Callable[[str], None] | None = None,
) -> Iterator[T]:
    """Yield ``items``, counting one unit of work as each loop body completes.

    ``log`` gets about :data:`LOG_LINES` lines (done/total, rate, ETA) and one at the end; the
    installed sinks get every step. ``total`` defaults to ``len(items)``.
    """
    if total is None:
        if not isinstance(items, Sized):
            raise TypeError(f"progress.track({stage!r}): pass total= for an iterable without len()")
        total = len(items)
    every = max(1, -(-total // LOG_LINES))
    sinks = list(_sinks)
    for s in sinks:
        s.start(stage, total, unit)
    t0 = time.monotonic()
    done = 0
    try:
        for item in items:
            yield item
            done += 1
            for s in sinks:
                s.advance(stage, done)
            if log is not None and (done % every == 0 or done == total):
                log(rate_line(stage, done, total, unit, time.monotonic() - t0))
    finally:
        for s in sinks:
            s.finish(stage, done, time.monotonic() - t0)
