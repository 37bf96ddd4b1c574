"""A per-module model of MACs and parameters as channels are removed, calibrated on fvcore.

fvcore counts a convolution as ``out * in / groups * k * Hout * Wout`` MACs, a Linear as ``out *
in`` and a norm layer as a multiple of its channels, so after one per-module count at the current
widths the MACs of any planned removal follow from the new widths alone: no forward pass. What
fvcore attributes to other modules (pooling, functional ops) is kept as a constant ``rest`` and
corrected whenever a real count is taken (:meth:`CostModel.calibrate`).

Widths are tracked per modelled module as ``out`` (output channels or features) and ``inpg`` (input
channels per convolution group; 1 for depthwise convolutions and norm layers), so that
``MACs_m = c_m * out_m * inpg_m``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from taylorprune.graph import ChannelGraph, ChannelGroup
from taylorprune.measure import module_macs
from taylorprune.pruning.verify import ATTENTION_REASON, heads_split

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)


def widths_of(module: nn.Module) -> tuple[int, int] | None:
    """``(out, inpg)`` of a modelled module, or None for modules the cost model does not scale."""
    if isinstance(module, _CONVS):
        depthwise = module.groups == module.in_channels == module.out_channels and module.groups > 1
        return module.out_channels, 1 if depthwise else module.in_channels // module.groups
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d):
        return module.num_features, 1
    if isinstance(module, nn.GroupNorm):
        return module.num_channels, 1
    return None


def _param_split(module: nn.Module) -> tuple[int, int]:
    """(parameters scaling with out*inpg, parameters scaling with out) of a modelled module."""
    if isinstance(module, (*_CONVS, nn.Linear)):
        bias = module.bias.numel() if module.bias is not None else 0
        return module.weight.numel(), bias
    return 0, sum(p.numel() for p in module.parameters(recurse=False))


class CostModel:
    """MACs and params of the model as a function of channels removed per group.

    ``modules`` are the modelled module names (convs, linears, norms); ``a_out[g, m]`` and
    ``a_in[g, m]`` say by how much one removed channel of group ``g`` shrinks ``out`` and ``inpg``
    of module ``m``.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor | Sequence[torch.Tensor],
        names: list[str],
    ) -> None:
        self.model = model
        self.example_inputs = example_inputs
        self.names = names
        self.index = {n: i for i, n in enumerate(names)}
        total, per_module = module_macs(model, example_inputs)
        widths = np.array([widths_of(model.get_submodule(n)) for n in names], dtype=np.float64)
        widths = widths.reshape(len(names), 2)
        self.out = widths[:, 0].copy()
        self.inpg = widths[:, 1].copy()
        macs = np.array([per_module.get(n, 0) for n in names], dtype=np.float64)
        self.c_macs = macs / np.maximum(self.out * self.inpg, 1.0)
        self.rest_macs = float(total) - float(macs.sum())
        split = np.array([_param_split(model.get_submodule(n)) for n in names], dtype=np.float64)
        split = split.reshape(len(names), 2)
        self.c_w = split[:, 0] / np.maximum(self.out * self.inpg, 1.0)
        self.c_b = split[:, 1] / np.maximum(self.out, 1.0)
        params = sum(p.numel() for p in model.parameters())
        self.rest_params = float(params) - float(split.sum())
        self.baseline_macs = int(total)
        self.baseline_params = int(params)

    # -- predictions -------------------------------------------------------------------------------
    def predict(self, d_out: np.ndarray, d_in: np.ndarray) -> tuple[float, float]:
        """(MACs, params) after shrinking ``out`` by ``d_out`` and ``inpg`` by ``d_in``."""
        out = self.out - d_out
        inpg = self.inpg - d_in
        macs = float(np.dot(self.c_macs, out * inpg)) + self.rest_macs
        params = float(np.dot(self.c_w, out * inpg) + np.dot(self.c_b, out)) + self.rest_params
        return macs, params

    def now(self) -> tuple[float, float]:
        zero = np.zeros_like(self.out)
        return self.predict(zero, zero)

    def prefix_metric(
        self,
        a_out: np.ndarray,
        a_in: np.ndarray,
        groups: np.ndarray,
        channels: np.ndarray,
        kind: str,
    ) -> Callable[[int], float]:
        """``metric(t)``: the MACs (``kind`` "macs") or params left after removing the first ``t``
        of a sequence of blocks (block ``i`` removes ``channels[i]`` channels of group
        ``groups[i]``; ``a_out``/``a_in``: each group's rows, see :class:`GroupInfo`)."""
        pick = 0 if kind == "macs" else 1
        ch = channels.astype(np.float64)

        def metric(t: int) -> float:
            k = np.bincount(groups[:t], weights=ch[:t], minlength=len(a_out))
            return self.predict(k @ a_out, k @ a_in)[pick]

        return metric

    def macs_per_channel(self, a_out: np.ndarray, a_in: np.ndarray) -> np.ndarray:
        """MACs saved per removed channel of each group at the current widths (first order)."""
        return a_out @ (self.c_macs * self.inpg) + a_in @ (self.c_macs * self.out)

    # -- updates -----------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read the widths of every modelled module (after a removal)."""
        for i, n in enumerate(self.names):
            self.out[i], self.inpg[i] = widths_of(self.model.get_submodule(n))

    def calibrate(self, macs: int | None = None, params: int | None = None) -> None:
        """Move the constant part so that the model reproduces a real count at current widths."""
        pred_macs, pred_params = self.now()
        if macs is not None:
            self.rest_macs += float(macs) - pred_macs
        if params is not None:
            self.rest_params += float(params) - pred_params


