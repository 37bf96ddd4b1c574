"""``taylorprune validate RECIPE... [--set key=value ...] [--print]``: check recipes, run nothing.

Each file is loaded like ``taylorprune run`` would load it (bases, overrides, schema), its
registry names (criterion, dataset, builtin model) are looked up and the dataset's options
(``data.kwargs``) are checked against the dataset's parameters. Nothing is read from the data or
model files, so a recipe for another machine validates here too. One line per file: ``PATH: ok``
on stdout, or the reason on stderr. Exit code 0 when every file is valid, 2 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from taylorprune.commands import add_overrides_argument
from taylorprune.errors import UserError
from taylorprune.recipe import Recipe, load_recipe


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "validate",
        help="check recipe files without running them",
        description="Load, merge and validate recipes; exit 2 if any is invalid.",
    )
    p.add_argument("recipes", type=Path, nargs="+", metavar="RECIPE", help="recipe YAML files")
    add_overrides_argument(p, "override a recipe value before validating (repeatable), as for run")
    p.add_argument(
        "--print",
        dest="print_resolved",
        action="store_true",
        help="print each valid recipe fully resolved (YAML) instead of 'ok'",
    )


def check_names(recipe: Recipe, source: str) -> None:
    """Look up the recipe's registry names and check the dataset's options, so that a typo or a
    wrong type fails here rather than mid-run.

    Raises:
        UserError: ``<source>: <key path>: ...``; an unknown name comes with the nearest valid one.
    """
    from taylorprune.importance import CRITERIA
    from taylorprune.models import BUILTIN

    def look(key: str, lookup: Callable[[], object]) -> None:
        try:
            lookup()
        except UserError as err:
            raise UserError(f"{source}: {key}: {err}") from None

    look("importance.criterion", lambda: CRITERIA.get(recipe.importance.criterion))
    if recipe.model.source == "builtin" and recipe.model.name:
        look("model.name", lambda: BUILTIN.get(recipe.model.name))
    from taylorprune.data import DATASETS, dataset_options

    look("data.name", lambda: DATASETS.get(recipe.data.name))
    try:
        dataset_options(recipe.data.name, recipe.data.kwargs)
    except UserError as err:
        raise UserError(f"{source}: {err}") from None


def main(args: argparse.Namespace) -> int:
    bad = 0
    for path in args.recipes:
        try:
            recipe = load_recipe(path, args.overrides)
            check_names(recipe, str(path))
        except UserError as err:
            bad += 1
            print(f"taylorprune: error: {err}", file=sys.stderr)
            continue
        if args.print_resolved:
            print(f"# {path}")
            print(recipe.resolved_yaml(), end="")
        else:
            print(f"{path}: ok")
    return 2 if bad else 0
