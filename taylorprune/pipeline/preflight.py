"""Checks made before any work: what a later phase needs must be known to be possible before the
baseline trains, so that a run never fails after hours for a setting it could have refused at
once."""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, replace

import torch
from torch import nn

import taylorprune.distributed as distributed
from taylorprune.data import physical_memory
from taylorprune.errors import UserError
from taylorprune.importance import CRITERIA
from taylorprune.latency import check_budget, device_info
from taylorprune.measure import peak_activation_bytes
from taylorprune.pipeline.options import MeasureOptions, PruneOptions
from taylorprune.pruning import StructuredPruner

_FLOAT_BYTES = 4


def check_criterion(prune: PruneOptions) -> None:
    """An unknown criterion fails now, not after the baseline."""
    if isinstance(prune.scoring.criterion, str):
        CRITERIA.get(prune.scoring.criterion)


def check_reachable(model: nn.Module, example: torch.Tensor, prune: PruneOptions) -> None:
    """Refuse a target that the pruning constraints cannot reach.

    MACs and params depend on the architecture only, so removing every channel the constraints
    allow from a copy of the untrained model gives the smallest model the run can reach. So does
    latency, nearly: see :func:`check_latency_target`."""
    target = prune.target
    trial = copy.deepcopy(model).cpu()
    if target.kind == "latency":
        check_latency_target(trial, example, prune)
        return
    pruner = StructuredPruner(trial, example, verify=False, **asdict(prune.pruner))
    ones = {g.root: torch.ones(g.size) for g in pruner.groups()}
    step = pruner.remove_to_target(ones, target)
    if pruner.target_reached(target):
        return
    if step.stopped_short is not None and step.stopped_short.code == "constraints":
        p = prune.pruner
        raise UserError(
            f"pruning.target: keeping {target.keep:g} of the {target.kind} is unreachable: "
            f"the constraints (min_channels {p.min_channels}, max_fraction "
            f"{p.max_fraction:g}, round_to {p.round_to}, ignored layers) stop at "
            f"{pruner.fraction(target.kind):.3f}"
        )


def check_latency_target(model: nn.Module, example: torch.Tensor, prune: PruneOptions) -> None:
    """Refuse a latency target that cannot be timed or reached, before anything trains.

    The device must exist, a given table must come from this device with the run's settings and
    model; the table is built now otherwise (the prune phase then reads it from the cache), the
    untrained model timed, and the latency predicted with every group at its narrowest width
    must be within the target."""
    setup = prune.latency
    assert setup is not None
    if distributed.launched():
        raise UserError(
            "pruning.target: a latency target is timed on one process; run it without "
            "torchrun (distributed runs take macs, params or channels)"
        )
    try:
        device_info(setup.settings)
    except UserError as exc:
        raise UserError(f"measure.device: {exc}") from None
    quick = replace(setup, runs=3)  # the baseline's timing here only anchors the prediction
    pruner = StructuredPruner(model, example, verify=False, latency=quick, **asdict(prune.pruner))
    assert pruner.latency is not None
    baseline = pruner.latency.baseline_ms
    try:
        check_budget(
            prune.target.keep * baseline, pruner.closest_latency(), baseline, pruner.constraints
        )
    except UserError as exc:
        raise UserError(f"pruning.target: {exc}") from None


def check_latency_batch(
    model: nn.Module, example: torch.Tensor, measure: MeasureOptions, device: torch.device
) -> None:
    """Refuse a latency batch that cannot fit in memory: its inputs plus the activations of one
    forward pass (measured on one example, scaled by the batch) against the machine's memory (and
    the GPU's, on a GPU run)."""
    if not measure.latency:
        return
    per_example = _FLOAT_BYTES * math.prod(example.shape[1:]) + peak_activation_bytes(
        model, example
    )
    batch = measure.timing.batch_size
    need = batch * per_example
    limits = {"memory": physical_memory()}
    if device.type == "cuda":
        limits["GPU memory"] = torch.cuda.get_device_properties(device).total_memory
    for what, limit in limits.items():
        if limit and need > limit:
            raise UserError(
                f"measure.latency_batch_size: {batch} inputs of shape "
                f"{tuple(example.shape[1:])} need about {need / 2**30:.3g} GiB to time, more "
                f"than this machine's {limit / 2**30:.3g} GiB of {what}; lower it"
            )
