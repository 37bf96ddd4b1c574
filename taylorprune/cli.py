"""The ``taylorprune`` command: ``run``, ``validate``, ``measure``, ``latency-table``.

Each subcommand lives in ``taylorprune/commands/<name>.py`` with ``add_parser(subparsers)`` and
``main(args) -> int``. Errors the user can fix (:class:`~taylorprune.errors.UserError`) become one
line on stderr and exit code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import signal
import sys
from collections.abc import Sequence

from taylorprune._version import __version__
from taylorprune.errors import UserError

COMMANDS = ("run", "validate", "measure", "latency_table")
EXIT_USER_ERROR = 2
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a killed writer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taylorprune",
        description="Structured pruning of CNNs driven by Taylor-expansion importance.",
    )
    parser.add_argument("--version", action="version", version=f"taylorprune {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or log lines")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"taylorprune.commands.{name}").add_parser(sub)
    return parser


def _configure_logging(quiet: bool, debug: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    if os.environ.get("RANK", "0") != "0":
        level = max(level, logging.WARNING)  # under torchrun only rank 0 reports progress
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("taylorprune")
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.quiet, args.debug)
    module = importlib.import_module(f"taylorprune.commands.{args.command.replace('-', '_')}")
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(module.main(args) or 0)
    except UserError as exc:
        if args.debug:
            raise
        print(f"taylorprune: error: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        if args.debug:
            raise
        kept = "; the last checkpoint is kept (continue with --resume)"
        print(f"taylorprune: interrupted{kept if args.command == 'run' else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return reader_gone()
    finally:
        signal.signal(signal.SIGTERM, previous)


def reader_gone() -> int:
    """The exit status once stdout's reader went away (``taylorprune measure ... | head``): not an
    error of ours, and Python would print a traceback when it flushes stdout at exit."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_BROKEN_PIPE


def _terminate(signum: int, _frame: object) -> None:
    """SIGTERM (a scheduler ending the job) stops the run like Ctrl-C: checkpoints stay intact."""
    raise KeyboardInterrupt(f"signal {signum}")


def _one_line(message: str) -> str:
    """``message`` on one line, without terminal escape codes (torch colours some errors)."""
    return " ".join(_ANSI_ESCAPE.sub("", message).split())


if __name__ == "__main__":
    sys.exit(main())
