"""The training engine: hooks, stopping, divergence, metrics, schedules, weight decay, BN, init."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from taylorprune.errors import UserError
from taylorprune.optimizers import build_optimizer, build_scheduler, make_loss, param_groups
from taylorprune.recipe import TrainConfig
from taylorprune.train import (
    TrainingDiverged,
    evaluate,
    fit,
    recalibrate_bn,
    reinitialize,
    train_epoch,
)


def tiny_cnn(width: int = 8, classes: int = 10) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(width * 4, classes),
    )


@pytest.fixture(autouse=True)
def one_thread():
    # The tiny models here run fastest on one thread, and CI shares its cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> tuple[TensorDataset, TensorDataset]:
    from sklearn.datasets import load_digits  # here, not at collection: every worker collects

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(y, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=g)
    x, y = x[order], y[order]
    return TensorDataset(x[:640], y[:640]), TensorDataset(x[640:896], y[640:896])


def loader(ds: TensorDataset, batch_size: int = 64, shuffle: bool = False) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle)


def test_train_epoch_learns_digits(digits):
    torch.manual_seed(0)
    train, val = digits
    model = tiny_cnn()
    cfg = TrainConfig(lr=0.1, weight_decay=0.0)
    opt = build_optimizer(model, cfg)
    before = evaluate(model, loader(val))
    rows = [
        train_epoch(model, loader(train, 32, True), opt, make_loss(cfg), progress=False)
        for _ in range(3)
    ]
    after = evaluate(model, loader(val))
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert after["loss"] < before["loss"]
    assert after["top1"] > 50.0  # chance is 10%
    assert rows[0]["iters"] == 20 and rows[0]["lr"] == pytest.approx(0.1)


def test_hooks_order_and_counts(digits):
    torch.manual_seed(0)
    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    conv = model[0].weight
    events: list[tuple] = []
    snapshot: dict[str, torch.Tensor] = {}

    def after_backward() -> None:
        # Gradients exist, and the weights are still those the forward pass used.
        assert conv.grad is not None
        if "w" in snapshot:
            assert not torch.equal(snapshot["w"], conv.detach())  # previous step applied
        snapshot["w"] = conv.detach().clone()
        events.append(("backward",))

    def after_step(n: int) -> None:
        assert not torch.equal(snapshot["w"], conv.detach())  # this step applied
        events.append(("step", n))

    stats = train_epoch(
        model, loader(digits[0], 64), opt, nn.CrossEntropyLoss(), max_iters=4,
        after_backward=after_backward, after_step=after_step, progress=False,
    )  # fmt: skip
    assert stats["iters"] == 4
    assert events == [e for n in (1, 2, 3, 4) for e in (("backward",), ("step", n))]


def test_max_iters_and_stop(digits):
    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    batches = loader(digits[0], 64)  # 10 batches
    assert train_epoch(model, batches, opt, nn.CrossEntropyLoss(), progress=False)["iters"] == 10
    stats = train_epoch(model, batches, opt, nn.CrossEntropyLoss(), max_iters=3, progress=False)
    assert stats["iters"] == 3
    calls: list[int] = []

    def stop_at_two(n: int) -> str | None:
        calls.append(n)
        return "stop" if n == 2 else None

    stats = train_epoch(
        model, batches, opt, nn.CrossEntropyLoss(), after_step=stop_at_two, progress=False
    )
    assert stats["iters"] == 2 and calls == [1, 2]


class _GoesNaN(nn.Module):
    """A linear model whose output becomes NaN from its ``at``-th forward call on."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.calls = 0
        self.at = at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.fc(x.flatten(1))
        return out * float("nan") if self.calls >= self.at else out


def test_nan_loss_raises_training_diverged(digits):
    model = _GoesNaN(at=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TrainingDiverged) as info:
        train_epoch(model, loader(digits[0], 64), opt, nn.CrossEntropyLoss(), progress=False)
    message = str(info.value)
    assert isinstance(info.value, UserError)
    assert "iteration 3" in message and "nan" in message and "\n" not in message


