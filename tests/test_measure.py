"""Counts against closed forms and torchvision's documented figures; latency sanity."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

from taylorprune import measure

# torchvision's model docs: GFLOPS (= GMACs, batch norm not counted) and exact parameter counts.
DOCUMENTED = {
    "resnet18": (1.814e9, 11_689_512),
    "resnet34": (3.664e9, 21_797_672),
    "resnet50": (4.089e9, 25_557_032),
    "resnet101": (7.801e9, 44_549_160),
}


@pytest.mark.parametrize(
    "arch",
    ["resnet18", "resnet34", "resnet50", pytest.param("resnet101", marks=pytest.mark.slow)],
)
def test_torchvision_resnets_match_documented_counts(arch):
    model = getattr(torchvision.models, arch)()
    x = torch.randn(1, 3, 224, 224)
    macs, params = measure.count(model, x, include_batchnorm=False)
    documented_macs, documented_params = DOCUMENTED[arch]
    assert abs(macs - documented_macs) / documented_macs < 0.01
    assert params == documented_params


def _bn_output_elements(model: nn.Module, x: torch.Tensor) -> int:
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        total += output.numel()

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.BatchNorm2d)
    ]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return total


def test_batchnorm_counts_two_macs_per_output_element_in_eval_mode():
    # fvcore counts an affine batch norm in eval mode as a scale and a shift per element.
    model = torchvision.models.resnet18().train()
    x = torch.randn(1, 3, 32, 32)
    with_bn, _ = measure.count(model, x)
    without_bn, _ = measure.count(model, x, include_batchnorm=False)
    assert with_bn - without_bn == 2 * _bn_output_elements(model, x)
    model.train()
    measure.count(model, x)
    assert model.training, "count must restore the model's mode"


class TinyNet(nn.Module):
    """conv(3->c1, 3x3, pad 1) -> BN -> ReLU -> conv(c1->c2, 1x1, no bias) -> mean -> fc(c2->5)."""

    def __init__(self, c1: int = 8, c2: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, c1, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c1, c2, 1, bias=False)
        self.fc = nn.Linear(c2, 5)

    def forward(self, x):
        x = self.conv2(self.relu(self.bn1(self.conv1(x))))
        return self.fc(x.flatten(2).mean(-1))


def _tiny_closed_form(c1: int, c2: int, hw: int = 8) -> dict[str, tuple[int, int]]:
    """name -> (MACs, params) worked out by hand for TinyNet on a 1x3xhw x hw input."""
    pixels = hw * hw
    return {
        "conv1": (pixels * c1 * 3 * 9, c1 * 3 * 9 + c1),
        "bn1": (2 * pixels * c1, 2 * c1),  # scale and shift per element
        "conv2": (pixels * c2 * c1, c2 * c1),
        "fc": (c2 * 5, c2 * 5 + 5),
    }


def test_count_and_per_layer_match_closed_form():
    model = TinyNet(8, 6)
    x = torch.randn(1, 3, 8, 8)
    expected = _tiny_closed_form(8, 6)
    macs, params = measure.count(model, x)
    assert macs == sum(m for m, _ in expected.values())
    assert params == sum(p for _, p in expected.values())

    layers = measure.per_layer(model, x)
    assert list(layers) == ["conv1", "bn1", "conv2", "fc"]  # relu has neither MACs nor params
    for name, (m, p) in expected.items():
        assert (layers[name].macs, layers[name].params) == (m, p), name
    assert (layers["conv1"].kind, layers["conv1"].in_channels, layers["conv1"].out_channels) == (
        "conv",
        3,
        8,
    )
    assert (layers["fc"].kind, layers["fc"].in_channels, layers["fc"].out_channels) == (
        "linear",
        6,
        5,
    )
    assert layers["bn1"].kind == "norm"


def test_per_layer_sums_to_total_on_resnet():
    model = torchvision.models.resnet18()
    x = torch.randn(1, 3, 32, 32)
    macs, params = measure.count(model, x)
    layers = measure.per_layer(model, x)
    assert sum(c.macs for c in layers.values()) == macs
    assert sum(c.params for c in layers.values()) == params
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert [n for n, c in layers.items() if c.kind == "conv"] == convs


class Functional(nn.Module):
    """MACs in the model's own forward (a matmul with a held parameter) belong to the row ``""``."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 7))
        self.fc = nn.Linear(7, 2)

    def forward(self, x):
        return self.fc(x @ self.weight)


def test_per_layer_attributes_functional_macs_to_the_container():
    model = Functional()
    x = torch.randn(3, 4)
    layers = measure.per_layer(model, x)
    assert layers[""].macs == 3 * 4 * 7 and layers[""].params == 28
    assert layers["fc"].macs == 3 * 7 * 2 and layers["fc"].params == 16
    assert sum(c.macs for c in layers.values()) == measure.count(model, x)[0]


