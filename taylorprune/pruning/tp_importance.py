"""Our channel scores as a torch-pruning importance, for use with ``tp.pruner.MetaPruner``."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch_pruning as tp
from torch import nn


class ScoreImportance(tp.importance.Importance):
    """Serves precomputed scores ``{root module name: 1-D tensor over its output channels}``.

    torch-pruning calls the importance with a group whose first item is the root; the scores
    returned are those of the root's channels ``group[0].root_idxs`` (after a concatenation they
    differ from ``idxs``). Groups not rooted at a scored module get ``None``, which torch-pruning
    skips.
    """

    def __init__(self, model: nn.Module, scores: Mapping[str, torch.Tensor]) -> None:
        self.names = {m: n for n, m in model.named_modules()}
        self.scores = dict(scores)

    def __call__(self, group: tp.Group) -> torch.Tensor | None:
        dep, _ = group[0]
        name = self.names.get(dep.target.module)
        if name is None or name not in self.scores:
            return None
        # Membership, not identity: torch-pruning's functions are bound methods, new on each access.
        if not group._DG.is_out_channel_pruning_fn(dep.handler):
            return None
        root_idxs = [int(i) for i in group[0].root_idxs]
        return torch.as_tensor(self.scores[name]).detach().float().cpu()[root_idxs]
