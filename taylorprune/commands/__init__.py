"""Subcommands of the ``taylorprune`` CLI, one module each."""

from __future__ import annotations

import argparse


def add_overrides_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.overrides``, shared by run and validate."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help
    )


def add_model_arguments(parser: argparse.ArgumentParser, input_help: str) -> None:
    """The model to read (``model``: a spec or a saved model file) and ``--input-size C H W``
    (``input_help`` says its default), shared by measure and latency-table."""
    parser.add_argument(
        "model", help="model spec, e.g. torchvision:resnet50, resnet20, run/model.pt"
    )
    parser.add_argument(
        "--input-size",
        nargs=3,
        type=positive_int,
        metavar=("C", "H", "W"),
        default=None,
        help=input_help,
    )


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (anything else: one line from argparse, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value
