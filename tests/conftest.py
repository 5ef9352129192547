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


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: the machine's 2 cores are shared, and 1 OpenMP thread is faster than 2
    fighting for them. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def pipeline_resources(tmp, *, compression: str = "none", tables_from=None) -> dict:
    """Resources for the ingestion -> images -> datasets assets, with the data root ``tmp``
    (``tmp/tables``, ``tmp/mega_images``, ``tmp/datasets``); ``tables_from``: another root whose
    tables are copied in first (to rerun a later stage on the same inputs). Import with
    ``from conftest import pipeline_resources``."""
    import shutil

    from finnex_assets.io_managers import MegaImageIOManager, PartitionedParquetIOManager
    from finnex_assets.resources import DataSourceResource
    from finnex_assets.storage import FinnexStorage

    if tables_from is not None:
        shutil.copytree(tables_from / "tables", tmp / "tables", dirs_exist_ok=True)
    storage = FinnexStorage(root=str(tmp))
    return {
        "data_source": DataSourceResource(kind="synthetic"),
        "storage": storage,
        "io_manager": PartitionedParquetIOManager(storage=storage),
        "mega_image_io_manager": MegaImageIOManager(storage=storage, compression=compression),
    }


# The slowest files, slowest first (from `pytest --durations`). scripts/test.sh spreads files over
# both cores (pytest-xdist, --dist loadfile, in collection order): a long file collected last would
# leave one core idle at the end of the run.
SLOW_FIRST = (
    "test_instance_init.py",
    "test_training_assets.py",
    "test_production.py",
    "test_faults.py",
    "test_evaluation.py",
    "test_mega_images_asset.py",
    "test_patches.py",
    "test_universe_assets.py",
    "test_positive_control.py",
    "test_dagster_pipeline.py",
    "test_extension_points.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept within
