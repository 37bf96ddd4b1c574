"""Several criteria from one backward pass (``tools/studies/scoring.py``) against a pass each."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _importance_nets import Res, batches, make

from taylorprune.graph import ChannelGraph
from taylorprune.importance import ImportanceAccumulator, TaylorSO
from taylorprune.importance.scoring import accumulate, preserved_state

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from studies.scoring import accumulate_shared


def test_a_shared_pass_scores_each_criterion_as_its_own_pass_does():
    """One backward per minibatch for several criteria (hooks and parameter gradients alike) gives
    each the scores of a pass of its own; a second-order criterion cannot share."""
    names = ["taylor_fo_bn", "taylor_fo_bn_fg", "taylor_fo_weight", "taylor_act"]
    net = make(Res).train()
    groups = ChannelGraph(net, torch.randn(1, 2, 4, 4)).groups()
    data = batches(Res)
    alone = {}
    for name in names:
        with ImportanceAccumulator(net, groups, name) as acc, preserved_state(net):
            assert accumulate(net, acc, data, F.cross_entropy) == len(data)
            alone[name] = acc.group_scores()
    accs = [ImportanceAccumulator(net, groups, name) for name in names]
    with preserved_state(net):
        assert accumulate_shared(net, accs, data, F.cross_entropy) == len(data)
    for name, acc in zip(names, accs, strict=True):
        got = acc.group_scores()
        assert got.keys() == alone[name].keys()
        for root, want in alone[name].items():
            torch.testing.assert_close(got[root], want, rtol=1e-6, atol=0.0, msg=name)
        assert any(float(s.abs().sum()) > 0 for s in got.values()), name
        acc.close()
    so = [ImportanceAccumulator(net, groups, TaylorSO("hutchinson"))]
    fo = ImportanceAccumulator(net, groups, "taylor_fo_bn")
    with pytest.raises(ValueError, match="pass of its own"):
        accumulate_shared(net, [fo, *so], data, F.cross_entropy)
    for acc in [fo, *so]:
        acc.close()
