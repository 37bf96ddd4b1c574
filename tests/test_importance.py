"""Importance criteria against an independent reference: explicit gates and plain autograd."""

from __future__ import annotations

import copy
import gc
import logging
import weakref

import pytest
import torch
import torch.nn.functional as F
from _importance_nets import MLP, Plain, Res, batches, make
from torch import Tensor, nn

from taylorprune.errors import UserError
from taylorprune.graph import ChannelGraph
from taylorprune.importance import (
    CRITERIA,
    DEFAULT_CRITERION,
    ImportanceAccumulator,
    TaylorSO,
    channel_scores,
)

NETS = [Plain, Res, MLP]
GRADIENT_CRITERIA = [
    "taylor_fo_bn",
    "taylor_fo_bn_var",
    "taylor_fo_bn_fg",
    "taylor_fo_weight",
    "taylor_so",
    "taylor_act",
]


def _keys(cls) -> list[str]:
    return sorted(set(cls.GATES.values()))


def _gate_sizes(net: nn.Module) -> dict[str, int]:
    out = {}
    for name, key in type(net).GATES.items():
        m = net.get_submodule(name)
        out[key] = m.num_features if isinstance(m, nn.BatchNorm2d) else m.weight.shape[0]
    return out


def _gate_grads(net, x, y, per_example: bool) -> dict[str, Tensor]:
    """dL/dg for explicit gates (shared by the batch, or one per example)."""
    sizes = _gate_sizes(net)
    shape = (lambda c: (x.shape[0], c)) if per_example else (lambda c: (c,))
    gates = {k: torch.ones(shape(c), requires_grad=True) for k, c in sizes.items()}
    loss = F.cross_entropy(net(x, gates), y)
    keys = sorted(gates)
    grads = torch.autograd.grad(loss, [gates[k] for k in keys])
    return dict(zip(keys, grads, strict=False))


def _exact_hessian_diag(net, x, y) -> dict[str, Tensor]:
    sizes = _gate_sizes(net)
    out = {}
    for key, c in sizes.items():

        def loss_of(g, key=key):
            gates = {k: torch.ones(n) for k, n in sizes.items()}
            gates[key] = g
            return F.cross_entropy(net(x, gates), y)

        out[key] = torch.autograd.functional.hessian(loss_of, torch.ones(c)).diagonal()
    return out


def _filter_terms(net, key: str, fn) -> Tensor:
    total = 0
    for name in type(net).FILTERS[key]:
        m = net.get_submodule(name)
        total = total + fn(m)
    return total


def _weight_grad_term(m: nn.Module) -> Tensor:
    out = (m.weight * m.weight.grad).square().flatten(1).sum(1)
    if m.bias is not None:
        out = out + (m.bias * m.bias.grad).square()
    return out


def reference(cls, criterion: str, train_mode: bool) -> dict[str, Tensor]:
    """Scores per gate key computed from explicit gates; averaged over the test batches."""
    net = make(cls)
    net.train(train_mode)
    data = batches(cls)
    per_batch = []
    for x, y in data:
        ref_net = copy.deepcopy(net)  # train-mode forwards move BN running stats
        if criterion in ("taylor_fo_bn", "taylor_fo_bn_var"):
            s = {k: g for k, g in _gate_grads(ref_net, x, y, False).items()}
        elif criterion == "taylor_fo_bn_fg":
            s = {k: g.square().sum(0) for k, g in _gate_grads(ref_net, x, y, True).items()}
        elif criterion == "taylor_act":
            s = {
                k: g.abs().mean(0) / cls.POSITIONS[k]
                for k, g in _gate_grads(ref_net, x, y, True).items()
            }
        elif criterion == "taylor_so":
            grad = _gate_grads(ref_net, x, y, False)
            fisher = {
                k: x.shape[0] * g.square().sum(0)
                for k, g in _gate_grads(ref_net, x, y, True).items()
            }
            s = {k: (-grad[k] + 0.5 * fisher[k]).square() for k in grad}
        elif criterion == "taylor_so_exact":
            grad = _gate_grads(ref_net, x, y, False)
            hess = _exact_hessian_diag(ref_net, x, y)
            s = {k: (-grad[k] + 0.5 * hess[k]).square() for k in grad}
        elif criterion == "taylor_fo_weight":
            F.cross_entropy(ref_net(x), y).backward()
            s = {k: _filter_terms(ref_net, k, _weight_grad_term) for k in _keys(cls)}
        per_batch.append(s)
    if criterion in ("taylor_fo_bn", "taylor_fo_bn_var"):  # per-batch gradients G, stacked
        g = {k: torch.stack([s[k] for s in per_batch]) for k in per_batch[0]}
        if criterion == "taylor_fo_bn":
            return {k: v.square().mean(0).detach() for k, v in g.items()}
        # the variance across minibatches: mean of squares minus square of the mean
        return {k: v.var(0, unbiased=False).detach() for k, v in g.items()}
    out = {k: sum(s[k] for s in per_batch) / len(per_batch) for k in per_batch[0]}
    if criterion == "taylor_act":
        out = {k: v / v.norm() for k, v in out.items()}
    return {k: v.detach() for k, v in out.items()}


