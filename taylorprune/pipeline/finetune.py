"""Phase 3, fine-tune: retrain the pruned architecture (from its pruned weights, from the kept
channels' initial weights, or from scratch), with a run checkpoint before the first epoch and
after every epoch; then measured.

Without fine-tuning (``finetune.epochs: 0``) and with ``pruning.bn_recalibration``, the pruned
model's own BatchNorm statistics are re-estimated on the calibration images before the checkpoint:
the model delivered is then the one the report's ``pruned`` row measured, not one whose statistics
trail the last removal. With fine-tuning, training re-estimates them and the model is left as
pruned."""

from __future__ import annotations

import logging
import time
from typing import Any

from torch import nn

from taylorprune.models import build_model
from taylorprune.optimizers import build_optimizer, build_scheduler
from taylorprune.pipeline.checkpoints import RunCheckpoint
from taylorprune.pipeline.context import RunContext
from taylorprune.pipeline.prune import Pruned, calibration
from taylorprune.pipeline.record import Stage
from taylorprune.pruning import StructuredPruner
from taylorprune.train import recalibrate_bn, reinitialize

log = logging.getLogger("taylorprune")


def finetune_phase(
    ctx: RunContext,
    pruned: Pruned | None,
    resume: RunCheckpoint | None,
    initial_state: dict[str, Any] | None,
    teacher: nn.Module | None = None,
) -> nn.Module:
    """Fine-tune ``pruned`` (or continue the fine-tuning ``resume`` holds); returns the model, on
    the CPU. ``initial_state`` is the untrained model's state_dict, for ``retrain: rewind``;
    ``teacher`` the baseline to distill from, with ``finetune.distill``."""
    cfg = ctx.options.finetune.train
    if resume is not None:
        model, start_epoch = resume.model.to(ctx.device).train(), resume.done
        # Both built as at the phase's start, then both states loaded: a schedule built on the
        # loaded optimizer would take its scheduled learning rate for the peak.
        optimizer = build_optimizer(model, cfg)
        scheduler = build_scheduler(optimizer, cfg, len(ctx.data.train))
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
    else:
        assert pruned is not None
        model, start_epoch = _retrained(ctx, pruned, initial_state), 0
        optimizer = build_optimizer(model, cfg)
        if pruned.optimizer is not None and ctx.options.finetune.retrain == "finetune":
            # momentum of the pruning phase carries on unless clear_momentum emptied it
            optimizer.load_state_dict(pruned.optimizer.state_dict())
        scheduler = build_scheduler(optimizer, cfg, len(ctx.data.train))
        prune = ctx.options.prune
        if cfg.epochs == 0 and prune.bn_recalibration:
            images = calibration(ctx)
            recalibrate_bn(model, images, device=ctx.device, batches=prune.bn_recalibration_batches)
            log.info(
                "no fine-tuning: BatchNorm statistics re-estimated on %d training images",
                len(images.dataset),  # type: ignore[arg-type]
            )
        ctx.checkpoint("finetune", 0, model, optimizer, scheduler)
    t0 = time.perf_counter()

    def on_epoch_end(epoch: int, row: dict[str, Any]) -> None:
        nonlocal t0
        row["phase"] = "finetune"
        ctx.record.metrics.append(row)
        ctx.record.add_time("finetune_s", time.perf_counter() - t0)
        if "teacher_s" in row:
            ctx.record.add_time("distill_teacher_s", row["teacher_s"])
        ctx.checkpoint("finetune", epoch + 1, model, optimizer, scheduler)
        t0 = time.perf_counter()

    ctx.fit("finetune", model, cfg, optimizer, scheduler, start_epoch, on_epoch_end, teacher)
    ctx.record.finetuned = Stage.measure(model, ctx.example, ctx.evaluate(model))
    return model


def _retrained(ctx: RunContext, pruned: Pruned, initial_state: dict[str, Any] | None) -> nn.Module:
    """What fine-tuning starts from, as ``retrain`` says."""
    retrain = ctx.options.finetune.retrain
    if retrain == "rewind":
        assert initial_state is not None
        return _rewound(ctx, pruned.pruner, initial_state).to(ctx.device)
    if retrain == "scratch":
        reinitialize(pruned.model)
    return pruned.model


def _rewound(ctx: RunContext, pruner: StructuredPruner, initial_state: dict[str, Any]) -> nn.Module:
    """The pruned architecture with the kept channels' initial (pre-training) weights."""
    fresh = build_model({**ctx.spec, "pretrained": False, "checkpoint": None})
    fresh.load_state_dict(initial_state)
    replay = StructuredPruner(fresh, ctx.example, ignored_layers=[])
    replay.graph.dg.load_pruning_history(pruner.graph.dg.pruning_history())
    return fresh
