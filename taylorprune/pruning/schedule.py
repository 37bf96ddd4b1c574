"""The pruning schedule: score, remove, repeat until a stop condition. The one loop every caller
runs (``prune()``, ``prune_iteratively()``, ``taylorprune run``, the studies in ``tools/``).

One-shot pruning (score ``score_batches`` minibatches without training, then remove to the target
in one step) and the paper's iterative schedule (train while scoring; every ``score_batches``
minibatches remove at most ``channels_per_step`` of the globally lowest channels, or down to the
step's share of the target with ``fraction_per_step``) are one loop::

    while no stop condition holds:   # target met, max_steps taken, a step removed nothing
        score the next window of minibatches (one-shot: model state preserved)
            or train on it while scoring (iterative: hooks.train)
        sum the scores over processes (a no-op outside torch.distributed)
        step = pruner.remove_to_target(scores, step_target, max_channels=channels_per_step)
        point the optimizer at the pruned parameters; realign and restart the scores
        hooks.after_step(step, state)   # checkpoints, per-step evaluation

The stop conditions are checked before every window, so a schedule resumed from the
:class:`ScheduleState` of its last step stops at once. The loop also ends when the batches run out.
:func:`~taylorprune.pruning.api.prune` and :func:`~taylorprune.pruning.api.prune_iteratively` are
its one-call forms.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import torch
from torch import nn

from taylorprune.errors import UserError
from taylorprune.importance import defaults
from taylorprune.importance.accumulator import ImportanceAccumulator
from taylorprune.importance.criteria import DEFAULT_CRITERION, Criterion
from taylorprune.importance.scoring import accumulate, frozen_bn, preserved_state
from taylorprune.pruning.optim import remap_optimizer, reset_momentum
from taylorprune.pruning.pruner import StructuredPruner
from taylorprune.pruning.removal import PruneStep
from taylorprune.pruning.targets import LATENCY_FRACTION, Target

logger = logging.getLogger("taylorprune")

LossFn = Callable[[torch.Tensor, Any], torch.Tensor]
StopCode = Literal["target", "max_steps", "blocked", "exhausted"]


@dataclass(frozen=True)
class Scoring:
    """How channels are scored: ``criterion`` (a ``CRITERIA`` name or a :class:`Criterion`);
    ``train_mode``: BatchNorm normalises with batch statistics while scoring (False: with its
    running statistics, :func:`~taylorprune.importance.scoring.frozen_bn`; the iterative schedule
    then scores each minibatch in a pass of its own before training on it, see
    :class:`WindowScorer`); ``ema``: momentum of the average across pruning steps (None: the plain
    mean of each window); ``seed`` of random criteria."""

    criterion: str | Criterion = DEFAULT_CRITERION
    train_mode: bool = defaults.TRAIN_MODE
    ema: float | None = defaults.EMA
    seed: int = 0


@dataclass(frozen=True)
class Schedule:
    """When channels are removed.

    ``oneshot``: score ``score_batches`` minibatches (None: every batch given) without training,
    then remove to the target in one step. ``iterative``: train on the batches while scoring; after
    every ``score_batches`` minibatches remove at most ``channels_per_step`` channels; stop at the
    target, after ``max_steps`` steps, or when a step removes nothing. Once it stops, optimizer
    state (momentum) is cleared if ``clear_momentum``, as in the reference code.
    """

    kind: Literal["oneshot", "iterative"] = "oneshot"
    score_batches: int | None = None
    channels_per_step: int | None = None
    max_steps: int | None = None
    clear_momentum: bool = True
    fraction_per_step: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("oneshot", "iterative"):
            raise UserError(f"schedule: unknown kind {self.kind!r}; choices: oneshot, iterative")
        for name in ("score_batches", "channels_per_step", "max_steps"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UserError(f"schedule: {name} must be an integer >= 1, got {value!r}")
        f = self.fraction_per_step
        if f is not None and (
            isinstance(f, bool) or not isinstance(f, int | float) or not 0.0 < f < 1.0
        ):
            raise UserError(f"schedule: fraction_per_step must be in (0, 1), got {f!r}")
        if f is not None and self.channels_per_step is not None:
            raise UserError(
                "schedule: channels_per_step and fraction_per_step exclude each other; give one"
            )
        if f is not None and self.kind != "iterative":
            raise UserError("schedule: fraction_per_step paces the iterative schedule only")
        if self.kind == "iterative" and (
            self.score_batches is None or not (self.channels_per_step or f)
        ):
            raise UserError(
                "schedule: iterative needs score_batches, and channels_per_step or "
                "fraction_per_step"
            )

    @property
    def step_limit(self) -> int | None:
        """The most removals the schedule makes (one for one-shot)."""
        return 1 if self.kind == "oneshot" else self.max_steps

    def step_target(self, target: Target, step: int) -> Target:
        """What removal number ``step`` (from 1) aims at: ``target`` itself, or with
        ``fraction_per_step`` f, ``max(target.keep, 1 - step·f)`` of the baseline's measure of
        ``target``'s kind, so that every criterion reaches a given level after the same number
        of steps (and so of training minibatches)."""
        f = self.fraction_per_step
        if f is None:
            return target
        goal = round(1.0 - step * f, 12)  # 1 - 10·0.05 is 0.5, not 0.49999999999999994
        return target if goal <= target.keep else Target(target.kind, goal)


@dataclass
class ScheduleState:
    """Where a schedule is, as plain data: enough to continue it after an interruption.

    ``consumed`` counts the minibatches drawn from the batches (a resumed schedule skips that many
    of the same batches), ``trained`` those trained on (0 for one-shot). ``last_removed`` and
    ``stopped_short`` describe the last step; ``accumulator`` is the scores' state after it.
    """

    steps: int = 0
    consumed: int = 0
    trained: int = 0
    last_removed: int | None = None
    stopped_short: dict[str, str] | None = None
    accumulator: dict[str, Any] | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScheduleState:
        return cls(**d)


@dataclass
class ScheduleResult:
    """How a schedule ended: the steps it took in this call, why it stopped (``stop``), whether
    the target is met, and if not ``stopped_short`` (``{"code", "message"}``); ``overshot`` the
    same form when it is met but the model went below the target's tolerance band (blocks too
    coarse to land in it); ``seconds`` of wall time, of which ``score_s`` scoring or training (the
    rest: removals and hooks); ``state`` to continue from."""

    steps: list[PruneStep]
    stop: StopCode
    reached: bool
    stopped_short: dict[str, str] | None
    state: ScheduleState
    seconds: float
    score_s: float
    overshot: dict[str, str] | None = None


class WindowScorer:
    """How the iterative schedule's training adds each minibatch to the scores.

    With train-mode BatchNorm the training pass is scored: :meth:`update` after its backward (or
    :meth:`backward` in its place), and :attr:`score_first` is None. With eval-mode BatchNorm the
    network still trains as it always does (batch statistics, running statistics updated), and
    :attr:`score_first` scores each minibatch before: ``score_first(forward_loss)`` runs
    ``forward_loss()`` with every BatchNorm on its running statistics, back-propagates it into the
    scores and clears the gradients; the training pass then adds nothing. That costs a second
    forward and backward per minibatch; training a network whose BatchNorms normalise with running
    statistics instead diverges within a few steps at fine-tuning learning rates.
    """

    def __init__(self, model: nn.Module, accumulator: ImportanceAccumulator, train_mode: bool):
        self.model, self.accumulator, self.train_mode = model, accumulator, train_mode
        self.score_first: Callable[[Callable[[], torch.Tensor]], None] | None = (
            None if train_mode else self._score_in_eval
        )

    def update(self) -> None:
        if self.train_mode:
            self.accumulator.update()

    def backward(self, loss: torch.Tensor) -> None:
        if self.train_mode:
            self.accumulator.backward(loss)
        else:
            loss.backward()

    def _score_in_eval(self, forward_loss: Callable[[], torch.Tensor]) -> None:
        self.accumulator.discard()  # what the last training pass left in the hooks
        with frozen_bn(self.model):  # running statistics, left as they are
            loss = forward_loss()
        self.model.zero_grad(set_to_none=True)
        self.accumulator.backward(loss)
        self.model.zero_grad(set_to_none=True)


class ScheduleHooks:
    """What a caller adds to the loop. The defaults are what a library call needs; the runner
    overrides them (distributed training, checkpoints, per-step evaluation)."""

    def train(
        self,
        model: nn.Module,
        batches: Iterable[tuple[Any, Any]],
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn,
        scorer: WindowScorer,
    ) -> None:
        """Train on one window of ``batches``; per minibatch, ``scorer.score_first`` (when set)
        before the training pass, and ``scorer.update()`` after its backward and before the
        optimizer uses the gradients (or ``scorer.backward(loss)`` in place of both)."""
        model.train()
        for inputs, targets in batches:
            if scorer.score_first is not None:
                scorer.score_first(lambda: loss_fn(model(inputs), targets))  # noqa: B023
            optimizer.zero_grad(set_to_none=True)
            scorer.backward(loss_fn(model(inputs), targets))
            optimizer.step()

    def after_step(self, step: PruneStep, state: ScheduleState) -> None:
        """Called after each removal, once the optimizer and the scores follow it."""


def run_schedule(
    pruner: StructuredPruner,
    batches: Iterable[tuple[Any, Any]],
    loss_fn: LossFn,
    target: Target,
    schedule: Schedule,
    scoring: Scoring | None = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    hooks: ScheduleHooks | None = None,
    resume: ScheduleState | None = None,
) -> ScheduleResult:
    """Prune ``pruner.model`` in place until a stop condition holds (see the module docstring).

    ``batches`` yields ``(inputs, targets)`` for ``loss_fn(model(inputs), targets)``, already on
    the model's device. ``optimizer`` is required by the iterative schedule. With ``resume`` (the
    state of an interrupted schedule on the same batches, the model already pruned to that point)
    the first ``resume.consumed`` batches are skipped and the scores' state restored. Raises
    :class:`UserError` when one-shot scoring gets no batch, or for ``fraction_per_step`` with a
    latency target.
    """
    if schedule.kind == "iterative" and optimizer is None:
        raise UserError("schedule: the iterative schedule trains, and needs an optimizer")
    if schedule.fraction_per_step is not None and target.kind == "latency":
        raise UserError(LATENCY_FRACTION)
    model = pruner.model
    scoring = scoring or Scoring()
    hooks = hooks or ScheduleHooks()
    state = replace(resume) if resume is not None else ScheduleState()
    it = iter(batches)
    _skip(it, state.consumed)
    steps: list[PruneStep] = []
    t0 = time.perf_counter()
    score_s = 0.0
    acc = _accumulator(pruner, scoring)
    try:
        if state.accumulator is not None:
            acc.load_state_dict(state.accumulator)
        # Eval-mode one-shot scoring: BatchNorm on its running statistics, left as they are. The
        # iterative schedule trains as always and scores in passes of its own (WindowScorer).
        scorer = WindowScorer(model, acc, scoring.train_mode)
        with frozen_bn(model, not scoring.train_mode and schedule.kind == "oneshot"):
            while (stop := _stop_reason(pruner, target, schedule, state)) is None:
                t_window = time.perf_counter()
                full = _score_window(model, it, loss_fn, schedule, scorer, optimizer, hooks, state)
                score_s += time.perf_counter() - t_window
                if not full:
                    stop = "exhausted"
                    break
                acc.all_reduce()  # every process ranks the same sums and removes the same channels
                aim = schedule.step_target(target, state.steps + 1)
                step = pruner.remove_to_target(
                    acc.group_scores(), aim, max_channels=schedule.channels_per_step
                )
                if optimizer is not None:
                    remap_optimizer(optimizer, pruner)
                acc.realign(pruner.groups(), step.kept)
                acc.reset()
                _advance(state, step, acc)
                if step.stopped_short is not None:
                    _log_stopped_short(pruner, step, aim)
                steps.append(step)
                hooks.after_step(step, state)
    finally:
        acc.close()
    if optimizer is not None:
        model.zero_grad(set_to_none=True)
        if schedule.clear_momentum:
            reset_momentum(optimizer)
    reached = pruner.target_reached(target)
    below_band = reached and not target.within(pruner.fraction(target.kind))
    overshot = _overshoot(pruner, state) if below_band else None
    if overshot is not None:
        logger.warning(
            "pruning kept %.3f of baseline %s, below the band of the target %.3f: %s",
            pruner.fraction(target.kind),
            target.kind,
            target.keep,
            overshot["message"],
        )
    return ScheduleResult(
        steps=steps,
        stop=stop,
        reached=reached,
        stopped_short=None if reached else _shortfall(state),
        state=state,
        seconds=time.perf_counter() - t0,
        score_s=score_s,
        overshot=overshot,
    )


def score_groups(
    pruner: StructuredPruner,
    batches: Iterable[tuple[Any, Any]],
    loss_fn: LossFn,
    scoring: Scoring | None = None,
) -> dict[str, torch.Tensor]:
    """Scores of ``pruner``'s groups over every batch, without removing anything: the one-shot
    scoring of :func:`run_schedule` on its own (the model's state is preserved). For studies that
    prune copies of one model to several targets from the same scores."""
    model = pruner.model
    scoring = scoring or Scoring()
    with _accumulator(pruner, scoring) as acc:
        with frozen_bn(model, not scoring.train_mode), preserved_state(model):
            model.train()
            if accumulate(model, acc, batches, loss_fn) == 0 and not acc.criterion.static:
                raise UserError("no batches to score channels on")
        acc.all_reduce()
        return acc.group_scores()


# -- the loop's parts --------------------------------------------------------------------------
def _accumulator(pruner: StructuredPruner, scoring: Scoring) -> ImportanceAccumulator:
    """The accumulator ``scoring`` describes, over ``pruner``'s groups and graph."""
    return ImportanceAccumulator(
        pruner.model,
        pruner.groups(),
        scoring.criterion,
        ema=scoring.ema,
        seed=scoring.seed,
        graph=pruner.graph,
    )


class _Window:
    """The next ``n`` minibatches of a shared iterator (all that are left when ``n`` is None)."""

    def __init__(self, batches: Iterator[Any], n: int | None) -> None:
        self.batches, self.n, self.taken = batches, n, 0

    def __len__(self) -> int:
        if self.n is None:
            raise TypeError("a window over every remaining batch has no length")
        return self.n

    def __iter__(self) -> Iterator[Any]:
        while self.n is None or self.taken < self.n:
            try:
                batch = next(self.batches)
            except StopIteration:
                return
            self.taken += 1
            yield batch


def _skip(it: Iterator[Any], n: int) -> None:
    for _ in range(n):
        if next(it, None) is None:
            return


def _stop_reason(
    pruner: StructuredPruner, target: Target, schedule: Schedule, state: ScheduleState
) -> StopCode | None:
    if pruner.target_reached(target):
        return "target"
    if state.last_removed == 0 and not _on_pace(target, schedule, state):
        return "blocked"
    limit = schedule.step_limit
    if limit is not None and state.steps >= limit:
        return "max_steps"
    return None


def _on_pace(target: Target, schedule: Schedule, state: ScheduleState) -> bool:
    """Whether a fraction-paced schedule goes on after a step that removed nothing: while later
    steps aim lower, it does (the step's own share was met already, or too close to take a
    whole block; if constraints block every group, the remaining steps train without removing,
    so that every criterion still gets the same number of steps). A step that aimed at the
    target itself and removed nothing ends it."""
    if schedule.fraction_per_step is None or state.steps == 0:
        return False
    return schedule.step_target(target, state.steps) != target


def _score_window(
    model: nn.Module,
    batches: Iterator[Any],
    loss_fn: LossFn,
    schedule: Schedule,
    scorer: WindowScorer,
    optimizer: torch.optim.Optimizer | None,
    hooks: ScheduleHooks,
    state: ScheduleState,
) -> bool:
    """Score (one-shot) or train while scoring (iterative) on the next window; False when the
    batches ran out before the window was full (the iterative schedule then removes nothing)."""
    window = _Window(batches, schedule.score_batches)
    if schedule.kind == "oneshot":
        with preserved_state(model):
            model.train()
            accumulate(model, scorer.accumulator, window, loss_fn)
        state.consumed += window.taken
        if window.taken == 0 and not scorer.accumulator.criterion.static:
            raise UserError("no batches to score channels on")
        return True
    assert optimizer is not None
    hooks.train(model, window, optimizer, loss_fn, scorer)
    state.consumed += window.taken
    state.trained += window.taken
    return window.taken == schedule.score_batches


def _advance(state: ScheduleState, step: PruneStep, acc: ImportanceAccumulator) -> None:
    state.steps += 1
    state.last_removed = step.channels_removed
    reason = step.stopped_short
    state.stopped_short = (
        None if reason is None else {"code": reason.code, "message": reason.message}
    )
    state.accumulator = acc.state_dict()  # an EMA carries across steps


def _shortfall(state: ScheduleState) -> dict[str, str]:
    if state.stopped_short is not None:
        return dict(state.stopped_short)
    return {"code": "not_finished", "message": "pruning ended before the target"}


def _overshoot(pruner: StructuredPruner, state: ScheduleState) -> dict[str, str]:
    """Why the model is below the target's band: the last step's reason where it gave one."""
    if state.stopped_short is not None:
        return dict(state.stopped_short)
    return {
        "code": "granularity",
        "message": f"the last step's removal (blocks of round_to={pruner.constraints.round_to}) "
        "was too coarse to stop within it",
    }


def _log_stopped_short(pruner: StructuredPruner, step: PruneStep, target: Target) -> None:
    assert step.stopped_short is not None
    logger.warning(step.stopped_short.describe(target))
