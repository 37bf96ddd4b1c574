"""Structural pruning: global channel ranking, physical removal, targets, schedules.

See ``docs/pruning.md``.
"""

from taylorprune.pruning.api import prune, prune_iteratively
from taylorprune.pruning.optim import remap_optimizer, reset_momentum
from taylorprune.pruning.pruner import PruneStep, StopReason, StructuredPruner, find_classifier
from taylorprune.pruning.targets import Target
from taylorprune.pruning.tp_importance import ScoreImportance

__all__ = [
    "PruneStep",
    "ScoreImportance",
    "StopReason",
    "StructuredPruner",
    "Target",
    "find_classifier",
    "prune",
    "prune_iteratively",
    "remap_optimizer",
    "reset_momentum",
]