def _by_gate(cls, scores_by_key: dict[str, Tensor]) -> dict[str, Tensor]:
    return {name: scores_by_key[key] for name, key in cls.GATES.items()}


@pytest.mark.parametrize("cls", NETS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("train_mode", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("criterion", GRADIENT_CRITERIA)
def test_gradient_criteria_match_explicit_gates(cls, train_mode, criterion):
    net = make(cls)
    got = channel_scores(net, batches(cls), F.cross_entropy, criterion, train_mode=train_mode)
    want = _by_gate(cls, reference(cls, criterion, train_mode))
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name].float(), rtol=2e-4, atol=1e-9)


@pytest.mark.parametrize("train_mode", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("cls", NETS, ids=lambda c: c.__name__)
def test_taylor_so_exact_matches_autograd_hessian(cls, train_mode):
    net = make(cls)
    got = channel_scores(
        net, batches(cls), F.cross_entropy, TaylorSO(hessian="exact"), train_mode=train_mode
    )
    want = _by_gate(cls, reference(cls, "taylor_so_exact", train_mode))
    for name in want:
        torch.testing.assert_close(got[name], want[name].float(), rtol=2e-4, atol=1e-9)


class _HessianOnly(TaylorSO):
    """Exposes the per-minibatch H_cc estimate as the score (criteria are pluggable)."""

    def batch_score(self, batch):
        return self.hessian_diag(batch)


def _full_gate_hessian(net, x, y) -> tuple[list[str], Tensor]:
    """Hessian of the loss in all shared gates of the net, concatenated in sorted key order."""
    sizes = _gate_sizes(net)
    keys = sorted(sizes)

    def loss_of(flat):
        parts = dict(zip(keys, flat.split([sizes[k] for k in keys]), strict=False))
        return F.cross_entropy(net(x, parts), y)

    return keys, torch.autograd.functional.hessian(loss_of, torch.ones(sum(sizes.values())))


@pytest.mark.parametrize("probes", [1, 200])
def test_hutchinson_estimate_is_unbiased_with_the_right_spread(probes):
    net = make(Res)
    net.train()
    x, y = batches(Res)[0]
    keys, hess = _full_gate_hessian(copy.deepcopy(net), x, y)
    # z ⊙ Hz with Rademacher z: mean H_ii, variance Σ_{j≠i} H_ij² per probe
    off = hess - torch.diag(hess.diagonal())
    std = (off.square().sum(1) / probes).sqrt()
    groups = ChannelGraph(net, x[:1]).groups()
    with ImportanceAccumulator(net, groups, _HessianOnly("hutchinson", probes=probes)) as acc:
        acc.backward(F.cross_entropy(net(x), y))
        got = acc.group_scores()
    root = {"stream": "conv0", "bn1": "conv1", "fc": "fc"}
    est = torch.cat([got[root[k]] for k in keys])
    assert ((est - hess.diagonal()).abs() <= 5 * std + 1e-5).all()
    if probes == 1:
        # one probe: the estimate is H_ii + Σ_{j≠i} z_i z_j H_ij, not the diagonal itself
        assert not torch.allclose(est, hess.diagonal(), atol=1e-6)


def test_exact_mode_gives_the_hessian_diagonal_with_coupled_cross_terms():
    net = make(Res)
    net.train()
    x, y = batches(Res)[0]
    keys, hess = _full_gate_hessian(copy.deepcopy(net), x, y)
    groups = ChannelGraph(net, x[:1]).groups()
    with ImportanceAccumulator(net, groups, _HessianOnly("exact")) as acc:
        acc.backward(F.cross_entropy(net(x), y))
        got = acc.group_scores()
    root = {"stream": "conv0", "bn1": "conv1", "fc": "fc"}
    est = torch.cat([got[root[k]] for k in keys])
    torch.testing.assert_close(est, hess.diagonal(), rtol=1e-4, atol=1e-7)


def test_fisher_hessian_tracks_exact_on_a_trained_net():
    """Near a minimum of a mean of per-example losses the empirical Fisher approximates the
    Hessian; on a briefly trained net the two diagonals must at least rank channels alike."""
    from scipy.stats import spearmanr

    torch.manual_seed(0)
    net = make(Plain)
    data = batches(Plain, n=1, size=64)
    x, y = data[0]
    opt = torch.optim.SGD(net.parameters(), lr=0.3)
    net.eval()
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    exact = _exact_hessian_diag(net, x, y)
    fisher = {k: x.shape[0] * g.square().sum(0) for k, g in _gate_grads(net, x, y, True).items()}
    e = torch.cat([exact[k] for k in sorted(exact)])
    f = torch.cat([fisher[k] for k in sorted(fisher)])
    assert spearmanr(e.numpy(), f.numpy()).statistic > 0.7


def test_weight_only_criteria():
    net = make(Res)
    got = {
        c: channel_scores(net, batches(Res), F.cross_entropy, c)
        for c in ("l1_norm", "l2_norm", "bn_scale")
    }
    stream_l1 = net.conv0.weight.abs().flatten(1).sum(1) + net.conv2.weight.abs().flatten(1).sum(1)
    stream_l2 = net.conv0.weight.square().flatten(1).sum(1) + net.conv2.weight.square().flatten(
        1
    ).sum(1)
    torch.testing.assert_close(got["l1_norm"]["bn0"], stream_l1.detach())
    torch.testing.assert_close(got["l1_norm"]["bn2"], stream_l1.detach())
    torch.testing.assert_close(
        got["l2_norm"]["bn1"], net.conv1.weight.square().flatten(1).sum(1).detach()
    )
    torch.testing.assert_close(got["l1_norm"]["fc"], net.fc.weight.abs().sum(1).detach())
    torch.testing.assert_close(got["l2_norm"]["bn0"], stream_l2.detach())
    torch.testing.assert_close(
        got["bn_scale"]["bn2"], (net.bn0.weight.abs() + net.bn2.weight.abs()).detach()
    )
    assert torch.isinf(got["bn_scale"]["fc"]).all()


def test_random_is_seeded_and_fixed_within_a_window():
    net = make(Res)
    groups = ChannelGraph(net, torch.randn(1, 2, 4, 4)).groups()
    a = ImportanceAccumulator(net, groups, "random", seed=3)
    b = ImportanceAccumulator(net, groups, "random", seed=3)
    c = ImportanceAccumulator(net, groups, "random", seed=4)
    first = a.group_scores()
    assert all(torch.equal(first[k], v) for k, v in a.group_scores().items())
    assert all(torch.equal(first[k], v) for k, v in b.group_scores().items())
    assert not torch.equal(first["conv1"], c.group_scores()["conv1"])
    a.reset()
    assert not torch.equal(first["conv1"], a.group_scores()["conv1"])
    assert all(((v >= 0) & (v < 1)).all() for v in first.values())


def test_coupled_gates_share_one_score_summed_before_squaring():
    net = make(Res)
    fo_bn = {"criterion": "taylor_fo_bn", "train_mode": True}  # what the check below computes
    got = channel_scores(net, batches(Res), F.cross_entropy, **fo_bn)
    assert torch.equal(got["bn0"], got["bn2"])
    # and it is not the sum of the squares of the two positions' separate gradients
    x, y = batches(Res)[0]
    sep = copy.deepcopy(net)
    sep.train()
    g0 = torch.ones(3, requires_grad=True)
    g2 = torch.ones(3, requires_grad=True)

    def fwd(x):
        from _importance_nets import gate

        identity = sep.relu(gate(sep.bn0(sep.conv0(x)), g0))
        out = sep.relu(sep.bn1(sep.conv1(identity)))
        out = gate(sep.bn2(sep.conv2(out)), g2) + identity
        return sep.fc(sep.pool(sep.relu(out)).flatten(1))

    a, b = torch.autograd.grad(F.cross_entropy(fwd(x), y), [g0, g2])
    single = channel_scores(net, [batches(Res)[0]], F.cross_entropy, **fo_bn)["bn0"]
    torch.testing.assert_close(single, (a + b).square(), rtol=2e-4, atol=1e-9)
    assert not torch.allclose(single, a.square() + b.square(), rtol=1e-2)


@pytest.mark.parametrize("criterion", CRITERIA.names())
def test_model_left_as_found(criterion):
    net = make(Res)
    net.train()
    net.bn1.eval()  # a mixed mode must survive too
    net.conv1.weight.requires_grad_(False)
    x, y = batches(Res)[0]
    F.cross_entropy(net(x), y).backward()  # leave .grad behind, as a user's loop might
    before = copy.deepcopy(net.state_dict())
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in net.named_parameters()}
    channel_scores(net, batches(Res), F.cross_entropy, criterion)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    for n, p in net.named_parameters():
        assert (p.grad is None) == (grads[n] is None), n
        if p.grad is not None:
            assert torch.equal(p.grad, grads[n]), n
    assert not net.conv1.weight.requires_grad and net.conv2.weight.requires_grad
    assert net.training and not net.bn1.training
    for m in net.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks


