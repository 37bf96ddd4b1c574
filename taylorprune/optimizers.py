"""What a training phase optimises with, built from its :class:`~taylorprune.recipe.TrainConfig`:
parameter groups, the optimizer, the per-iteration learning-rate schedule and the loss."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    MultiStepLR,
    OneCycleLR,
    SequentialLR,
)

from taylorprune.errors import UserError
from taylorprune.recipe import TrainConfig

__all__ = ["build_optimizer", "build_scheduler", "make_loss", "param_groups", "total_iterations"]

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two parameter groups: weights of convs/linears decay; norm parameters and biases do not.

    Decaying BN's γ/β or biases only shrinks what the next layer rescales anyway, and a decayed γ
    distorts Taylor-FO-BN scores, which are read from γ and β.
    """
    no_decay_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, _NORMS):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if id(param) in no_decay_ids or param.ndim <= 1 or name.endswith(".bias"):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW (β1 = ``cfg.momentum``) over :func:`param_groups`.

    Raises:
        UserError: the model has no trainable parameter.
    """
    groups = param_groups(model, cfg.weight_decay)
    if not groups:
        raise UserError("the model has no trainable parameters (all have requires_grad=False)")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))


def total_iterations(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Minibatches in the whole phase: ``epochs × steps_per_epoch``, capped by ``max_iters``."""
    total = cfg.epochs * steps_per_epoch
    return min(total, cfg.max_iters) if cfg.max_iters is not None else total


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> LRScheduler:
    """A learning-rate schedule stepped once per iteration (minibatch), built from torch's.

    Warm-up (``warmup_epochs`` × ``steps_per_epoch`` = W iterations) is linear: iteration t < W uses
    ``lr·(t+1)/(W+1)``. After it, with T = :func:`total_iterations`:

    - ``cosine``: ``lr·½(1 + cos(π·(t−W)/(T−W)))``, reaching 0 at T;
    - ``step``: ``lr·gamma^k`` after k multiples of ``step_size`` epochs (counted from iteration 0);
    - ``onecycle``: torch's one-cycle from ``lr/25`` to ``lr`` at iteration W−1 (30% of T
      without warm-up), then cosine down to ``lr/25e4``;
    - ``constant``: ``lr``.
    """
    if steps_per_epoch < 1:
        raise UserError(f"the training loader has no batches (steps_per_epoch={steps_per_epoch})")
    total = max(1, total_iterations(cfg, steps_per_epoch))
    warm = min(round(cfg.warmup_epochs * steps_per_epoch), total - 1) if total > 1 else 0
    if cfg.schedule == "onecycle":
        # Momentum is not cycled: it is a recipe setting, kept fixed like in the other schedules.
        pct = warm / total if warm > 0 else 0.3
        return OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total,
            pct_start=pct, cycle_momentum=False,
        )  # fmt: skip
    main: LRScheduler
    if cfg.schedule == "cosine":
        main = CosineAnnealingLR(optimizer, T_max=max(1, total - warm))
    elif cfg.schedule == "step":
        every = cfg.step_size * steps_per_epoch
        milestones = [m - warm for m in range(every, total + every, every) if m > warm]
        main = MultiStepLR(optimizer, milestones=milestones, gamma=cfg.gamma)
    else:
        main = ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warm == 0:
        return main
    ramp = LinearLR(optimizer, start_factor=1.0 / (warm + 1), end_factor=1.0, total_iters=warm)
    return SequentialLR(optimizer, [ramp, main], milestones=[warm])


def make_loss(cfg: TrainConfig) -> nn.Module:
    """Cross-entropy (mean over the batch) with ``cfg.label_smoothing``."""
    return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
