"""The iterative schedule without training: do one-shot rankings lose to compounding removals?

The oracle study removes a fraction of a trained network in several steps, each scored afresh on
the pruned network, with no training in between. That is the library's one loop,
:func:`~taylorprune.pruning.schedule.run_schedule` with the iterative schedule, given

- a training hook that trains nothing: before each window the BatchNorm statistics are re-estimated
  on calibration data (the network just lost channels), then the window is scored as one-shot
  scoring scores (weights and statistics left as they are, BatchNorm in the chosen mode);
- a target per step: ``unit="channels"`` removes ``ceil(total / steps)`` channels a step until
  ``round(fraction × channels)`` are gone (the product's ``channels_per_step``); ``unit="macs"``
  prunes step k (from 0) to ``1 − fraction × (k + 1) / steps`` of the baseline MACs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from taylorprune.importance.criteria import Criterion
from taylorprune.importance.scoring import LossFn, accumulate, frozen_bn, preserved_state
from taylorprune.pruning.pruner import StructuredPruner
from taylorprune.pruning.removal import PruneStep
from taylorprune.pruning.schedule import (
    Schedule,
    ScheduleHooks,
    ScheduleResult,
    ScheduleState,
    Scoring,
    WindowScorer,
    run_schedule,
)
from taylorprune.pruning.targets import Target
from taylorprune.train import recalibrate_bn

Batches = Sequence[tuple[Any, Any]]


def prune_without_training(
    pruner: StructuredPruner,
    batches: Batches,
    calibration: Batches,
    *,
    criterion: str | Criterion,
    train_mode: bool,
    fraction: float,
    steps: int,
    window: int,
    unit: str = "channels",
    seed: int = 0,
    loss_fn: LossFn = F.cross_entropy,
) -> ScheduleResult:
    """Remove ``fraction`` of ``pruner.model``'s channels or MACs (``unit``) in at most ``steps``
    steps, scoring each on the next ``window`` minibatches of ``batches`` (``criterion``, BatchNorm
    in train mode while scoring if ``train_mode``; weight-only criteria read no minibatch).

    BatchNorm is re-estimated on all of ``calibration`` before each step, not after the last: the
    caller re-estimates before evaluating. Each window is scored on its own (no average across
    steps), as a fresh one-shot scoring would. Raises ``ValueError`` for an unknown ``unit``.
    """
    if unit == "channels":
        total = round(fraction * pruner.channels())
        target: Target = Target("channels", 1.0 - total / pruner.channels())
        per_step = math.ceil(total / steps)
    elif unit == "macs":
        target = _Staircase(fraction, steps)
        per_step = pruner.channels()  # no cap: the step's MACs target decides
    else:
        raise ValueError(f"unit must be 'channels' or 'macs', got {unit!r}")
    model = pruner.model
    # The schedule keeps an optimizer in step with every removal; this one is never stepped.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    return run_schedule(
        pruner,
        batches,
        loss_fn,
        target,
        Schedule("iterative", window, per_step, max_steps=steps),
        # BatchNorm's mode while scoring is the hook's: the schedule's own eval-mode scoring
        # updates the statistics from each minibatch while training, and would during the
        # re-estimation too.
        Scoring(criterion, train_mode=True, ema=None, seed=seed),
        optimizer=optimizer,
        hooks=_ScoreOnly(calibration, train_mode, target),
    )


class _ScoreOnly(ScheduleHooks):
    """Each window: BatchNorm re-estimated on ``calibration``, then the window scored without any
    change to the model; after each step the staircase target moves to the next step's."""

    def __init__(self, calibration: Batches, train_mode: bool, target: Target) -> None:
        self.calibration, self.train_mode, self.target = calibration, train_mode, target

    def train(
        self,
        model: nn.Module,
        batches: Iterable[tuple[Any, Any]],
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn,
        scorer: WindowScorer,
    ) -> None:
        accumulator = scorer.accumulator
        recalibrate_bn(model, self.calibration, batches=len(self.calibration))
        if accumulator.criterion.static:
            for _ in batches:  # scored from the weights; the window is only used up
                pass
            return
        with frozen_bn(model, not self.train_mode), preserved_state(model):
            model.train()
            accumulate(model, accumulator, batches, loss_fn)

    def after_step(self, step: PruneStep, state: ScheduleState) -> None:
        if isinstance(self.target, _Staircase):
            self.target.advance(state.steps)


class _Staircase(Target):
    """A MACs target that moves down after every step: after ``done`` steps it keeps
    ``1 − fraction × (done + 1) / steps`` of the baseline MACs (the last step's, once ``done``
    reaches ``steps``). The schedule reads ``keep`` at every check; :class:`Target` is a frozen
    dataclass, so :meth:`advance` sets it with ``object.__setattr__``."""

    def __init__(self, fraction: float, steps: int) -> None:
        object.__setattr__(self, "fraction", fraction)
        object.__setattr__(self, "steps", steps)
        super().__init__("macs", self._keep(0))

    def _keep(self, done: int) -> float:
        return 1.0 - self.fraction * (min(done, self.steps - 1) + 1) / self.steps

    def advance(self, done: int) -> None:
        object.__setattr__(self, "keep", self._keep(done))