def test_evaluate_matches_hand_computation():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(23, 7, generator=g)
    targets = torch.randint(0, 7, (23,), generator=g)
    # The model is the identity: the inputs are the logits.
    out = evaluate(nn.Identity(), DataLoader(TensorDataset(logits, targets), batch_size=5))
    top1 = top5 = 0
    nll = 0.0
    for row, t in zip(logits.tolist(), targets.tolist(), strict=True):
        order = sorted(range(7), key=lambda j: -row[j])
        top1 += order[0] == t
        top5 += t in order[:5]
        nll += -(row[t] - math.log(sum(math.exp(v) for v in row)))
    assert out["top1"] == pytest.approx(100.0 * top1 / 23)
    assert out["top5"] == pytest.approx(100.0 * top5 / 23)
    assert out["loss"] == pytest.approx(nll / 23, rel=1e-5)
    few = evaluate(nn.Identity(), [(logits[:, :4], targets % 4)], max_batches=1)
    assert few["top5"] is None


def test_evaluate_restores_mode_and_limits_batches():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    model.train()
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    data = [(torch.randn(2, 4), torch.tensor([0, 1]))] * 5
    evaluate(model, data, max_batches=2)
    assert model.training and len(calls) == 2
    with pytest.raises(UserError, match="no batches"):
        evaluate(model, [])


def test_warmup_then_cosine_matches_closed_form():
    model = tiny_cnn()
    lr, spe, epochs, warm_epochs = 0.2, 4, 5, 1
    cfg = TrainConfig(lr=lr, epochs=epochs, schedule="cosine", warmup_epochs=warm_epochs)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, spe)
    w, total = warm_epochs * spe, epochs * spe
    for t in range(total):
        expected = (
            lr * (t + 1) / (w + 1)
            if t < w
            else lr * 0.5 * (1 + math.cos(math.pi * (t - w) / (total - w)))
        )
        for group in opt.param_groups:
            assert group["lr"] == pytest.approx(expected, abs=1e-9), t
        opt.step()
        sched.step()


def test_step_schedule_decays_at_absolute_epochs_and_max_iters_shortens_cosine():
    model = tiny_cnn()
    cfg = TrainConfig(lr=1.0, epochs=6, schedule="step", step_size=2, gamma=0.5, warmup_epochs=1)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, 3)
    seen = []
    for _ in range(18):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # Warm-up over epoch 0, then lr until epoch 2, ×0.5 until epoch 4, ×0.25 after.
    assert seen[:3] == pytest.approx([0.25, 0.5, 0.75])
    assert seen[3:6] == pytest.approx([1.0] * 3)
    assert seen[6:12] == pytest.approx([0.5] * 6)
    assert seen[12:] == pytest.approx([0.25] * 6)
    cfg = TrainConfig(lr=1.0, epochs=100, max_iters=10, schedule="cosine")
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, 50)
    for _ in range(5):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)  # halfway through 10 iterations


def test_onecycle_peaks_after_warmup():
    model = tiny_cnn()
    cfg = TrainConfig(lr=0.4, epochs=2, schedule="onecycle", warmup_epochs=0.5)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, 10)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # torch's one-cycle reaches its peak at iteration pct_start·T − 1 = 0.25·20 − 1.
    assert max(range(20), key=lrs.__getitem__) == 4
    assert lrs[4] == pytest.approx(0.4)
    assert lrs[0] == pytest.approx(0.4 / 25)  # torch's default div_factor
    assert lrs[-1] < 0.01


