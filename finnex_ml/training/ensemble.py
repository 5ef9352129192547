"""Seed ensembles: one member per seed, averaged into one checkpoint."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from torch.utils.data import Dataset

from finnex_ml.errors import ConfigError
from finnex_ml.models import (
    CLASS_NAMES,
    model_spec,
)
from finnex_ml.training.config import (
    TrainConfig,
    TrainResult,
)
from finnex_ml.training.trainer import (
    BEST_NAME,
    CHECKPOINT_FORMAT,
    _save,
    confusion_matrix,
    train_model,
)


@dataclass
class EnsembleResult:
    model: nn.Module  # SeedEnsemble of the members' best weights
    members: list[TrainResult]
    checkpoint_path: Path  # {checkpoint_dir}/best.pt, loadable by load_checkpoint_model
    val_probs: np.ndarray  # [n_val, H, 3], the members' probabilities averaged
    val_targets: np.ndarray  # [n_val, H]
    confusion_matrix: np.ndarray  # first horizon, of the averaged prediction


def train_ensemble(
    config: TrainConfig,
    train_data: Dataset,
    val_data: Dataset,
    *,
    seeds: Sequence[int],
    checkpoint_dir: str | os.PathLike[str],
    on_member_epoch_end: Callable[[int, int, dict[str, float]], None] | None = None,
    **kwargs: Any,
) -> EnsembleResult:
    """Train one member per seed (``{checkpoint_dir}/seed{s}/``, each resumable and early-stopped
    on ``val_data``) and save their average as ``{checkpoint_dir}/best.pt``.

    Why an ensemble: on a few hundred dates one seed's fit varies a lot; averaging probabilities
    of independently initialised members is the cheapest variance reduction there is."""
    from finnex_ml.models import SeedEnsemble

    if not seeds:
        raise ConfigError("an ensemble needs at least one seed")
    ckpt_dir = Path(checkpoint_dir)
    members: list[TrainResult] = []
    for seed in seeds:
        cb = None if on_member_epoch_end is None else (lambda e, m, s=seed: on_member_epoch_end(s, e, m))
        members.append(
            train_model(
                replace(config, seed=int(seed)),
                train_data,
                val_data,
                checkpoint_dir=ckpt_dir / f"seed{seed}",
                on_epoch_end=cb,
                **kwargs,
            )
        )
    ensemble = SeedEnsemble([r.model.cpu().eval() for r in members]).eval()
    probs = np.mean([r.val_predictions["probs"] for r in members], axis=0)
    targets = members[0].val_predictions["class_target"]
    first = members[0]
    path = ckpt_dir / BEST_NAME
    _save(
        {
            "format": CHECKPOINT_FORMAT,
            "model": ensemble.state_dict(),
            "model_spec": model_spec(ensemble),
            "config": {**first.config, "seeds": [int(s) for s in seeds]},
            "reg_stats": first.reg_stats,
            "class_weights": first.class_weights,
            "class_names": list(CLASS_NAMES),
            "members": [
                {
                    "seed": int(s),
                    "best_epoch": r.best_epoch,
                    "epochs_run": r.epochs_run,
                    "checkpoint": str(r.checkpoint_path),
                }
                for s, r in zip(seeds, members)
            ],
        },
        path,
    )
    return EnsembleResult(
        ensemble, members, path, probs, targets, confusion_matrix(targets[:, 0], probs[:, 0].argmax(-1))
    )
