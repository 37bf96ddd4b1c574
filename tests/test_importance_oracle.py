"""Oracle importance against a plain loop of separate forward passes with explicit gates."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from _importance_nets import Plain, Res, batches, make

from taylorprune.graph import ChannelGraph
from taylorprune.importance.oracle import oracle_scores

ROOTS = {
    Res: {"conv0": "stream", "conv1": "bn1", "fc": "fc"},
    Plain: {"conv1": "bn1", "conv2": "conv2", "fc": "fc"},
}


CASES = [
    (Res, True, 3),
    pytest.param(Res, False, 3, marks=pytest.mark.slow),
    pytest.param(Res, True, 1, marks=pytest.mark.slow),
    pytest.param(Plain, True, 3, marks=pytest.mark.slow),
    pytest.param(Plain, False, 2, marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("cls", "train_mode", "chunk"), CASES)
def test_oracle_matches_separate_forward_passes(cls, train_mode, chunk):
    net = make(cls)
    net.train(train_mode)
    data = batches(cls, n=2, size=6)
    groups = ChannelGraph(net, data[0][0][:1]).groups()
    before = copy.deepcopy(net.state_dict())
    got = oracle_scores(net, groups, data, train_mode=train_mode, chunk=chunk)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    sizes = {g.root: g.size for g in groups}
    for root, key in ROOTS[cls].items():
        want = torch.zeros(sizes[root])
        for x, y in data:
            with torch.no_grad():
                base = F.cross_entropy(copy.deepcopy(net)(x), y)
                for c in range(sizes[root]):
                    gate = torch.ones(sizes[root])
                    gate[c] = 0.0
                    zeroed = F.cross_entropy(copy.deepcopy(net)(x, {key: gate}), y)
                    want[c] += (zeroed - base).abs() / len(data)
        torch.testing.assert_close(got[root], want, rtol=1e-4, atol=1e-6)