@pytest.mark.parametrize("criterion", ["taylor_fo_bn_fg", TaylorSO("exact")], ids=str)
def test_hooks_removed(criterion):
    net = make(Plain)
    groups = ChannelGraph(net, torch.randn(1, 2, 4, 4)).groups()
    acc = ImportanceAccumulator(net, groups, criterion)
    assert any(m._forward_hooks for m in net.modules())
    acc.close()
    assert not any(m._forward_hooks for m in net.modules())
    with ImportanceAccumulator(net, groups, criterion):
        pass
    assert not any(m._forward_hooks for m in net.modules())


def test_every_default_is_the_default_criterion_and_it_registers_no_hooks():
    from taylorprune.recipe import ImportanceConfig

    net = make(Res)
    net.train()
    groups = ChannelGraph(net, torch.randn(1, 2, 4, 4)).groups()
    acc = ImportanceAccumulator(net, groups)
    assert acc.criterion.name == DEFAULT_CRITERION == ImportanceConfig().criterion
    assert type(acc.criterion) is CRITERIA.get(DEFAULT_CRITERION)
    # the default reads parameter gradients: no hook on any module
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())
    data = batches(Res)
    by_default = channel_scores(net, data, F.cross_entropy)
    named = channel_scores(net, data, F.cross_entropy, DEFAULT_CRITERION)
    assert by_default.keys() == named.keys()
    for k in named:
        torch.testing.assert_close(by_default[k], named[k])


