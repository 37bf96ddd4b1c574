"""Phase 1, baseline: the unpruned model as built (pretrained or loaded), from the cache of trained
baselines, or trained here (a run checkpoint after every epoch); then measured and kept."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any

from torch import nn

import taylorprune.distributed as distributed
from taylorprune.baseline_cache import cache_path, load_cached, store
from taylorprune.optimizers import build_optimizer, build_scheduler
from taylorprune.pipeline.checkpoints import RunCheckpoint, save_baseline
from taylorprune.pipeline.context import RunContext
from taylorprune.pipeline.record import Stage

log = logging.getLogger("taylorprune")


@dataclass
class Baseline:
    """``model``: the trained baseline on the run's device, which pruning continues from;
    ``reference``: a copy on the CPU, what the pruned model is compared with at the end."""

    model: nn.Module
    reference: nn.Module


def baseline_phase(ctx: RunContext, model: nn.Module, resume: RunCheckpoint | None) -> Baseline:
    """Obtain, evaluate and count the baseline; ``resume`` continues an interrupted training."""
    model = _trained(ctx, model, resume)
    model.zero_grad(set_to_none=True)
    stage = Stage.measure(model, ctx.example, ctx.evaluate(model))
    reference = copy.deepcopy(model)
    if distributed.is_main():
        save_baseline(ctx.out_dir, reference, ctx.arch)
    ctx.record.baseline = stage
    log.info(
        "baseline: %.2f M MACs, %.3f M params, top-1 %.2f%%",
        stage.macs / 1e6,
        stage.params / 1e6,
        stage.top1,
    )
    return Baseline(model.to(ctx.device), reference)


def _trained(ctx: RunContext, model: nn.Module, resume: RunCheckpoint | None) -> nn.Module:
    opts = ctx.options
    cfg = opts.baseline.train
    if cfg is None:
        return model.to(ctx.device)
    t0 = time.perf_counter()
    path = cache_path(ctx.spec, name=opts.name, data=opts.data, train=cfg, seed=opts.seed)
    if opts.baseline.cache and resume is None and load_cached(model, path):
        return model.to(ctx.device)
    start_epoch = 0
    if resume is not None:
        model, start_epoch = resume.model, resume.done
    model.to(ctx.device).train()
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, len(ctx.data.train))
    if resume is not None:
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
    log.info("baseline: training %s for %d epochs", ctx.spec["name"], cfg.epochs)

    def on_epoch_end(epoch: int, row: dict[str, Any]) -> None:
        row["phase"] = "baseline"
        ctx.record.metrics.append(row)
        ctx.checkpoint("baseline", epoch + 1, model, optimizer, scheduler)

    ctx.fit("baseline", model, cfg, optimizer, scheduler, start_epoch, on_epoch_end)
    if opts.baseline.cache and distributed.is_main():
        store(model.cpu(), path)
    ctx.record.timings["baseline_s"] = time.perf_counter() - t0
    return model.to(ctx.device)
