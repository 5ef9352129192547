"""The seeded, resumable training loop and checkpoints (see the package docstring)."""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from finnex_ml import progress
from finnex_ml.errors import ConfigError
from finnex_ml.losses import MultiTaskLoss
from finnex_ml.models import (
    CLASS_NAMES,
    MIL_DIM,
    NUM_CLASSES,
    PATCH_SIZE,
    SparseCellReadout,
    create_model,
    model_from_spec,
    model_spec,
)
from finnex_ml.paths import atomic_path
from finnex_ml.training.config import (
    _RESUME_FREE_FIELDS,
    TrainConfig,
    TrainResult,
)
from finnex_ml.training.data import (
    BatchBuffers,
    PooledBatches,
    _ThreadPrefetcher,
    accepts_batch_buffer,
    as_bags,
    cell_dataset,
    derive_seed,
    make_loader,
)

CHECKPOINT_FORMAT = 1
BEST_NAME = "best.pt"
LAST_NAME = "last.pt"

EpochCallback = Callable[[int, dict[str, float]], Any]


# ============================================================================================
# Helpers
# ============================================================================================


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Counts ``[true, predicted]`` over ``0..num_classes-1`` (scikit-learn when installed)."""
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    try:
        from sklearn.metrics import confusion_matrix as sk_cm
    except ImportError:  # pragma: no cover - scikit-learn is a dependency
        return np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(num_classes, num_classes)
    return sk_cm(y_true, y_pred, labels=list(range(num_classes)))


def _balanced_accuracy(cm: np.ndarray) -> float:
    support = cm.sum(axis=1)
    recalls = np.diag(cm)[support > 0] / support[support > 0]
    return float(recalls.mean()) if recalls.size else float("nan")


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    # On a shared 2-core machine 2 intra-op threads ran this trainer ~10× slower than 1 (OpenMP
    # threads wait on each other when another process holds a core), so callers may pin it.
    prev = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if n is not None:
            torch.set_num_threads(prev)


@contextmanager
def _determinism(enabled: bool, device: torch.device) -> Iterator[None]:
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_bench, prev_det = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    if enabled:
        if device.type == "cuda":
            # only effective before cuBLAS starts; warn-only because some CUDA kernels
            # (e.g. index_add backward) have no deterministic version
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = prev_bench, prev_det


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _lr_lambda(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps  # linear warm-up, first step at lr/warmup
        span = max(1, total_steps - warmup_steps)
        t = min(1.0, (step - warmup_steps) / span)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    return f


def _sparse_modules(model: nn.Module) -> list[SparseCellReadout]:
    return [m for m in model.modules() if isinstance(m, SparseCellReadout)]


def _param_groups(model: nn.Module, criterion: nn.Module, weight_decay: float, lr: float) -> list[dict[str, Any]]:
    """Decay matrices and conv kernels only: not biases, norms, embeddings or the loss weights
    (decaying the log-variances would pull every task weight towards 1). A sparse cell readout
    gets its own group (its own ``lr``, no decay: its L1 proximal step is its penalty),
    marked ``sparse`` so the training step can apply that proximal step."""
    decay, no_decay = [], []
    sparse = _sparse_modules(model)
    skip = {id(m.weight) for m in sparse}
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in skip:
            continue
        if p.ndim < 2 or "embed" in name or "cls_token" in name or "pos_unknown" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    loss_params = [p for p in criterion.parameters() if p.requires_grad]
    if loss_params:
        groups.append({"params": loss_params, "weight_decay": 0.0})
    for m in sparse:
        groups.append({"params": [m.weight], "weight_decay": 0.0, "lr": m.lr, "sparse": True})
    return groups


def _save(obj: dict[str, Any], path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _load(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)


def load_checkpoint_model(path: str | os.PathLike[str], map_location: Any = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved in ``best.pt`` / ``last.pt``; returns ``(model in eval mode, checkpoint)``.

    The checkpoint also holds ``reg_stats`` (to undo the return standardisation),
    ``class_weights``, ``config`` (the TrainConfig as a dict), ``epoch`` and ``metrics``.
    """
    ckpt = _load(Path(path), map_location)
    model = model_from_spec(ckpt["model_spec"])
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


