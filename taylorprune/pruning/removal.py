"""Physical removal of channels: the one code path that takes channels out of a model, and what a
removal reports.

:func:`remove_channels` removes given channels of given groups through torch-pruning's dependency
graph and checks that the widths changed as asked. The pruner calls it on its model; a latency
target's trial copies and the latency tools call it through :func:`pruned_copy` on a copy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from taylorprune._clean_copy import clean_copy
from taylorprune.errors import UserError
from taylorprune.graph import ChannelGraph, ChannelGroup
from taylorprune.pruning.cost import widths_of
from taylorprune.pruning.optim import Lineage
from taylorprune.pruning.targets import Target


@dataclass(frozen=True)
class StopReason:
    """Why a target was not reached: ``code`` is ``"constraints"`` or ``"granularity"``;
    ``achieved`` is the fraction of the baseline kept when the step ended (None while planning)."""

    code: str
    message: str
    achieved: float | None = None

    def describe(self, target: Target) -> str:
        """One line for the user: where pruning stopped against ``target``, and why."""
        where = "" if self.achieved is None else f" at {self.achieved:.3f} of"
        return (
            f"pruning stopped{where} baseline {target.kind} (target {target.keep:.3f}): "
            f"{self.message}"
        )


@dataclass
class PruneStep:
    """One physical removal.

    ``removed[root]`` lists removed channel indices of the group rooted at ``root`` (indices before
    the step); ``kept[root]`` the kept ones (a long tensor, for every group at the step's start,
    identity for untouched groups), which is what score accumulators need to realign. ``macs`` and
    ``params`` are the model's totals after the step (batch 1); ``counted`` says whether ``macs``
    comes from a real fvcore count rather than the calibrated cost model.
    """

    channels_removed: int
    removed: dict[str, list[int]]
    kept: dict[str, torch.Tensor]
    macs: int
    params: int
    counted: bool = False
    stopped_short: StopReason | None = None


def remove_channels(
    graph: ChannelGraph,
    groups: Sequence[ChannelGroup],
    channels: Mapping[str, Sequence[int]],
    lineage: Lineage | None = None,
) -> tuple[dict[str, list[int]], dict[str, torch.Tensor]]:
    """Remove ``channels[root]`` (indices of the group's root) from each of ``groups`` of
    ``graph``'s model, coupled channels included. With ``lineage`` what each removal keeps is
    recorded (for the optimizer to follow). Returns ``(removed, kept)`` as :class:`PruneStep` holds
    them. Raises :class:`UserError` if torch-pruning left a width other than asked."""
    removed: dict[str, list[int]] = {}
    kept: dict[str, torch.Tensor] = {}
    model = graph.model
    for g in groups:
        idxs = sorted(int(i) for i in channels.get(g.root, ()))
        mask = torch.ones(g.size, dtype=torch.bool)
        mask[idxs] = False
        kept[g.root] = mask.nonzero().flatten()
        if not idxs:
            continue
        removed[g.root] = idxs
        tp_group = graph.tp_group(g, idxs)
        if lineage is not None:
            lineage.prune_group(tp_group)
        else:
            tp_group.prune()
        now = widths_of(model.get_submodule(g.root))
        if now is None or now[0] != g.size - len(idxs):
            raise UserError(
                f"layer {g.root!r}: torch-pruning did not remove the requested channels "
                f"(width {g.size} -> {now and now[0]}, expected {g.size - len(idxs)})"
            )
    return removed, kept


def pruned_copy(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    channels: Mapping[str, Sequence[int]],
    *,
    ignored: Sequence[str] = (),
    include: Sequence[str] | None = None,
) -> nn.Module:
    """A copy of ``model`` (in eval mode, without hooks or gradients) with ``channels[root]``
    removed from the group rooted at ``root`` (the groups of a :class:`ChannelGraph` of the copy
    built with ``ignored`` and ``include``), by :func:`remove_channels`."""
    copy = clean_copy(model)
    graph = ChannelGraph(copy, example_inputs, list(ignored), include)
    remove_channels(graph, graph.groups(), channels)
    return copy


def merge_steps(first: PruneStep, second: PruneStep) -> PruneStep:
    """One step equivalent to ``first`` then ``second`` (indices as before ``first``)."""
    removed = {k: list(v) for k, v in first.removed.items()}
    kept = {}
    for root, k1 in first.kept.items():
        k2 = second.kept.get(root)
        k = k1 if k2 is None else k1[k2]
        kept[root] = k
        gone = sorted(set(k1.tolist()) - set(k.tolist()))
        if gone:
            removed[root] = sorted(set(removed.get(root, [])) | set(gone))
    return PruneStep(
        channels_removed=first.channels_removed + second.channels_removed,
        removed=removed,
        kept=kept,
        macs=second.macs,
        params=second.params,
        counted=second.counted,
        stopped_short=second.stopped_short,
    )


def group_scores_after(
    group_scores: Mapping[str, torch.Tensor], step: PruneStep
) -> dict[str, torch.Tensor]:
    """Scores re-indexed to the groups' widths after ``step`` (kept channels only)."""
    out = {}
    for root, s in group_scores.items():
        kept = step.kept.get(root)
        out[root] = s if kept is None else torch.as_tensor(s)[kept]
    return out