@dataclass
class GroupInfo:
    """What planning needs of one group, read once: its width at construction (``size0``), the
    channels tied across convolution groups (``ch_groups``: a ResNeXt's, else 1), by how much one
    of its channels shrinks each modelled module's ``out`` and ``inpg`` (``a_out``, ``a_in``:
    rows of :class:`CostModel`'s matrices) and the layers whose width it sets that split into
    attention heads (``heads``)."""

    size0: int
    ch_groups: int
    a_out: np.ndarray = field(repr=False)
    a_in: np.ndarray = field(repr=False)
    heads: tuple[str, ...] = ()


def probe_group(graph: ChannelGraph, cost: CostModel, group: ChannelGroup) -> GroupInfo:
    """:class:`GroupInfo` of ``group``, from torch-pruning's group of its first channel."""
    dg, model = graph.dg, graph.model
    m = len(cost.names)
    a_out, a_in = np.zeros(m), np.zeros(m)
    ch_groups = 1
    heads: list[str] = []
    for dep, idxs in graph.tp_group(group, [0]):
        module = dep.target.module
        if isinstance(module, nn.Parameter):
            continue
        name = graph.names.get(module)
        if name is not None and name not in heads:
            parent = model.get_submodule(name.rpartition(".")[0]) if name else None
            if heads_split(module, parent):
                heads.append(name)
        is_out = dg.is_out_channel_pruning_fn(dep.handler)
        pruner = dg.get_pruner_of_module(module)
        depthwise = isinstance(module, _CONVS) and (
            module.groups == module.out_channels and module.groups > 1
        )
        if pruner is not None and not depthwise:
            try:
                getter = pruner.get_out_channel_groups if is_out else pruner.get_in_channel_groups
                ch_groups = max(ch_groups, int(getter(module) or 1))
            except (AttributeError, TypeError):
                pass
        i = cost.index.get(name) if name is not None else None
        if i is None:
            continue
        mult = float(len(idxs))
        if is_out or depthwise or isinstance(module, _NORMS):
            a_out[i] = max(a_out[i], mult)
        else:
            a_in[i] = max(a_in[i], mult / getattr(module, "groups", 1))
    return GroupInfo(group.size, ch_groups, a_out, a_in, tuple(heads))


def probe_groups(
    graph: ChannelGraph, cost: CostModel, groups: Sequence[ChannelGroup]
) -> dict[str, GroupInfo]:
    """:class:`GroupInfo` per group root, for the groups that may be pruned: a group that sets the
    width of attention layers is left whole in ``graph`` instead. What is left of such a width
    would be re-split evenly into the heads, moving channels between heads and changing the
    attention scale: the result is not the model minus some channels, and no fix-up afterwards
    makes it so."""
    out = {}
    for g in groups:
        info = probe_group(graph, cost, g)
        if info.heads:
            graph.leave_whole(g, ATTENTION_REASON)
        else:
            out[g.root] = info
    return out
