"""Resources: the data source (chosen by config), the project's checks and MLflow tracking.

Storage is ``finnex_assets.storage.FinnexStorage``."""

from __future__ import annotations

import os
from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field

from finnex_ml.data.base import DataSource
from finnex_ml.errors import ConfigError
from finnex_ml.paths import REPO_ROOT, file_lock, resolve_under


class DataSourceResource(dg.ConfigurableResource):
    """Which data feeds the pipeline: ``synthetic`` (default), ``packaged`` or ``files``."""

    kind: Literal["synthetic", "packaged", "files"] = Field(
        default="synthetic", description="synthetic | packaged (real, offline) | files (your CSV/Parquet)"
    )
    seed: int = Field(default=7, description="Seed of the synthetic world (also packaged's synthetic parts).")
    mapping_path: str = Field(
        default="", description="files source: mapping YAML/TOML, relative to the repo or FINNEX_FILES_ROOT."
    )
    planted_signal: str = Field(
        default="",
        description="synthetic source only: a positive control planted in next-day returns, "
        "'level:1.0' or 'temporal:0.7' (form:strength); empty = none (finnex_ml.data.synthetic.PlantedSignal).",
    )

    def synthetic_modalities(self) -> list[str]:
        """Modalities (provenance keys) that are generated rather than observed, shown in asset
        metadata; from the modality table (``finnex_ml.modalities``)."""
        from finnex_ml.modalities import current

        return [m.provenance for m in current() if self.kind in m.generated_by]

    def plant(self):  # -> PlantedSignal | None
        if not self.planted_signal:
            return None
        from finnex_ml.data.synthetic import PlantedSignal

        if self.kind != "synthetic":
            raise ConfigError(f"planted_signal {self.planted_signal!r} needs the synthetic source, not {self.kind!r}")
        form, _, strength = self.planted_signal.partition(":")
        try:
            return PlantedSignal(form, float(strength or 1.0))  # type: ignore[arg-type]
        except ValueError as exc:
            raise ConfigError(f"planted_signal {self.planted_signal!r}: {exc}; expected e.g. 'level:1.0'") from exc

    def source(self) -> DataSource:
        if self.kind == "synthetic":
            from finnex_ml.data.synthetic import SyntheticSource

            return SyntheticSource(self.seed, plant=self.plant())
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
        planted_signal=os.environ.get("FINNEX_PLANTED_SIGNAL", ""),
    )


class ProjectChecks(dg.ConfigurableResource):
    """Every asset check of the code location, as ``asset:check``, for reports over all of them
    (``qa_report``): a run itself knows only the checks of the assets it was built from, and an
    in-process run (the CLI's) has no repository to ask. ``definitions`` fills it (``of``)."""

    checks: list[str] = Field(default=[], description="The code location's asset checks, as asset:check.")

    @classmethod
    def of(cls, assets: Iterable[dg.AssetsDefinition]) -> ProjectChecks:
        return cls(checks=sorted({f"{k.asset_key.to_user_string()}:{k.name}" for a in assets for k in a.check_keys}))

    def check_keys(self) -> list[dg.AssetCheckKey]:
        return [
            dg.AssetCheckKey(dg.AssetKey.from_user_string(asset), name)
            for asset, name in (c.rsplit(":", 1) for c in self.checks)
        ]


class MlflowTracking(dg.ConfigurableResource):
    """MLflow tracking. The embedded default is a sqlite store under ``dagster_home/``
    (MLflow 3.17 refuses a plain file store); ``MLFLOW_TRACKING_URI`` or config points it at a
    server or PostgreSQL in production."""

    tracking_uri: str = Field(default="", description="Empty: MLFLOW_TRACKING_URI, else sqlite under dagster_home.")
    experiment: str = Field(default="finnex", description="MLflow experiment name.")

    def home(self) -> Path:
        return Path(os.environ.get("DAGSTER_HOME") or REPO_ROOT / "dagster_home")

    def uri(self) -> str:
        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.home() / 'mlflow.db'}"

    def experiment_id(self) -> str:
        """The experiment's id, creating the store's schema and the experiment on first use.

        With the sqlite store that first use runs MLflow's schema migrations; two processes
        doing it at once (``cnn_model`` and ``vit_model`` in one multiprocess run on a fresh
        home) collide on ``_alembic_tmp_experiments``, so it is done under a file lock next to
        the database. ``finnex init`` (run by scripts/setup.sh) does it once up front."""
        import mlflow

        uri = self.uri()
        lock = (
            file_lock(Path(uri.removeprefix("sqlite:///") + ".lock")) if uri.startswith("sqlite:///") else nullcontext()
        )
        with lock:
            client = mlflow.MlflowClient(tracking_uri=uri)
            found = client.get_experiment_by_name(self.experiment)
            if found is not None:
                return found.experiment_id
            artifacts = self.home() / "mlartifacts"
            artifacts.mkdir(parents=True, exist_ok=True)
            return client.create_experiment(self.experiment, artifact_location=artifacts.as_uri())
