"""The one place that assembles assets, checks, resources and jobs."""

from __future__ import annotations

import dagster as dg

from finnex_assets.assets.datasets import DATASET_ASSETS
from finnex_assets.assets.evaluation import EVALUATION_ASSETS
from finnex_assets.assets.features import daily_features
from finnex_assets.assets.images import mega_images
from finnex_assets.assets.ingestion import modalities
from finnex_assets.assets.training import TRAINING_ASSETS
from finnex_assets.assets.universe import UNIVERSE_ASSETS, default_universe
from finnex_assets.io_managers import MegaImageIOManager, PartitionedParquetIOManager
from finnex_assets.loggers import LOGGERS
from finnex_assets.resources import MlflowTracking, ProjectChecks, default_data_source
from finnex_assets.schedules import daily_after_close, daily_job, universe_after_close, universe_job
from finnex_assets.storage import default_storage

ALL_ASSETS = [
    modalities,
    daily_features,
    mega_images,
    *DATASET_ASSETS,
    *TRAINING_ASSETS,
    *EVALUATION_ASSETS,
    *UNIVERSE_ASSETS,
]

# The main job: every per-date stage, as one run per partition range. The unpartitioned
# dataset_splits (and training and evaluation after it) run on their own over whatever dates exist.
main_job = dg.define_asset_job(
    "finnex_main",
    selection=dg.AssetSelection.all()
    - dg.AssetSelection.assets("dataset_splits")
    - dg.AssetSelection.groups("training", "evaluation", "universe"),
    description="Ingestion through patches for a range of trading dates.",
)


def build_resources() -> dict[str, object]:
    storage = default_storage()  # one instance: the IO managers get the configured top-level one
    return {
        "data_source": default_data_source(),
        "storage": storage,
        "io_manager": PartitionedParquetIOManager(storage=storage),
        "mega_image_io_manager": MegaImageIOManager(storage=storage),
        "mlflow_tracking": MlflowTracking(),
        "universe": default_universe(),
        "project_checks": ProjectChecks.of(ALL_ASSETS),
    }


defs = dg.Definitions(
    assets=ALL_ASSETS,
    jobs=[main_job, universe_job, daily_job],
    schedules=[daily_after_close, universe_after_close],
    resources=build_resources(),
    loggers=LOGGERS,
)
