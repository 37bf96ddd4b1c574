"""The pruning schedule: its stop conditions (also after a resume), its hooks, the scoring state it
must leave alone, the optimizer lineage it owns, and the rollback of a failed ``prune()``."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

from taylorprune.errors import UserError
from taylorprune.importance.scoring import frozen_bn, preserved_state
from taylorprune.pruning import StructuredPruner, Target, prune, prune_iteratively, remap_optimizer
from taylorprune.pruning.optim import Lineage
from taylorprune.pruning.schedule import (
    Schedule,
    ScheduleHooks,
    ScheduleState,
    Scoring,
    run_schedule,
    score_groups,
)


class Net(nn.Module):
    """conv-BN-ReLU x2 and a classifier: two independent groups of 8 and 12 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


class HardCodedWidth(nn.Module):
    """A per-channel scale kept in a buffer: torch-pruning cannot see it, so pruning breaks it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.register_buffer("scale", torch.ones(1, 8, 1, 1))
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc((self.bn(self.conv(x)) * self.scale).mean((2, 3)))


def _batches(n: int, classes: int = 4, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(6, 3, 8, 8, generator=g), torch.randint(0, classes, (6,), generator=g))
        for _ in range(n)
    ]


def _net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    net = Net()
    with torch.no_grad():  # non-trivial statistics, so that restoring them can be checked
        for bn in (net.b1, net.b2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 1.5)
    return net


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_state(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    assert now.keys() == saved.keys()
    for k, v in saved.items():
        assert now[k].shape == v.shape and torch.equal(now[k], v), k


# -- stop conditions ----------------------------------------------------------------------------
def test_iterative_schedule_stops_at_max_steps_also_when_resumed():
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    pruner = StructuredPruner(net, torch.zeros(1, 3, 8, 8))
    schedule = Schedule("iterative", score_batches=2, channels_per_step=2, max_steps=2)
    target = Target("channels", 0.3)  # far: only the cap stops it
    loss = nn.functional.cross_entropy
    first = run_schedule(pruner, _batches(40), loss, target, schedule, optimizer=opt)
    assert first.stop == "max_steps" and len(first.steps) == 2
    assert (first.state.steps, first.state.consumed, first.state.trained) == (2, 4, 4)
    assert first.stopped_short == {
        "code": "not_finished",
        "message": "pruning ended before the target",
    }
    widths = (net.c1.out_channels, net.c2.out_channels)
    assert sum(widths) == 20 - 4
    again = run_schedule(
        pruner, _batches(40), loss, target, schedule, optimizer=opt, resume=first.state
    )
    assert again.stop == "max_steps" and again.steps == []
    assert (net.c1.out_channels, net.c2.out_channels) == widths


def test_a_resumed_schedule_continues_on_the_same_batches():
    """Two steps, then two more from the recorded state, equal four steps in one go."""
    loss, target = nn.functional.cross_entropy, Target("channels", 0.3)

    def fresh():
        net = _net()
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        return net, opt, StructuredPruner(net, torch.zeros(1, 3, 8, 8))

    def schedule(cap, clear=True):
        return Schedule("iterative", 2, channels_per_step=2, max_steps=cap, clear_momentum=clear)

    net_a, opt_a, pruner_a = fresh()
    run_schedule(pruner_a, _batches(40), loss, target, schedule(4), optimizer=opt_a)
    net_b, opt_b, pruner_b = fresh()
    # as a run checkpoint holds it: momentum as it is after step 2, not cleared
    half = run_schedule(pruner_b, _batches(40), loss, target, schedule(2, False), optimizer=opt_b)
    state = ScheduleState.from_dict(half.state.as_dict())
    run_schedule(pruner_b, _batches(40), loss, target, schedule(4), optimizer=opt_b, resume=state)
    _assert_state(net_b, _snapshot(net_a))


def test_schedule_stops_when_a_step_removes_nothing_and_when_batches_run_out():
    loss = nn.functional.cross_entropy
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    pruner = StructuredPruner(net, torch.zeros(1, 3, 8, 8), max_fraction=0.25)
    schedule = Schedule("iterative", score_batches=1, channels_per_step=100)
    result = run_schedule(
        pruner, _batches(10), loss, Target("channels", 0.3), schedule, optimizer=opt
    )
    assert result.stop == "blocked" and result.steps[-1].channels_removed == 0
    assert (net.c1.out_channels, net.c2.out_channels) == (6, 9)  # 25% of each, no more
    pruner2 = StructuredPruner(_net(), torch.zeros(1, 3, 8, 8))
    opt2 = torch.optim.SGD(pruner2.model.parameters(), lr=0.01)
    short = Schedule("iterative", score_batches=3, channels_per_step=1)
    ran_out = run_schedule(
        pruner2, _batches(7), loss, Target("channels", 0.3), short, optimizer=opt2
    )
    assert ran_out.stop == "exhausted" and len(ran_out.steps) == 2  # 7 batches: two full windows
    assert ran_out.state.trained == 7


def test_hooks_see_every_window_and_every_step():
    calls: list[tuple] = []

    class Recorder(ScheduleHooks):
        def train(self, model, batches, optimizer, loss_fn, scorer):
            calls.append(("train", len(batches)))
            super().train(model, batches, optimizer, loss_fn, scorer)

        def after_step(self, step, state):
            calls.append(("step", state.steps, step.channels_removed))

    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    pruner = StructuredPruner(net, torch.zeros(1, 3, 8, 8))
    schedule = Schedule("iterative", score_batches=3, channels_per_step=2, max_steps=3)
    run_schedule(
        pruner, _batches(20), nn.functional.cross_entropy, Target("channels", 0.3), schedule,
        optimizer=opt, hooks=Recorder(),
    )  # fmt: skip
    assert calls == [
        ("train", 3), ("step", 1, 2), ("train", 3), ("step", 2, 2), ("train", 3), ("step", 3, 2)
    ]  # fmt: skip


def test_eval_mode_scoring_trains_as_train_mode_does_and_scores_passes_of_its_own(monkeypatch):
    """``train_mode=False`` under the iterative schedule: the window trains exactly as with
    train-mode scoring (batch statistics, running statistics updated), and the scores are those of
    an eval-mode forward and backward of each minibatch before its training step."""
    from taylorprune.importance import ImportanceAccumulator

    loss_fn, batches = nn.functional.cross_entropy, _batches(3)
    trained, scored = {}, {}

    class Snapshot(ScheduleHooks):
        def __init__(self, key):
            self.key = key

        def train(self, model, window, optimizer, loss_fn, scorer):
            super().train(model, window, optimizer, loss_fn, scorer)
            trained[self.key] = copy.deepcopy(model.state_dict())

    real = StructuredPruner.remove_to_target

    def recording(self, scores, target, **kw):
        scored[self._key] = {k: v.clone() for k, v in scores.items()}
        return real(self, scores, target, **kw)

    monkeypatch.setattr(StructuredPruner, "remove_to_target", recording)
    for key, train_mode in (("eval", False), ("train", True)):
        net = _net()
        pruner = StructuredPruner(net, torch.zeros(1, 3, 8, 8))
        pruner._key = key
        run_schedule(
            pruner, batches, loss_fn, Target("channels", 0.5),
            Schedule("iterative", score_batches=3, channels_per_step=2, max_steps=1),
            Scoring(train_mode=train_mode), optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
            hooks=Snapshot(key),
        )  # fmt: skip
    for name, value in trained["train"].items():
        assert torch.equal(trained["eval"][name], value), name

    # by hand: score each minibatch with BatchNorm on its running statistics, then train on it
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    acc = ImportanceAccumulator(net, StructuredPruner(net, torch.zeros(1, 3, 8, 8)).groups())
    net.train()
    for x, y in batches:
        with frozen_bn(net):
            loss = loss_fn(net(x), y)
        net.zero_grad(set_to_none=True)
        acc.backward(loss)
        net.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()
    want = acc.group_scores()
    assert scored["eval"].keys() == want.keys()
    for root, v in want.items():
        torch.testing.assert_close(scored["eval"][root], v)
        assert not torch.allclose(scored["train"][root], v), root


def test_one_shot_schedule_is_scoring_then_one_removal():
    """The schedule's one-shot equals its two parts called by hand (the studies prune copies)."""
    batches, loss = _batches(3), nn.functional.cross_entropy
    a, b = _net(), _net()
    # 0.75: a level this net's channels can land on within 1% with these scores and ranking
    scoring = Scoring("taylor_fo_bn", train_mode=True)
    pa = StructuredPruner(a, torch.zeros(1, 3, 8, 8))
    result = run_schedule(pa, batches, loss, Target("macs", 0.75), Schedule("oneshot"), scoring)
    pb = StructuredPruner(b, torch.zeros(1, 3, 8, 8))
    pb.remove_to_target(score_groups(pb, batches, loss, scoring), Target("macs", 0.75))
    assert result.stop == "target" and len(result.steps) == 1 and result.reached
    _assert_state(a, _snapshot(b))


