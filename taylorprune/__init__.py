"""taylorprune: structured pruning of CNNs driven by Taylor-expansion importance.

The public API; everything else is reachable through the submodules.
"""

from taylorprune.data import DATASETS, DataBundle, build_data
from taylorprune.errors import UserError
from taylorprune.importance import (
    CRITERIA,
    DEFAULT_CRITERION,
    ImportanceAccumulator,
    channel_scores,
)
from taylorprune.measure import compare_latency, count, latency, per_layer
from taylorprune.models import MODELS, build_model, parse_model_string
from taylorprune.pruning import StructuredPruner, Target, prune, remap_optimizer
from taylorprune.recipe import Recipe, load_recipe
from taylorprune.serialization import export_onnx, load_pruned, save_pruned

__version__ = "0.1.0"

__all__ = [
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
    "latency",
    "load_pruned",
    "load_recipe",
    "parse_model_string",
    "per_layer",
    "prune",
    "remap_optimizer",
    "save_pruned",
]
