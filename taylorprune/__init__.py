"""taylorprune: structured pruning of CNNs driven by Taylor-expansion importance.

The public API: the primitives (score channels, remove them to a target, count, save and load)
and :func:`run` for the recipe pipeline. Everything else is reached through its module
(``taylorprune.models.build_model``, ``taylorprune.data.build_data``,
``taylorprune.measure.latency``, ``taylorprune.report.write_report``, ...).
"""

from typing import Any

from taylorprune._version import __version__
from taylorprune.errors import UserError
from taylorprune.graph import ChannelGraph
from taylorprune.importance import CRITERIA, Criterion, channel_scores
from taylorprune.measure import count
from taylorprune.pruning import StructuredPruner, Target, prune
from taylorprune.serialization import load_pruned, save_pruned

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


def __getattr__(name: str) -> Any:
    # The recipe pipeline pulls in data loading, training and reporting: loaded on first use.
    if name == "run":
        from taylorprune.runner import run

        return run
    raise AttributeError(f"module 'taylorprune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