def test_no_activation_kept_alive():
    net = make(Res)
    net.train()
    groups = ChannelGraph(net, torch.randn(1, 2, 4, 4)).groups()
    acc = ImportanceAccumulator(net, groups, "taylor_fo_bn_fg")
    refs = []
    probe = net.bn1.register_forward_hook(lambda m, i, o: refs.append(weakref.ref(i[0])))
    x, y = batches(Res)[0]
    # forward + backward: the captured BN input dies with the graph
    F.cross_entropy(net(x), y).backward()
    acc.update()
    # forward without backward, and a forward under no_grad
    out = net(x)
    del out
    with torch.no_grad():
        net(x)
    gc.collect()
    assert len(refs) == 3 and all(r() is None for r in refs)
    probe.remove()
    acc.close()


def test_realign_after_removal():
    net = make(Res)
    net.train()
    x0 = torch.randn(1, 2, 4, 4)
    graph = ChannelGraph(net, x0)
    data = batches(Res, n=3)
    acc = ImportanceAccumulator(net, graph.groups(), "taylor_fo_bn_fg")
    for x, y in data[:2]:
        F.cross_entropy(net(x), y).backward()
        acc.update()
        net.zero_grad()
    old = acc.group_scores()
    group = next(g for g in graph.groups() if g.root == "conv0")
    graph.tp_group(group, [1]).prune()
    kept = torch.tensor([0, 2])
    acc.realign(graph.groups(), {"conv0": kept})
    new = acc.group_scores()
    torch.testing.assert_close(new["conv0"], old["conv0"][kept])
    torch.testing.assert_close(new["conv1"], old["conv1"])
    # one more minibatch on the pruned net: mean of 2 old + 1 new, aligned channel by channel
    x, y = data[2]
    fresh = ImportanceAccumulator(net, graph.groups(), "taylor_fo_bn_fg")
    F.cross_entropy(net(x), y).backward()
    acc.update()
    fresh.update()
    got = acc.group_scores()["conv0"]
    want = (2 * old["conv0"][kept] + fresh.group_scores()["conv0"]) / 3
    torch.testing.assert_close(got, want)
    assert acc.scores()["bn2"].shape == (2,)