def test_a_target_met_below_its_band_is_reached_and_says_it_overshot():
    """Blocks of 4 channels from 20: a 45% channel target (9) lands on 8, 40%, more than 1% below.
    Within the band the result carries no such note."""
    batches, loss = _batches(3), nn.functional.cross_entropy
    pruner = StructuredPruner(_net(), torch.zeros(1, 3, 8, 8), round_to=4)
    result = run_schedule(pruner, batches, loss, Target("channels", 0.45), Schedule("oneshot"))
    assert result.reached and result.stopped_short is None
    assert pruner.fraction("channels") == pytest.approx(0.4)
    assert result.overshot is not None and result.overshot["code"] == "granularity"
    assert "round_to=4" in result.overshot["message"]
    exact = StructuredPruner(_net(), torch.zeros(1, 3, 8, 8), round_to=4)
    result = run_schedule(exact, batches, loss, Target("channels", 0.4), Schedule("oneshot"))
    assert result.reached and result.overshot is None


def test_one_shot_without_batches_is_a_user_error():
    pruner = StructuredPruner(_net(), torch.zeros(1, 3, 8, 8))
    with pytest.raises(UserError, match="no batches"):
        run_schedule(pruner, [], nn.functional.cross_entropy, Target(), Schedule("oneshot"))


