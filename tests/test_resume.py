"""Interrupted runs continue with ``--resume`` and end where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import taylorprune.runner as runner_mod
from taylorprune.cli import main

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes/tiny/quickstart.yaml")
SETS = [
    "--set", "baseline.train.epochs=2",
    "--set", "baseline.cache=false",  # every run trains its baseline: it can be interrupted there
    "--set", "finetune.epochs=2",
    "--set", "measure.latency=false",
]  # fmt: skip

pytestmark = pytest.mark.slow


def _run(out: Path, *extra: str) -> int:
    return main(["--quiet", "run", RECIPE, "-o", str(out), *SETS, *extra])


def _interrupt_after(monkeypatch, tag: str) -> None:
    """Make the run die (like a SIGINT) right after checkpoint ``tag`` is written."""
    real = runner_mod.write_checkpoint

    def write_then_die(out_dir, t, *args, **kwargs):
        real(out_dir, t, *args, **kwargs)
        if t == tag:
            raise KeyboardInterrupt

    monkeypatch.setattr(runner_mod, "write_checkpoint", write_then_die)


def _summary(out: Path) -> tuple:
    report = json.loads((out / "report.json").read_text())
    arch = [(row["name"], row["channels_after"]) for row in report["layers"]]
    return arch, report["pruned"]["macs"], report["finetuned"]["top1"], report["finetuned"]["loss"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple:
    out = tmp_path_factory.mktemp("full") / "run"
    assert _run(out) == 0
    return _summary(out)


@pytest.mark.parametrize("tag", ["baseline-ep001", "prune-step002", "pruned", "finetune-ep001"])
def test_resume_after_a_kill_ends_like_an_uninterrupted_run(
    tag, uninterrupted, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _interrupt_after(m, tag)
        assert _run(out) == 130  # interrupted
    assert not (out / "report.json").exists()
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["tag"] == tag
    assert _run(out, "--resume") == 0
    arch, macs, top1, loss = _summary(out)
    ref_arch, ref_macs, ref_top1, ref_loss = uninterrupted
    assert arch == ref_arch and macs == ref_macs
    assert top1 == pytest.approx(ref_top1, abs=1e-6)
    assert loss == pytest.approx(ref_loss, rel=1e-4)


def test_resume_refuses_a_different_recipe(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _interrupt_after(m, "pruned")
        assert _run(out) == 130
    capsys.readouterr()
    code = main(["run", RECIPE, "-o", str(out), *SETS, "--set", "seed=3", "--resume"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "recipe differs" in err[0]


def test_sigkill_mid_run_then_resume(uninterrupted, tmp_path):
    """A real SIGKILL at whatever point the run has reached once a checkpoint exists."""
    out = tmp_path / "run"
    # same thread count as the in-process runs: CPU kernels may sum in another order otherwise
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "taylorprune", "--quiet", "run", RECIPE, "-o", str(out), *SETS]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = out / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 300
    while not pointer.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (out / "report.json").exists() or proc.returncode == 0
    assert _run(out, "--resume") == 0
    arch, macs, top1, _loss = _summary(out)
    assert (arch, macs) == uninterrupted[:2]
    assert top1 == pytest.approx(uninterrupted[2], abs=1e-6)


def test_same_seed_same_architecture(uninterrupted, tmp_path):
    out = tmp_path / "again"
    assert _run(out) == 0
    assert _summary(out)[:2] == uninterrupted[:2]