def test_optimizer_excludes_norm_and_bias_from_weight_decay():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, bias=True), nn.BatchNorm2d(4), nn.Flatten())
    model.append(nn.Linear(4 * 16, 3))
    groups = param_groups(model, 0.5)
    decay = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decay == {id(model[0].weight), id(model[3].weight)}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    # With a zero loss, one SGD step only applies weight decay: w ← w·(1 − lr·wd).
    cfg = TrainConfig(lr=0.1, momentum=0.0, weight_decay=0.5)
    opt = build_optimizer(model, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    (model(torch.randn(2, 1, 6, 6)) * 0).sum().backward()
    opt.step()
    for name, p in model.named_parameters():
        factor = 0.95 if name in ("0.weight", "3.weight") else 1.0
        assert torch.allclose(p, before[name] * factor), name


def test_recalibrate_bn_estimates_the_data_statistics():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3, momentum=0.3)
    model = nn.Sequential(bn)
    model.train()
    bn.running_mean.fill_(5.0)
    bn.running_var.fill_(7.0)
    scale = torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    shift = torch.tensor([-1.0, 0.0, 3.0]).view(1, 3, 1, 1)
    batches = [(torch.randn(4, 3, 5, 5) * scale + shift, torch.zeros(4)) for _ in range(3)]
    batches.append((torch.full((4, 3, 5, 5), 1e3), torch.zeros(4)))  # beyond `batches=3`
    recalibrate_bn(model, batches, batches=3)
    means = torch.stack([x.mean(dim=(0, 2, 3)) for x, _ in batches[:3]])
    varis = torch.stack([x.transpose(0, 1).reshape(3, -1).var(dim=1) for x, _ in batches[:3]])
    assert torch.allclose(bn.running_mean, means.mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, varis.mean(0), atol=1e-5)
    assert bn.momentum == 0.3 and model.training


def test_a_pruned_model_is_measured_on_a_recalibrated_copy_and_left_alone():
    """One pruning step leaves the BatchNorm after the pruned layer with statistics of channels
    that are gone mixed with kept ones: evaluating a recalibrated copy differs from reading them,
    equals a recalibration by hand, and leaves the model (in the schedule's frozen-BN hooks, as
    between pruning steps with ``importance.train_mode: false``) exactly as it was."""
    import copy

    from taylorprune.importance.scoring import frozen_bn
    from taylorprune.pruning import StructuredPruner
    from taylorprune.train import evaluate_recalibrated

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )  # fmt: skip
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 1, 6, 6, generator=g) * 2 + 1, torch.randint(0, 3, (16,), generator=g))
            for _ in range(6)]  # fmt: skip
    val, calibration = data[:2], data[2:]
    model.train()
    with torch.no_grad():
        for x, _ in calibration:  # statistics of the unpruned network
            model(x)
    pruner = StructuredPruner(model, torch.zeros(1, 1, 6, 6))
    scores = {grp.root: torch.arange(grp.size, dtype=torch.float32) for grp in pruner.groups()}
    assert pruner.remove(scores, 6).channels_removed == 6
    by_hand = copy.deepcopy(model)
    recalibrate_bn(by_hand, calibration, batches=3)
    want = evaluate(by_hand, val)
    stale = evaluate(model, val)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    with frozen_bn(model, True):
        got = evaluate_recalibrated(model, val, calibration, batches=3)
    assert got == want and got["loss"] != stale["loss"]
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_reinitialize_resets_every_layer_and_keeps_shapes(caplog):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 64, 3, bias=True), nn.BatchNorm2d(64), nn.Flatten())
    model.append(nn.Linear(64, 5))
    model.register_parameter("extra", nn.Parameter(torch.full((3,), 7.0)))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(3.0)
    model[1].running_mean.fill_(2.0)
    model[1].num_batches_tracked.fill_(9)
    old_linear = model[3].weight.detach().clone()
    shapes = [p.shape for p in model.parameters()]
    with caplog.at_level(logging.WARNING, logger="taylorprune"):
        reinitialize(model)
    assert [p.shape for p in model.parameters()] == shapes
    conv = model[0]
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / (64 * 9)), rel=0.05)
    assert conv.weight.mean().abs().item() < 0.01 and torch.all(conv.bias == 0)
    assert torch.all(model[1].weight == 1) and torch.all(model[1].bias == 0)
    assert torch.all(model[1].running_mean == 0) and model[1].num_batches_tracked.item() == 0
    assert not torch.allclose(model[3].weight, old_linear)
    assert model[3].weight.abs().max().item() <= 1 / math.sqrt(64) + 1e-6  # torch's default
    assert torch.all(model.extra == 10.0) and "extra" in caplog.text  # kept, and named


