"""Run a function in a forked child of the test process: a real process (its own exit status,
signals, resource limits and file descriptors) that starts from the imports already made, where
a fresh interpreter spends seconds importing torch and what follows it."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch


def run_forked(target: Callable[[], int], stderr: Path, *, timeout: float = 600.0) -> int:
    """Fork, send the child's stderr to the file ``stderr`` and exit it with ``target()``'s return
    value (1 on an exception, whose traceback goes to that file). Returns the child's exit code, or
    minus the signal that ended it, as ``subprocess`` does. A child still running after
    ``timeout`` seconds is killed and fails the test."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into the test process
        code = 1
        try:
            fd = os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 2)
            # the test process's sys.stderr is pytest's capture, not file descriptor 2
            sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
            # OpenMP's thread pool does not survive a fork: a parallel region of more than one
            # thread would wait for threads the child does not have
            torch.set_num_threads(1)
            code = target()
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"the forked child ran longer than {timeout} s")
        time.sleep(0.05)
