"""Encode, check and stage the universe's daily cross-sections, in date spans run side by side.

Each date's file depends only on the feature table, so contiguous spans of dates can be encoded,
checked and written by separate processes into one staging folder: the files are the same
bytes whichever process wrote them. Two things carry over from one date to the next, and a
span rebuilds both from the date before its first, so every check sees what a single pass sees:

* the trailing normalisation of each ticker, recomputed from the table for the span's first
  image window (the ``L - 1`` sessions before it, once per span);
* the continuity check's memory of each ticker's previous image: the span encodes and checks
  the date before it again (without writing or counting it).

The first span takes the previous images from ``previous`` (the committed store), as one pass does.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import partial
from multiprocessing import connection as mp_connection
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from finnex_ml import calendar, panel, progress
from finnex_ml.encoding import SeriesQA, write_preview
from finnex_ml.encoding.encoder import history_needed
from finnex_ml.encoding.layout import LayoutSpec
from finnex_ml.encoding.normalize import NormConfig
from finnex_ml.encoding.panel_store import write_cross_section
from finnex_ml.errors import DataInputError
from finnex_ml.series import SeriesKey
from finnex_ml.storage import UniverseStore

# a span renormalises the 55 sessions before its first image (the default layout's window):
# below ~100 dates that repeat costs more than a second process saves
MIN_SPAN_DATES = 100

Previous = Callable[[SeriesKey], "np.ndarray | None"]


@dataclass
class StagedImages:
    failures: dict[str, list[str]] = field(default_factory=dict)  # check -> "date/ticker" of each failing image
    counts: dict[date, int] = field(default_factory=dict)  # tickers imaged per date

    def extend(self, other: StagedImages) -> None:
        for name, tags in other.failures.items():
            self.failures.setdefault(name, []).extend(tags)
        self.counts.update(other.counts)


def stored_previous(store: UniverseStore, key: SeriesKey) -> np.ndarray | None:
    """The ticker's stored image at t-1, for continuity across run boundaries, when it exists.
    (Here, not in the asset module, so a span process unpickling it imports no Dagster.)"""
    prev = calendar.sessions_back(key.date, 2)
    try:
        return store.read_image(SeriesKey(key.ticker, prev)) if prev != key.date else None
    except (DataInputError, OSError, KeyError):
        return None


def spans(dates: Sequence[date], workers: int, min_span: int = MIN_SPAN_DATES) -> list[list[date]]:
    """``dates`` (sorted) in at most ``workers`` contiguous spans of at least ``min_span`` dates."""
    n = max(1, min(int(workers), len(dates) // max(min_span, 1)))
    bounds = np.linspace(0, len(dates), n + 1).round().astype(int)
    return [list(dates[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def stage_cross_sections(
    table: pl.DataFrame,
    dates: Sequence[date],
    spec: LayoutSpec,
    norm: NormConfig,
    staging: Path,
    *,
    previous: Previous,
    compression: dict[str, Any] | None = None,
    preview_ticker: str = "",
    workers: int = 1,
    min_span: int = MIN_SPAN_DATES,
    log: Callable[[str], None] | None = None,
) -> StagedImages:
    """Encode every eligible (date, ticker) of ``table`` (date, ticker, features; sorted) on
    ``dates``, run the image checks on each and write each date's cross-section to ``staging``
    (not durable: the caller commits), with one PNG preview per date (``preview_ticker``, or the
    date's first ticker). ``workers`` > 1 splits the dates into that many spans of at least
    ``min_span`` dates, each in its own process. Returns the failing images per check and the
    tickers imaged per date. A date without an eligible ticker is a DataInputError."""
    dates = sorted(dates)
    parts = spans(dates, workers, min_span)
    job = {
        "spec": spec,
        "norm": norm,
        "staging": staging,
        "previous": previous,
        "compression": compression or {},
        "preview_ticker": preview_ticker,
    }
    by_span: dict[int, StagedImages] = {}
    for _ in progress.track(_run_spans(table, parts, job, by_span), "universe_images", total=len(dates), log=log):
        pass
    out = StagedImages()
    for i in range(len(parts)):
        out.extend(by_span[i])
    return out


def _run_spans(
    table: pl.DataFrame, parts: list[list[date]], job: dict[str, Any], by_span: dict[int, StagedImages]
) -> Iterator[date | None]:
    """Stage every span (in this process when there is one), yielding once per staged date;
    each span's result goes to ``by_span``."""
    if len(parts) == 1:
        yield from _stage_span(table, None, parts[0], partial(by_span.__setitem__, 0), **job)
        return
    ctx = mp.get_context("spawn")  # not fork: polars' thread pool does not survive a fork
    # the table goes through a file, not the start pipe: a large pickle there blocks start() until
    # the child has read it all, forever if the child dies first
    table_file = job["staging"] / ".span_table.arrow"
    table_file.parent.mkdir(parents=True, exist_ok=True)
    table.write_ipc(table_file)
    procs, readers = [], {}
    try:
        for i, part in enumerate(parts):
            # one pipe per span, not a shared queue: a span killed mid-message then breaks only its own
            reader, writer = ctx.Pipe(duplex=False)
            seed = parts[i - 1][-1] if i else None
            name = f"universe_images span {i} ({part[0]}..{part[-1]})"
            procs.append(ctx.Process(target=_span_process, args=(writer, table_file, seed, part, job), name=name))
            procs[-1].start()
            writer.close()  # the child holds the only write end: its exit is EOF here
            readers[reader] = i
        # an error ends the spans after it; the earliest span's error is raised once the spans
        # before it are done, so it names the first bad date, as one pass would
        pending, error = set(range(len(procs))), None
        while pending:
            for reader in mp_connection.wait([r for r, i in readers.items() if i in pending], timeout=1.0):
                i = readers[reader]
                if i not in pending:
                    continue
                try:
                    kind, payload = reader.recv()
                except EOFError:
                    procs[i].join(5)
                    raise RuntimeError(
                        f"{procs[i].name} exited with code {procs[i].exitcode} without a result"
                    ) from None
                if kind == "date":
                    yield payload
                elif kind == "done":
                    by_span[i] = payload
                    pending.discard(i)
                else:  # "error": the span's exception
                    error = payload
                    for j in [j for j in pending if j >= i]:
                        procs[j].kill()
                        pending.discard(j)
        if error is not None:
            raise error
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join()
        for reader in readers:
            reader.close()
        table_file.unlink(missing_ok=True)


def _span_process(conn, table_file: Path, seed: date | None, part: list[date], job: dict[str, Any]) -> None:
    try:
        table = pl.read_ipc(table_file)
        for d in _stage_span(table, seed, part, partial(_send, conn, "done"), **job):
            _send(conn, "date", d)
    except BaseException as exc:  # noqa: BLE001  (sent to the parent, which raises it)
        try:
            _send(conn, "error", exc)
        except Exception:  # an exception that does not pickle still reaches the parent as text
            _send(conn, "error", RuntimeError(f"{mp.current_process().name}: {exc!r}"))
    finally:
        conn.close()


def _send(conn, kind: str, payload: Any) -> None:
    conn.send((kind, payload))


def _stage_span(
    table: pl.DataFrame,
    seed: date | None,
    part: list[date],
    done: Callable[[StagedImages], None],
    *,
    spec: LayoutSpec,
    norm: NormConfig,
    staging: Path,
    previous: Previous,
    compression: dict[str, Any],
    preview_ticker: str,
) -> Iterator[date]:
    """Stage the dates of ``part`` (yielding each when written); ``seed``, the date before it,
    is encoded and checked only to set up the continuity check."""
    qa = SeriesQA(spec)
    out = StagedImages()
    for d, items in panel.encode_cross_sections(table, ([seed] if seed else []) + part, spec, norm):
        key = d.isoformat()
        if not items:
            raise DataInputError(
                f"universe_images: no ticker has the {history_needed(spec, norm)} sessions of features an image "
                f"needs on {d}; materialise universe_features from the lookback start (finnex demo does)",
                date=key,
            )
        record = d != seed
        show = preview_ticker or items[0][0]
        for tk, item in items:
            # the seed date only sets up the checks' memory: its own checks are not recorded
            before = partial(previous, SeriesKey(tk, d)) if record else (lambda: None)
            outcome = qa.check(tk, item.image, item.window, before)
            if record:
                for name, (ok, _) in outcome.items():
                    if not ok:
                        out.failures.setdefault(name, []).append(f"{key}/{tk}")
                if tk == show:
                    path = staging / "previews" / f"{key}_{tk}.png"
                    write_preview(path, item.image, spec, title=f"{key}/{tk}", step=2, durable=False)
        qa.keep_only(tk for tk, _ in items)  # a ticker not imaged today: its next image continues nothing
        if record:
            write_cross_section(staging, d, items, spec=spec, norm_config=norm, durable=False, **compression)
            out.counts[d] = len(items)
            yield d
    done(out)