def test_fit_respects_max_iters_eval_every_and_stop(digits):
    torch.manual_seed(0)
    train, val = digits
    cfg = TrainConfig(epochs=4, max_iters=7, lr=0.05, eval_every=2)
    seen = []
    rows = fit(
        tiny_cnn(), loader(train, 256), loader(val), cfg, progress=False,
        on_epoch_end=lambda e, row: seen.append(e),
    )  # fmt: skip
    assert [r["iters"] for r in rows] == [3, 3, 1]  # 3 batches per epoch, 7 in total
    assert seen == [0, 1, 2]
    assert ["val_top1" in r for r in rows] == [False, True, True]  # every 2nd epoch and the last
    rows = fit(
        tiny_cnn(), loader(train, 256), None, TrainConfig(epochs=5), progress=False,
        on_epoch_end=lambda e, row: "stop" if e == 1 else None,
    )  # fmt: skip
    assert len(rows) == 2 and "val_top1" not in rows[-1]


def test_after_step_may_prune_and_remap_the_optimizer_in_place(digits):
    torch.manual_seed(0)
    model = tiny_cnn(width=8)
    cfg = TrainConfig(lr=0.05, weight_decay=1e-4)
    opt = build_optimizer(model, cfg)
    keep = torch.arange(4)

    def prune_half(n: int) -> None:
        if n != 2:
            return
        conv, bn, fc = model[0], model[1], model[5]
        fc_keep = torch.stack([keep * 4 + k for k in range(4)], 1).flatten()
        swaps = {
            conv.weight: nn.Parameter(conv.weight.detach()[keep].clone()),
            bn.weight: nn.Parameter(bn.weight.detach()[keep].clone()),
            bn.bias: nn.Parameter(bn.bias.detach()[keep].clone()),
            fc.weight: nn.Parameter(fc.weight.detach()[:, fc_keep].clone()),
        }
        conv.weight, bn.weight, bn.bias, fc.weight = (swaps[p] for p in swaps)
        bn.running_mean = bn.running_mean[keep]
        bn.running_var = bn.running_var[keep]
        bn.num_features = conv.out_channels = 4
        for group in opt.param_groups:
            group["params"][:] = [swaps.get(p, p) for p in group["params"]]
        opt.state.clear()
        snapshot["conv"] = conv.weight.detach().clone()

    snapshot: dict[str, torch.Tensor] = {}
    stats = train_epoch(
        model, loader(digits[0], 64), opt, make_loss(cfg), grad_clip=1.0, max_iters=6,
        after_step=prune_half, progress=False,
    )  # fmt: skip
    assert stats["iters"] == 6 and model[0].weight.shape[0] == 4
    assert not torch.equal(snapshot["conv"], model[0].weight.detach())  # the new tensor trains


def test_amp_and_channels_last_on_cpu(digits):
    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    stats = train_epoch(
        model, loader(digits[0], 64), opt, nn.CrossEntropyLoss(), amp="bf16",
        channels_last=True, max_iters=2, progress=False,
    )  # fmt: skip
    assert stats["iters"] == 2 and math.isfinite(stats["loss"])
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    out = evaluate(model, loader(digits[1]), amp="bf16", channels_last=True)
    assert 0.0 <= out["top1"] <= 100.0
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        train_epoch(model, loader(digits[0]), opt, nn.CrossEntropyLoss(), amp="fp16")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_with_grad_scaler_on_cuda(digits):
    torch.manual_seed(0)
    model = tiny_cnn().cuda()
    cfg = TrainConfig(epochs=2, lr=0.1, amp="fp16", channels_last=True)
    rows = fit(model, loader(digits[0], 64), loader(digits[1]), cfg, device="cuda", progress=False)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["val_top1"] > 30.0


# -- knowledge distillation ---------------------------------------------------------------------
def test_distillation_loss_is_hintons_formula():
    """(1 − w)·CE + w·T²·KL(p_t ‖ p_s), KL written out per example and averaged over the batch."""
    from taylorprune.distill import distillation_loss

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g) * 3
    y = torch.tensor([0, 1, 2, 3, 0])
    ce = nn.CrossEntropyLoss(label_smoothing=0.1)
    for w, temp in ((0.0, 4.0), (0.5, 4.0), (1.0, 1.0), (0.3, 0.5)):
        p_t = torch.softmax(t / temp, dim=1)
        kl = (p_t * (p_t.log() - torch.log_softmax(s / temp, dim=1))).sum(1).mean()
        want = (1 - w) * ce(s, y) + w * temp**2 * kl
        got = distillation_loss(s, t, y, weight=w, temperature=temp, hard_loss=ce)
        assert torch.allclose(got, want, atol=1e-6), (w, temp)
    # the label smoothing is the hard part's: with w = 0 the loss is the phase's own
    assert distillation_loss(s, t, y, weight=0.0, temperature=2.0, hard_loss=ce) == ce(s, y)