def test_bad_schedules_are_user_errors():
    with pytest.raises(UserError, match="channels_per_step"):
        Schedule("iterative", score_batches=2)
    with pytest.raises(UserError, match="score_batches"):
        Schedule("oneshot", score_batches=0)
    pruner = StructuredPruner(_net(), torch.zeros(1, 3, 8, 8))
    with pytest.raises(UserError, match="optimizer"):
        run_schedule(
            pruner, _batches(2), nn.functional.cross_entropy, Target(),
            Schedule("iterative", score_batches=1, channels_per_step=1),
        )  # fmt: skip


# -- the state scoring leaves alone -------------------------------------------------------------
def test_preserved_state_restores_buffers_modes_and_gradients():
    net = _net().eval()
    net.b1.train()  # a mixed mode must come back as it was
    grad = torch.ones_like(net.c1.weight)
    net.c1.weight.grad = grad
    net.fc.bias.requires_grad_(False)
    saved = _snapshot(net)
    with preserved_state(net):
        net.train()
        net.zero_grad(set_to_none=True)
        net.fc.bias.requires_grad_(True)
        nn.functional.cross_entropy(net(torch.randn(6, 3, 8, 8)), torch.zeros(6).long()).backward()
    _assert_state(net, saved)  # running statistics moved inside, not after
    assert [m.training for m in net.modules()] == [m is net.b1 for m in net.modules()]
    assert net.c1.weight.grad is grad and net.c2.weight.grad is None
    assert not net.fc.bias.requires_grad


def test_frozen_bn_keeps_running_statistics_while_training():
    net = _net()
    before = _snapshot(net)
    with frozen_bn(net):
        net.train()
        net(torch.randn(6, 3, 8, 8))
    assert torch.equal(net.b1.running_mean, before["b1.running_mean"])
    assert int(net.b1.num_batches_tracked) == 0
    net(torch.randn(6, 3, 8, 8))  # hooks removed: statistics move again
    assert not torch.equal(net.b1.running_mean, before["b1.running_mean"])


def test_frozen_bn_scores_with_running_statistics():
    """Scoring with frozen BN equals scoring the model in eval mode (no dropout here)."""
    batches, loss = _batches(2), nn.functional.cross_entropy
    frozen = score_groups(
        StructuredPruner(_net(), torch.zeros(1, 3, 8, 8)),
        batches,
        loss,
        Scoring("taylor_fo_bn", train_mode=False),
    )
    trained = score_groups(
        StructuredPruner(_net(), torch.zeros(1, 3, 8, 8)), batches, loss, Scoring(train_mode=True)
    )
    net = _net()
    grads = {}
    for x, y in batches:  # by hand: BN in eval mode, gate gradient of b1 = (γ·dγ + β·dβ) summed
        net.eval()
        net.zero_grad()
        loss(net(x), y).backward()
        g = (net.b1.weight * net.b1.weight.grad + net.b1.bias * net.b1.bias.grad).detach()
        grads.setdefault("b1", []).append(g**2)
    want = torch.stack(grads["b1"]).mean(0)
    root = next(r for r in frozen if r in ("c1", "b1"))
    assert torch.allclose(frozen[root], want, rtol=1e-4, atol=1e-12)
    assert not torch.allclose(frozen[root], trained[root])


