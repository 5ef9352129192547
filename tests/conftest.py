"""Shared fixtures for the pipeline tests.

Expensive things (a full year of synthetic features) are built once per session; anything
that writes files uses pytest's tmp paths, never the repo's ``data/`` or ``dagster_home/``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import date

import polars as pl
import pytest

from finnex_ml import calendar


def pytest_configure(config: pytest.Config) -> None:
    # Dagster flags several APIs used here (multi_asset subsetting, check specs, kinds ...) as
    # beta or preview; the warnings say nothing about the code under test.
    for category in ("BetaWarning", "PreviewWarning"):
        config.addinivalue_line("filterwarnings", f"ignore::dagster.{category}")
    try:  # also for code that runs at import time, before pytest's per-test filters apply
        import dagster as dg

        warnings.filterwarnings("ignore", category=dg.BetaWarning)
        warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    except ImportError:  # pragma: no cover - dagster is a hard dependency
        pass


@dataclass(frozen=True)
class FeatureRun:
    """``modality_snapshots`` + ``daily_features_from_snapshots`` for a list of dates."""

    asof: list[date]
    snapshots: dict[str, pl.DataFrame]
    provenance: dict[str, str]
    features: pl.DataFrame

    def row(self, d: date) -> dict:
        rows = self.features.filter(pl.col("date") == d).to_dicts()
        assert len(rows) == 1, f"expected one feature row for {d}, got {len(rows)}"
        return rows[0]


def run_features(source, asof: list[date]) -> FeatureRun:
    from finnex_ml import pipeline

    snaps, provenance = pipeline.modality_snapshots(source, asof)
    return FeatureRun(list(asof), snaps, provenance, pipeline.daily_features_from_snapshots(snaps))


@pytest.fixture(scope="session")
def synthetic_2024() -> FeatureRun:
    """Every 2024 session of the default synthetic world (seed 7), computed in one pass."""
    from finnex_ml.data.synthetic import SyntheticSource

    return run_features(SyntheticSource(7), calendar.sessions(date(2024, 1, 1), date(2024, 12, 31)))
