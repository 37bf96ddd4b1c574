"""torch-pruning's importances as criteria, so they run under the same schedule as ours.

Each criterion hands torch-pruning's own importance class the torch-pruning group of one of our
channel groups (every coupled layer, as torch-pruning builds it) and takes its scores with its own
reduction over the group's layers, but without a normalisation of its own (``normalizer=None``):
ranking is then decided by ``pruning.normalize`` as for every other criterion, so that raw, group
mean and per-MAC ranking are all on offer (torch-pruning's default ranking divides each group by
its mean: ``pruning.normalize: mean``). They need the pruner's channel graph
(``ImportanceAccumulator(..., graph=...)``, which :func:`~taylorprune.pruning.schedule.run_schedule`
passes); groups torch-pruning scores as ``None`` (e.g. no BatchNorm for ``tp_bn_scale``) are never
pruned.

``tp_taylor`` (``GroupTaylorImportance``) reads ``.grad``: the accumulator sums every parameter's
gradient over the scoring window, and the importance sees the window's mean gradient, as in
torch-pruning's examples where ``loss.backward()`` runs over a few minibatches before pruning.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from taylorprune.errors import UserError
from taylorprune.importance.criteria import CRITERIA, Criterion, GroupWeights


class TorchPruningCriterion(Criterion):
    """Base: scores a group with ``self.importance()`` (a ``tp.importance.Importance``)."""

    needs_graph = True

    def importance(self) -> Any:
        raise NotImplementedError

    def static_score(self, weights: GroupWeights, generator: torch.Generator) -> Tensor:
        if weights.tp_group is None:
            raise UserError(
                f"{self.name}: torch-pruning's importances need the pruner's channel graph "
                "(score through a StructuredPruner)"
            )
        if not hasattr(self, "_imp"):
            self._imp = self.importance()
        scores = self._imp(weights.tp_group())
        if scores is None:
            return torch.full((weights.size,), float("inf"))
        return scores.detach().float().cpu().reshape(-1)


@CRITERIA.register("tp_magnitude")
class TPMagnitude(TorchPruningCriterion):
    """torch-pruning's ``MagnitudeImportance``: L2 of every coupled weight slice, mean over the
    group's layers."""

    name = "tp_magnitude"

    def importance(self) -> Any:
        import torch_pruning as tp

        return tp.importance.MagnitudeImportance(normalizer=None)


@CRITERIA.register("tp_bn_scale")
class TPBNScale(TorchPruningCriterion):
    """torch-pruning's ``BNScaleImportance``: ``|γ|`` of the group's BatchNorms, mean over
    them."""

    name = "tp_bn_scale"

    def importance(self) -> Any:
        import torch_pruning as tp

        return tp.importance.BNScaleImportance(normalizer=None)


@CRITERIA.register("tp_taylor")
class TPTaylor(TorchPruningCriterion):
    """torch-pruning's ``GroupTaylorImportance``: ``Σ|w·∂L/∂w|`` over the coupled weights with the
    window's mean gradient, mean over layers."""

    name = "tp_taylor"
    needs = frozenset({"param_grad"})

    def importance(self) -> Any:
        import torch_pruning as tp

        return tp.importance.GroupTaylorImportance(normalizer=None)
