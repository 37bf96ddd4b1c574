"""The study oracles (``tools/studies/oracle.py``) against plain computations: separate forward
passes with explicit gates."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _importance_nets import Plain, Res, batches, make

from taylorprune.errors import UserError
from taylorprune.graph import ChannelGraph
from taylorprune.models import build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from studies.oracle import oracle_scores, population_oracle, recalibrated_oracle, removal_oracle

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


# -- the population oracle ------------------------------------------------------------------------
def _held_out_changes(net, cls, x, y, sizes):
    """``L_D(c=0) − L_D`` by hand: the whole set in one eval-mode pass, one explicit gate each."""
    net = copy.deepcopy(net).eval()
    want = {}
    with torch.no_grad():
        base = F.cross_entropy(net(x), y)
        for root, key in ROOTS[cls].items():
            want[root] = torch.zeros(sizes[root], dtype=torch.float64)
            for c in range(sizes[root]):
                gate = torch.ones(sizes[root])
                gate[c] = 0.0
                want[root][c] = (F.cross_entropy(net(x, {key: gate}), y) - base).double()
    return want


@pytest.mark.parametrize(("cls", "chunk"), [(Res, 3), (Plain, 2)])
def test_population_oracle_is_the_held_out_loss_change(cls, chunk):
    net = make(cls)
    net.train()  # the oracle uses eval-mode BN whatever mode the model is in
    # minibatches of different sizes: the held-out loss weights them by their sizes
    data = batches(cls, n=1, size=7, seed=2) + batches(cls, n=1, size=3, seed=3)
    x = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])
    groups = ChannelGraph(net, x[:1]).groups()
    sizes = {g.root: g.size for g in groups}
    before = copy.deepcopy(net.state_dict())
    got = population_oracle(net, groups, data, chunk=chunk)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert net.training
    want = _held_out_changes(net, cls, x, y, sizes)
    for root in ROOTS[cls]:
        torch.testing.assert_close(got[root], want[root], rtol=1e-4, atol=1e-6)
    # signed: some removals lower the loss of this random net, which |ΔL| per minibatch would hide
    assert any((w < -1e-4).any() for w in want.values())
    per_batch = oracle_scores(net, groups, data, train_mode=False, chunk=chunk)
    assert any(
        not torch.allclose(per_batch[r].double(), want[r].abs(), rtol=1e-3, atol=1e-5)
        for r in ROOTS[cls]
    )


def test_population_oracle_measures_only_the_channels_asked_for():
    net = make(Res)
    data = batches(Res, n=2, size=4)
    groups = ChannelGraph(net, data[0][0][:1]).groups()
    full = population_oracle(net, groups, data)
    asked = {"conv1": [2], "conv0": [0, 2]}
    part = population_oracle(net, groups, data, channels=asked)
    assert torch.isnan(part["fc"]).all()
    for root, kept in asked.items():
        mask = torch.zeros(len(full[root]), dtype=torch.bool)
        mask[kept] = True
        torch.testing.assert_close(part[root][mask], full[root][mask])
        assert torch.isnan(part[root][~mask]).all()


def test_population_oracle_rejects_bad_input():
    net = make(Res)
    groups = ChannelGraph(net, torch.randn(1, 2, 4, 4)).groups()
    with pytest.raises(UserError, match="empty"):
        population_oracle(net, groups, [])
    data = batches(Res, n=1)
    with pytest.raises(UserError, match=r"'conv0' has 3 channels, asked for \[3\]"):
        population_oracle(net, groups, data, channels={"conv0": [0, 3]})
    with pytest.raises(UserError, match="no group 'bn0'"):
        population_oracle(net, groups, data, channels={"bn0": [0]})


# -- the oracle after BatchNorm re-estimation ------------------------------------------------------
def _recalibrated_loss(net, gates, calibration, x, y):
    """Held-out loss with explicit ``gates`` after resetting every BatchNorm and averaging the
    calibration minibatches' statistics, by hand."""
    net = copy.deepcopy(net)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        net.train()
        for cx, _ in calibration:
            net(cx, gates)
        net.eval()
        return F.cross_entropy(net(x, gates), y).double()


