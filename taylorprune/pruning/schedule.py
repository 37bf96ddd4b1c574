"""Pruning schedules: one-shot (score, then remove to the target) and the paper's iterative one."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from taylorprune.errors import UserError
from taylorprune.pruning.optim import remap_optimizer, reset_momentum
from taylorprune.pruning.pruner import PruneStep, StructuredPruner
from taylorprune.pruning.targets import Target

logger = logging.getLogger("taylorprune")

LossFn = Callable[[torch.Tensor, Any], torch.Tensor]

_PRUNER_OPTIONS = (
    "ignored_layers",
    "include",
    "round_to",
    "min_channels",
    "max_fraction",
    "normalize",
    "cost_aware",
    "protect_classifier",
    "verify",
)


def prune(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    batches: Iterable[tuple[Any, Any]],
    loss_fn: LossFn,
    *,
    criterion: str = "taylor_fo_bn",
    target_macs: float = 0.6,
    **options: Any,
) -> nn.Module:
    """One-shot pruning: score channels over ``batches``, then remove them until the target.

    ``batches`` yields ``(inputs, targets)``; ``loss_fn(model(inputs), targets)`` is back-propagated
    in train mode (BatchNorm batch statistics; running statistics are restored afterwards and
    ``.grad`` fields cleared). The model keeps ``target_macs`` of its baseline MACs (fvcore, batch
    1) within 1%; ``target=`` (a :class:`Target` or recipe value such as ``{"params": 0.5}``)
    replaces it. Other ``options`` go to :class:`StructuredPruner` (``round_to``, ``min_channels``,
    ``max_fraction``, ``ignored_layers``, ``include``, ``normalize``, ``cost_aware``, ...).

    Returns ``model`` itself, modified in place. Raises :class:`UserError` for an impossible target,
    unknown options or criterion, or a model that cannot be pruned.
    """
    from taylorprune.importance import ImportanceAccumulator

    target = Target.parse(options.pop("target", target_macs), where="target")
    unknown = sorted(set(options) - set(_PRUNER_OPTIONS))
    if unknown:
        raise UserError(
            f"prune: unknown option(s) {', '.join(unknown)}; choices: {', '.join(_PRUNER_OPTIONS)}"
        )
    pruner = StructuredPruner(model, example_inputs, **options)
    acc = ImportanceAccumulator(model, pruner.groups(), criterion)
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    was_training = model.training
    try:
        model.train()
        n = 0
        for inputs, targets in batches:
            model.zero_grad(set_to_none=True)
            acc.backward(loss_fn(model(inputs), targets))
            n += 1
        if n == 0:
            raise UserError("prune: no batches to score channels on")
        scores = acc.group_scores()
    finally:
        acc.remove()
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])
        model.train(was_training)
    step = pruner.remove_to_target(scores, target)
    if step.stopped_short is not None:
        logger.warning(step.stopped_short.describe(target))
    return model


def prune_iteratively(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    batches: Iterable[tuple[Any, Any]],
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    *,
    target: Target | Any = 0.6,
    criterion: str = "taylor_fo_bn",
    score_batches: int = 30,
    channels_per_step: int = 100,
    clear_momentum: bool = True,
    pruner: StructuredPruner | None = None,
    **options: Any,
) -> list[PruneStep]:
    """The paper's schedule: train on ``batches`` with ``optimizer`` while scoring; every
    ``score_batches`` minibatches remove the ``channels_per_step`` lowest channels, until the
    target.

    After each removal the optimizer is remapped (momentum of kept channels carried) and the scores
    are realigned and restarted; once the target is met, momentum is cleared if ``clear_momentum``
    (as in the reference code) and the loop returns. Fine-tuning afterwards is up to the caller.
    Returns the steps taken; stops early (with a logged warning) if ``batches`` run out first.
    """
    from taylorprune.importance import ImportanceAccumulator

    tgt = Target.parse(target, where="target")
    if pruner is None:
        pruner = StructuredPruner(model, example_inputs, **options)
    acc = ImportanceAccumulator(model, pruner.groups(), criterion)
    steps: list[PruneStep] = []
    seen = 0
    try:
        model.train()
        done = pruner.target_reached(tgt)
        for inputs, targets in batches:
            if done:
                break
            optimizer.zero_grad(set_to_none=True)
            acc.backward(loss_fn(model(inputs), targets))
            optimizer.step()
            seen += 1
            if seen % score_batches:
                continue
            step = pruner.remove_to_target(acc.group_scores(), tgt, max_channels=channels_per_step)
            if step.stopped_short is not None:
                logger.warning(step.stopped_short.describe(tgt))
            steps.append(step)
            remap_optimizer(optimizer, model)
            acc.realign(pruner.groups(), step.kept)
            acc.reset()
            done = pruner.target_reached(tgt) or step.channels_removed == 0
        if not pruner.target_reached(tgt):
            logger.warning("iterative pruning ended before the target: batches ran out or blocked")
    finally:
        acc.remove()
        optimizer.zero_grad(set_to_none=True)
    if clear_momentum:
        reset_momentum(optimizer)
    return steps
