"""``taylorprune run RECIPE [-o OUT] [--set key=value ...]``: one pruning run end to end."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from taylorprune.commands import add_overrides_argument


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run",
        help="prune a model as a recipe says",
        description="Train or load the baseline, score channels, prune, fine-tune, and report.",
    )
    p.add_argument("recipe", type=Path, help="recipe YAML file")
    p.add_argument(
        "-o", "--out", type=Path, default=None, help="output folder (default: runs/NAME/TIMESTAMP)"
    )
    add_overrides_argument(
        p, "override a recipe value, e.g. --set pruning.target.macs=0.5 (repeatable)"
    )
    p.add_argument(
        "--no-plots",
        action="store_true",
        help="write the report without its PNG plots (no matplotlib; report.md links none)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--overwrite", action="store_true", help="write into an output folder that has results"
    )
    mode.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in the output folder (-o) from its latest checkpoint",
    )


def main(args: argparse.Namespace) -> int:
    from taylorprune.errors import UserError
    from taylorprune.recipe import load_recipe
    from taylorprune.report import format_summary
    from taylorprune.runner import default_out_dir, run

    recipe = load_recipe(args.recipe, args.overrides)
    if args.resume and args.out is None:
        raise UserError("--resume needs -o OUT: the folder of the run to continue")
    out = args.out or default_out_dir(recipe)
    progress = not args.quiet and sys.stderr.isatty()
    report = run(
        recipe,
        out,
        progress=progress,
        overwrite=args.overwrite,
        resume=args.resume,
        plots=not args.no_plots,
    )
    if report and not args.quiet:  # in a distributed run only rank 0 has the report
        print(format_summary(report))
        print(f"results: {out}")
    return 0
