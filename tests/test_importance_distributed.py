"""ImportanceAccumulator.all_reduce across two gloo processes equals one process seeing all data."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from _importance_nets import Res, batches, make

from taylorprune.graph import ChannelGraph
from taylorprune.importance import ImportanceAccumulator


def _accumulate(net, data, criterion):
    groups = ChannelGraph(net, data[0][0][:1]).groups()
    acc = ImportanceAccumulator(net, groups, criterion)
    for x, y in data:
        net.zero_grad()
        F.cross_entropy(net(x), y).backward()
        acc.update()
    return acc


def _worker(rank: int, port: int, criteria: list[str], out: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        reduced = {}
        for criterion in criteria:
            net = make(Res).train()
            data = batches(Res, n=4)[rank::2]  # rank 0: batches 0 and 2, rank 1: 1 and 3
            acc = _accumulate(net, data, criterion)
            acc.all_reduce()
            reduced[criterion] = acc.group_scores()
        if rank == 0:
            torch.save(reduced, out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_all_reduce_over_two_processes(tmp_path):
    # both criteria (parameter gradients; per-example hooks) in one pair of processes: starting
    # them is most of the cost
    criteria = ["taylor_fo_bn", "taylor_fo_bn_fg"]
    out = str(tmp_path / "scores.pt")
    mp.spawn(_worker, args=(_free_port(), criteria, out), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    assert sorted(got) == criteria
    for criterion in criteria:
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
