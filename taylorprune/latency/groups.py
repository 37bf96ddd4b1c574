"""Channel groups of torch-pruning's graph as the latency selection sees them.

For each group, one channel of its root is probed with ``ChannelGraph.tp_group(group, [0])``: every
table layer whose output channels it removes is an *out* layer, every one whose input channels it
removes an *in* layer, with the number of that layer's channels one group channel accounts for (1,
or ``H*W`` for a Linear reading a flattened feature map). Tied layers (depthwise convolutions,
norms) count as out layers. The BatchNorm merged into a convolution is timed with it and needs no
entry of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from taylorprune.graph import ChannelGraph, ChannelGroup
from taylorprune.latency.selection import LatencyGroup
from taylorprune.latency.table import LatencyTable


def layer_effects(
    graph: ChannelGraph, group: ChannelGroup, table: LatencyTable
) -> tuple[dict[str, int], dict[str, int]]:
    """``(out_layers, in_layers)`` of ``group``: table layers and channels per group channel."""
    out: dict[str, int] = {}
    inp: dict[str, int] = {}
    for dep, idxs in graph.tp_group(group, [0]):
        module = dep.target.module
        if isinstance(module, nn.Parameter):
            continue
        name = graph.names.get(module)
        entry = table.entries.get(name) if name is not None else None
        if entry is None:
            continue
        side = out if entry.layer.tied or graph.dg.is_out_channel_pruning_fn(dep.handler) else inp
        side[name] = max(side.get(name, 0), len(idxs))
    return out, inp


def latency_groups(
    graph: ChannelGraph,
    groups: Sequence[ChannelGroup],
    table: LatencyTable,
    scores: Mapping[str, Any] | None = None,
    baseline_units: Mapping[str, int] | None = None,
) -> list[LatencyGroup]:
    """A :class:`LatencyGroup` per channel group, one unit per channel.

    ``scores[root]`` gives one saliency per channel of the group rooted at ``root`` (zeros when
    missing: such groups are cut only where the others cannot meet the budget). Groups of grouped
    convolutions (several channels per unit) are the pruner's to build.
    """
    out = []
    for g in groups:
        s = None if scores is None else scores.get(g.root)
        s = np.zeros(g.size) if s is None else np.asarray(torch.as_tensor(s).double().reshape(-1))
        if len(s) != g.size:
            raise ValueError(f"scores of group {g.root!r}: expected {g.size}, got {len(s)}")
        o, i = layer_effects(graph, g, table)
        base = None if baseline_units is None else baseline_units.get(g.root)
        out.append(LatencyGroup(g.root, s, o, i, baseline_units=base))
    return out
