"""The command line itself (and the tools'): what it prints when interrupted or when its reader
goes away."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from taylorprune import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "args",
    [
        ["-m", "taylorprune", "measure", "resnet20", "--input-size", "3", "8", "8", "--per-layer"],
        ["tools/bench_quality.py", "--status"],  # a tool, on the study's committed results
    ],
    ids=["taylorprune", "tool"],
)
def test_a_closed_pipe_ends_quietly_without_a_traceback(args):
    """``... | head -0``: the reader is gone before anything is written."""
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    proc.stdout.close()  # before the interpreter has even started: every write fails with EPIPE
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=300) == cli.EXIT_BROKEN_PIPE
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_an_interrupted_measure_does_not_mention_resume(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("taylorprune.commands.measure.main", interrupted)
    assert cli.main(["measure", "resnet20"]) == cli.EXIT_INTERRUPTED
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["taylorprune: interrupted"]


def test_an_interrupted_run_points_at_resume(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("taylorprune.commands.run.main", interrupted)
    assert cli.main(["run", "recipes/quickstart.yaml"]) == cli.EXIT_INTERRUPTED
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--resume" in line