def test_a_count_is_reused_only_for_the_same_architecture_and_input_shape(monkeypatch):
    """Counts are kept per architecture: the same one is traced once, whatever its weights; a
    changed stride (same tensor shapes), width or input shape is traced anew; and what a caller
    does to a returned table does not reach the next caller."""
    import fvcore.nn

    traced = []

    class Counting(fvcore.nn.FlopCountAnalysis):
        def __init__(self, model, inputs):
            traced.append(model)
            super().__init__(model, inputs)

    monkeypatch.setattr(fvcore.nn, "FlopCountAnalysis", Counting)
    monkeypatch.setattr(measure, "_COUNTS", type(measure._COUNTS)())

    def net(stride=1, width=8):
        return nn.Sequential(nn.Conv2d(3, width, 3, stride=stride), nn.BatchNorm2d(width))

    x = torch.randn(1, 3, 16, 16)
    first, table = measure.module_macs(net(), x)
    table["0"] = -1
    with torch.no_grad():
        other_weights = net()
        other_weights[0].weight.mul_(3)
    assert measure.module_macs(other_weights, x) == (first, {**table, "0": first - 2 * 8 * 14 * 14})
    assert len(traced) == 1
    for model, inputs in (
        (net(stride=2), x),
        (net(width=4), x),
        (net(), torch.randn(1, 3, 20, 20)),
        (net(), torch.randn(2, 3, 16, 16)),
    ):
        macs, _ = measure.module_macs(model, inputs)
        want, _ = measure.module_macs(model, inputs)
        assert macs == want and macs != first
    assert len(traced) == 5
    assert measure.module_macs(net(), x, include_batchnorm=False)[0] == first - 2 * 8 * 14 * 14


def test_layer_table_reports_prunable_layers_before_and_after():
    x = torch.randn(1, 3, 8, 8)
    before = measure.per_layer(TinyNet(8, 6), x)
    after = measure.per_layer(TinyNet(5, 6), x)
    rows = measure.layer_table(before, after)
    assert [r["name"] for r in rows] == ["conv1", "conv2", "fc"]
    exp_b, exp_a = _tiny_closed_form(8, 6), _tiny_closed_form(5, 6)
    by_name = {r["name"]: r for r in rows}
    assert (by_name["conv1"]["channels_before"], by_name["conv1"]["channels_after"]) == (8, 5)
    assert (by_name["conv2"]["in_channels_before"], by_name["conv2"]["in_channels_after"]) == (8, 5)
    assert (by_name["conv2"]["channels_before"], by_name["conv2"]["channels_after"]) == (6, 6)
    for name in ("conv1", "conv2", "fc"):
        row = by_name[name]
        assert (row["macs_before"], row["params_before"]) == exp_b[name]
        assert (row["macs_after"], row["params_after"]) == exp_a[name]
        total_after = sum(m for m, _ in exp_a.values())
        assert row["macs_share_after"] == pytest.approx(exp_a[name][0] / total_after)


def test_layer_table_reports_a_missing_layer_as_removed():
    x = torch.randn(1, 3, 8, 8)
    before = measure.per_layer(TinyNet(), x)
    after = {k: v for k, v in measure.per_layer(TinyNet(), x).items() if k != "conv2"}
    row = next(r for r in measure.layer_table(before, after) if r["name"] == "conv2")
    assert (row["channels_after"], row["macs_after"], row["params_after"]) == (0, 0, 0)


def test_per_layer_and_layer_table_follow_a_real_channel_removal():
    from taylorprune.graph import ChannelGraph

    model = torchvision.models.resnet18()
    x = torch.randn(1, 3, 32, 32)
    before = measure.per_layer(model, x)
    graph = ChannelGraph(model, x)
    group = next(g for g in graph.groups() if g.root == "layer2.0.conv1")
    graph.tp_group(group, list(range(40))).prune()  # 128 -> 88 channels
    after = measure.per_layer(model, x)
    macs, params = measure.count(model, x)
    assert sum(c.macs for c in after.values()) == macs
    assert sum(c.params for c in after.values()) == params

    rows = {r["name"]: r for r in measure.layer_table(before, after)}
    assert (
        rows["layer2.0.conv1"]["channels_before"],
        rows["layer2.0.conv1"]["channels_after"],
    ) == (
        128,
        88,
    )
    assert rows["layer2.0.conv2"]["in_channels_after"] == 88
    # layer2 runs at 4x4 on a 32x32 input: conv2 (3x3, 128 out) loses 40 input channels.
    assert rows["layer2.0.conv2"]["macs_before"] - rows["layer2.0.conv2"]["macs_after"] == (
        40 * 128 * 9 * 16
    )
    untouched = [r for n, r in rows.items() if not n.startswith("layer2.0.conv")]
    assert all(r["macs_before"] == r["macs_after"] for r in untouched)


