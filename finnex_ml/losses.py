"""Multi-task loss: class-weighted cross-entropy + Huber/MSE regression, per horizon, combined by
learned homoscedastic uncertainty (default), fixed weights, or the spec's softmax weights (ablation).

Why the spec's softmax-weighted sum collapses
--------------------------------------------
``L = w1*L1 + w2*L2`` with ``w = softmax(a)`` and learnable ``a`` is linear in ``w`` on the simplex,
and ``dL/da_j = w_j * (L_j - L)`` where ``L = sum_i w_i L_i``. Gradient descent therefore lowers
``a_j`` for every task whose loss is above the weighted mean and raises it for the task below it:
the weights run to the vertex of the smallest loss (``w -> (0, 1)``), whatever the tasks' worth.
Nothing in the objective pushes back, because shrinking a task's weight always lowers ``L``.
On this project the scales differ by orders of magnitude (CE ~ 1.1, MSE of raw daily returns
~ 1e-4), so classification is switched off within a few hundred steps; tests/test_training.py
shows it on a toy problem.

Kendall, Gal & Cipolla (2018) learn a log-variance ``s_i`` per task and minimise
``sum_i exp(-s_i) * L_i + s_i``. For fixed ``L_i`` the optimum is ``s_i = log L_i``: every task's
weighted term settles at ``exp(-s_i) L_i = 1``, i.e. the weights rescale the tasks to equal
footing instead of choosing one. Driving a weight to 0 needs ``s_i -> +inf``, which the ``+ s_i``
term penalises linearly, so the weights cannot collapse (they stay at ``1 / L_i``). The weights do
grow when a task's loss goes to 0 (a memorised regression target); early stopping on the
unweighted validation loss (see finnex_ml.training) guards against that.

Cross-entropy with class weights is written for soft targets (mixup) and normalised by the total
weight of the targets, which equals ``F.cross_entropy(weight=..., reduction="mean")`` for hard
labels, so the loss scale is the same with or without mixup.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from finnex_ml.models import NUM_CLASSES

WEIGHTINGS = ("uncertainty", "fixed", "softmax")
REGRESSION_LOSSES = ("huber", "mse")


def class_weights_from_labels(
    labels: Sequence[int] | np.ndarray | torch.Tensor, num_classes: int = NUM_CLASSES
) -> torch.Tensor:
    """Balanced class weights ``n / (k * count_c)`` fitted on (training) labels.

    A class absent from the labels gets the weight of a class seen once (it never appears in
    training anyway; a finite weight keeps the validation loss finite if it appears there).
    """
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).reshape(-1).astype(np.int64)
    if y.size == 0:
        raise ValueError("no labels to fit class weights on")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {y.min()}..{y.max()}")
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    return torch.tensor(y.size / (num_classes * np.maximum(counts, 1.0)), dtype=torch.float32)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Class-weighted CE for probability targets ``[N, C]`` (or integer labels ``[N]``).

    ``sum_n sum_c w_c y_nc (-log p_nc) / sum_n sum_c w_c y_nc``: for one-hot targets this is
    exactly ``F.cross_entropy(logits, labels, weight=w)``.
    """
    if target.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        target = F.one_hot(target.long(), logits.shape[-1]).to(logits.dtype)
    logp = F.log_softmax(logits.float(), dim=-1)
    t = target.float()
    if weight is not None:
        t = t * weight.to(t.device, t.dtype)
    return -(t * logp).sum() / t.sum().clamp_min(1e-12)