def test_state_dict_round_trip(tmp_path):
    net = make(Res)
    net.train()
    groups = ChannelGraph(net, torch.randn(1, 2, 4, 4)).groups()
    data = batches(Res, n=3)
    a = ImportanceAccumulator(net, groups, "taylor_so", ema=0.5)
    x, y = data[0]
    F.cross_entropy(net(x), y).backward()
    a.update()
    a.reset()
    net.zero_grad()
    x, y = data[1]
    F.cross_entropy(net(x), y).backward()
    a.update()
    torch.save(a.state_dict(), tmp_path / "acc.pt")
    a.close()
    b = ImportanceAccumulator(net, groups, "taylor_so", ema=0.5)
    b.load_state_dict(torch.load(tmp_path / "acc.pt", weights_only=True))
    a = ImportanceAccumulator(net, groups, "taylor_so", ema=0.5)
    a.load_state_dict(torch.load(tmp_path / "acc.pt", weights_only=True))
    assert b.num_batches() == 1
    net.zero_grad()
    x, y = data[2]
    F.cross_entropy(net(x), y).backward()
    b.update()
    a.update()
    for k, v in a.group_scores().items():
        assert torch.equal(v, b.group_scores()[k])
    with pytest.raises(ValueError, match="criterion"):
        ImportanceAccumulator(net, groups, "taylor_fo_bn").load_state_dict(a.state_dict())


def test_a_centred_window_survives_a_checkpoint(tmp_path):
    """``taylor_fo_bn_var`` keeps the signed sums beside the squares: a window resumed from
    ``state_dict`` has the variance of all its minibatches."""
    net = make(Res)
    net.train()
    groups = ChannelGraph(net, torch.randn(1, 2, 4, 4)).groups()
    data = batches(Res, n=3)

    def add(acc, batch):
        net.zero_grad()
        x, y = batch
        F.cross_entropy(net(x), y).backward()
        acc.update()

    whole = ImportanceAccumulator(net, groups, "taylor_fo_bn_var")
    for b in data:
        add(whole, b)
    part = ImportanceAccumulator(net, groups, "taylor_fo_bn_var")
    add(part, data[0])
    add(part, data[1])
    torch.save(part.state_dict(), tmp_path / "acc.pt")
    resumed = ImportanceAccumulator(net, groups, "taylor_fo_bn_var")
    resumed.load_state_dict(torch.load(tmp_path / "acc.pt", weights_only=True))
    add(resumed, data[2])
    want = whole.group_scores()
    for k, v in resumed.group_scores().items():
        torch.testing.assert_close(v, want[k])
    assert all(bool((v >= 0).all()) for v in want.values())


def _window_mean(net, groups, data, criterion="taylor_fo_bn_fg") -> dict[str, Tensor]:
    acc = ImportanceAccumulator(net, groups, criterion)
    for x, y in data:
        net.zero_grad()
        F.cross_entropy(net(x), y).backward()
        acc.update()
    acc.close()
    return acc.group_scores()


def test_ema_across_windows():
    net = make(Res)
    net.train()
    groups = ChannelGraph(net, torch.randn(1, 2, 4, 4)).groups()
    data = batches(Res, n=5)
    windows = [data[:2], data[2:3], data[3:]]
    means = [_window_mean(net, groups, w) for w in windows]
    acc = ImportanceAccumulator(net, groups, "taylor_fo_bn_fg", ema=0.9)
    for i, w in enumerate(windows):
        for x, y in w:
            net.zero_grad()
            F.cross_entropy(net(x), y).backward()
            acc.update()
        if i < 2:
            assert acc.num_batches() == len(w)
            acc.reset()
            assert acc.num_batches() == 0
    e1 = means[0]["conv1"]
    e2 = 0.9 * e1 + 0.1 * means[1]["conv1"]
    torch.testing.assert_close(acc.group_scores()["conv1"], 0.9 * e2 + 0.1 * means[2]["conv1"])
    acc.reset()
    e3 = 0.9 * e2 + 0.1 * means[2]["conv1"]
    torch.testing.assert_close(acc.group_scores()["conv1"], e3)  # empty window: the EMA alone


