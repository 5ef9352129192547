"""Resources: the data source, chosen by config."""

from __future__ import annotations

import os
from typing import Literal

import dagster as dg
from pydantic import Field

from finnex_ml.data.base import DataSource
from finnex_ml.errors import ConfigError
from finnex_ml.paths import REPO_ROOT, resolve_under


class DataSourceResource(dg.ConfigurableResource):
    """Which data feeds the pipeline: ``synthetic`` (default), ``packaged`` or ``files``."""

    kind: Literal["synthetic", "packaged", "files"] = Field(
        default="synthetic", description="synthetic | packaged (real, offline) | files (your CSV/Parquet)")
    seed: int = Field(default=7, description="Seed of the synthetic world (also packaged's synthetic parts).")
    mapping_path: str = Field(
        default="", description="files source: mapping YAML/TOML, relative to the repo or FINNEX_FILES_ROOT.")

    def synthetic_modalities(self) -> list[str]:
        """Modalities that are generated rather than observed, shown in asset metadata."""
        return {"synthetic": ["prices", "peers", "texts", "macro", "fundamental"],
                "packaged": ["texts", "fundamental"]}.get(self.kind, [])

    def source(self) -> DataSource:
        if self.kind == "synthetic":
            from finnex_ml.data.synthetic import SyntheticSource

            return SyntheticSource(self.seed)
        if self.kind == "packaged":
            from finnex_ml.data.packaged import PackagedSource

            return PackagedSource(self.seed)
        if not self.mapping_path:
            raise ConfigError("the files source needs mapping_path")
        from finnex_ml.data.files import FilesSource

        root = os.environ.get("FINNEX_FILES_ROOT", str(REPO_ROOT))
        return FilesSource.from_mapping(resolve_under(root, self.mapping_path))


def default_data_source() -> DataSourceResource:
    """Source from the environment, so ``finnex demo --source packaged`` and the UI agree."""
    return DataSourceResource(
        kind=os.environ.get("FINNEX_SOURCE", "synthetic"),  # type: ignore[arg-type]
        seed=int(os.environ.get("FINNEX_SEED", "7")),
        mapping_path=os.environ.get("FINNEX_FILES_MAPPING", ""),
    )