class _Augment:
    """Gaussian noise + mixup from generators seeded by ``(seed, epoch)``."""

    def __init__(self, noise_std: float, mixup_alpha: float, seed: int, epoch: int, device: torch.device) -> None:
        self.noise_std, self.alpha = float(noise_std), float(mixup_alpha)
        self.gen = torch.Generator(device=device).manual_seed(derive_seed(seed, epoch, 1))
        self.rng = np.random.default_rng(derive_seed(seed, epoch, 2))

    def __call__(
        self, x: torch.Tensor, y_soft: torch.Tensor, y_reg: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if self.noise_std > 0:
            x = x + self.noise_std * torch.randn(x.shape, generator=self.gen, device=x.device, dtype=x.dtype)
        b = x.shape[0]
        if self.alpha > 0 and b > 1:
            lam = torch.from_numpy(self.rng.beta(self.alpha, self.alpha, size=b).astype(np.float32)).to(x.device)
            perm = torch.from_numpy(self.rng.permutation(b)).to(x.device)
            lx = lam.view(-1, *([1] * (x.ndim - 1)))  # images [b, 3, H, W] or bags [b, N, 3, 32, 32]
            x = lx * x + (1 - lx) * x[perm]
            y_soft = lam.view(-1, 1, 1) * y_soft + (1 - lam).view(-1, 1, 1) * y_soft[perm]
            if y_reg is not None:
                y_reg = lam.view(-1, 1) * y_reg + (1 - lam).view(-1, 1) * y_reg[perm]
        return x, y_soft, y_reg


# ============================================================================================
# Trainer
# ============================================================================================


class _Run:
    """State of one training run (kept in one object so train_model stays readable)."""

    def __init__(
        self,
        cfg: TrainConfig,
        train_ds: Dataset,
        val_ds: Dataset,
        checkpoint_dir: Path,
        class_weights: Sequence[float] | torch.Tensor | None,
        model: nn.Module | None,
    ) -> None:
        self.cfg = cfg
        if cfg.input_mode == "patch":
            # multiple-instance learning: a sample is the bag of one image's patches
            train_ds, val_ds = as_bags(train_ds), as_bags(val_ds)
        self.train_ds, self.val_ds = train_ds, val_ds
        self.ckpt_dir = Path(checkpoint_dir)
        dev = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(dev)
        self.amp_dtype: torch.dtype | None = None
        if cfg.amp and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self._validate_data()
        self.reg_mean, self.reg_std = self._fit_reg_stats()
        self.class_weights = (
            torch.ones(NUM_CLASSES)
            if class_weights is None
            else torch.as_tensor(class_weights, dtype=torch.float32).reshape(-1)
        )
        if self.class_weights.numel() != NUM_CLASSES:
            raise ConfigError(f"class_weights needs {NUM_CLASSES} values, got {self.class_weights.numel()}")

        torch.manual_seed(cfg.seed)
        overrides = dict(cfg.model_overrides)
        if cfg.input_mode == "patch":
            overrides.setdefault("mil_dim", MIL_DIM)  # the bag pooling (recorded in the model spec)
        self.model = (
            model if model is not None else create_model(cfg.model, cfg.size, horizons=cfg.horizons, **overrides)
        ).to(self.device)
        if cfg.input_mode == "patch" and not getattr(getattr(self.model, "config", None), "mil_dim", 0):
            raise ConfigError(
                "input_mode='patch' trains on bags of patches: the model needs bag pooling "
                "(config mil_dim > 0, e.g. model_overrides={'mil_dim': 128})"
            )
        self.criterion = MultiTaskLoss(
            len(cfg.horizons),
            self.class_weights,
            regression=cfg.reg_targets is not None,
            regression_loss=cfg.regression_loss,
            huber_delta=cfg.huber_delta,
            weighting=cfg.loss_weighting,
            fixed_weights=cfg.fixed_weights,
        ).to(self.device)
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.model, self.criterion, cfg.weight_decay, cfg.lr), lr=cfg.lr
        )
        self.sparse = _sparse_modules(self.model)
        self.from_cells = self._use_cells()
        train_ds, val_ds = self.train_ds, self.val_ds

        run_len = cfg.effective_run_length
        self.train_loader = make_loader(
            train_ds,
            cfg.batch_size,
            shuffle=True,
            seed=cfg.seed,
            run_length=run_len,
            block_size=cfg.effective_shuffle_block,
            window=cfg.shuffle_window,
            num_workers=cfg.num_workers,
            pin_memory=self.device.type == "cuda",
            # a last batch of a few samples gives BatchNorm noisy statistics;
            # the shuffle drops different samples each epoch
            drop_last=len(train_ds) > cfg.batch_size,
        )
        self.val_loader = make_loader(
            val_ds,
            cfg.eval_batch_size or 2 * cfg.batch_size,
            shuffle=False,
            num_workers=cfg.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        # reused input buffers (CPU, in-process reads): no fresh 100 MB batch to page in every step
        self.buffers = BatchBuffers(
            cfg.prefetch + 2 if cfg.prefetch > 0 else 1, max(cfg.batch_size, cfg.eval_batch_size or 2 * cfg.batch_size)
        )
        self.steps_per_epoch = len(self.train_loader)
        total = cfg.epochs * self.steps_per_epoch
        warm = int(round(cfg.warmup_epochs * self.steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(total, warm, cfg.min_lr_ratio))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        self.epoch = 0  # completed epochs
        self.best_metric = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.history: list[dict[str, float]] = []
        self.stopped_early = False

    # --- data checks ------------------------------------------------------------------------
    def _validate_data(self) -> None:
        cfg = self.cfg
        for label, ds in (("train", self.train_ds), ("val", self.val_ds)):
            if len(ds) == 0:
                raise ConfigError(f"{label} dataset is empty")
            shape = tuple(ds.sample_shape)
            if cfg.input_mode == "patch":  # bags: [N, 32, 32, 3]
                if shape[1:] != (PATCH_SIZE, PATCH_SIZE, 3):
                    raise ConfigError(f"{label}: input_mode='patch' needs 32×32×3 patches, got {shape[1:]}")
            elif len(shape) != 3 or shape[2] != 3:
                raise ConfigError(f"{label}: samples must be [H, W, 3] (the stores' layout), got {shape}")
            if cfg.input_mode == "image" and shape[:2] == (PATCH_SIZE, PATCH_SIZE):
                raise ConfigError(f"{label}: 32×32 samples with input_mode='image'; use input_mode='patch'")
            needed = list(cfg.class_targets) + list(cfg.reg_targets or ())
            missing = [n for n in needed if n not in ds.target_names]
            if missing:
                raise ConfigError(f"{label} dataset lacks targets {missing} (has {list(ds.target_names)})")
            for name in cfg.class_targets:
                y = ds.target_array(name)
                if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
                    raise ConfigError(
                        f"{label}: {name!r} must hold class ids 0..{NUM_CLASSES - 1} "
                        f"(Sell, Hold, Buy), got {y.min()}..{y.max()}"
                    )
            for name in cfg.reg_targets or ():
                y = ds.target_array(name)
                if not np.all(np.isfinite(y)):
                    raise ConfigError(
                        f"{label}: {name!r} has {int((~np.isfinite(y)).sum())} non-finite values; "
                        "drop rows without a realised return"
                    )

    def _use_cells(self) -> bool:
        """Swap the datasets for their cells (:class:`CellDataset`) when that is the same training:
        a layout-aware model whose only input augmentation is mixup (linear, like the cells' means;
        pixel noise is not: its cells would be another draw), within ``cell_cache_mb``."""
        cfg, stem = self.cfg, getattr(self.model, "cell_stem", None)
        if stem is None or cfg.input_mode != "image" or cfg.noise_std > 0:
            return False
        need = (len(self.train_ds) + len(self.val_ds)) * stem.n_features * stem.sessions * 4
        if need > cfg.cell_cache_mb * 2**20:
            return False
        self.train_ds, self.val_ds = (cell_dataset(ds, stem, self.device) for ds in (self.train_ds, self.val_ds))
        return True

    def _forward(self, x: torch.Tensor, pos: torch.Tensor | None) -> dict[str, Any]:
        with self._autocast():
            return self.model.forward_cells(x) if self.from_cells else self.model(x, patch_pos=pos)

    def _fit_reg_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        names = self.cfg.reg_targets or ()
        if not names or not self.cfg.standardize_regression:
            return torch.zeros(len(names)), torch.ones(len(names))
        ys = [self.train_ds.target_array(n).astype(np.float64).reshape(-1) for n in names]
        mean = torch.tensor([y.mean() for y in ys], dtype=torch.float32)
        std = torch.tensor([max(y.std(), 1e-12) for y in ys], dtype=torch.float32)
        return mean, std

    # --- batches ----------------------------------------------------------------------------
    def _unpack(
        self, batch: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        nb = self.device.type == "cuda"
        # [b, H, W, 3] -> [b, 3, H, W] (bags: [b, N, 32, 32, 3] -> [b, N, 3, 32, 32]): a view, no copy
        x = batch["x"].to(self.device, non_blocking=nb)
        if x.ndim == 4:
            x = x.permute(0, 3, 1, 2)
        elif x.ndim == 5:
            x = x.permute(0, 1, 4, 2, 3)  # (cells [b, F, L] stay as they are)
        y_cls = torch.stack([batch[n].reshape(-1) for n in self.cfg.class_targets], dim=1).to(self.device)
        y_reg = None
        if self.cfg.reg_targets is not None:
            y_reg = torch.stack([batch[n].reshape(-1).float() for n in self.cfg.reg_targets], dim=1).to(self.device)
            y_reg = (y_reg - self.reg_mean.to(self.device)) / self.reg_std.to(self.device)
        pos = batch.get("patch_pos") if self.cfg.use_patch_positions else None
        if pos is not None:
            pos = pos.to(self.device)
        return x, y_cls, y_reg, pos

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def _iterate(self, loader: DataLoader) -> Iterator[Any]:
        if self.cfg.num_workers == 0 and self.device.type == "cpu" and accepts_batch_buffer(loader.dataset):
            # the loader's own batches (its sampler, the dataset's __getitems__), read into reused buffers
            return iter(PooledBatches(loader.dataset, loader.batch_sampler, self.buffers, self.cfg.prefetch))
        if self.cfg.num_workers == 0 and self.cfg.prefetch > 0:
            return iter(_ThreadPrefetcher(loader, self.cfg.prefetch))
        return iter(loader)

    # --- one epoch --------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, float]:
        cfg, epoch = self.cfg, self.epoch
        self.train_loader.batch_sampler.set_epoch(epoch)
        aug = _Augment(cfg.noise_std, cfg.mixup_alpha, cfg.seed, epoch, self.device)
        self.model.train()
        self.criterion.train()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        # summed on the device: a float() per step would synchronise a GPU every step
        sums = {k: torch.zeros((), device=self.device) for k in ("loss", "cls_loss", "reg_loss", "unweighted")}
        n_seen, wait = 0, 0.0
        t0, cpu0 = time.perf_counter(), time.process_time()
        it = self._iterate(self.train_loader)
        while True:
            tw = time.perf_counter()
            batch = next(it, None)
            wait += time.perf_counter() - tw
            if batch is None:
                break
            x, y_cls, y_reg, pos = self._unpack(batch)
            y_soft = torch.nn.functional.one_hot(y_cls, NUM_CLASSES).float()
            if cfg.label_smoothing > 0:
                y_soft = y_soft * (1.0 - cfg.label_smoothing) + cfg.label_smoothing / NUM_CLASSES
            x, y_soft, y_reg = aug(x, y_soft, y_reg)
            out = self._forward(x, pos)
            out = {k: (v.float() if torch.is_tensor(v) else v) for k, v in out.items()}
            losses = self.criterion(out, y_soft, y_reg)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(losses["loss"]).backward()
            if cfg.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            # L1 proximal step at the lr just used (groups looked up now: a resume replaces them)
            for module, group in zip(self.sparse, [g for g in self.optimizer.param_groups if g.get("sparse")]):
                module.prox_(group["lr"])
            self.scheduler.step()
            b = x.shape[0]
            n_seen += b
            for k in sums:
                sums[k] += losses[k].detach() * b
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        metrics = {f"train_{k}": float(v) / max(n_seen, 1) for k, v in sums.items()}
        weights = self.criterion.task_weights().cpu().tolist()
        for name, w in zip(self.criterion.task_names(cfg.horizons), weights):
            metrics[f"weight_{name}"] = float(w)
        metrics.update(
            lr=float(self.optimizer.param_groups[0]["lr"]),
            epoch_seconds=elapsed,
            samples_per_s=n_seen / elapsed if elapsed > 0 else float("nan"),
            data_wait_share=wait / elapsed if elapsed > 0 else float("nan"),
            # CPU seconds of the whole process (all threads, read-ahead included): the epoch's cost,
            # less moved than wall time by what else the machine runs
            cpu_seconds=cpu,
        )
        return metrics

    @torch.inference_mode()  # no autograd bookkeeping at all (no_grad still tracks versions)
    def evaluate(self) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Validation metrics and predictions (probabilities, classes, returns in original units)."""
        cfg = self.cfg
        self.model.eval()
        self.criterion.eval()
        logits, regs, ycls, yreg, rows = [], [], [], [], []
        for batch in self._iterate(self.val_loader):
            x, y_cls, y_reg, pos = self._unpack(batch)
            out = self._forward(x, pos)
            logits.append(out["classification_by_horizon"].float())
            regs.append(out["regression_by_horizon"].float())
            ycls.append(y_cls)
            if y_reg is not None:
                yreg.append(y_reg)
            rows.append(batch["row"])
        lg, rg, yc = torch.cat(logits), torch.cat(regs), torch.cat(ycls)
        yr = torch.cat(yreg) if yreg else None
        losses = self.criterion({"classification_by_horizon": lg, "regression_by_horizon": rg}, yc, yr)
        metrics = {
            "val_loss": float(losses["unweighted"]),
            "val_cls_loss": float(losses["cls_loss"]),
            "val_reg_loss": float(losses["reg_loss"]),
            "val_weighted_loss": float(losses["loss"]),
        }
        probs = torch.softmax(lg, dim=-1).cpu().numpy()
        pred = probs.argmax(-1)
        y_true = yc.cpu().numpy()
        preds: dict[str, np.ndarray] = {
            "row": torch.cat(rows).numpy(),
            "probs": probs,
            "pred": pred,
            "class_target": y_true,
        }
        if yr is not None:
            mean, std = self.reg_mean.numpy(), self.reg_std.numpy()
            preds["reg_pred"] = rg.cpu().numpy() * std + mean
            preds["reg_target"] = yr.cpu().numpy() * std + mean
        for j, h in enumerate(cfg.horizons):
            sfx = "" if j == 0 else f"_h{h}"
            cm = confusion_matrix(y_true[:, j], pred[:, j])
            metrics[f"val_accuracy{sfx}"] = float(np.trace(cm) / max(cm.sum(), 1))
            metrics[f"val_balanced_accuracy{sfx}"] = _balanced_accuracy(cm)
            if yr is not None:
                err = preds["reg_pred"][:, j] - preds["reg_target"][:, j]
                metrics[f"val_mae{sfx}"] = float(np.abs(err).mean())
                metrics[f"val_directional_accuracy{sfx}"] = float(
                    (np.sign(preds["reg_pred"][:, j]) == np.sign(preds["reg_target"][:, j])).mean()
                )
        return metrics, preds

    # --- checkpoints ------------------------------------------------------------------------
    def state(self, metrics: dict[str, float]) -> dict[str, Any]:
        try:
            spec = model_spec(self.model)
        except TypeError:
            spec = None  # a custom model: the checkpoint still resumes, load_checkpoint_model cannot rebuild it
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "model_spec": spec,
            "criterion": self.criterion.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": _rng_state(),
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "stopped_early": self.stopped_early,
            "history": self.history,
            "metrics": metrics,
            "config": self.cfg.to_dict(),
            "reg_stats": {"mean": self.reg_mean.tolist(), "std": self.reg_std.tolist()},
            "class_weights": self.class_weights.tolist(),
            "class_names": list(CLASS_NAMES),
            "horizons": list(self.cfg.horizons),
        }

    def restore(self, path: Path) -> None:
        ckpt = _load(path, map_location=self.device)
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"{path}: checkpoint format {ckpt.get('format')} is not {CHECKPOINT_FORMAT}")
        saved, now = ckpt["config"], self.cfg.to_dict()
        # a field added after the checkpoint was written counts at its default (what that run used)
        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
        diff = sorted(
            k for k in now if k not in _RESUME_FREE_FIELDS and _norm(saved.get(k, defaults.get(k))) != _norm(now[k])
        )
        if diff:
            raise ConfigError(f"{path}: cannot resume, config differs in {diff}")
        if not torch.allclose(torch.tensor(ckpt["class_weights"]), self.class_weights):
            raise ConfigError(f"{path}: cannot resume with different class weights")
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:  # e.g. saved before a layer was added to the model's definition
            first = str(exc).strip().splitlines()[0]
            raise ConfigError(
                f"{path}: cannot resume, the checkpoint's weights do not fit the current model ({first}); "
                f"it was saved by another version of the model: delete {path.parent} or train with resume=False"
            ) from exc
        self.criterion.load_state_dict(ckpt["criterion"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.reg_mean = torch.tensor(ckpt["reg_stats"]["mean"], dtype=torch.float32)
        self.reg_std = torch.tensor(ckpt["reg_stats"]["std"], dtype=torch.float32)
        self.epoch = int(ckpt["epoch"])
        self.best_metric = float(ckpt["best_metric"])
        self.best_epoch = int(ckpt["best_epoch"])
        self.bad_epochs = int(ckpt["bad_epochs"])
        self.stopped_early = bool(ckpt["stopped_early"])
        self.history = list(ckpt["history"])
        _set_rng_state(
            {
                k: (v.cpu() if torch.is_tensor(v) else [t.cpu() for t in v] if k == "cuda" else v)
                for k, v in ckpt["rng"].items()
            }
        )


def _norm(v: Any) -> Any:
    """Compare configs across a save/load round trip (tuples come back as lists)."""
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    return v


def train_model(
    config: TrainConfig,
    train_data: Dataset,
    val_data: Dataset,
    *,
    checkpoint_dir: str | os.PathLike[str],
    class_weights: Sequence[float] | torch.Tensor | None = None,
    on_epoch_end: EpochCallback | None = None,
    resume: bool | str | os.PathLike[str] = False,
    model: nn.Module | None = None,
) -> TrainResult:
    """Train with early stopping; return the best model, history and validation predictions.

    * ``train_data`` / ``val_data``: :class:`H5ArrayDataset` or :class:`ArrayDataset` whose target
      names include ``config.class_targets`` (and ``config.reg_targets``).
    * ``class_weights``: 3 values (Sell, Hold, Buy) fitted on the training labels by the caller
      (``finnex_ml.losses.class_weights_from_labels``); None = unweighted.
    * ``checkpoint_dir``: receives ``best.pt`` (best ``config.monitor``) and ``last.pt`` (every
      epoch, for resuming), each written atomically.
    * ``on_epoch_end(epoch, metrics)``: called after each epoch (1-based) once both checkpoints
      are on disk; an exception from it stops training and propagates (``last.pt`` is already
      saved, so the run can be resumed).
    * ``resume``: True resumes from ``checkpoint_dir/last.pt`` if it exists; a path resumes from
      that file. The config must match the saved one (except num_workers, prefetch, device,
      num_threads; bit-for-bit continuation on CPU also needs the same num_threads).
    * ``model``: a prebuilt multi-task model instead of ``create_model(config.model, config.size)``.
    """
    cfg = config
    ckpt_dir = Path(checkpoint_dir)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with _determinism(cfg.deterministic, device), _threads(cfg.num_threads):
        run = _Run(cfg, train_data, val_data, ckpt_dir, class_weights, model)
        resume_path = ckpt_dir / LAST_NAME if resume is True else Path(resume) if resume else None
        if resume_path is not None and resume_path.exists():
            run.restore(resume_path)
        elif resume_path is not None and resume is not True:
            raise ConfigError(f"checkpoint to resume from not found: {resume_path}")
        best_path, last_path = ckpt_dir / BEST_NAME, ckpt_dir / LAST_NAME

        for _ in progress.track(range(run.epoch, cfg.epochs), f"{cfg.model} epochs", unit="epochs"):
            if run.stopped_early:  # resumed after early stopping, or stopped by patience below
                break
            train_metrics = run.train_epoch()
            val_metrics, _ = run.evaluate()
            run.epoch += 1
            metrics = {"epoch": float(run.epoch), **train_metrics, **val_metrics}
            score = val_metrics[cfg.monitor]
            improved = math.isfinite(score) and score < run.best_metric - cfg.min_delta
            if improved:
                run.best_metric, run.best_epoch, run.bad_epochs = score, run.epoch, 0
            else:
                run.bad_epochs += 1
            if cfg.patience is not None and run.bad_epochs >= cfg.patience:
                run.stopped_early = True
            metrics["best_epoch"] = float(run.best_epoch)
            run.history.append(metrics)
            # RNG and all states are captured here, after the epoch and its validation: a resumed
            # run restarts from exactly this point
            if improved:
                _save(run.state(metrics), best_path)
            _save(run.state(metrics), last_path)
            if on_epoch_end is not None:
                on_epoch_end(run.epoch, dict(metrics))

        if run.best_epoch == 0:  # every validation score was NaN/inf: the run diverged
            raise FloatingPointError(f"validation {cfg.monitor} was never finite; see {last_path} and the history")
        best = _load(best_path, map_location=run.device)
        run.model.load_state_dict(best["model"])
        run.criterion.load_state_dict(best["criterion"])
        val_metrics, preds = run.evaluate()

    cms = {h: confusion_matrix(preds["class_target"][:, j], preds["pred"][:, j]) for j, h in enumerate(cfg.horizons)}
    best_metrics = dict(best.get("metrics", {}))
    best_metrics.update(val_metrics)
    return TrainResult(
        model=run.model,
        history=run.history,
        best_epoch=run.best_epoch,
        best_metrics=best_metrics,
        checkpoint_path=best_path,
        last_checkpoint_path=last_path,
        epochs_run=run.epoch,
        stopped_early=run.stopped_early,
        val_predictions=preds,
        confusion_matrix=cms[cfg.horizons[0]],
        confusion_matrices=cms,
        reg_stats={"mean": run.reg_mean.tolist(), "std": run.reg_std.tolist()},
        class_weights=run.class_weights.tolist(),
        device=str(run.device),
        config=cfg.to_dict(),
    )