class MultiTaskLoss(nn.Module):
    """Classification + regression loss over ``n_horizons`` horizons.

    Tasks are ordered ``[cls_h for each horizon] + [reg_h for each horizon]``. ``weighting``:

    * ``"uncertainty"`` (default): ``sum_i exp(-s_i) L_i + s_i`` with learnable ``s_i``
      (``log_vars``, start at 0 = weight 1); cannot collapse (module docstring);
    * ``"fixed"``: ``cls_weight * sum cls + reg_weight * sum reg``;
    * ``"softmax"``: the spec's ``softmax(a) · L`` — collapses onto the smallest loss; kept only to
      demonstrate that and for ablations.

    ``forward(outputs, class_target, reg_target)`` takes the model's dict
    (``classification_by_horizon [B,H,C]``, ``regression_by_horizon [B,H]``), class targets as
    labels ``[B,H]`` or probabilities ``[B,H,C]``, and regression targets ``[B,H]`` (or None when
    ``regression=False``). It returns ``loss`` (to backpropagate), ``cls_loss`` and ``reg_loss``
    (means over horizons, unweighted), ``unweighted`` (sum of raw task losses: comparable across
    epochs, what validation monitors), ``task_losses`` and ``task_weights`` (detached, ``[T]``).
    """

    def __init__(
        self,
        n_horizons: int = 1,
        class_weights: Sequence[float] | torch.Tensor | None = None,
        *,
        regression: bool = True,
        regression_loss: str = "huber",
        huber_delta: float = 1.0,
        weighting: str = "uncertainty",
        fixed_weights: tuple[float, float] = (1.0, 1.0),
    ) -> None:
        super().__init__()
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if regression_loss not in REGRESSION_LOSSES:
            raise ValueError(f"regression_loss must be one of {REGRESSION_LOSSES}, got {regression_loss!r}")
        if n_horizons < 1:
            raise ValueError("n_horizons must be >= 1")
        self.n_horizons = n_horizons
        self.regression = regression
        self.regression_loss = regression_loss
        self.huber_delta = float(huber_delta)
        self.weighting = weighting
        self.fixed_weights = (float(fixed_weights[0]), float(fixed_weights[1]))
        cw = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32).reshape(-1)
        self.register_buffer("class_weights", cw, persistent=True)
        n_tasks = n_horizons * (2 if regression else 1)
        self.n_tasks = n_tasks
        if weighting == "uncertainty":
            self.log_vars = nn.Parameter(torch.zeros(n_tasks))
        elif weighting == "softmax":
            self.weight_logits = nn.Parameter(torch.ones(n_tasks))  # the spec's init [1.0, 1.0]

    def task_names(self, horizons: Sequence[int] | None = None) -> list[str]:
        hs = list(horizons) if horizons is not None else list(range(1, self.n_horizons + 1))
        names = [f"cls_h{h}" for h in hs]
        return names + ([f"reg_h{h}" for h in hs] if self.regression else [])

    def _reg(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.regression_loss == "huber":
            return F.huber_loss(pred.float(), target.float(), delta=self.huber_delta)
        return F.mse_loss(pred.float(), target.float())

    def task_weights(self) -> torch.Tensor:
        """Current effective weight of each task (``exp(-s)``, softmax or the fixed values)."""
        if self.weighting == "uncertainty":
            return torch.exp(-self.log_vars.detach())
        if self.weighting == "softmax":
            return torch.softmax(self.weight_logits.detach(), dim=0)
        c, r = self.fixed_weights
        return torch.tensor([c] * self.n_horizons + ([r] * self.n_horizons if self.regression else []))

    def forward(
        self, outputs: Mapping[str, Any], class_target: torch.Tensor, reg_target: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        logits = outputs["classification_by_horizon"]
        if logits.ndim != 3 or logits.shape[1] != self.n_horizons:
            raise ValueError(f"expected logits [B, {self.n_horizons}, C], got {tuple(logits.shape)}")
        if class_target.ndim == 1:
            class_target = class_target[:, None]
        losses = [
            soft_cross_entropy(logits[:, h], class_target[:, h], self.class_weights) for h in range(self.n_horizons)
        ]
        if self.regression:
            if reg_target is None:
                raise ValueError("regression targets required (regression=True)")
            reg = outputs["regression_by_horizon"]
            if reg_target.ndim == 1:
                reg_target = reg_target[:, None]
            losses += [self._reg(reg[:, h], reg_target[:, h]) for h in range(self.n_horizons)]
        task = torch.stack(losses)
        if self.weighting == "uncertainty":
            total = (torch.exp(-self.log_vars) * task + self.log_vars).sum()
        elif self.weighting == "softmax":
            total = (torch.softmax(self.weight_logits, dim=0) * task).sum()
        else:
            total = (self.task_weights().to(task.device) * task).sum()
        nh = self.n_horizons
        return {
            "loss": total,
            "cls_loss": task[:nh].mean().detach(),
            "reg_loss": task[nh:].mean().detach() if self.regression else torch.zeros((), device=task.device),
            "unweighted": task.sum().detach(),
            "task_losses": task.detach(),
            "task_weights": self.task_weights().to(task.device),
        }
