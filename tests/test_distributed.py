"""Distributed runs under torchrun with the gloo backend on CPU.

What must hold on every machine: the ranks of one run agree bit for bit (they rank the same
all-reduced sums, so they remove the same channels); the all-reduced scores of two ranks equal,
within float tolerance, those of one process over the same global batches; and a pruning decision
whose cut has a margin larger than that tolerance is the same. Whole iterative runs of two ranks
and of one process are *not* compared channel for channel: they sum the same numbers in a different
order, and on near-tied scores the rounding decides the ranking, so which channel goes can differ
from one CPU to another.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from taylorprune.graph import ChannelGraph
from taylorprune.models import build_model
from taylorprune.pruning import StructuredPruner

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


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "TAYLORPRUNE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}


def _torchrun(nproc: int, args: list[str], tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", *args]  # fmt: skip
    proc = subprocess.run(
        cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _window_scores(nproc: int, batch_size: int, tmp_path: Path, monkeypatch) -> list[dict]:
    """What each rank ranks on. Several ranks run under torchrun; a world of one runs in this
    process, with the variables torchrun would set (starting processes is most of the cost)."""
    out = tmp_path / f"scores{nproc}"
    out.mkdir()
    if nproc > 1:
        args = [str(ROOT / "tests/_ddp_scores.py"), str(out), str(batch_size), "4"]
        _torchrun(nproc, args, tmp_path)
    else:
        import _ddp_scores

        with monkeypatch.context() as m:
            world = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}
            world |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
            for name, value in world.items():
                m.setenv(name, value)
            threads = torch.get_num_threads()
            try:
                _ddp_scores.main(str(out), batch_size, 4)
            finally:
                torch.set_num_threads(threads)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(nproc)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(
        {"source": "builtin", "name": "resnet20", "num_classes": 10, "in_chans": 1,
         "kwargs": {"width": 0.5}}
    ).eval()  # fmt: skip


def _normalised(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each group's scores over their mean, as the pruner ranks them by default."""
    return {k: v.double() / v.double().abs().mean() for k, v in scores.items()}


def test_two_ranks_sum_to_one_process_and_decide_alike(tmp_path, monkeypatch):
    two = _window_scores(2, batch_size=16, tmp_path=tmp_path, monkeypatch=monkeypatch)
    (one,) = _window_scores(1, batch_size=32, tmp_path=tmp_path, monkeypatch=monkeypatch)
    assert two[0]["world_size"] == 2 and one["world_size"] == 1

    # ranks rank the same sums: bit-identical
    assert two[0]["scores"].keys() == two[1]["scores"].keys()
    for root, s in two[0]["scores"].items():
        assert torch.equal(s, two[1]["scores"][root]), root

    # two ranks x 16 sum to one process x 32 over the same global batches, up to reduction order
    a, b = two[0]["scores"], one["scores"]
    assert a.keys() == b.keys()
    for root in b:
        torch.testing.assert_close(a[root], b[root], rtol=1e-4, atol=1e-12)
        assert b[root].abs().sum() > 0, root  # scored, not empty

    # a removal whose cut lies in a clear gap of the ranking is the same for both
    na, nb = _normalised(a), _normalised(b)
    flat = torch.sort(torch.cat(list(nb.values()))).values
    gaps = torch.nan_to_num((flat[1:41] - flat[:40]) / flat[1:41])  # 0/0 between zero scores
    n = int(torch.argmax(gaps[3:])) + 4  # remove n channels: the largest relative gap, n >= 4
    noise = max(float(((na[k] - nb[k]).abs() / nb[k].abs().clamp_min(1e-30)).max()) for k in nb)
    assert float(gaps[n - 1]) > 10 * noise, (float(gaps[n - 1]), noise)

    example = torch.zeros(1, 1, 8, 8)
    base = _model()
    removed = []
    for scores in (a, b):
        model = copy.deepcopy(base)
        pruner = StructuredPruner(model, example)
        removed.append(pruner.remove(scores, n).removed)
    assert sum(len(v) for v in removed[1].values()) == n
    assert removed[0] == removed[1]
    assert ChannelGraph(base, example).groups()  # the model really has prunable groups


def test_two_rank_run_agrees_across_ranks(tmp_path):
    """Also with a holdout validating (the same images on both ranks) and distillation from the
    baseline (each rank's teacher on its own minibatches)."""
    out = tmp_path / "two"
    _torchrun(2, ["-m", "taylorprune", "--quiet", "run", "--no-plots",
                  str(ROOT / "recipes/tiny/quickstart.yaml"), "-o", str(out), *COMMON,
                  "--set", "data.batch_size=16", "--set", "data.holdout=300",
                  "--set", "finetune.distill={weight: 0.5, temperature: 4}"], tmp_path)  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    info = report["distributed"]
    assert info["world_size"] == 2 and info["backend"] == "gloo"
    assert info["ranks_agree"] and len(set(info["model_digests"])) == 1
    # 128 of the 300 held-out images (val_subset), evaluated in two shares summed over the ranks
    assert report["validation"]["split"] == "holdout" and report["validation"]["size"] == 128
    assert round(report["finetuned"]["top1"] * 128 / 100, 6).is_integer()
    assert report["distill"]["teacher_s"] > 0
    assert report["steps"] and all(s["channels_removed"] > 0 for s in report["steps"])
    assert report["target"]["achieved_keep"] == pytest.approx(0.6, abs=0.01)
    # only rank 0 wrote: one report, one model
    assert sorted(p.name for p in out.glob("*.pt")) == ["model.pt"]
