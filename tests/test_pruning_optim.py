"""Optimizer state follows channel removal: kept channels keep their momentum, exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from taylorprune.pruning import (
    StructuredPruner,
    Target,
    prune_iteratively,
    remap_optimizer,
    reset_momentum,
)


class DWNet(nn.Module):
    """conv -> BN -> depthwise conv -> BN -> conv -> BN -> pool -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.dw, self.b2 = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8)
        self.c3, self.b3 = nn.Conv2d(8, 12, 1, bias=True), nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.dw(x)))
        x = torch.relu(self.b3(self.c3(x)))
        return self.fc(x.mean((2, 3)))


def _train(model, opt, steps=2):
    torch.manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _state_by_name(model, opt, key):
    return {
        n: opt.state[p][key].clone() for n, p in model.named_parameters() if key in opt.state[p]
    }


def _scores(pruner, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {grp.root: torch.rand(grp.size, generator=g) for grp in pruner.groups()}


def _root_of(pruner, member):
    return next(g.root for g in pruner.groups() if member in g.members)


def _expected(old, kept_c1, kept_c3):
    """What each state tensor must become, by hand: index_select on the pruned dimensions."""
    return {
        "c1.weight": old["c1.weight"][kept_c1],
        "b1.weight": old["b1.weight"][kept_c1],
        "b1.bias": old["b1.bias"][kept_c1],
        "dw.weight": old["dw.weight"][kept_c1],
        "b2.weight": old["b2.weight"][kept_c1],
        "b2.bias": old["b2.bias"][kept_c1],
        "c3.weight": old["c3.weight"][kept_c3][:, kept_c1],
        "c3.bias": old["c3.bias"][kept_c3],
        "b3.weight": old["b3.weight"][kept_c3],
        "b3.bias": old["b3.bias"][kept_c3],
        "fc.weight": old["fc.weight"][:, kept_c3],
        "fc.bias": old["fc.bias"],
    }


@pytest.mark.parametrize(
    "make,keys",
    [
        (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), ["momentum_buffer"]),
        (lambda ps: torch.optim.Adam(ps, lr=1e-3), ["exp_avg", "exp_avg_sq"]),
    ],
)
def test_remap_carries_state_of_kept_channels(make, keys):
    torch.manual_seed(0)
    model = DWNet()
    opt = make(model.parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    _train(model, opt)
    old = {k: _state_by_name(model, opt, k) for k in keys}
    steps_before = {n: opt.state[p].get("step") for n, p in model.named_parameters()}
    pruner = StructuredPruner(model, torch.randn(1, 3, 8, 8), max_fraction=1.0)
    r1 = _root_of(pruner, "c1")  # c1 and the depthwise conv are one group
    step = pruner.remove(_scores(pruner), 7)
    assert set(step.removed) == {r1, "c3"}
    replaced = remap_optimizer(opt, pruner)
    assert replaced == 11  # every parameter except fc.bias
    live = [p for pg in opt.param_groups for p in pg["params"]]
    assert [id(p) for p in live] == [id(p) for p in model.parameters()]
    for k in keys:
        want = _expected(old[k], step.kept[r1], step.kept["c3"])
        got = _state_by_name(model, opt, k)
        assert set(got) == set(want)
        for name in want:
            assert torch.equal(got[name], want[name]), (k, name)
    for n, p in model.named_parameters():
        s = opt.state[p].get("step")
        assert (s is None and steps_before[n] is None) or torch.equal(s, steps_before[n])
    _train(model, opt, steps=1)  # the optimizer works on the pruned model
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(opt.defaults["lr"] * 0.5)


def test_remap_composes_several_steps():
    torch.manual_seed(0)
    model = DWNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train(model, opt)
    old = _state_by_name(model, opt, "momentum_buffer")
    pruner = StructuredPruner(model, torch.randn(1, 3, 8, 8), max_fraction=1.0)
    r1 = _root_of(pruner, "c1")
    s1 = pruner.remove(_scores(pruner, 1), 3)
    s2 = pruner.remove(_scores(pruner, 2), 3)
    remap_optimizer(opt, pruner)
    kept_c1 = s1.kept[r1][s2.kept[r1]]
    kept_c3 = s1.kept["c3"][s2.kept["c3"]]
    want = _expected(old, kept_c1, kept_c3)
    got = _state_by_name(model, opt, "momentum_buffer")
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_reset_momentum_forgets_state():
    model = DWNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train(model, opt)
    reset_momentum(opt)
    assert all(not opt.state[p] for p in model.parameters())


def test_prune_iteratively_reaches_target_and_clears_momentum():
    torch.manual_seed(0)
    model = DWNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,))
    pruner = StructuredPruner(model, x)
    steps = prune_iteratively(
        model,
        x,
        [(x, y)] * 40,
        nn.functional.cross_entropy,
        opt,
        target=Target("channels", 0.6),
        score_batches=2,
        channels_per_step=2,
        pruner=pruner,
    )
    assert len(steps) >= 3 and all(s.channels_removed <= 2 for s in steps)
    assert pruner.target_reached(Target("channels", 0.6))
    assert all(not opt.state[p] for p in model.parameters())
    assert [id(p) for pg in opt.param_groups for p in pg["params"]] == [
        id(p) for p in model.parameters()
    ]


def test_tracking_holds_no_reference_to_old_parameters():
    import gc
    import sys

    counts = {}
    for track in (False, True):
        model = DWNet()
        old = model.c3.weight
        pruner = StructuredPruner(
            model, torch.randn(1, 3, 8, 8), max_fraction=1.0, track_params=track
        )
        scores = _scores(pruner)
        scores["c3"][0] = -1.0
        pruner.remove(scores, 1)
        gc.collect()
        assert model.c3.out_channels == 11 and model.c3.weight is not old
        counts[track] = sys.getrefcount(old)
    assert counts[True] == counts[False]
