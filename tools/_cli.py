"""The command-line arguments the tools share, defined once.

A function per group adds its arguments to a tool's parser; what differs between tools (a default,
a help text) is passed in, so that every tool spells a shared flag the same way and its docs stay
true. Tool-specific arguments stay in the tool.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from taylorprune.cli import reader_gone
from taylorprune.commands import positive_int  # noqa: F401  (the tools' argparse type)

#: Where the tools write their results by default: ``tools/results/<name>`` of this checkout.
RESULTS = Path(__file__).resolve().parent / "results"


def add_out(parser: argparse.ArgumentParser, name: str) -> None:
    """``--out``: the results folder (a ``Path``), by default ``tools/results/<name>``."""
    parser.add_argument(
        "--out", type=Path, default=RESULTS / name, help=f"results folder (tools/results/{name})"
    )


def add_threads(parser: argparse.ArgumentParser, default: int) -> None:
    """``--threads``: torch's CPU threads (1 on a machine shared with other work)."""
    parser.add_argument("--threads", type=int, default=default, help="torch threads")


def add_smoke(parser: argparse.ArgumentParser, help: str) -> None:
    """``--smoke``: the tool's seconds-long mode (``help`` says what it shrinks)."""
    parser.add_argument("--smoke", action="store_true", help=help)


def add_seeds(
    parser: argparse.ArgumentParser, default: int | Sequence[int] | None, help: str | None = None
) -> None:
    """``--seeds``: how many seeds (an int, or None for the tool's own choice) or, with a list as
    ``default``, which seeds (``--seeds 0 1 2``)."""
    if isinstance(default, Sequence):
        parser.add_argument("--seeds", type=int, nargs="+", default=list(default), help=help)
    else:
        parser.add_argument("--seeds", type=int, default=default, help=help)


def add_seed(parser: argparse.ArgumentParser, default: int = 0) -> None:
    """``--seed``: the one seed of a measurement."""
    parser.add_argument("--seed", type=int, default=default)


def add_jobs(parser: argparse.ArgumentParser) -> None:
    """``--shard i/n`` (every n-th job from the i-th, 0-based, for processes side by side) and
    ``--report-only`` (the report from the results on disk, no job run)."""
    parser.add_argument(
        "--shard", type=shard, default=(0, 1), help="i/n: every n-th job from the i-th"
    )
    parser.add_argument("--report-only", action="store_true")


def shard(text: str) -> tuple[int, int]:
    """``"i/n"`` as ``(i, n)`` with ``0 <= i < n``; anything else is an argparse type error."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected i/n, got {text!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"expected 0 <= i < n, got {text!r}")
    return i, n


def add_recipe(parser: argparse.ArgumentParser, default: Path | None, help: str) -> None:
    """``--recipe``: the recipe a tool runs or whose baseline it studies (a ``Path``)."""
    parser.add_argument("--recipe", type=Path, default=default, help=help)


def add_timed_model(
    parser: argparse.ArgumentParser,
    *,
    model: str = "torchvision:resnet50",
    input_size: Sequence[int] = (3, 224, 224),
    batch_size: int = 16,
) -> None:
    """``--model`` (a model string, as ``taylorprune measure`` takes), ``--input-size C H W`` and
    ``--batch-size``: the model a latency benchmark times and the batch it times it at."""
    parser.add_argument("--model", default=model)
    parser.add_argument("--input-size", type=int, nargs=3, default=list(input_size))
    parser.add_argument("--batch-size", type=int, default=batch_size)


def run(main: Callable[[], int | None]) -> NoReturn:
    """Exit with ``main()``'s status; a reader that went away (``tools/x.py | head``) ends the tool
    quietly, as it ends ``taylorprune``."""
    try:
        status = main()
    except BrokenPipeError:
        status = reader_gone()
    sys.exit(status)
