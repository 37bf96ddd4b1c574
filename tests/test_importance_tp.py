"""torch-pruning's importances as criteria: the scores are torch-pruning's own on the same groups,
``tp_taylor`` sees the window's mean gradient, and the schedule runs them like any criterion."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
from _importance_nets import Res, batches, make
from torch import nn

from taylorprune import StructuredPruner, Target
from taylorprune.errors import UserError
from taylorprune.graph import ChannelGraph
from taylorprune.importance import CRITERIA, ImportanceAccumulator, channel_scores
from taylorprune.pruning.schedule import Schedule, Scoring, run_schedule

EXAMPLE = torch.randn(1, 2, 4, 4)


def _reference(net: nn.Module, importance: tp.importance.Importance) -> dict[str, torch.Tensor]:
    """torch-pruning's scores for every group of a fresh graph, keyed by the root's name."""
    dg = tp.DependencyGraph().build_dependency(net, example_inputs=EXAMPLE)
    names = {m: n for n, m in net.named_modules()}
    out = {}
    for group in dg.get_all_groups(root_module_types=(nn.Conv2d, nn.Linear)):
        root = group[0].dep.target.module
        out[names[root]] = importance(group)
    return out


@pytest.mark.parametrize(
    ("criterion", "importance"),
    [
        ("tp_magnitude", tp.importance.MagnitudeImportance),
        ("tp_bn_scale", tp.importance.BNScaleImportance),
    ],
)
def test_weight_criteria_are_torch_pruning_scores(criterion, importance):
    """torch-pruning's scores without its normalisation; divided by their group mean they are
    its default scores (``normalizer="mean"``), what ``pruning.normalize: mean`` ranks."""
    net = make(Res)
    graph = ChannelGraph(net, EXAMPLE)
    acc = ImportanceAccumulator(net, graph.groups(), criterion, graph=graph)
    ours = acc.group_scores()
    ref = _reference(copy.deepcopy(net), importance(normalizer=None))
    default = _reference(copy.deepcopy(net), importance())
    assert set(ours) <= set(ref)
    for root, s in ours.items():
        if ref[root] is None:  # no BatchNorm in the group: never pruned
            assert torch.isinf(s).all()
        else:
            torch.testing.assert_close(s, ref[root].float())
            torch.testing.assert_close(s / s.mean(), default[root].float())


def test_raw_and_group_mean_ranking_of_a_tp_criterion_differ():
    """The ranking options reach torch-pruning's importances: with one group's weights ten times
    larger, raw ranking leaves that group alone, and group-mean ranking removes other channels."""
    from taylorprune.models import build_model

    spec = {"source": "builtin", "name": "resnet20", "num_classes": 10, "in_chans": 1}
    removed = {}
    for normalize in (None, "mean"):
        torch.manual_seed(0)
        net = build_model(spec).eval()
        with torch.no_grad():
            net.layer1[0].conv1.weight.mul_(10)
        pruner = StructuredPruner(net, torch.zeros(1, 1, 8, 8), normalize=normalize)
        acc = ImportanceAccumulator(net, pruner.groups(), "tp_magnitude", graph=pruner.graph)
        removed[normalize] = pruner.remove(acc.group_scores(), 40).removed
    assert "layer1.0.conv1" not in removed[None] and removed[None] != removed["mean"]


def test_tp_taylor_reads_the_window_mean_gradient():
    net = make(Res)
    net.train()
    data = batches(Res, n=3)
    graph = ChannelGraph(net, EXAMPLE)
    acc = ImportanceAccumulator(net, graph.groups(), "tp_taylor", graph=graph)
    for x, y in data:
        net.zero_grad(set_to_none=True)
        acc.backward(F.cross_entropy(net(x), y))
    net.zero_grad(set_to_none=True)
    ours = acc.group_scores()
    assert all(p.grad is None for p in net.parameters())  # the window's gradients are put back

    # Reference: plain autograd, mean gradient over the same minibatches, torch-pruning scores it.
    ref_net = copy.deepcopy(net)
    ref_net.train()
    params = list(ref_net.parameters())
    total = [torch.zeros_like(p) for p in params]
    for x, y in data:
        for t, g in zip(
            total, torch.autograd.grad(F.cross_entropy(ref_net(x), y), params), strict=True
        ):
            t += g
    ref_net.eval()  # building the graph must not move the running statistics
    ref = _reference(ref_net, _WithGrads(params, [t / len(data) for t in total]))
    for root, s in ours.items():
        torch.testing.assert_close(s, ref[root].float(), rtol=1e-4, atol=1e-7)
    # a different window, a different score: the gradients are really read
    acc.reset()
    x, y = data[0]
    acc.backward(F.cross_entropy(net(x), y))
    other = acc.group_scores()
    assert any(not torch.allclose(other[r], ours[r]) for r in ours)


def test_tp_taylor_takes_the_ema_across_windows():
    """With ``ema=β`` the second window ranks on β·(first window's scores) + (1 − β)·(its own), as
    every gradient criterion does; without, on its own."""
    data = batches(Res, n=4)
    net = make(Res).train()
    graph = ChannelGraph(net, EXAMPLE)
    accs = {ema: ImportanceAccumulator(net, graph.groups(), "tp_taylor", graph=graph, ema=ema)
            for ema in (None, 0.5)}  # fmt: skip
    first, second = {}, {}
    for window, out in ((data[:2], first), (data[2:], second)):
        for ema, acc in accs.items():
            for x, y in window:
                net.zero_grad(set_to_none=True)
                acc.backward(F.cross_entropy(net(x), y))
            out[ema] = acc.group_scores()
            acc.reset()
    for root, m1 in first[None].items():
        torch.testing.assert_close(first[0.5][root], m1)
        torch.testing.assert_close(second[0.5][root], 0.5 * m1 + 0.5 * second[None][root])
        assert not torch.allclose(second[0.5][root], second[None][root]), root


class _WithGrads:
    """GroupTaylorImportance with ``.grad`` set to given tensors while it scores."""

    def __init__(self, params: list[nn.Parameter], grads: list[torch.Tensor]) -> None:
        self.params, self.grads = params, grads
        self.imp = tp.importance.GroupTaylorImportance(normalizer=None)

    def __call__(self, group):
        for p, g in zip(self.params, self.grads, strict=True):
            p.grad = g
        try:
            return self.imp(group)
        finally:
            for p in self.params:
                p.grad = None


@pytest.mark.parametrize("criterion", ["tp_magnitude", "tp_taylor", "tp_bn_scale"])
def test_tp_criteria_need_the_graph(criterion):
    net = make(Res)
    groups = ChannelGraph(net, EXAMPLE).groups()
    acc = ImportanceAccumulator(net, groups, criterion)
    with pytest.raises(UserError, match="channel graph"):
        acc.group_scores()


@pytest.mark.parametrize("criterion", ["tp_magnitude", "tp_taylor", "tp_bn_scale"])
def test_tp_criteria_run_the_iterative_schedule_and_channel_scores(criterion):
    assert criterion in CRITERIA
    net = make(Res)
    data = batches(Res)
    scores = channel_scores(net, data, F.cross_entropy, criterion)
    assert scores and all(torch.isfinite(s).any() or torch.isinf(s).all() for s in scores.values())
    pruner = StructuredPruner(net, EXAMPLE, normalize=None)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    result = run_schedule(
        pruner,
        data * 4,
        F.cross_entropy,
        Target("channels", 0.72),
        Schedule("iterative", 1, 1),
        Scoring(criterion),
        optimizer=opt,
    )
    assert result.reached and len(result.steps) >= 2
    assert pruner.fraction("channels") == pytest.approx(5 / 7)  # 2 of the 7 channels