@pytest.mark.parametrize("cls", [Res, Plain])
def test_recalibrated_oracle_reestimates_bn_after_each_zeroed_channel(cls):
    net = make(cls)
    held = batches(cls, n=2, size=5, seed=2)
    x = torch.cat([b[0] for b in held])
    y = torch.cat([b[1] for b in held])
    calibration = batches(cls, n=3, size=6, seed=4)
    groups = ChannelGraph(net, x[:1]).groups()
    sizes = {g.root: g.size for g in groups}
    before = copy.deepcopy(net.state_dict())
    got = recalibrated_oracle(net, groups, held, calibration)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    base = _recalibrated_loss(net, {}, calibration, x, y)
    stale = _held_out_changes(net, cls, x, y, sizes)
    for root, key in ROOTS[cls].items():
        want = torch.zeros(sizes[root], dtype=torch.float64)
        for c in range(sizes[root]):
            gate = torch.ones(sizes[root])
            gate[c] = 0.0
            want[c] = _recalibrated_loss(net, {key: gate}, calibration, x, y) - base
        torch.testing.assert_close(got[root], want, rtol=1e-4, atol=1e-6)
    # re-estimating the statistics is not the running statistics' oracle
    assert any(not torch.allclose(got[r], stale[r], atol=1e-4) for r in ROOTS[cls])
    with pytest.raises(UserError, match="no calibration batches"):
        recalibrated_oracle(net, groups, held, [])


# -- the removal oracle ---------------------------------------------------------------------------
# Scores chosen so that raw and mean-normalised ranking disagree on the lowest channel: raw,
# stream channel 0 (0.5 < 0.55); divided by the group means (3.37 and 7.64), bn1 channel 0
# (0.072 < 0.148).
SCORES = {"conv0": torch.tensor([0.5, 0.6, 9.0]), "conv1": torch.tensor([0.55, 10.0, 10.0, 10.0])}


@pytest.mark.parametrize(("normalize", "removed"), [(None, ("stream", 0)), ("mean", ("bn1", 0))])
def test_removal_oracle_is_zeroing_the_lowest_channel_then_reestimating_bn(normalize, removed):
    net = make(Res)
    calib = batches(Res, n=3, size=6, seed=4)
    held = batches(Res, n=2, size=10, seed=5)
    got = removal_oracle(
        net,
        torch.zeros(1, 2, 4, 4),
        SCORES,
        0.15,  # one of the 7 prunable channels (the classifier is kept)
        calib,
        held,
        calibration_batches=3,
        normalize=normalize,
    )
    assert got["channels_removed"] == 1 and 0 < got["macs_left"] < 1
    # by hand: the channel zeroed by its gate, BN statistics re-estimated as a plain average
    key, c = removed
    gate = torch.ones(3 if key == "stream" else 4)
    gate[c] = 0.0
    ref = copy.deepcopy(net)
    bns = [m for m in ref.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        ref.train()
        for x, _ in calib:
            ref(x, {key: gate})
        ref.eval()
        x = torch.cat([b[0] for b in held])
        y = torch.cat([b[1] for b in held])
        out = ref(x, {key: gate})
    assert got["loss"] == pytest.approx(F.cross_entropy(out, y).item(), rel=1e-4)
    top1 = 100.0 * (out.argmax(1) == y).float().mean().item()
    assert abs(got["top1"] - top1) <= 100.0 / len(y) + 1e-9  # a near-tie may flip one example


def test_removal_oracle_leaves_the_model_and_rejects_bad_fractions():
    net = make(Res)
    before = copy.deepcopy(net.state_dict())
    data = batches(Res, n=1, size=6)
    removal_oracle(net, torch.zeros(1, 2, 4, 4), SCORES, 0.3, data, data, calibration_batches=1)
    assert net.state_dict().keys() == before.keys()
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(UserError, match="fraction"):
        removal_oracle(net, torch.zeros(1, 2, 4, 4), SCORES, 1.0, data, data)
    with pytest.raises(UserError, match="calibration"):
        removal_oracle(net, torch.zeros(1, 2, 4, 4), SCORES, 0.3, [], data)
    with pytest.raises(UserError, match="unit"):
        removal_oracle(net, torch.zeros(1, 2, 4, 4), SCORES, 0.3, data, data, unit="params")


def test_removal_oracle_by_macs_reaches_the_macs_target():
    torch.manual_seed(0)
    net = build_model({"source": "builtin", "name": "resnet20", "num_classes": 3, "in_chans": 2})
    x = torch.randn(8, 2, 8, 8)
    data = [(x, torch.arange(8) % 3)]
    groups = ChannelGraph(net, x[:1]).groups()
    scores = {g.root: torch.rand(g.size) for g in groups}
    by_channels = removal_oracle(net, x[:1], scores, 0.3, data, data, calibration_batches=1)
    by_macs = removal_oracle(
        net, x[:1], scores, 0.3, data, data, calibration_batches=1, unit="macs"
    )
    prunable = sum(g.size for g in groups if g.root != "fc")
    assert by_channels["channels_removed"] == round(0.3 * prunable)
    assert abs(by_macs["macs_left"] - 0.7) <= 0.01
