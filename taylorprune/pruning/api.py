"""The one-call forms of the pruning schedule: :func:`prune` (one-shot) and
:func:`prune_iteratively` (the paper's schedule). Both run
:func:`~taylorprune.pruning.schedule.run_schedule` and, when anything fails, leave the model (and
the optimizer) exactly as they were."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from taylorprune.errors import UserError
from taylorprune.importance import defaults
from taylorprune.importance.criteria import DEFAULT_CRITERION
from taylorprune.pruning.pruner import StructuredPruner
from taylorprune.pruning.removal import PruneStep
from taylorprune.pruning.schedule import (
    LossFn,
    Schedule,
    Scoring,
    run_schedule,
)
from taylorprune.pruning.targets import LATENCY_FRACTION, Target

if TYPE_CHECKING:
    from taylorprune.latency.setup import LatencySetup

logger = logging.getLogger("taylorprune")

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
    criterion: str = DEFAULT_CRITERION,
    train_mode: bool = defaults.TRAIN_MODE,
    target_macs: float = 0.6,
    latency: LatencySetup | None = None,
    **options: Any,
) -> nn.Module:
    """One-shot pruning: score channels over ``batches``, then remove them until the target.

    ``batches`` yields ``(inputs, targets)``; ``loss_fn(model(inputs), targets)`` is back-propagated
    with BatchNorm normalising by batch statistics (``train_mode=True``) or by its running ones
    (False); running statistics, modes and ``.grad`` fields are restored afterwards. The model keeps
    ``target_macs`` of its baseline MACs (fvcore, batch 1) within 1%; ``target=`` (a :class:`Target`
    or recipe value such as ``{"params": 0.5}``) replaces it. A latency target
    (``target={"latency": 0.6}`` or ``"1.6x"`` faster) is timed as ``latency`` says (a
    :class:`~taylorprune.pruning.latency_target.LatencySetup`: device, batch, threads, dtype, a
    saved table; None: the CPU, batch 16, the threads set now), with a latency table built for the
    model first (cached on disk; see docs/latency.md). Other ``options`` go to
    :class:`StructuredPruner` (``round_to``, ``min_channels``, ``max_fraction``, ``ignored_layers``,
    ``include``, ``normalize``, ``cost_aware``, ...).

    Groups that cannot be pruned safely (an attention width, a channel shuffle, what torch-pruning
    cannot analyse) are left whole and named in one logged warning; where they put the target out
    of reach, the logged stop reason gives the closest fraction and why (docs/pruning.md).

    Returns ``model`` itself, modified in place. Raises :class:`UserError` for an impossible target,
    unknown options or criterion, or a model that cannot be pruned; on any failure the model is
    left exactly as it was (a copy of its tensors is held while pruning, for that).
    """
    target = Target.parse(options.pop("target", target_macs), where="target")
    _check_options(options)
    _check_latency(target, latency)
    with _Rollback(model):
        pruner = StructuredPruner(
            model, example_inputs, latency=_latency_setup(target, latency), **options
        )
        scoring = Scoring(criterion, train_mode=train_mode)
        run_schedule(pruner, batches, loss_fn, target, Schedule("oneshot"), scoring)
    return model


def prune_iteratively(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    batches: Iterable[tuple[Any, Any]],
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    *,
    target: Target | Any = 0.6,
    criterion: str = DEFAULT_CRITERION,
    train_mode: bool = defaults.TRAIN_MODE,
    ema: float | None = defaults.EMA,
    score_batches: int = 30,
    channels_per_step: int | None = None,
    clear_momentum: bool = True,
    pruner: StructuredPruner | None = None,
    latency: LatencySetup | None = None,
    fraction_per_step: float | None = None,
    **options: Any,
) -> list[PruneStep]:
    """The paper's schedule: train on ``batches`` with ``optimizer`` while scoring; every
    ``score_batches`` minibatches remove the ``channels_per_step`` (default 100) lowest channels,
    until the target. With ``fraction_per_step`` f instead (not with a latency target), removal
    number k goes down to ``max(target, 1 - k·f)`` of the baseline's measure of the target's
    kind: every criterion reaches a level after the same number of steps, so of minibatches.
    ``train_mode`` and ``ema`` are :class:`~taylorprune.pruning.schedule.Scoring`'s: BatchNorm's
    statistics while scoring, and the momentum of the scores' average across removals.

    After each removal the optimizer is remapped (momentum of kept channels carried) and the scores
    are realigned and restarted; once the target is met, momentum is cleared if ``clear_momentum``
    (as in the reference code) and the loop returns. Fine-tuning afterwards is up to the caller.
    A latency target is timed as ``latency`` says (see :func:`prune`); a ``pruner`` given for one
    must have been built with ``latency=``. Returns the steps taken; stops early (with a logged
    warning) if ``batches`` run out first. On
    any failure the model and the optimizer are left exactly as they were (``pruner``, if given,
    is then no longer usable).
    """
    tgt = Target.parse(target, where="target")
    if channels_per_step is None and fraction_per_step is None:
        channels_per_step = 100
    schedule = Schedule(
        "iterative",
        score_batches,
        channels_per_step,
        None,
        clear_momentum,
        fraction_per_step=fraction_per_step,
    )
    if fraction_per_step is not None and tgt.kind == "latency":
        raise UserError(LATENCY_FRACTION)  # before a latency table is built for nothing
    if pruner is None:
        _check_options(options)
    _check_latency(tgt, latency)
    with _Rollback(model, optimizer):
        if pruner is None:
            pruner = StructuredPruner(
                model, example_inputs, latency=_latency_setup(tgt, latency), **options
            )
        result = run_schedule(
            pruner, batches, loss_fn, tgt, schedule, Scoring(criterion, train_mode, ema),
            optimizer=optimizer,
        )  # fmt: skip
    if not result.reached:
        logger.warning("iterative pruning ended before the target: batches ran out or blocked")
    return result.steps


def _check_latency(target: Target, latency: LatencySetup | None) -> None:
    if latency is not None and target.kind != "latency":
        raise UserError(
            f"prune: latency= sets up a latency target, but the target is {target.kind} "
            "(pass target={'latency': 0.6}, or drop latency=)"
        )


def _latency_setup(target: Target, latency: LatencySetup | None) -> LatencySetup | None:
    """How a latency target is timed: ``latency``, else the CPU at batch 16 with the threads set
    now; None for other targets."""
    if target.kind != "latency":
        return None
    from taylorprune.latency import TimingSettings
    from taylorprune.latency.setup import LatencySetup

    return latency if latency is not None else LatencySetup(TimingSettings())


def _check_options(options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - set(_PRUNER_OPTIONS))
    if unknown:
        raise UserError(
            f"prune: unknown option(s) {', '.join(unknown)}; choices: {', '.join(_PRUNER_OPTIONS)}"
        )


class _Rollback:
    """Put ``model`` (and ``optimizer``) back as they were if the block raises.

    Every module gets back its attributes (widths, modes, hooks, parameter and buffer tables) and
    every parameter and buffer its values, in the same objects: references the caller holds to
    modules and parameters stay valid. Costs one copy of every tensor while the block runs.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        self.modules = list(model.modules())
        self.attrs = [
            {k: v.copy() if isinstance(v, dict) else v for k, v in m.__dict__.items()}
            for m in self.modules
        ]
        with torch.no_grad():
            self.values = [
                {
                    n: t.detach().clone()
                    for n, t in (*m._parameters.items(), *m._buffers.items())
                    if t is not None
                }  # fmt: skip
                for m in self.modules
            ]
        self.grads = [
            {n: p.grad for n, p in m._parameters.items() if p is not None} for m in self.modules
        ]
        self.optimizer = optimizer
        if optimizer is not None:
            self.param_lists = [list(pg["params"]) for pg in optimizer.param_groups]
            self.opt_state = {
                p: {k: v.clone() if torch.is_tensor(v) else copy.deepcopy(v) for k, v in s.items()}
                for p, s in optimizer.state.items()
            }

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            return
        for module, attrs, values, grads in zip(
            self.modules, self.attrs, self.values, self.grads, strict=True
        ):
            module.__dict__.clear()
            module.__dict__.update(attrs)
            with torch.no_grad():
                for n, t in (*module._parameters.items(), *module._buffers.items()):
                    if t is not None:
                        t.data = values[n]
            for n, p in module._parameters.items():
                if p is not None:
                    p.grad = grads[n]
        if self.optimizer is not None:
            for pg, params in zip(self.optimizer.param_groups, self.param_lists, strict=True):
                pg["params"] = params
            self.optimizer.state.clear()
            self.optimizer.state.update(self.opt_state)
