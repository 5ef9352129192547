"""Universe images staged in date spans by separate processes: the same files, checks and
counts as one pass, including at the spans' seams."""

from __future__ import annotations

import hashlib
import os
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from finnex_ml import calendar, panel
from finnex_ml.data.universe import universe_source
from finnex_ml.encoding import NormConfig, build_layout
from finnex_ml.encoding.encoder import history_needed
from finnex_ml.errors import DataInputError
from finnex_ml.panel_images import spans, stage_cross_sections
from finnex_ml.series import SeriesKey

NORM = NormConfig()


def wrong_previous(key: SeriesKey) -> np.ndarray:
    """A stored image that continues nothing: every continuity check against it fails. Module
    level, so a span process can unpickle it."""
    return np.full((512, 512, 3), 0.123, dtype=np.float32)


@pytest.fixture(scope="module")
def universe_table() -> pl.DataFrame:
    uni = universe_source("synthetic", n_tickers=6, seed=7)
    _, feats = panel.panel_features(uni, calendar.sessions(date(2023, 1, 3), date(2024, 5, 31)))
    # one ticker skips a session: it has no image for a window's length after it
    gap = calendar.sessions(date(2024, 4, 15), date(2024, 4, 15))[0]
    return feats.filter(~((pl.col("ticker") == feats["ticker"].min()) & (pl.col("date") == gap))).sort("date", "ticker")


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_spans_are_contiguous_and_long_enough():
    days = calendar.sessions(date(2024, 1, 2), date(2024, 12, 31))
    parts = spans(days, 2, 100)
    assert [len(p) for p in parts] == [126, 126] and sum(parts, []) == days
    assert spans(days, 2, 200) == [days]  # two spans of 126 would each be under the minimum
    assert [len(p) for p in spans(days[:10], 4, 3)] == [3, 4, 3]  # at most len // min_span spans


def test_span_processes_write_what_one_pass_writes(universe_table, tmp_path):
    dates = calendar.sessions(date(2024, 4, 1), date(2024, 5, 24))
    spec = build_layout([c for c in universe_table.columns if c != "ticker"])
    runs = {}
    for workers in (1, 3):
        out = tmp_path / f"w{workers}"
        staged = stage_cross_sections(
            universe_table, dates, spec, NORM, out, previous=wrong_previous, workers=workers, min_span=12
        )
        runs[workers] = (staged, _digest(out))
    (one, files_one), (three, files_three) = runs[1], runs[3]
    assert len(spans(dates, 3, 12)) == 3
    assert files_three == files_one and len(files_one) == 2 * len(dates)  # a cross-section and a preview per date
    elig = panel.image_eligibility(universe_table, dates, history_needed(spec, NORM))
    assert three.counts == one.counts == {d: len(tks) for d, tks in elig.items()}
    assert len(set(one.counts.values())) > 1  # tickers leave the universe within the range
    # the stored previous image is read only on the run's first date: a span that did not
    # re-check the date before it would read it, and fail continuity, at its own first date too
    assert three.failures == one.failures
    assert one.failures == {"temporal_continuity": [f"{dates[0].isoformat()}/{tk}" for tk in elig[dates[0]]]}


def test_a_span_process_error_reaches_the_caller_with_its_date(universe_table, tmp_path):
    spec = build_layout([c for c in universe_table.columns if c != "ticker"])
    late = calendar.sessions(date(2024, 5, 1), date(2024, 5, 31))
    early = calendar.sessions(date(2023, 3, 1), date(2023, 3, 31))  # no ticker has the history yet
    with pytest.raises(DataInputError, match="2023-03-01"):
        stage_cross_sections(
            universe_table, early + late, spec, NORM, tmp_path, previous=wrong_previous, workers=2, min_span=10
        )


def dying_previous(key: SeriesKey) -> np.ndarray:
    os._exit(3)  # a span process that dies (killed, out of memory) without a word


@pytest.mark.timeout(120)
def test_a_span_process_that_dies_is_an_error_not_a_hang(universe_table, tmp_path):
    spec = build_layout([c for c in universe_table.columns if c != "ticker"])
    dates = calendar.sessions(date(2024, 4, 1), date(2024, 5, 24))
    with pytest.raises(RuntimeError, match=r"span 0 \(2024-04-01\.\.2024-04-26\) exited with code 3 without a result"):
        stage_cross_sections(
            universe_table, dates, spec, NORM, tmp_path, previous=dying_previous, workers=2, min_span=12
        )
    assert not (tmp_path / ".span_table.arrow").exists()
