"""Training: ``cnn_model`` and ``vit_model`` on the ``cnn_ready/`` sets, tracked in MLflow."""

import dagster as dg
import numpy as np
from pydantic import Field

from finnex_assets.resources import MlflowTracking
from finnex_assets.storage import FinnexStorage
from finnex_ml.datasets_io import set_dataset
from finnex_ml.encoding.layout import LayoutSpec
from finnex_ml.encoding.store import read_encoder
from finnex_ml.errors import DataInputError
from finnex_ml.evaluation.metrics import is_degenerate, prediction_diversity
from finnex_ml.models import CLASS_NAMES, MODEL_REGISTRY, ModelEntry, layout_json
from finnex_ml.storage import CnnReadyStore
from finnex_ml.training import IMAGE_RECIPE, H5ArrayDataset, TrainConfig, as_bags, image_recipe, train_ensemble


class TrainingConfig(dg.Config):
    """Launchpad settings. Defaults: the layout-aware model on whole images, plain cross-entropy,
    an ensemble of 3 seeds, early stopping on the (purged) validation split; minutes on 2 cores."""

    input_mode: str = Field(
        default="image",
        description="'image' (512x512, layout-aware stem read from the stored layout spec; "
        "vit_patches reads 256 patch tokens) or 'patch' (each image a bag of its 256 32x32 patches, "
        "pixel stem per patch, gated-attention pooling, one prediction per image).",
    )
    size: str = Field(default="small", description="'small' (CPU) or 'full' (the spec's sizes; needs a GPU).")
    horizons: list[int] = Field(default=[1, 5], description="Label horizons to learn (heads per horizon).")
    epochs: int = Field(default=20)
    # defaults: the recipe the positive control validated (finnex_ml.training.IMAGE_RECIPE)
    batch_size: int = Field(
        default=IMAGE_RECIPE["batch_size"], description="Images per batch (in patch mode: bags of 256 patches)."
    )
    lr: float | None = Field(
        default=None, description="Learning rate; empty: the model's recipe (finnex_ml.training.image_recipe)."
    )
    weight_decay: float = Field(default=IMAGE_RECIPE["weight_decay"])
    warmup_epochs: float = Field(default=IMAGE_RECIPE["warmup_epochs"])
    patience: int = Field(default=IMAGE_RECIPE["patience"], description="Early stopping on validation loss.")
    seeds: list[int] = Field(default=[0, 1, 2], description="One ensemble member per seed, averaged at prediction.")
    noise_std: float = Field(
        default=IMAGE_RECIPE["noise_std"], description="Gaussian noise; flips are never used (they reverse time)."
    )
    mixup_alpha: float = Field(default=IMAGE_RECIPE["mixup_alpha"])
    label_smoothing: float = Field(
        default=IMAGE_RECIPE["label_smoothing"],
        description="Training targets (1 - e) one-hot + e / 3; caps how confident a fit gets before early stopping.",
    )
    loss_weighting: str = Field(
        default=IMAGE_RECIPE["loss_weighting"],
        description="'fixed' (cross-entropy + 0.1 x return loss), 'uncertainty' (learned) or 'softmax'.",
    )
    class_weighted: bool = Field(default=False, description="Weight cross-entropy by inverse train class shares.")
    resume: bool = Field(default=True, description="Continue each member from its last checkpoint if one exists.")
    num_threads: int = Field(
        default=1,
        description="torch CPU threads. 1 leaves the second of 2 cores to the read-ahead thread; on a shared "
        "2-core machine 2 threads ran a step ~25x slower than 1 (OpenMP threads wait on each other).",
    )


def _datasets(ready: CnnReadyStore, cfg: TrainingConfig) -> tuple[H5ArrayDataset, H5ArrayDataset]:
    return (
        set_dataset(ready.set_path("train"), cfg.input_mode, cfg.horizons),
        set_dataset(ready.set_path("val"), cfg.input_mode, cfg.horizons),
    )


def training_asset(model: str) -> dg.AssetsDefinition:
    """The training asset ``{model}_model`` of a registered architecture (``register_model``)."""
    entry = MODEL_REGISTRY[model]
    return _train_asset(f"{entry.name}_model", entry)


