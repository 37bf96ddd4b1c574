"""Recipes: the typed, validated description of a run, and how it is read from YAML files.

A recipe is a YAML file parsed once with :func:`load_recipe` into a :class:`Recipe` (pydantic,
strict about unknown keys). Every problem a user can make in a recipe raises
:class:`~taylorprune.errors.UserError` with one line naming the file, the key path and what is
wrong. See ``docs/recipes.md``.

- :mod:`~taylorprune.recipe.sections`: one model per section (:class:`TrainConfig`,
  :class:`PruningConfig`, ...) and the bounds on sizes.
- :mod:`~taylorprune.recipe.schema`: :class:`Recipe`, the whole file and the rules across sections.
- :mod:`~taylorprune.recipe.loading`: :func:`load_recipe`: files, ``base:`` chains, ``--set``
  overrides and the one-line errors.
"""

from taylorprune.recipe.loading import load_recipe
from taylorprune.recipe.schema import Recipe
from taylorprune.recipe.sections import (
    MAX_CLASSES,
    MAX_THREADS,
    BaselineConfig,
    DataConfig,
    DistillConfig,
    FinetuneConfig,
    ImportanceConfig,
    MeasureConfig,
    ModelConfig,
    PruningConfig,
    TrainConfig,
)

__all__ = [
    "MAX_CLASSES",
    "MAX_THREADS",
    "BaselineConfig",
    "DataConfig",
    "DistillConfig",
    "FinetuneConfig",
    "ImportanceConfig",
    "MeasureConfig",
    "ModelConfig",
    "PruningConfig",
    "Recipe",
    "TrainConfig",
    "load_recipe",
]
