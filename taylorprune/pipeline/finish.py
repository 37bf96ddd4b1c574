"""Phase 4, measure and report: per-layer widths, latency, the pruned model and ``report.json``
(the report's fields are documented in ``docs/report.md``)."""

from __future__ import annotations

import datetime as _dt
import logging
import time
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

import taylorprune.distributed as distributed
from taylorprune._version import __version__
from taylorprune.measure import CONVENTION, compare_latency, layer_table, per_layer
from taylorprune.pipeline.context import RunContext
from taylorprune.pipeline.prune import calibration
from taylorprune.report import write_report
from taylorprune.serialization import save_pruned

log = logging.getLogger("taylorprune")


def finish_phase(ctx: RunContext, reference: nn.Module, model: nn.Module, t_start: float) -> dict:
    """Measure ``model`` (pruned and fine-tuned, on the CPU) against ``reference`` (the baseline),
    save it and write the report; returns the report (an empty dict on ranks other than 0)."""
    layers = layer_table(per_layer(reference, ctx.example), per_layer(model, ctx.example))
    consistency = _consistency(model)
    test = _test(ctx, reference, model)  # every rank evaluates its share
    if not distributed.is_main():
        return {}
    latency = _latency(ctx, reference, model)
    latency_target = _latency_target(ctx)
    opts = ctx.options
    save_pruned(
        model,
        ctx.out_dir / "model.pt",
        arch=ctx.arch,
        recipe=opts.name,
        criterion=_criterion(ctx),
        input_shape=list(ctx.data.input_shape),
    )
    ctx.record.add_time("total_s", time.perf_counter() - t_start)
    report = assemble(ctx, layers, latency, consistency, latency_target, test)
    write_report(ctx.out_dir, report, plots=ctx.plots)
    return report


def assemble(
    ctx: RunContext,
    layers: list[dict[str, Any]],
    latency: dict[str, Any] | None,
    consistency: dict[str, Any] | None,
    latency_target: dict[str, Any] | None = None,
    test: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report of a finished run, from its record and the measurements (``latency``: the
    final model against the baseline; ``latency_target``: a latency target's trials; ``test``:
    :func:`_test`'s)."""
    rec, opts = ctx.record, ctx.options
    assert rec.baseline and rec.pruned and rec.finetuned and rec.target
    b, ft = rec.baseline, rec.finetuned
    target = opts.prune.target
    achieved = {
        "macs": ft.macs / b.macs,
        "params": ft.params / b.params,
        "channels": rec.target["channels_kept"],
        "latency": latency["fraction"] if latency_target and latency else None,
    }[target.kind]
    return {
        "taylorprune_version": __version__,
        "recipe": opts.name,
        "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "convention": CONVENTION,
        "input_shape": list(ctx.data.input_shape),
        "device": str(ctx.device),
        "criterion": _criterion(ctx),
        "validation": _validation(ctx),
        "baseline": asdict(b),
        "pruned": asdict(rec.pruned),
        "finetuned": asdict(ft),
        "test": test,
        "reduction": {
            "macs": 1 - ft.macs / b.macs,
            "params": 1 - ft.params / b.params,
            "top1_drop": b.top1 - ft.top1,
        },
        "target": {
            "kind": target.kind,
            "keep": target.keep,
            "achieved_keep": achieved,
            "stopped_short": None if rec.target["reached"] else rec.target["stopped_short"],
            "overshot": rec.target.get("overshot"),
            "left_whole": rec.target.get("left_whole", []),
        },
        "well_fit": ctx.record.well_fit,
        "distill": _distill(ctx),
        "steps": rec.steps,
        "layers": layers,
        "latency": latency,
        "latency_target": latency_target,
        "distributed": consistency,
        "metrics": rec.metrics,
        "timings": rec.timings,
    }


def _criterion(ctx: RunContext) -> str:
    """The criterion that scored the channels: the recipe's, unless the well-fit reading chose."""
    fit = ctx.record.well_fit
    return str(ctx.options.prune.scoring.criterion) if fit is None else fit["criterion"]


def _validation(ctx: RunContext) -> dict[str, Any]:
    """Which split every top-1 of the report (stages, steps, metrics) was measured on."""
    holdout = ctx.data.val_split == "holdout"
    prune = ctx.options.prune
    recalibration = None
    if prune.bn_recalibration:
        loader = calibration(ctx)
        recalibration = len(loader.dataset)  # type: ignore[arg-type]
    return {
        "split": ctx.data.val_split,
        "size": len(ctx.data.val.dataset),  # type: ignore[arg-type]
        "holdout_seed": ctx.options.data["holdout_seed"] if holdout else None,
        "bn_recalibration_images": recalibration,
    }


def _distill(ctx: RunContext) -> dict[str, Any] | None:
    """How the pruned model learnt from the baseline, and what its teacher's forward passes
    cost; None without ``finetune.distill``."""
    d = ctx.options.finetune.train.distill
    if d is None:
        return None
    return {
        "teacher": "baseline",
        "weight": d.weight,
        "temperature": d.temperature,
        "while_pruning": d.while_pruning,
        "teacher_s": ctx.record.timings.get("distill_teacher_s", 0.0),
    }


def _test(ctx: RunContext, reference: nn.Module, model: nn.Module) -> dict[str, Any] | None:
    """Baseline and final model on the test split, when ``measure.test`` asks (never used for
    any choice during the run)."""
    loader = ctx.data.test
    if not ctx.options.measure.test or loader is None:
        return None
    figures = {}
    for key, net in (("baseline", reference), ("finetuned", model)):
        figures[key] = ctx.evaluate(net.to(ctx.device), loader)
        net.cpu()
    return {"size": len(loader.dataset), **figures}  # type: ignore[arg-type]


def _latency(ctx: RunContext, reference: nn.Module, model: nn.Module) -> dict[str, Any] | None:
    """The final model against the baseline, timed side by side on the ``measure`` settings:
    the report's one latency reading (a latency target is judged on it too)."""
    m = ctx.options.measure
    if not m.latency and ctx.options.prune.latency is None:
        return None
    t = m.timing
    example = torch.randn(t.batch_size, *ctx.data.input_shape)
    return compare_latency(
        reference, model, example, runs=m.runs, warmup=m.warmup, threads=t.threads,
        channels_last=t.channels_last, device=t.device, dtype=t.dtype, copies=m.copies,
    )  # fmt: skip


def _latency_target(ctx: RunContext) -> dict[str, Any] | None:
    """For a latency target: its settings, table and trials, recorded while pruning."""
    if ctx.options.prune.latency is None or ctx.record.latency is None:
        return None
    return {**ctx.record.latency, "keep": ctx.options.prune.target.keep}


def _consistency(model: nn.Module) -> dict[str, Any] | None:
    """Per-rank digests of the final model: equal on every rank, or the run says so."""
    if not distributed.active():
        return None
    digests = distributed.gather(distributed.digest(model))
    if len(set(digests)) != 1:
        log.warning("ranks ended with different models: %s", digests)
    return {
        "world_size": distributed.world_size(),
        "backend": str(torch.distributed.get_backend()),
        "model_digests": digests,
        "ranks_agree": len(set(digests)) == 1,
    }