@pytest.mark.parametrize(("inplace", "expected"), [(False, 4096), (True, 3072)])
def test_peak_activation_bytes_closed_form(inplace, expected):
    # 1x3x8x8 input, float32: conv1 out 8*64*4 = 2048 B, relu out 2048 B (or none when in place),
    # conv2 out 4*64*4 = 1024 B. Not in place the peak is conv1 out + relu out; in place conv1 out
    # is still alive when conv2 writes its output.
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=inplace), nn.Conv2d(8, 4, 3, padding=1)
    )
    assert measure.peak_activation_bytes(model, torch.randn(1, 3, 8, 8)) == expected


def test_latency_reports_sane_numbers_and_restores_settings():
    model = TinyNet().train()
    threads_before = torch.get_num_threads()
    weight_format = model.conv1.weight.stride()
    out = measure.latency(
        model, torch.randn(4, 3, 16, 16), runs=5, warmup=1, threads=1, channels_last=True
    )
    assert out["batch_size"] == 4 and out["threads"] == 1 and out["device"] == "cpu"
    assert out["runs"] == 5 and out["warmup"] == 1 and out["channels_last"] is True
    assert 0 < out["min_ms"] <= out["p10_ms"] <= out["median_ms"] <= out["p90_ms"]
    assert out["mean_ms"] > 0 and out["peak_activation_mib"] > 0 and out["dtype"] == "float32"
    assert torch.get_num_threads() == threads_before
    assert model.training
    assert model.conv1.weight.stride() == weight_format  # the caller's model is not converted