def test_window_mean_without_ema_restarts():
    net = make(Plain)
    net.train()
    groups = ChannelGraph(net, torch.randn(1, 2, 4, 4)).groups()
    data = batches(Plain, n=3)
    acc = ImportanceAccumulator(net, groups, "taylor_fo_bn")
    for x, y in data[:2]:
        net.zero_grad()
        F.cross_entropy(net(x), y).backward()
        acc.update()
    acc.reset()
    net.zero_grad()
    F.cross_entropy(net(data[2][0]), data[2][1]).backward()
    acc.update()
    torch.testing.assert_close(
        acc.group_scores()["conv1"], _window_mean(net, groups, data[2:], "taylor_fo_bn")["conv1"]
    )


def test_non_affine_bn_falls_back_to_hooks():
    net = make(Plain)
    net.bn1 = nn.BatchNorm2d(3, affine=False)
    x, y = batches(Plain)[0]
    got = channel_scores(net, [(x, y)], F.cross_entropy, "taylor_fo_bn", train_mode=True)["bn1"]
    ref = copy.deepcopy(net).train()
    g = torch.ones(3, requires_grad=True)
    (grad,) = torch.autograd.grad(F.cross_entropy(ref(x, {"bn1": g}), y), [g])
    torch.testing.assert_close(got, grad.square(), rtol=2e-4, atol=1e-9)


def test_in_place_change_after_conv_gate_is_reported(caplog):
    class ConvAdd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3, padding=1)
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            y = self.conv(x)
            y.mul_(2.0)
            return self.fc(y.mean((2, 3)))

    net = ConvAdd()
    with caplog.at_level(logging.WARNING, logger="taylorprune"):
        channel_scores(net, [batches(Plain)[0]], F.cross_entropy, "taylor_fo_bn_fg")
    assert "modified in place" in caplog.text


def test_user_errors():
    net = make(Plain)
    with pytest.raises(UserError, match="unknown importance criterion 'taylor_fo'"):
        channel_scores(net, batches(Plain), F.cross_entropy, "taylor_fo")
    with pytest.raises(UserError, match="no batches"):
        channel_scores(net, [], F.cross_entropy)
    with pytest.raises(UserError, match="hessian"):
        TaylorSO(hessian="diag")


def test_second_order_needs_backward_through_the_accumulator():
    net = make(Plain)
    groups = ChannelGraph(net, torch.randn(1, 2, 4, 4)).groups()
    acc = ImportanceAccumulator(net, groups, TaylorSO("hutchinson"))
    x, y = batches(Plain)[0]
    F.cross_entropy(net(x), y).backward()
    with pytest.raises(RuntimeError, match="acc.backward"):
        acc.update()
    acc.close()


def _without_running_stats(net: nn.Module) -> nn.Module:
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None
    return net


def _cumulative_average(net: nn.Module) -> nn.Module:
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    return net


@pytest.mark.parametrize("variant", [_without_running_stats, _cumulative_average])
@pytest.mark.parametrize("criterion", ["taylor_fo_bn_fg", "taylor_act"])
def test_per_example_criteria_with_other_batch_statistics(variant, criterion):
    """Hooks take the batch statistics from the running-statistics update when BN keeps them
    (momentum or cumulative average), and from the input itself when it keeps none."""
    net = variant(make(Res))
    data = batches(Res)
    got = channel_scores(net, data, F.cross_entropy, criterion, train_mode=True)
    per_batch = []
    for x, y in data:
        g = _gate_grads(copy.deepcopy(net).train(), x, y, True)
        if criterion == "taylor_fo_bn_fg":
            per_batch.append({k: v.square().sum(0) for k, v in g.items()})
        else:
            per_batch.append({k: v.abs().mean(0) / Res.POSITIONS[k] for k, v in g.items()})
    want = {k: sum(s[k] for s in per_batch) / len(per_batch) for k in per_batch[0]}
    if criterion == "taylor_act":
        want = {k: v / v.norm() for k, v in want.items()}
    for name, key in Res.GATES.items():
        torch.testing.assert_close(got[name], want[key].detach().float(), rtol=2e-4, atol=1e-9)
