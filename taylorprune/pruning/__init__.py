"""Structural pruning: global channel ranking, physical removal, targets, schedules.

See ``docs/pruning.md``.
"""

from taylorprune.latency.setup import LatencySetup
from taylorprune.pruning.api import prune, prune_iteratively
from taylorprune.pruning.optim import remap_optimizer, reset_momentum
from taylorprune.pruning.pruner import StructuredPruner
from taylorprune.pruning.removal import PruneStep, StopReason
from taylorprune.pruning.targets import Target
from taylorprune.pruning.tp_importance import ScoreImportance
from taylorprune.pruning.verify import find_classifier

__all__ = [
    "LatencySetup",
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
