"""Phase 2, prune: the recipe's schedule run by :func:`~taylorprune.pruning.schedule.run_schedule`
on the baseline, with a run checkpoint after every step; then measured.

The runner adds to the schedule through :class:`_RunHooks`: training under DDP (wrapped anew
after each removal, since DDP registers the parameters it synchronises when it is built), a
report entry, an optional evaluation and a run checkpoint after each step. A resumed prune phase
replays the recorded removals on the baseline, loads the checkpoint's weights and continues the
schedule from its recorded state, on the same batches.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

import taylorprune.distributed as distributed
from taylorprune.data import DataBundle, calibration_loader
from taylorprune.distill import Distiller
from taylorprune.errors import UserError
from taylorprune.importance import well_fit
from taylorprune.importance.defaults import WELL_FIT_IMAGES
from taylorprune.optimizers import build_optimizer, make_loss
from taylorprune.pipeline.checkpoints import RunCheckpoint
from taylorprune.pipeline.context import RunContext
from taylorprune.pipeline.record import Stage
from taylorprune.pruning import PruneStep, StructuredPruner
from taylorprune.pruning.schedule import (
    LossFn,
    ScheduleHooks,
    ScheduleState,
    Scoring,
    WindowScorer,
    run_schedule,
)
from taylorprune.train import distiller, evaluate_recalibrated, train_epoch

log = logging.getLogger("taylorprune")

# Validation sets up to this size are evaluated after every pruning step (report ``steps[].top1``);
# larger ones only at the stages, so that evaluation never dominates the pruning phase.
STEP_EVAL_MAX_EXAMPLES = 5000


@dataclass
class Pruned:
    """``model`` pruned in place (on the run's device); ``optimizer`` the iterative schedule's
    (None for one-shot), whose momentum fine-tuning may continue; ``pruner`` made the removals."""

    model: nn.Module
    optimizer: torch.optim.Optimizer | None
    pruner: StructuredPruner


def prune_phase(
    ctx: RunContext,
    model: nn.Module,
    resume: RunCheckpoint | None,
    teacher: nn.Module | None = None,
) -> Pruned:
    """Prune ``model`` (the baseline, on the run's device) as the recipe says; the iterative
    schedule's windows learn from ``teacher`` too with ``finetune.distill.while_pruning``."""
    opts = ctx.options.prune
    # Built on the baseline, before any replayed removal: a latency target times it beside.
    pruner = StructuredPruner(
        model, ctx.example.to(ctx.device), latency=opts.latency, **asdict(opts.pruner)
    )
    removals: list[dict[str, Any]] = []
    state: ScheduleState | None = None
    if resume is not None:
        assert resume.extra is not None
        for removal in resume.extra["removals"]:
            _replay(pruner, removal)
        removals = list(resume.extra["removals"])
        model.load_state_dict(resume.model.state_dict())
        state = ScheduleState.from_dict(resume.extra["schedule"])
        if pruner.latency is not None:
            # The trials of the steps before the interruption stay in the report, numbered as
            # their steps; the model as replayed is timed afresh.
            pruner.latency.restore((ctx.record.latency or {}).get("checks", []))
            pruner.latency.measure_now(model)
    optimizer = None
    if opts.schedule.kind == "iterative":
        optimizer = build_optimizer(model, opts.train)
        if resume is not None:
            optimizer.load_state_dict(resume.optimizer)
    if state is None:  # a resumed schedule goes on with the criterion it started with
        ctx.record.well_fit = _well_fit(ctx, model)
    scoring = _scoring(opts.scoring, ctx.record.well_fit)
    d = opts.train.distill
    in_windows = distiller(opts.train, teacher) if d is not None and d.while_pruning else None
    hooks = _RunHooks(ctx, pruner, optimizer, removals, in_windows)
    ctx.reseed("prune", 0)
    result = run_schedule(
        pruner,
        _on_device(_cycle(ctx.data.train), ctx.device),  # one pass continues across removals
        make_loss(opts.train),
        opts.target,
        opts.schedule,
        scoring,
        optimizer=optimizer,
        hooks=hooks,
        resume=state,
    )
    ctx.record.timings["pruning_s"] = result.seconds
    stage = Stage.measure(model, ctx.example, _measured(ctx, model))
    model.to(ctx.device)
    ctx.record.pruned = stage
    ctx.record.target = {
        "reached": result.reached,
        "stopped_short": result.stopped_short,
        "overshot": result.overshot,
        "channels_kept": pruner.fraction("channels"),
        "left_whole": [lw.as_dict() for lw in pruner.left_whole],
    }
    if pruner.latency is not None:
        ctx.record.latency = pruner.latency.summary()
    base = ctx.record.baseline
    assert base is not None
    log.info(
        "pruned: %.2f M MACs (%.1f%% removed), top-1 %.2f%%",
        stage.macs / 1e6,
        100 * (1 - stage.macs / base.macs),
        stage.top1,
    )
    return Pruned(model, optimizer, pruner)


def _well_fit(ctx: RunContext, model: nn.Module) -> dict[str, Any] | None:
    """The well-fit reading of the baseline, logged; every rank reads the same images."""
    opts = ctx.options.prune
    criterion = opts.scoring.criterion
    if not isinstance(criterion, str):
        return None
    fit = read_well_fit(model, ctx.data, criterion, opts.well_fit_top1, ctx.device)
    if fit is None:
        return None
    (log.warning if fit.switched else log.info)(fit.describe())
    return fit.as_dict()


def read_well_fit(
    model: nn.Module,
    data: DataBundle,
    criterion: str,
    threshold: float | None,
    device: torch.device,
) -> well_fit.WellFit | None:
    """The baseline's top-1 on :data:`WELL_FIT_IMAGES` training images without augmentation
    (the same fixed choice on every call and rank) and the criterion it decides (see
    :mod:`taylorprune.importance.well_fit`)."""
    batch = data.train.batch_size or 1
    images = calibration_loader(data, batches=-(-WELL_FIT_IMAGES // batch))
    return well_fit.decide(model, images, criterion, threshold, device)


def _scoring(scoring: Scoring, fit: dict[str, Any] | None) -> Scoring:
    """The recipe's scoring with the criterion the well-fit reading chose."""
    return scoring if fit is None else replace(scoring, criterion=fit["criterion"])


class _RunHooks(ScheduleHooks):
    """Training under DDP (learning from the baseline too with ``distill``); after each step a
    report entry, an evaluation, a run checkpoint."""

    def __init__(
        self,
        ctx: RunContext,
        pruner: StructuredPruner,
        optimizer: torch.optim.Optimizer | None,
        removals: list[dict[str, Any]],
        distill: Distiller | None = None,
    ) -> None:
        self.ctx, self.pruner, self.optimizer, self.removals = ctx, pruner, optimizer, removals
        self.distill = distill  # the baseline as teacher in the training windows
        self.window: dict[str, Any] | None = None  # training figures of the last window

    def train(
        self,
        model: nn.Module,
        batches: Iterable[tuple[Any, Any]],
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn,
        scorer: WindowScorer,
    ) -> None:
        ft = self.ctx.options.prune.train
        self.window = train_epoch(
            distributed.wrap(model, self.ctx.device),
            batches,
            optimizer,
            loss_fn,
            device=self.ctx.device,
            amp=ft.amp,
            channels_last=ft.channels_last,
            grad_clip=ft.grad_clip,
            after_backward=scorer.update,
            score_first=scorer.score_first,
            progress=self.ctx.progress,
            desc=f"prune step {len(self.ctx.record.steps) + 1}",
            distill=self.distill,
        )
        if "teacher_s" in self.window:
            self.ctx.record.add_time("distill_teacher_s", self.window["teacher_s"])

    def after_step(self, step: PruneStep, state: ScheduleState) -> None:
        ctx, model = self.ctx, self.pruner.model
        if self.window is not None:
            ctx.record.metrics.append({**self.window, "phase": "prune", "step": state.steps})
        top1 = None
        if len(ctx.data.val.dataset) <= STEP_EVAL_MAX_EXAMPLES:  # cheap enough after every step
            top1 = float(_measured(ctx, model)["top1"])
            model.train()
        entry = {
            "step": len(ctx.record.steps) + 1,
            "iteration": state.trained,
            "macs": int(step.macs),
            "params": int(step.params),
            "channels_removed": int(step.channels_removed),
            "top1": top1,
        }
        if self.pruner.latency is not None and self.pruner.latency.last is not None:
            entry["latency"] = _step_latency(self.pruner.latency.last)
            ctx.record.latency = self.pruner.latency.summary()  # kept by the checkpoint
        ctx.record.steps.append(entry)
        ctx.record.metrics.append(
            {"phase": "prune", "step": entry["step"], "macs": entry["macs"], "val_top1": top1}
        )
        log.info(
            "pruning step %d: removed %d channels, %.2f M MACs",
            entry["step"],
            entry["channels_removed"],
            entry["macs"] / 1e6,
        )
        self.removals.append({"removed": step.removed, "n": step.channels_removed})
        extra = {"schedule": state.as_dict(), "removals": self.removals}
        ctx.checkpoint("prune", state.steps, model, self.optimizer, extra=extra)


def _measured(ctx: RunContext, model: nn.Module) -> dict[str, Any]:
    """The validation figures of ``model`` as the report gives them for the pruned stage and each
    step: as it is, or with ``pruning.bn_recalibration`` those of a copy whose BatchNorm statistics
    were re-estimated on a fixed set of training images (the same at every step, for every seed
    and on every rank), so that the figures do not read statistics trailing the removals; the
    model that goes on training and scoring keeps its own."""
    opts = ctx.options.prune
    if not opts.bn_recalibration:
        return ctx.evaluate(model)
    ft = opts.train
    return evaluate_recalibrated(
        model,
        ctx.data.val,
        calibration(ctx),
        batches=opts.bn_recalibration_batches,
        device=ctx.device,
        amp=ft.amp,
        channels_last=ft.channels_last,
    )


def calibration(ctx: RunContext) -> DataLoader:
    """The training images ``pruning.bn_recalibration`` re-estimates BatchNorm statistics on: a
    fixed choice, the same for every measurement, seed and rank."""
    return calibration_loader(ctx.data, ctx.options.prune.bn_recalibration_batches)


def _step_latency(trial: dict[str, Any]) -> dict[str, Any]:
    """A step's latency figures for the report: its budget, prediction and measurement."""
    keys = ("budget_ms", "predicted_ms", "measured_ms", "fraction", "fraction_p10")
    return {k: trial[k] for k in (*keys, "fraction_p90", "error", "attempt")}


def _replay(pruner: StructuredPruner, removal: dict[str, Any]) -> None:
    """Remove exactly the channels of one recorded step: they score 0, every other 1."""
    scores = {g.root: torch.ones(g.size) for g in pruner.groups()}
    for root, idxs in removal["removed"].items():
        scores[root][idxs] = 0.0
    step = pruner.remove(scores, removal["n"])
    if step.removed != removal["removed"]:
        raise UserError("--resume: replaying the recorded pruning steps removed other channels")


def _cycle(loader: Iterable[Any]) -> Iterator[Any]:
    epoch = 0
    while True:
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _on_device(batches: Iterator[Any], device: torch.device) -> Iterator[tuple[Any, Any]]:
    for inputs, targets in batches:
        yield inputs.to(device), targets.to(device)
