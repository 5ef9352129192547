"""Training: ``cnn_model`` and ``vit_model`` on the ``cnn_ready/`` sets, tracked in MLflow."""

from collections.abc import Callable
from pathlib import Path

import dagster as dg
import numpy as np
from pydantic import Field

from finnex_assets.assets.datasets import DatasetStore
from finnex_assets.io_managers import ImageStore
from finnex_assets.resources import MlflowTracking
from finnex_ml.models import CLASS_NAMES
from finnex_ml.datasets_io import set_dataset
from finnex_ml.training import H5ArrayDataset, TrainConfig, train_model


class TrainingConfig(dg.Config):
    """Launchpad settings. Defaults train the small model on this CPU in minutes."""

    input_mode: str = Field(default="patch", description="'patch' (32x32, 256 per image) or 'image' (512x512).")
    size: str = Field(default="small", description="'small' (CPU) or 'full' (the spec's sizes; needs a GPU).")
    horizons: list[int] = Field(default=[1, 5], description="Label horizons to learn (heads per horizon).")
    epochs: int = Field(default=4)
    batch_size: int = Field(default=256, description="256 for patches; use 16 for full images.")
    lr: float = Field(default=1e-3)
    weight_decay: float = Field(default=1e-5)
    warmup_epochs: float = Field(default=1.0)
    patience: int = Field(default=3, description="Early stopping on validation loss.")
    seed: int = Field(default=7)
    noise_std: float = Field(default=0.02, description="Gaussian noise; flips are never used (they reverse time).")
    mixup_alpha: float = Field(default=0.2)
    loss_weighting: str = Field(default="uncertainty", description="'uncertainty' (learned, cannot collapse) or 'fixed'.")
    resume: bool = Field(default=True, description="Continue from this model's last checkpoint if one exists.")
    num_threads: int = Field(default=1, description="torch CPU threads; 1 is fastest on a shared 2-core box.")


def _datasets(ready: Path, cfg: TrainingConfig) -> tuple[H5ArrayDataset, H5ArrayDataset]:
    return (set_dataset(ready / "train.h5", cfg.input_mode, cfg.horizons),
            set_dataset(ready / "val.h5", cfg.input_mode, cfg.horizons))


def _train_asset(name: str, model: str, title: str) -> dg.AssetsDefinition:
    @dg.asset(name=name, deps=["dataset_splits"], group_name="training", kinds={"pytorch", "mlflow"},
              description=f"{title}: multi-task (Buy/Sell/Hold + return) training on dataset_splits.")
    def _asset(context: dg.AssetExecutionContext, config: TrainingConfig, dataset_store: DatasetStore,
               image_store: ImageStore, mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
        import mlflow

        from finnex_ml.losses import class_weights_from_labels

        ready = dataset_store.cnn_ready_root()
        train, val = _datasets(ready, config)
        h0 = config.horizons[0]
        weights = class_weights_from_labels(train.target_array(f"label_h{h0}"))  # train only
        cfg = TrainConfig(
            model=model, size=config.size, input_mode=config.input_mode, horizons=tuple(config.horizons),
            class_targets=tuple(f"label_h{h}" for h in config.horizons),
            reg_targets=tuple(f"return_h{h}" for h in config.horizons),
            epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, weight_decay=config.weight_decay,
            warmup_epochs=config.warmup_epochs, patience=config.patience, seed=config.seed,
            noise_std=config.noise_std, mixup_alpha=config.mixup_alpha, loss_weighting=config.loss_weighting,
            num_threads=config.num_threads)
        ckpt = dataset_store.root() / "models" / name
        mlflow.set_tracking_uri(mlflow_tracking.uri())
        with mlflow.start_run(experiment_id=mlflow_tracking.experiment_id(), run_name=f"{name}-{context.run.run_id[:8]}",
                              tags={"dagster_run_id": context.run.run_id, "asset": name}) as run:
            mlflow.log_params({**{k: v for k, v in config.model_dump().items()}, "model": model,
                               "train_rows": len(train), "val_rows": len(val)})
            spec_file = image_store.root() / "metadata" / "channel_encoding_spec.json"
            if spec_file.exists():
                mlflow.log_artifact(str(spec_file), artifact_path="layout")
            stats_file = ready / "statistics.json"
            if stats_file.exists():
                mlflow.log_artifact(str(stats_file), artifact_path="dataset")

            def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
                mlflow.log_metrics(metrics, step=epoch)
                shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if "loss" in k or "acc" in k)
                context.log.info(f"{name} epoch {epoch}: {shown}")

            result = train_model(cfg, train, val, checkpoint_dir=ckpt, class_weights=weights,
                                 on_epoch_end=on_epoch_end, resume=config.resume)
            cm = result.image_confusion_matrix if result.image_confusion_matrix is not None else result.confusion_matrix
            cm_doc = {"labels": list(CLASS_NAMES), "rows": "true", "columns": "predicted",
                      "patch_level": result.confusion_matrix.tolist(),
                      "image_level": None if result.image_confusion_matrix is None else result.image_confusion_matrix.tolist()}
            mlflow.log_dict(cm_doc, "confusion_matrix.json")
            val_acc = float(np.trace(cm) / max(cm.sum(), 1))
            majority = float(cm.sum(axis=1).max() / max(cm.sum(), 1))
            mlflow.log_metrics({"val_image_accuracy": val_acc, "val_majority_baseline": majority})
            sample = val[0]["x"].permute(2, 0, 1)[None].float()  # stored NHWC, models take NCHW
            model_uri = _log_model(result.model.cpu().eval(), sample)
            mlflow.log_artifact(str(result.checkpoint_path), artifact_path="checkpoint")
            run_id = run.info.run_id
        return dg.MaterializeResult(metadata={
            "mlflow_run_id": run_id, "mlflow_tracking_uri": mlflow_tracking.uri(), "mlflow_model_uri": model_uri,
            "checkpoint": dg.MetadataValue.path(str(result.checkpoint_path)),
            "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
            "val_accuracy": val_acc, "val_majority_baseline": majority,
            "confusion_matrix": dg.MetadataValue.md(_cm_markdown(cm)),
            "best_metrics": dg.MetadataValue.json({k: float(v) for k, v in result.best_metrics.items()}),
            "note": "validation only; honest test-set evaluation against baselines is model_evaluation's job",
        })

    return _asset


def _log_model(model, sample) -> str:
    import mlflow
    import torch
    from mlflow.models import infer_signature

    with torch.no_grad():
        out = model(sample)
    signature = infer_signature(sample.numpy(), out["classification"].numpy())
    # pickle, not MLflow's default pt2 export: the model returns a dict (with attention maps),
    # which torch.export cannot trace reliably; the signature still documents the I/O.
    info = mlflow.pytorch.log_model(model, name="model", signature=signature, serialization_format="pickle")
    return info.model_uri


def _cm_markdown(cm: np.ndarray) -> str:
    head = "| true \\ predicted | " + " | ".join(CLASS_NAMES) + " |\n|---|---|---|---|\n"
    return head + "".join(f"| {CLASS_NAMES[i]} | " + " | ".join(str(int(v)) for v in row) + " |\n"
                          for i, row in enumerate(cm))


cnn_model = _train_asset("cnn_model", "cnn", "MultiScaleCNN")
vit_model = _train_asset("vit_model", "vit", "FinNeXViT")
TRAINING_ASSETS: list[Callable] = [cnn_model, vit_model]