def _train_asset(name: str, entry: ModelEntry) -> dg.AssetsDefinition:
    model, title = entry.name, entry.title

    @dg.asset(
        name=name,
        deps=["dataset_splits"],
        group_name="training",
        kinds={"pytorch", "mlflow"},
        description=f"{title}: multi-task (Buy/Sell/Hold + return) seed ensemble trained on dataset_splits.",
    )
    def _asset(
        context: dg.AssetExecutionContext,
        config: TrainingConfig,
        storage: FinnexStorage,
        mlflow_tracking: MlflowTracking,
    ) -> dg.MaterializeResult:
        import mlflow

        from finnex_ml.losses import class_weights_from_labels

        ready = storage.cnn_ready
        train, val = _datasets(ready, config)
        h0 = config.horizons[0]
        weights = class_weights_from_labels(train.target_array(f"label_h{h0}")) if config.class_weighted else None
        spec_file = storage.images.spec_path()
        overrides = {}
        # a layout-aware architecture reads whole images through the stored layout (in patch mode:
        # the layout cells inside each patch); a pixel variant (layout_aware=False, e.g.
        # vit_patches) tokenises the pixels itself
        if entry.layout_aware:
            if not spec_file.exists():
                raise FileNotFoundError(
                    f"{spec_file} is missing: the layout-aware model reads the stored layout "
                    "spec; materialise mega_images first"
                )
            encoder, spec = read_encoder(storage.images.root)  # the stored spec, by the encoder that built it
            if not isinstance(spec, LayoutSpec):
                raise DataInputError(
                    f"{name}: the layout-aware stem reads the tile layout, but the images were built by encoder "
                    f"{encoder.name!r}; materialise mega_images with encoder 'tiles'",
                    file=str(spec_file),
                )
            overrides["layout"] = layout_json(spec)
        cfg = TrainConfig(
            model=model,
            size=config.size,
            input_mode=config.input_mode,
            horizons=tuple(config.horizons),
            class_targets=tuple(f"label_h{h}" for h in config.horizons),
            reg_targets=tuple(f"return_h{h}" for h in config.horizons),
            epochs=config.epochs,
            batch_size=config.batch_size,
            lr=image_recipe(model)["lr"] if config.lr is None else config.lr,
            weight_decay=config.weight_decay,
            warmup_epochs=config.warmup_epochs,
            patience=config.patience,
            seed=config.seeds[0],
            noise_std=config.noise_std,
            mixup_alpha=config.mixup_alpha,
            label_smoothing=config.label_smoothing,
            loss_weighting=config.loss_weighting,
            fixed_weights=IMAGE_RECIPE["fixed_weights"],
            num_threads=config.num_threads,
            model_overrides=overrides,
        )
        ckpt = storage.models.checkpoint_dir(name)
        mlflow.set_tracking_uri(mlflow_tracking.uri())
        with mlflow.start_run(
            experiment_id=mlflow_tracking.experiment_id(),
            run_name=f"{name}-{context.run.run_id[:8]}",
            tags={"dagster_run_id": context.run.run_id, "asset": name},
        ) as run:
            mlflow.log_params(
                {
                    **config.model_dump(),
                    "lr": cfg.lr,  # the recipe's where the config leaves it empty
                    "model": model,
                    "train_rows": len(train),
                    "val_rows": len(val),
                }
            )
            if spec_file.exists():
                mlflow.log_artifact(str(spec_file), artifact_path="layout")
            stats_file = ready.statistics_path()
            if stats_file.exists():
                mlflow.log_artifact(str(stats_file), artifact_path="dataset")

            def on_epoch_end(seed: int, epoch: int, metrics: dict[str, float]) -> None:
                mlflow.log_metrics({f"seed{seed}_{k}": v for k, v in metrics.items()}, step=epoch)
                shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if "loss" in k or "acc" in k)
                context.log.info(f"{name} seed {seed} epoch {epoch}/{config.epochs}: {shown}")

            result = train_ensemble(
                cfg,
                train,
                val,
                seeds=config.seeds,
                checkpoint_dir=ckpt,
                class_weights=weights,
                on_member_epoch_end=on_epoch_end,
                resume=config.resume,
            )
            cm = result.confusion_matrix  # of the averaged prediction, one row per image
            members = result.members
            pred = result.val_probs[:, 0].argmax(-1)
            shares = np.asarray(prediction_diversity(pred)["shares"])
            degenerate = is_degenerate(pred)  # flagged, not interpreted
            cm_doc = {
                "labels": list(CLASS_NAMES),
                "rows": "true",
                "columns": "predicted",
                "ensemble": cm.tolist(),
                "members": [r.confusion_matrix.tolist() for r in members],
            }
            mlflow.log_dict(cm_doc, "confusion_matrix.json")
            val_acc = float(np.trace(cm) / max(cm.sum(), 1))
            majority = float(cm.sum(axis=1).max() / max(cm.sum(), 1))
            mlflow.log_metrics(
                {
                    "val_image_accuracy": val_acc,
                    "val_majority_baseline": majority,
                    "val_max_class_share": float(shares.max()),
                }
            )
            mlflow.set_tag("degenerate", str(degenerate).lower())
            if config.input_mode == "patch":  # one image's bag [1, 256, 3, 32, 32]
                sample = as_bags(val)[0]["x"].permute(0, 3, 1, 2)[None].float()
            else:
                sample = val[0]["x"].permute(2, 0, 1)[None].float()  # stored NHWC, models take NCHW
            model_uri = _log_model(result.model.cpu().eval(), sample)
            mlflow.log_artifact(str(result.checkpoint_path), artifact_path="checkpoint")
            run_id = run.info.run_id
        if degenerate:
            context.log.warning(
                f"{name} predicts one class on {shares.max():.0%} of validation dates: degenerate, "
                "not to be interpreted"
            )
        return dg.MaterializeResult(
            metadata={
                "mlflow_run_id": run_id,
                "mlflow_tracking_uri": mlflow_tracking.uri(),
                "mlflow_model_uri": model_uri,
                "checkpoint": dg.MetadataValue.path(str(result.checkpoint_path)),
                "seeds": dg.MetadataValue.json(list(config.seeds)),
                "best_epochs": dg.MetadataValue.json([r.best_epoch for r in members]),
                "epochs_run": dg.MetadataValue.json([r.epochs_run for r in members]),
                "val_accuracy": val_acc,
                "val_majority_baseline": majority,
                "val_class_shares": dg.MetadataValue.json({c: round(float(v), 4) for c, v in zip(CLASS_NAMES, shares)}),
                "degenerate": degenerate,
                "confusion_matrix": dg.MetadataValue.md(_cm_markdown(cm)),
                "note": "validation only; honest test-set evaluation against baselines is model_evaluation's job",
            }
        )

    return _asset


