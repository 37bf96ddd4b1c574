"""Distributed runs under torchrun with the gloo backend on CPU: the ranks agree with each other and
with a one-process run over the same global batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

# Global batches are well defined only without train-mode BN statistics (each rank normalises its
# own share) and without per-process augmentation; the baseline stays as built.
COMMON = [
    "--set", "baseline.train=null",
    "--set", "importance.train_mode=false",
    "--set", "data.augment=false",
    "--set", "data.train_subset=256",
    "--set", "measure.latency=false",
]  # fmt: skip


def _torchrun(nproc: int, out: Path, batch_size: int, tmp_path: Path) -> dict:
    env = {**os.environ, "TAYLORPRUNE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={nproc}", "-m", "taylorprune", "--quiet", "run",
        str(ROOT / "recipes/tiny/quickstart.yaml"), "-o", str(out),
        *COMMON, "--set", f"data.batch_size={batch_size}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "report.json").read_text())


def _architecture(report: dict) -> list[tuple[str, int]]:
    return [(row["name"], row["channels_after"]) for row in report["layers"]]


def test_two_ranks_agree_and_match_one_process(tmp_path):
    two = _torchrun(2, tmp_path / "two", batch_size=16, tmp_path=tmp_path)
    one = _torchrun(1, tmp_path / "one", batch_size=32, tmp_path=tmp_path)

    info = two["distributed"]
    assert info["world_size"] == 2 and info["backend"] == "gloo"
    assert info["ranks_agree"] and len(set(info["model_digests"])) == 1
    assert two["pruned"]["macs"] < two["baseline"]["macs"]
    # per-rank batches of 16 make the same global batches as one process with 32
    assert _architecture(two) == _architecture(one)
    assert [s["channels_removed"] for s in two["steps"]] == [
        s["channels_removed"] for s in one["steps"]
    ]
    # only rank 0 wrote: one report, one model
    assert sorted(p.name for p in (tmp_path / "two").glob("*.pt")) == ["model.pt"]
