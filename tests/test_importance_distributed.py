"""Scores summed across two gloo processes equal one process seeing all the data.

``ImportanceAccumulator.all_reduce`` of two processes equals one process over the same batches;
and under DistributedDataParallel (what a torchrun run does) the ranks rank bit-identical sums,
which equal one process's over the same global batches within float tolerance, so a pruning
decision whose cut has a larger margin is the same. One pair of processes measures both. Whole
runs under torchrun: tests/test_distributed.py.
"""

from __future__ import annotations

import copy
import os
import socket
from pathlib import Path

import _ddp_scores
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from _importance_nets import Res, batches, make

from taylorprune.graph import ChannelGraph
from taylorprune.importance import ImportanceAccumulator
from taylorprune.models import build_model
from taylorprune.pruning import StructuredPruner

pytestmark = pytest.mark.slow
CRITERIA = ["taylor_fo_bn", "taylor_fo_bn_fg"]  # parameter gradients; per-example hooks
DDP_BATCH, DDP_WINDOW = 16, 4  # per rank: two ranks x 16 = one process x 32


def _accumulate(net, data, criterion):
    groups = ChannelGraph(net, data[0][0][:1]).groups()
    acc = ImportanceAccumulator(net, groups, criterion)
    for x, y in data:
        net.zero_grad()
        F.cross_entropy(net(x), y).backward()
        acc.update()
    return acc


def _worker(rank: int, port: int, out: str) -> None:
    """One of two ranks, with the variables torchrun sets: the accumulators of each criterion
    all-reduced (rank 0 saves them), then one DDP window scored (each rank saves what it ranks)."""
    world = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
             "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"}  # fmt: skip
    os.environ.update(world)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        reduced = {}
        for criterion in CRITERIA:
            net = make(Res).train()
            data = batches(Res, n=4)[rank::2]  # rank 0: batches 0 and 2, rank 1: 1 and 3
            acc = _accumulate(net, data, criterion)
            acc.all_reduce()
            reduced[criterion] = acc.group_scores()
        if rank == 0:
            torch.save(reduced, Path(out) / "reduced.pt")
        _ddp_scores.main(out, DDP_BATCH, DDP_WINDOW)  # joins this group and ends it
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two")
    # spawned, not forked: a fork of a process whose OpenMP pool has run hangs in its first
    # parallel region (seen with OMP_NUM_THREADS=2 outside xdist)
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=2, join=True)
    return out


def test_all_reduce_over_two_processes(two):
    got = torch.load(two / "reduced.pt", weights_only=True)
    assert sorted(got) == CRITERIA
    for criterion in CRITERIA:
        want = _accumulate(make(Res).train(), batches(Res, n=4), criterion).group_scores()
        assert got[criterion].keys() == want.keys()
        for root, v in want.items():
            torch.testing.assert_close(got[criterion][root], v)


def test_all_reduce_without_a_process_group_changes_nothing():
    net = make(Res).train()
    acc = _accumulate(net, batches(Res, n=2), "taylor_fo_bn")
    before = acc.group_scores()
    acc.all_reduce()
    assert all(torch.equal(before[k], v) for k, v in acc.group_scores().items())


def _one_process_window(out: Path, monkeypatch) -> dict:
    """The DDP window of one process over the same global batches, in this process with the
    variables torchrun would set for a world of one."""
    with monkeypatch.context() as m:
        world = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}
        world |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
        for name, value in world.items():
            m.setenv(name, value)
        threads = torch.get_num_threads()
        try:
            _ddp_scores.main(str(out), 2 * DDP_BATCH, DDP_WINDOW)
        finally:
            torch.set_num_threads(threads)
    return torch.load(out / "rank0.pt", weights_only=True)


def _normalised(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each group's scores over their mean, as the pruner ranks them by default."""
    return {k: v.double() / v.double().abs().mean() for k, v in scores.items()}


def test_two_ranks_sum_to_one_process_and_decide_alike(two, tmp_path, monkeypatch):
    ranks = [torch.load(two / f"rank{r}.pt", weights_only=True) for r in range(2)]
    one = _one_process_window(tmp_path, monkeypatch)
    assert ranks[0]["world_size"] == 2 and one["world_size"] == 1

    # ranks rank the same sums: bit-identical
    assert ranks[0]["scores"].keys() == ranks[1]["scores"].keys()
    for root, s in ranks[0]["scores"].items():
        assert torch.equal(s, ranks[1]["scores"][root]), root

    # two ranks x 16 sum to one process x 32 over the same global batches, up to reduction order
    a, b = ranks[0]["scores"], one["scores"]
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
    torch.manual_seed(0)
    base = build_model(
        {"source": "builtin", "name": "resnet20", "num_classes": 10, "in_chans": 1,
         "kwargs": {"width": 0.5}}
    ).eval()  # fmt: skip
    removed = []
    for scores in (a, b):
        model = copy.deepcopy(base)
        pruner = StructuredPruner(model, example)
        removed.append(pruner.remove(scores, n).removed)
    assert sum(len(v) for v in removed[1].values()) == n
    assert removed[0] == removed[1]
    assert ChannelGraph(base, example).groups()  # the model really has prunable groups
