"""The one storage resource: every asset and IO manager reaches the data root through it."""

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from finnex_ml.paths import data_root
from finnex_ml.storage import (
    CnnReadyStore,
    EvaluationStore,
    ImageStore,
    ModelStore,
    PatchStore,
    ReportStore,
    SplitStore,
    Storage,
    TableStore,
    UniverseStore,
)

DATA_DIR_VAR = "FINNEX_DATA_DIR"


class FinnexStorage(dg.ConfigurableResource):
    """The data root and its typed stores (``finnex_ml.storage.Storage``): tables, images,
    patches, splits, cnn_ready, models, evaluation, reports, universe.

    ``definitions`` sets ``root`` to ``EnvVar("FINNEX_DATA_DIR")`` when the variable is set, so
    the UI shows where the root comes from and Dagster reads it when a run starts. Left empty,
    the root is resolved when used: ``FINNEX_DATA_DIR`` if set by then (the CLI sets it for some
    demos after the definitions may have been imported), else the repo's ``data/``.
    """

    root: str = Field(default="", description="Data root; empty: FINNEX_DATA_DIR when set at use, else <repo>/data.")

    def root_path(self) -> Path:
        root = self.root
        if isinstance(root, dg.EnvVar):  # not yet resolved by Dagster (used outside a run, e.g. the CLI)
            root = root.get_value() or ""
        return Path(root).resolve() if root else data_root()

    def storage(self) -> Storage:
        return Storage(self.root_path())

    @property
    def tables(self) -> TableStore:
        return self.storage().tables

    @property
    def images(self) -> ImageStore:
        return self.storage().images

    @property
    def patches(self) -> PatchStore:
        return self.storage().patches

    @property
    def splits(self) -> SplitStore:
        return self.storage().splits

    @property
    def cnn_ready(self) -> CnnReadyStore:
        return self.storage().cnn_ready

    @property
    def models(self) -> ModelStore:
        return self.storage().models

    @property
    def evaluation(self) -> EvaluationStore:
        return self.storage().evaluation

    @property
    def reports(self) -> ReportStore:
        return self.storage().reports

    @property
    def universe(self) -> UniverseStore:
        return self.storage().universe


def default_storage() -> FinnexStorage:
    """``EnvVar("FINNEX_DATA_DIR")`` when the variable is set now, else the empty root (resolved
    at use). An EnvVar of an unset variable fails every run in Dagster, so it is only used when set."""
    if os.environ.get(DATA_DIR_VAR):
        return FinnexStorage(root=dg.EnvVar(DATA_DIR_VAR))
    return FinnexStorage()