def test_fit_distills_from_a_teacher_it_never_trains(digits):
    """A student that starts as a copy of its teacher (no BatchNorm, so both compute the same
    logits), taught with w = 1 and T = 1: the soft loss is at its minimum, its gradient is zero
    up to rounding, and without weight decay or momentum a step changes nothing, where a step on
    the labels does. With w = 0 fine-tuning is plain fine-tuning, bit for bit. The teacher's
    weights, mode and gradients stay as they were."""
    import copy

    torch.manual_seed(0)
    train, _ = digits
    teacher = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(32, 10),
    )  # fmt: skip
    fit(teacher, loader(train, 64, True), None, TrainConfig(epochs=1, lr=0.05), progress=False)
    teacher.zero_grad(set_to_none=True)
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}

    def one_step(distill: dict | None) -> float:
        student = copy.deepcopy(teacher)
        cfg = TrainConfig(epochs=1, max_iters=1, lr=0.5, momentum=0.0, weight_decay=0.0,
                          distill=distill)  # fmt: skip
        rows = fit(student, loader(train, 64), None, cfg, progress=False,
                   teacher=None if distill is None else teacher.train())  # fmt: skip
        assert (distill is None) is ("teacher_s" not in rows[0]) and rows[0].get("teacher_s") != 0
        return max(float((student.state_dict()[k] - v).abs().max()) for k, v in frozen.items())

    assert one_step({"weight": 1.0, "temperature": 1.0}) < 1e-6
    assert one_step(None) > 1e-3 and one_step({"weight": 0.5, "temperature": 1.0}) > 1e-3
    assert not teacher.training and all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in frozen.items())
    # w = 0: the teacher's soft targets add exactly nothing
    plain, taught = tiny_cnn(), tiny_cnn()
    taught.load_state_dict(plain.state_dict())
    torch.manual_seed(1)
    fit(plain, loader(train, 64, True), None, TrainConfig(epochs=1, max_iters=3), progress=False)
    torch.manual_seed(1)
    zero = TrainConfig(epochs=1, max_iters=3, distill={"weight": 0.0, "temperature": 3.0})
    fit(taught, loader(train, 64, True), None, zero, progress=False, teacher=teacher)
    assert all(torch.equal(taught.state_dict()[k], v) for k, v in plain.state_dict().items())


def test_fit_refuses_a_teacher_without_settings_and_settings_without_a_teacher(digits):
    train, _ = digits
    kd = TrainConfig(epochs=1, distill={"weight": 0.5, "temperature": 4.0})
    with pytest.raises(UserError, match="pass the teacher"):
        fit(tiny_cnn(), loader(train, 64), None, kd, progress=False)
    with pytest.raises(UserError, match="cfg.distill is null"):
        fit(tiny_cnn(), loader(train, 64), None, TrainConfig(epochs=1), teacher=tiny_cnn())


@pytest.mark.parametrize(
    ("device", "amp"),
    [
        ("cpu", "bf16"),
        pytest.param(
            "cuda", "fp16",
            marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                        reason="needs CUDA")],
        ),
    ],
)  # fmt: skip
def test_the_teacher_runs_like_the_student_under_amp_and_channels_last(digits, device, amp):
    torch.manual_seed(0)
    student, teacher = tiny_cnn(), tiny_cnn()
    cfg = TrainConfig(epochs=1, max_iters=3, amp=amp, channels_last=True,
                      distill={"weight": 0.5, "temperature": 4.0})  # fmt: skip
    rows = fit(student, loader(digits[0], 64), None, cfg, device=device, progress=False,
               teacher=teacher)  # fmt: skip
    assert rows[0]["iters"] == 3 and math.isfinite(rows[0]["train_loss"])
    assert rows[0]["teacher_s"] > 0
    conv = teacher[0].weight
    assert conv.device.type == device and conv.is_contiguous(memory_format=torch.channels_last)
    assert not teacher.training and conv.grad is None
