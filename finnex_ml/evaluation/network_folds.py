"""Networks retrained per walk-forward fold, their test predictions pooled and cached.

The tabular models are refitted per fold in ``walkforward.pooled_tabular``; this module gives
the networks the same treatment, so model and baselines are compared on the same pooled dates:

* each fold's training rows (already purged by h before the test block) are split again into an
  *inner* fit block and an inner validation block (the last ``val_fraction`` of the rows), with
  ``purge`` rows dropped between them so no h-session label of a fitted date reaches into the
  inner validation block;
* a seed ensemble (``finnex_ml.training.train_ensemble``, the model's own training config, the
  budget's epochs and seeds) is fitted on the inner fit block and early-stopped / best-epoch
  selected on the inner validation block, never on the scored block;
* it predicts the fold's test block; all folds' predictions are concatenated in date order.

Each fold's predictions are cached on disk under a key of (model, fold, config hash, data hash):
a re-run of the evaluation over the same data and budget loads them instead of retraining.
The data hash covers the image layout (spec hash), the fold's dates, their labels and returns and
each image file's size and modification time, so re-materialised images also invalidate it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from finnex_ml import progress
from finnex_ml.evaluation.predict import LoadedModel, load_model, predict_set
from finnex_ml.evaluation.walkforward import WalkForwardFold

__all__ = ["PooledNetwork", "fold_data_hash", "inner_split", "pooled_networks", "train_config_hash"]

CACHE_FORMAT = 1
WriteSet = Callable[[Path, str, Sequence[date]], Path]  # (path, set name, dates) -> the written set file


def inner_split(train_rows: np.ndarray, purge: int, val_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """(inner fit rows, inner validation rows) of a fold's training rows: the validation block is
    the last ``val_fraction`` of them, and ``purge`` rows before it are fitted on by neither."""
    rows = np.asarray(train_rows)
    n_val = max(1, round(rows.size * val_fraction))
    fit_end = rows.size - n_val - int(purge)
    if fit_end < 1:
        raise ValueError(
            f"{rows.size} training rows leave nothing to fit after a {n_val}-row inner block and a purge of {purge}"
        )
    return rows[:fit_end], rows[rows.size - n_val :]


def train_config_hash(
    config: Mapping[str, Any], epochs: int, seeds: Sequence[int], val_fraction: float, purge: int
) -> str:
    """What the fold training does: the model's training config (its own seeds and epochs
    replaced by the evaluation's) and the inner split."""
    cfg = {k: v for k, v in config.items() if k not in ("seeds", "epochs", "seed")}
    doc = {
        "config": cfg,
        "epochs": int(epochs),
        "seeds": [int(s) for s in seeds],
        "val_fraction": val_fraction,
        "purge": int(purge),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def fold_data_hash(
    spec_hash: str, dates: Sequence[date], classes: np.ndarray, returns: np.ndarray, image_files: Sequence[Path]
) -> str:
    """The data a fold is trained and scored on (module docstring)."""
    h = hashlib.sha256()
    h.update(spec_hash.encode())
    h.update(",".join(d.isoformat() for d in dates).encode())
    h.update(np.ascontiguousarray(classes, dtype=np.int64).tobytes())
    h.update(np.nan_to_num(np.ascontiguousarray(returns, dtype=np.float64), nan=-999.0).tobytes())
    for p in image_files:
        st = p.stat() if p.exists() else None
        h.update(f"{p.name}:{st.st_size if st else -1}:{st.st_mtime_ns if st else -1};".encode())
    return h.hexdigest()


@dataclass
class PooledNetwork:
    name: str
    horizons: list[int]
    rows: np.ndarray  # row numbers (into the dates given) of the pooled series, in date order
    probs: np.ndarray  # [len(rows), H, 3]
    returns: np.ndarray  # [len(rows), H] predicted returns (original units)
    folds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def trained_folds(self) -> int:
        return sum(not f["cached"] for f in self.folds)


def _train_fold(lm: LoadedModel, fit_file: Path, val_file: Path, ckpt_dir: Path, epochs: int, seeds: Sequence[int]):
    """A seed ensemble of the model's own config, early-stopped on ``val_file``."""
    from finnex_ml.datasets_io import set_dataset
    from finnex_ml.losses import class_weights_from_labels
    from finnex_ml.training import TrainConfig, ensemble

    cfg = dict(lm.config)
    cfg.pop("seeds", None)
    # keep the model's patience: early stopping on the inner block is the point
    cfg.update(epochs=int(epochs), warmup_epochs=min(float(cfg.get("warmup_epochs", 0)), max(int(epochs) - 1, 0)))
    tc = TrainConfig(**cfg)
    train = set_dataset(fit_file, tc.input_mode, tc.horizons)
    val = set_dataset(val_file, tc.input_mode, tc.horizons)
    weights = class_weights_from_labels(train.target_array(f"label_h{tc.horizons[0]}"))
    if ckpt_dir.exists():  # a fold interrupted earlier: its partial checkpoints are not this key's result
        shutil.rmtree(ckpt_dir)
    res = ensemble.train_ensemble(
        tc, train, val, seeds=seeds, checkpoint_dir=ckpt_dir, class_weights=weights, resume=False
    )
    members = [
        {"seed": int(s), "best_epoch": m.best_epoch, "epochs_run": m.epochs_run} for s, m in zip(seeds, res.members)
    ]
    return load_model(res.checkpoint_path), members


def pooled_networks(
    models: Mapping[str, LoadedModel],
    dates: Sequence[date],
    folds: Sequence[WalkForwardFold],
    *,
    write_set: WriteSet,
    data_hashes: Sequence[str],
    cache_dir: Path,
    epochs: int,
    seeds: Sequence[int],
    purge: int,
    val_fraction: float = 0.2,
    log: Callable[[str], None] | None = None,
) -> dict[str, PooledNetwork]:
    """Every model retrained per fold and scored on the fold's test rows (module docstring).
    ``data_hashes[i]`` is :func:`fold_data_hash` of fold i; ``write_set`` writes a set file of
    given dates (images and labels) for training and prediction."""
    d = list(dates)
    out: dict[str, PooledNetwork] = {}
    for name, lm in models.items():
        cfg_hash = train_config_hash(lm.config, epochs, seeds, val_fraction, purge)
        rows, probs, rets, meta = [], [], [], []
        for f, dhash in progress.track(
            list(zip(folds, data_hashes)), f"walk-forward folds ({name})", unit="folds", log=log
        ):
            fit, val = inner_split(f.train, purge, val_fraction)
            key = hashlib.sha256(f"{CACHE_FORMAT}|{name}|{f.label}|{cfg_hash}|{dhash}".encode()).hexdigest()
            fdir = Path(cache_dir) / name / f"fold{f.index}_{key[:16]}"
            cached = (fdir / "predictions.npz").exists() and (fdir / "meta.json").exists()
            if not cached:
                fdir.mkdir(parents=True, exist_ok=True)
                fit_file = write_set(fdir / "fit.h5", f"fold{f.index}_fit", [d[i] for i in fit])
                val_file = write_set(fdir / "inner_val.h5", f"fold{f.index}_inner_val", [d[i] for i in val])
                test_file = write_set(fdir / "test.h5", f"fold{f.index}_test", [d[i] for i in f.test])
                flm, members = _train_fold(lm, fit_file, val_file, fdir / "model", epochs, seeds)
                sp = predict_set(flm, test_file)
                info = {
                    "model": name,
                    "fold": f.index,
                    "label": f.label,
                    "key": key,
                    "fit": [d[int(fit[0])].isoformat(), d[int(fit[-1])].isoformat(), int(fit.size)],
                    "inner_val": [d[int(val[0])].isoformat(), d[int(val[-1])].isoformat(), int(val.size)],
                    "test": [d[int(f.test[0])].isoformat(), d[int(f.test[-1])].isoformat(), int(f.test.size)],
                    "purge": int(purge),
                    "epochs": int(epochs),
                    "seeds": [int(s) for s in seeds],
                    "members": members,
                }
                # predictions first, meta last: meta.json present means the fold is complete
                np.savez(fdir / "predictions.npz", probs=sp.probs, returns=sp.returns, rows=f.test)
                (fdir / "meta.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
            data = np.load(fdir / "predictions.npz")
            info = json.loads((fdir / "meta.json").read_text(encoding="utf-8"))
            if not np.array_equal(data["rows"], f.test):
                raise ValueError(f"{fdir}: cached rows do not match fold {f.label}")
            rows.append(f.test)
            probs.append(data["probs"])
            rets.append(data["returns"])
            meta.append({**info, "cached": cached})
            if log is not None:
                log(
                    f"{name} fold {f.label}: {'loaded from cache' if cached else 'retrained'} "
                    f"(fit {info['fit'][2]}, inner validation {info['inner_val'][2]}, test {info['test'][2]} dates)"
                )
        out[name] = PooledNetwork(
            name,
            list(lm.horizons),
            np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64),
            np.concatenate(probs) if probs else np.zeros((0, len(lm.horizons), 3)),
            np.concatenate(rets) if rets else np.zeros((0, len(lm.horizons))),
            meta,
        )
    return out