# what loading the pickled model needs (MLflow adds itself). Named, not inferred: MLflow infers
# them by loading the model in a fresh Python process, 5-25 s per training asset on 2 cores
# against 0.3 s (measured 2026-12-03); the inferred list was these four plus pandas.
MODEL_REQUIREMENTS = ("cloudpickle", "finnex", "numpy", "torch")


def _log_model(model, sample) -> str:
    from importlib.metadata import version

    import mlflow
    import torch
    from mlflow.models import infer_signature

    with torch.no_grad():
        out = model(sample)
    signature = infer_signature(sample.numpy(), out["classification"].numpy())
    # pickle, not MLflow's default pt2 export: the model returns a dict (with attention maps),
    # which torch.export cannot trace reliably; the signature still documents the I/O.
    # A local version label (torch's "+cpu") is dropped, as MLflow's inference does, so pip can install it.
    requirements = [f"{p}=={version(p).split('+')[0]}" for p in MODEL_REQUIREMENTS]
    info = mlflow.pytorch.log_model(
        model, name="model", signature=signature, serialization_format="pickle", pip_requirements=requirements
    )
    return info.model_uri


def _cm_markdown(cm: np.ndarray) -> str:
    head = "| true \\ predicted | " + " | ".join(CLASS_NAMES) + " |\n|---|---|---|---|\n"
    return head + "".join(
        f"| {CLASS_NAMES[i]} | " + " | ".join(str(int(v)) for v in row) + " |\n" for i, row in enumerate(cm)
    )


# one training asset per registered architecture (finnex_ml.models.register_model)
TRAINING_ASSETS: list[dg.AssetsDefinition] = [training_asset(name) for name in MODEL_REGISTRY]