# -- the optimizer lineage belongs to its pruner ------------------------------------------------
def test_each_pruner_keeps_its_own_lineage():
    a, b = _net(), _net(1)
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    for net, opt in ((a, opt_a), (b, opt_b)):
        x, y = _batches(1)[0]
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    pa = StructuredPruner(a, torch.zeros(1, 3, 8, 8))
    pb = StructuredPruner(b, torch.zeros(1, 3, 8, 8))
    pa.remove({g.root: torch.arange(g.size).float() for g in pa.groups()}, 3)
    pb.remove({g.root: torch.arange(g.size).float() for g in pb.groups()}, 3)
    assert isinstance(pa.lineage, Lineage) and pa.lineage is not pb.lineage
    assert remap_optimizer(opt_a, pb) == 0  # b's removals say nothing about a's parameters
    assert remap_optimizer(opt_a, pa) > 0
    live = [id(p) for p in a.parameters()]
    assert [id(p) for g in opt_a.param_groups for p in g["params"]] == live


# -- a failed prune leaves the model as it was --------------------------------------------------
def _fail_on_second_removal(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch-pruning fails part way: the first group is already cut when the second fails."""
    real, calls = Lineage.prune_group, []

    def prune_group(self, group):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated failure inside torch-pruning")
        real(self, group)

    monkeypatch.setattr(Lineage, "prune_group", prune_group)


@pytest.mark.parametrize("failure", ["verification", "mid_removal"])
def test_failed_prune_leaves_the_model_exactly_as_it_was(failure, monkeypatch):
    torch.manual_seed(0)
    model = HardCodedWidth() if failure == "verification" else _net()
    if failure == "mid_removal":
        _fail_on_second_removal(monkeypatch)
    model.eval()
    seen = []
    model.fc.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    x = torch.randn(4, 3, 8, 8)
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    saved = _snapshot(model)
    with torch.no_grad():
        out = model(x)
    widths = {n: getattr(m, "out_channels", None) for n, m in modules.items()}
    batches = [(x, torch.tensor([0, 1, 0, 1]) if failure == "verification" else torch.arange(4))]
    with pytest.raises((UserError, RuntimeError)):
        prune(model, x[:1], batches, nn.functional.cross_entropy, target_macs=0.5)
    _assert_state(model, saved)
    assert dict(model.named_modules()) == modules  # the same module objects
    assert all(p is params[n] for n, p in model.named_parameters())  # the same parameters
    assert {n: getattr(m, "out_channels", None) for n, m in modules.items()} == widths
    assert not model.training
    seen.clear()
    with torch.no_grad():
        assert torch.equal(model(x), out)
    assert len(seen) == 1  # the caller's hook still fires, once


def test_failed_prune_iteratively_restores_model_and_optimizer(monkeypatch):
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x, y = _batches(1)[0]
    nn.functional.cross_entropy(net(x), y).backward()
    opt.step()  # momentum exists before pruning
    saved = _snapshot(net)
    params = list(net.parameters())
    momentum = {id(p): opt.state[p]["momentum_buffer"].clone() for p in params}
    _fail_on_second_removal(monkeypatch)
    with pytest.raises(RuntimeError, match="simulated"):
        prune_iteratively(
            net, x[:1], _batches(20), nn.functional.cross_entropy, opt,
            target=Target("channels", 0.5), score_batches=2, channels_per_step=3,
        )  # fmt: skip
    _assert_state(net, saved)  # the training steps of the failed call are undone too
    assert list(net.parameters()) == params
    assert [p for g in opt.param_groups for p in g["params"]] == params
    for p in params:
        assert torch.equal(opt.state[p]["momentum_buffer"], momentum[id(p)])


def test_successful_prune_keeps_the_callers_objects():
    net = _net()
    conv = net.c1
    copy_before = copy.deepcopy(net)
    prune(net, torch.zeros(1, 3, 8, 8), _batches(2), nn.functional.cross_entropy, target_macs=0.6)
    assert net.c1 is conv and net.c1.out_channels < copy_before.c1.out_channels


# -- equal-budget pacing: a fixed fraction of the baseline per step ------------------------------
class Plain(nn.Module):
    """Three conv-BN-ReLU layers of 48, 64 and 64 channels: a channel is 1-1.5% of the MACs at
    8x8, fine enough for every step to land within 1% of its goal."""

    def __init__(self) -> None:
        super().__init__()
        widths = (3, 48, 64, 64)
        self.features = nn.Sequential(
            *(
                layer
                for c_in, c_out in itertools.pairwise(widths)
                for layer in (
                    nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(),
                )
            )  # fmt: skip
        )
        self.fc = nn.Linear(64, 4)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def _plain(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return Plain()


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("criterion", ["taylor_fo_bn", "l1_norm"])
def test_fraction_per_step_reaches_each_level_after_the_same_number_of_steps(criterion):
    """0.05 of the baseline MACs per step: -50% after 10 steps, -70% after 14, -85% after 17,
    whatever the criterion ranks; every step lands within the 1% band of its own goal."""
    net = _plain()
    example = torch.zeros(1, 3, 8, 8)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    pruner = StructuredPruner(net, example)
    steps = prune_iteratively(
        net, example, _batches(40), nn.functional.cross_entropy, opt,
        target={"macs": 0.15}, criterion=criterion, score_batches=1, fraction_per_step=0.05,
        pruner=pruner,
    )  # fmt: skip
    kept = [s.macs / pruner.baseline_macs for s in steps]
    assert len(kept) == 17
    for k, fraction in enumerate(kept, start=1):
        assert abs(fraction - max(0.15, 1 - 0.05 * k)) <= 0.01, (k, fraction)
    first = {level: 1 + next(i for i, f in enumerate(kept) if f <= level + 0.01)
             for level in (0.5, 0.3, 0.15)}  # fmt: skip
    assert first == {0.5: 10, 0.3: 14, 0.15: 17}
    assert all(s.counted for s in steps)  # each step's MACs are a real count, not an estimate


@pytest.mark.usefixtures("one_thread")
def test_a_fraction_paced_schedule_resumes_exactly():
    loss, target = nn.functional.cross_entropy, Target("macs", 0.6)

    def fresh():
        net = _plain()
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        return net, opt, StructuredPruner(net, torch.zeros(1, 3, 8, 8))

    def schedule(cap, clear=True):
        return Schedule("iterative", 1, max_steps=cap, clear_momentum=clear, fraction_per_step=0.1)

    net_a, opt_a, pruner_a = fresh()
    whole = run_schedule(pruner_a, _batches(20), loss, target, schedule(None), optimizer=opt_a)
    assert whole.stop == "target" and len(whole.steps) == 4
    net_b, opt_b, pruner_b = fresh()
    half = run_schedule(pruner_b, _batches(20), loss, target, schedule(2, False), optimizer=opt_b)
    state = ScheduleState.from_dict(half.state.as_dict())
    rest = run_schedule(
        pruner_b, _batches(20), loss, target, schedule(None), optimizer=opt_b, resume=state
    )
    assert [s.macs for s in half.steps + rest.steps] == [s.macs for s in whole.steps]
    _assert_state(net_b, _snapshot(net_a))


@pytest.mark.usefixtures("one_thread")
def test_a_fraction_paced_step_that_removes_nothing_does_not_end_the_schedule():
    """Steps of 1% on a net whose channels weigh 2-7% of its MACs: the first steps cannot take a
    whole channel near their goal, yet the schedule goes on and removes channels later."""
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    pruner = StructuredPruner(net, torch.zeros(1, 3, 8, 8))
    schedule = Schedule("iterative", score_batches=1, fraction_per_step=0.01, max_steps=8)
    result = run_schedule(
        pruner, _batches(20), nn.functional.cross_entropy, Target("macs", 0.5), schedule,
        optimizer=opt,
    )  # fmt: skip
    removed = [s.channels_removed for s in result.steps]
    assert removed[0] == 0 and sum(removed) > 0 and result.stop == "max_steps", removed


def test_fraction_per_step_is_refused_where_it_cannot_pace():
    with pytest.raises(UserError, match="exclude each other"):
        Schedule("iterative", 1, channels_per_step=4, fraction_per_step=0.05)
    with pytest.raises(UserError, match=r"fraction_per_step must be in \(0, 1\)"):
        Schedule("iterative", 1, fraction_per_step=1.0)
    with pytest.raises(UserError, match="iterative schedule only"):
        Schedule("oneshot", fraction_per_step=0.05)
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    with pytest.raises(UserError, match="not for a latency target"):
        prune_iteratively(
            net, torch.zeros(1, 3, 8, 8), _batches(2), nn.functional.cross_entropy, opt,
            target={"latency": 0.6}, fraction_per_step=0.05,
        )  # fmt: skip
    with pytest.raises(UserError, match="exclude each other"):
        prune_iteratively(
            net, torch.zeros(1, 3, 8, 8), _batches(2), nn.functional.cross_entropy, opt,
            channels_per_step=4, fraction_per_step=0.05,
        )  # fmt: skip