def test_latency_rejects_bad_arguments():
    with pytest.raises(ValueError, match="runs"):
        measure.latency(TinyNet(), torch.randn(1, 3, 8, 8), runs=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            measure.latency(TinyNet(), torch.randn(1, 3, 8, 8), device="cuda")


def test_compare_latency_interleaves_and_reports_ratios():
    x = torch.randn(2, 3, 8, 8)
    base, pruned = TinyNet(8, 6), TinyNet(4, 6)
    out = measure.compare_latency(base, pruned, x, runs=5, warmup=1, threads=1)
    macs_b = sum(m for m, _ in _tiny_closed_form(8, 6).values())
    macs_p = sum(m for m, _ in _tiny_closed_form(4, 6).values())
    assert out["ideal_speedup"] == pytest.approx(macs_b / macs_p)
    assert out["speedup"] == pytest.approx(1 / out["fraction"])  # 5 rounds: medians invert
    assert out["speedup_p10"] <= out["speedup"] <= out["speedup_p90"]
    assert 0 < out["baseline_p10_ms"] <= out["baseline_ms"] <= out["baseline_p90_ms"]
    assert 0 < out["pruned_p10_ms"] <= out["pruned_ms"] <= out["pruned_p90_ms"]
    assert out["batch_size"] == 2 and out["threads"] == 1 and out["copies"] == 1
    assert out["baseline_peak_activation_mib"] > out["pruned_peak_activation_mib"] > 0


def test_compare_latency_takes_the_ratio_round_by_round(monkeypatch):
    """The fraction is the median of per-round ratios (a load change within a round cancels), not
    the ratio of the medians: scripted times tell the two apart."""
    import taylorprune.latency.timing as timing

    base = [10.0, 20.0, 10.0, 40.0, 10.0]
    pruned = [5.0, 8.0, 6.0, 10.0, 9.0]
    # round r visits the models in the order (k + r) % 2: baseline first in even rounds
    calls = iter(v for r in range(5) for v in ((base[r], pruned[r])[:: 1 if r % 2 == 0 else -1]))
    monkeypatch.setattr(timing, "time_once", lambda fn, dev: (fn(), next(calls))[1])
    out = measure.compare_latency(TinyNet(8, 6), TinyNet(4, 6), torch.randn(2, 3, 8, 8), runs=5,
                                  warmup=0)  # fmt: skip
    assert out["fraction"] == pytest.approx(0.5)  # ratios 0.5, 0.4, 0.6, 0.25, 0.9
    assert (out["baseline_ms"], out["pruned_ms"]) == (10.0, 8.0)  # whose ratio would be 0.8
    assert out["speedup"] == pytest.approx(2.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_latency_on_cuda_synchronises_and_reports_memory():
    model = TinyNet()
    out = measure.latency(model, torch.randn(2, 3, 16, 16), runs=3, warmup=1, device="cuda")
    assert out["device"].startswith("cuda") and out["median_ms"] > 0
    assert out["peak_cuda_mib"] > 0
    assert next(model.parameters()).device.type == "cpu"  # measured on a copy


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compare_latency_with_models_already_on_cuda():
    base, pruned = TinyNet(8, 6).cuda(), TinyNet(4, 6).cuda()
    out = measure.compare_latency(
        base, pruned, torch.randn(2, 3, 8, 8), runs=3, warmup=1, device="cuda"
    )
    macs_b = sum(m for m, _ in _tiny_closed_form(8, 6).values())
    macs_p = sum(m for m, _ in _tiny_closed_form(4, 6).values())
    assert out["ideal_speedup"] == pytest.approx(macs_b / macs_p)
    assert out["baseline_peak_cuda_mib"] > 0 and out["pruned_peak_cuda_mib"] > 0


# -- the measure command ---------------------------------------------------------------------------


def test_measure_command_json_matches_an_independent_count(capsys):
    from taylorprune import cli

    rc = cli.main(["measure", "torchvision:resnet18", "--input-size", "3", "64", "64", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert isinstance(out["macs"], int) and isinstance(out["params"], int)
    assert out["params"] == DOCUMENTED["resnet18"][1]
    # 64x64 is 1/12.25 of 224x224 in area; the feature maps scale exactly (224 and 64 both divide
    # by 32), so the conv MACs do too; only the fc layer (512*1000) does not scale.
    fc = 512 * 1000
    expected_no_bn = (1_814_098_432 - fc) * 64 * 64 // (224 * 224) + fc
    without_bn, _ = measure.count(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64),
                                  include_batchnorm=False)  # fmt: skip
    assert without_bn == expected_no_bn
    assert out["macs"] == measure.count(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))[0]
    assert out["input_shape"] == [3, 64, 64] and out["convention"] == measure.CONVENTION


def test_measure_command_text_per_layer_and_latency(capsys):
    from taylorprune import cli

    rc = cli.main(
        ["measure", "torchvision:resnet18", "--input-size", "3", "32", "32", "--per-layer",
         "--latency", "--runs", "2", "--warmup", "0", "--threads", "1"]
    )  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "params    11.7 M  (11,689,512)" in text
    assert "layer4.1.conv2" in text and "latency" in text and "threads 1" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["torchvision:resnet1"], "unknown torchvision model 'resnet1'"),
        # the builtin MLP expects 3x28x28 inputs by default
        (["mlp", "--input-size", "3", "32", "32"], "does not run on input 3x32x32"),
    ],
)
def test_measure_command_user_errors_are_one_line_exit_2(capsys, argv, message):
    from taylorprune import cli

    assert cli.main(["measure", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_measure_command_reads_a_saved_pruned_model_and_its_input_shape(tmp_path, capsys):
    from taylorprune import cli
    from taylorprune.graph import ChannelGraph
    from taylorprune.models import build_model, model_spec_for_save
    from taylorprune.serialization import save_pruned

    spec = {"source": "builtin", "name": "resnet20", "num_classes": 10}
    model = build_model(spec)
    x = torch.randn(1, 3, 16, 16)
    graph = ChannelGraph(model, x)
    group = next(g for g in graph.groups() if g.root == "layer1.0.conv1")
    graph.tp_group(group, [0, 1, 2, 3, 4]).prune()  # 16 -> 11 channels
    assert model.layer1[0].conv1.out_channels == 11
    path = save_pruned(
        model, tmp_path / "m.pt", arch=model_spec_for_save(spec), input_shape=[3, 16, 16]
    )

    assert cli.main(["measure", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["input_shape"] == [3, 16, 16]
    assert (out["macs"], out["params"]) == measure.count(model, x)
    # Five output channels of a 3x3 conv on 16 channels, and the next conv's inputs, at 16x16.
    unpruned, _ = measure.count(build_model(spec), x)
    assert unpruned - out["macs"] == 5 * 16 * 9 * 256 + 5 * 16 * 9 * 256 + 2 * 5 * 256


def test_interleaved_times_spread_rounds_over_fresh_copies(monkeypatch):
    """``copies`` splits the rounds into blocks, each on its own deep copies of the models."""
    import copy as copy_mod

    from taylorprune.latency import TimingSettings, timing

    made = []
    real = copy_mod.deepcopy

    def counting(obj, *args, **kwargs):
        if isinstance(obj, nn.Module):
            made.append(obj)
        return real(obj, *args, **kwargs)

    monkeypatch.setattr(copy_mod, "deepcopy", counting)  # what clean_copy calls
    settings = TimingSettings(batch_size=2, threads=1)
    models = [TinyNet(8, 6), TinyNet(4, 6)]
    times = timing.interleaved_times(models, (3, 8, 8), settings, runs=7, warmup=0, copies=3)
    assert [len(t) for t in times] == [7, 7] and all(v > 0 for t in times for v in t)
    assert len(made) == 2 * 3  # one copy of each model per block
    with pytest.raises(ValueError, match="copies"):
        timing.interleaved_times(models, (3, 8, 8), settings, runs=2, copies=0)
