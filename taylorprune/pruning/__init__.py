"""Structural pruning: global channel ranking, physical removal, targets, schedules.

See ``docs/pruning.md``. The names below load their module on first use, so that reading a
recipe (which needs only :mod:`taylorprune.pruning.targets`) does not import torch-pruning.
"""

from taylorprune._lazy import lazy_names

_LAZY = {
    "LatencySetup": "taylorprune.latency.setup",
    "PruneStep": "taylorprune.pruning.removal",
    "ScoreImportance": "taylorprune.pruning.tp_importance",
    "StopReason": "taylorprune.pruning.removal",
    "StructuredPruner": "taylorprune.pruning.pruner",
    "Target": "taylorprune.pruning.targets",
    "find_classifier": "taylorprune.pruning.verify",
    "prune": "taylorprune.pruning.api",
    "prune_iteratively": "taylorprune.pruning.api",
    "remap_optimizer": "taylorprune.pruning.optim",
    "reset_momentum": "taylorprune.pruning.optim",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())
