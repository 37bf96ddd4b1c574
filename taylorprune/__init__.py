"""taylorprune: structured pruning of CNNs driven by Taylor-expansion importance.

The public API; everything else is reachable through the submodules.
"""

from taylorprune._version import __version__
from taylorprune.data import DATASETS, DataBundle, build_data
from taylorprune.errors import UserError
from taylorprune.importance import (
    CRITERIA,
    DEFAULT_CRITERION,
    ImportanceAccumulator,
    channel_scores,
)
from taylorprune.measure import CONVENTION, compare_latency, count, latency, layer_table, per_layer
from taylorprune.models import MODELS, build_model, parse_model_string
from taylorprune.pruning import (
    StructuredPruner,
    Target,
    prune,
    prune_iteratively,
    remap_optimizer,
    reset_momentum,
)
from taylorprune.recipe import Recipe, load_recipe
from taylorprune.report import format_summary, write_report
from taylorprune.runner import run
from taylorprune.serialization import export_onnx, load_pruned, save_pruned

__all__ = [
    "CONVENTION",
    "CRITERIA",
    "DATASETS",
    "DEFAULT_CRITERION",
    "MODELS",
    "DataBundle",
    "ImportanceAccumulator",
    "Recipe",
    "StructuredPruner",
    "Target",
    "UserError",
    "__version__",
    "build_data",
    "build_model",
    "channel_scores",
    "compare_latency",
    "count",
    "export_onnx",
    "format_summary",
    "latency",
    "layer_table",
    "load_pruned",
    "load_recipe",
    "parse_model_string",
    "per_layer",
    "prune",
    "prune_iteratively",
    "remap_optimizer",
    "reset_momentum",
    "run",
    "save_pruned",
    "write_report",
]
