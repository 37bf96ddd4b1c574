"""taylorprune: structured pruning of CNNs driven by Taylor-expansion importance.

The public API: the primitives (score channels, remove them to a target, count, save and load)
and :func:`run` for the recipe pipeline. Everything else is reached through its module
(``taylorprune.models.build_model``, ``taylorprune.data.build_data``,
``taylorprune.measure.latency``, ``taylorprune.report.write_report``, ...).
"""

from taylorprune._lazy import lazy_names
from taylorprune._version import __version__
from taylorprune.errors import UserError

# Loaded on first use: the primitives bring in torch-pruning (and through it timm and torchvision),
# several seconds that commands such as ``validate`` never need; the pipeline also data loading,
# training and reporting.
_LAZY = {
    "CRITERIA": "taylorprune.importance",
    "ChannelGraph": "taylorprune.graph",
    "Criterion": "taylorprune.importance",
    "StructuredPruner": "taylorprune.pruning",
    "Target": "taylorprune.pruning",
    "channel_scores": "taylorprune.importance",
    "count": "taylorprune.measure",
    "load_pruned": "taylorprune.serialization",
    "prune": "taylorprune.pruning",
    "run": "taylorprune.runner",
    "save_pruned": "taylorprune.serialization",
}

__all__ = [
    "CRITERIA",
    "ChannelGraph",
    "Criterion",
    "StructuredPruner",
    "Target",
    "UserError",
    "__version__",
    "channel_scores",
    "count",
    "load_pruned",
    "prune",
    "run",
    "save_pruned",
]


__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())
