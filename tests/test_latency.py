"""Latency table, whole-network prediction and selection under a latency budget.

Selection tests run on tables built from known cost functions (no timing), so their expected
answers are worked out independently: by brute force over every allowed width, or by the sorted
order of the scores where the cost is the same for every channel. Tests that time real layers
assert only decisions that do not depend on the timings (what was measured, what came from the
cache, what was refused).
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from taylorprune import cli
from taylorprune.errors import UserError
from taylorprune.graph import ChannelGraph
from taylorprune.latency import (
    Constraints,
    DeviceInfo,
    LatencyGroup,
    LatencyModel,
    LatencyTable,
    TimingSettings,
    allowed_keep,
    axis_points,
    build_table,
    closest_latency,
    latency_groups,
    select,
)
from taylorprune.latency import timing as timing_mod
from taylorprune.latency.layers import TableLayer, find_layers
from taylorprune.latency.table import LayerEntry, entries_from_function
from taylorprune.models import build_model, parse_model_string
from taylorprune.pruning.removal import pruned_copy

FAKE_DEVICE = DeviceInfo("cpu", "test cpu", 2, torch.__version__)


def _layer(
    name: str, cin: int, cout: int, *, tied: bool = False, out_elements: int = 1
) -> TableLayer:
    kind = "norm" if tied else "conv"
    return TableLayer(
        name, kind, {"kind": kind, "name": name, "input": []}, cin, cout, out_elements
    )


def _table(layers, fn, align: int = 1, low: float = 0.0, shape=(3, 8, 8)) -> LatencyTable:
    entries = entries_from_function(layers, fn, align=align, low=low)
    return LatencyTable(FAKE_DEVICE, TimingSettings(batch_size=2), shape, entries, align, low)


def _model(table: LatencyTable, residual_ms: float = 0.0, **kw) -> LatencyModel:
    return LatencyModel(table, table.total() + residual_ms, **kw)


# -- grid and interpolation ------------------------------------------------------------------------
@pytest.mark.parametrize("full,align", [(64, 8), (256, 8), (2048, 8), (100, 16), (3, 8), (1, 1)])
def test_axis_points_are_aligned_ascending_and_end_at_full_width(full, align):
    pts = axis_points(full, align, low=0.1)
    assert pts[-1] == full
    assert list(pts) == sorted(set(pts))
    assert all(p % align == 0 for p in pts[:-1])
    # The lowest point is at or below 10% of the width unless the first ladder step is above it.
    assert pts[0] <= max(0.1 * full, align) or pts == (full,)
    # Neighbouring points below the full width are at most 2x apart (the ladder is x4/3, x3/2).
    assert all(b <= 2 * a for a, b in itertools.pairwise(pts[:-1]))


def test_axis_points_of_a_resnet50_width():
    assert axis_points(256, 8, 0.1) == (24, 32, 48, 64, 96, 128, 192, 256)


def _random_entry(seed: int, monotone: bool) -> LayerEntry:
    rng = np.random.default_rng(seed)
    layer = _layer("x", 96, 64)
    cin, cout = np.array([8.0, 16, 32, 48, 96]), np.array([8.0, 24, 40, 64])
    values = rng.uniform(0.1, 1.0, (len(cin), len(cout)))
    if monotone:
        values = np.cumsum(np.cumsum(values, axis=0), axis=1)
    return LayerEntry(layer, cin, cout, values)


def test_interpolation_is_exact_at_grid_points():
    e = _random_entry(0, monotone=False)
    a, b = np.meshgrid(e.cin_axis, e.cout_axis, indexing="ij")
    np.testing.assert_allclose(e.latency(a, b), e.values, rtol=1e-12)


def test_interpolation_is_monotone_where_the_measurements_are():
    e = _random_entry(1, monotone=True)
    x = np.linspace(1, 100, 397)
    for fixed in (8, 13, 31, 64, 80):
        along_cin = e.latency(x, fixed)
        along_cout = e.latency(fixed, x)
        assert np.all(np.diff(along_cin) >= -1e-12)
        assert np.all(np.diff(along_cout) >= -1e-12)


def test_interpolation_is_exact_for_a_bilinear_cost():
    # a + b*cin + c*cout + d*cin*cout: what MACs and memory traffic of a convolution look like.
    e = _random_entry(2, monotone=False)
    a, b = np.meshgrid(e.cin_axis, e.cout_axis, indexing="ij")
    e.values = 0.3 + 0.01 * a + 0.02 * b + 0.001 * a * b
    rng = np.random.default_rng(0)
    ci, co = rng.uniform(8, 96, 50), rng.uniform(8, 64, 50)
    np.testing.assert_allclose(e.latency(ci, co), 0.3 + 0.01 * ci + 0.02 * co + 0.001 * ci * co)


def test_scalar_and_array_interpolation_agree_inside_and_outside_the_grid():
    rng = np.random.default_rng(4)
    tied = _table([_layer("n", 64, 64, tied=True)], lambda lay, a, b: b**1.5, align=8).entries["n"]
    for e in (_random_entry(3, monotone=False), tied):
        ci, co = rng.uniform(0, 120, 200), rng.uniform(0, 120, 200)
        ci[:3], co[:3] = e.cin_axis[:3], e.cout_axis[-3:]  # exactly on grid points too
        scalar = [e.at(float(a), float(b)) for a, b in zip(ci, co, strict=True)]
        np.testing.assert_allclose(scalar, e.latency(ci, co), rtol=1e-12)


def test_tied_layers_interpolate_along_their_one_width():
    layer = _layer("n", 64, 64, tied=True)
    table = _table([layer], lambda lay, a, b: 2.0 * b, align=8, low=0.1)
    e = table.entries["n"]
    assert e.values.ndim == 1 and np.array_equal(e.cin_axis, e.cout_axis)
    assert math.isclose(float(e.latency(999, 20)), 40.0)  # cin is ignored


# -- layers ----------------------------------------------------------------------------------------
class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 5, padding=2, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.a = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.a_bn = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.b_bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.gn = nn.GroupNorm(2, 8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = x + self.b_bn(self.b(torch.relu(self.a_bn(self.a(x)))))
        x = self.gn(self.dw(x))
        return self.fc(x.mean((2, 3)))


def test_find_layers_merges_batchnorm_and_classifies_layers():
    layers = {lay.name: lay for lay in find_layers(_Net(), (3, 8, 8))}
    assert list(layers) == ["stem", "a", "b", "dw", "gn", "fc"]
    assert layers["stem"].norm_name == "bn" and layers["stem"].fixed_in
    assert layers["a"].norm_name == "a_bn" and not layers["a"].fixed_in
    assert layers["a"].key() == layers["b"].key()  # identical signatures: measured once
    assert layers["a"].key() != layers["stem"].key()
    assert layers["dw"].kind == "depthwise" and layers["dw"].tied and layers["dw"].norm_name is None
    assert layers["gn"].kind == "norm"
    assert (layers["fc"].kind, layers["fc"].cin, layers["fc"].cout) == ("linear", 8, 5)
    assert layers["a"].out_elements == 64 and layers["fc"].out_elements == 1


# -- measuring, cache, device identity -------------------------------------------------------------
def _tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, bias=False), nn.BatchNorm2d(16), nn.Conv2d(16, 8, 1))


def _build(settings: TimingSettings, **kw) -> LatencyTable:
    return build_table(_tiny(), (3, 6, 6), settings, warmup=0, runs=1, **kw)


def test_table_is_cached_per_device_batch_and_dtype(monkeypatch, tmp_path):
    monkeypatch.setenv("TAYLORPRUNE_CACHE", str(tmp_path))
    base = TimingSettings(batch_size=2, threads=1)
    first = _build(base)
    assert first.stats["measured"] == first.stats["points"] > 0 and first.stats["cached"] == 0
    again = _build(base)
    assert again.stats["measured"] == 0 and again.stats["cached"] == first.stats["points"]
    for key, entry in first.entries.items():
        np.testing.assert_array_equal(again.entries[key].values, entry.values)
    for other in (
        TimingSettings(batch_size=3, threads=1),
        TimingSettings(batch_size=2, threads=1, dtype="bfloat16"),
        TimingSettings(batch_size=2, threads=1, channels_last=True),
        TimingSettings(batch_size=2, threads=2),
    ):
        assert _build(other).stats["cached"] == 0, other
    monkeypatch.setattr(timing_mod, "cpu_name", lambda: "another cpu")
    assert _build(base).stats["cached"] == 0
    assert _build(base, rebuild=True).stats["cached"] == 0


def test_table_from_another_device_is_refused(tmp_path):
    table = _table([_layer("a", 8, 8)], lambda lay, a, b: a * b)
    path = tmp_path / "t.json"
    table.save(path)
    loaded = LatencyTable.load(path)
    loaded.check(FAKE_DEVICE, table.settings)  # same device and settings: accepted
    for device in (
        DeviceInfo("cuda", "test cpu", 2, torch.__version__),
        DeviceInfo("cpu", "another cpu", 2, torch.__version__),
        DeviceInfo("cpu", "test cpu", 4, torch.__version__),
    ):
        with pytest.raises(UserError, match="was measured on cpu 'test cpu'"):
            loaded.check(device, table.settings)
    with pytest.raises(UserError, match="batch_size=2"):
        loaded.check(FAKE_DEVICE, TimingSettings(batch_size=8))
    assert loaded.total() == pytest.approx(table.total(), rel=1e-12)


def test_damaged_or_missing_table_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        LatencyTable.load(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="unreadable"):
        LatencyTable.load(bad)
    bad.write_text(json.dumps({"format": "taylorprune.latency_table", "version": 1}))
    with pytest.raises(UserError, match="damaged"):
        LatencyTable.load(bad)


@pytest.mark.parametrize("device", ["tpu", "cuda:7", "not a device"])
def test_devices_that_do_not_exist_are_user_errors(device):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    with pytest.raises(UserError, match="device"):
        timing_mod.resolve_device(device)


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="dtype"):
        TimingSettings(dtype="float8")
    with pytest.raises(UserError, match="batch size"):
        TimingSettings(batch_size=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_table_on_cuda_in_half_precision_channels_last(monkeypatch, tmp_path):
    monkeypatch.setenv("TAYLORPRUNE_CACHE", str(tmp_path))
    settings = TimingSettings(device="cuda", batch_size=4, dtype="float16", channels_last=True)
    table = _build(settings)
    assert table.device.type == "cuda" and all(e.full() > 0 for e in table.entries.values())
    model = LatencyModel.measure(table, _tiny(), runs=3, warmup=1)
    assert model.baseline_ms > 0
    step = model.check(_tiny(), runs=3, warmup=1)
    assert model.predict_model(_tiny()) == pytest.approx(step["measured_ms"])


# -- whole-network prediction ----------------------------------------------------------------------
def _chain():
    layers = [_layer("a", 3, 16, out_elements=4), _layer("b", 16, 32, out_elements=1)]
    layers[0] = TableLayer("a", "conv", {"kind": "conv", "input": []}, 3, 16, 4, fixed_in=True)
    return _table(layers, lambda lay, a, b: 0.01 * a * b + 0.1)


def test_raw_prediction_reproduces_the_baseline_and_scales_the_residual():
    table = _chain()
    model = _model(table, residual_ms=2.0)
    assert model.predict() == pytest.approx(table.total() + 2.0)
    # The residual follows the output elements: a has 4 per channel, b 1; halve b's output.
    widths = {"b": (16, 16)}
    elements = (4 * 16 + 1 * 16) / (4 * 16 + 1 * 32)
    expected = table.total(widths) + 2.0 * elements
    assert model.raw(widths) == pytest.approx(expected)
    const = _model(table, residual_ms=2.0, residual="constant")
    assert const.raw(widths) == pytest.approx(table.total(widths) + 2.0)


def test_check_measures_a_model_and_recalibrates_on_it(monkeypatch, tmp_path):
    monkeypatch.setenv("TAYLORPRUNE_CACHE", str(tmp_path))
    net = _tiny()
    table = _build(TimingSettings(batch_size=2, threads=1))
    model = LatencyModel.measure(table, net, runs=2, warmup=0)
    thin = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 1))
    predicted = model.predict_model(thin)
    step = model.check(thin, runs=2, warmup=0)
    assert step["predicted_ms"] == pytest.approx(predicted)
    assert step["error"] == pytest.approx(predicted / step["measured_ms"] - 1)
    assert model.predict_model(thin) == pytest.approx(step["measured_ms"])  # recalibrated


def test_layers_slower_than_the_network_scale_the_table_instead_of_a_negative_residual():
    table = _chain()
    model = _model(table, residual_ms=-0.5 * table.total())
    assert model.residual_ms == 0.0 and model.table_scale == pytest.approx(0.5)
    assert model.predict() == pytest.approx(0.5 * table.total())
    thinner = {"a": (3, 8), "b": (8, 16)}
    assert model.predict(thinner) == pytest.approx(0.5 * table.total(thinner))


@pytest.mark.parametrize("correction", ["scale", "anchored", "none"])
def test_recalibration_matches_the_latest_measurement(correction):
    table = _chain()
    model = _model(table, residual_ms=1.0, correction=correction)
    widths = {"a": (3, 8), "b": (8, 16)}
    measured = 1.2 * model.raw(widths)
    model.calibrate(widths, measured)
    if correction == "none":
        assert model.predict(widths) == pytest.approx(model.raw(widths))
    else:
        assert model.predict(widths) == pytest.approx(measured)
    if correction == "anchored":
        assert model.predict() == pytest.approx(model.baseline_ms)
    # The budget conversion inverts the correction.
    assert model.corrected(model.raw_budget(3.0)) == pytest.approx(3.0)


# -- selection -------------------------------------------------------------------------------------
def test_allowed_keep_follows_round_to_min_channels_and_max_fraction():
    g = LatencyGroup("g", np.zeros(30), {"a": 1}, baseline_units=40)
    # 40 channels at construction, at most 75% removed -> at least 10; multiples of 8 -> 16, 24.
    got = allowed_keep(g, Constraints(round_to=8, min_channels=1, max_fraction=0.75))
    assert got.tolist() == [16, 24, 30]
    got = allowed_keep(g, Constraints(round_to=1, min_channels=28, max_fraction=0.9))
    assert got.tolist() == [28, 29, 30]
    assert allowed_keep(g, Constraints(min_channels=30)).tolist() == [30]
    # Units of 4 channels (grouped convolution), round_to 8: an even number of units.
    g4 = LatencyGroup("g", np.zeros(10), {"a": 4}, unit_channels=4)
    assert allowed_keep(g4, Constraints(round_to=8, max_fraction=0.9)).tolist() == [2, 4, 6, 8, 10]


def _coupled():
    """A residual stream r (outputs of c1 and c2, input of c3) and c3's own outputs g."""
    layers = [
        _layer("c1", 16, 32, out_elements=4),
        _layer("c2", 32, 32, out_elements=4),
        _layer("c3", 32, 24, out_elements=4),
        _layer("c4", 24, 10, out_elements=1),
    ]
    table = _table(layers, lambda lay, a, b: 0.002 * a * b * lay.out_elements + 0.05)
    rng = np.random.default_rng(3)
    groups = [
        LatencyGroup("r", rng.gamma(1.0, size=32), {"c1": 1, "c2": 1}, {"c2": 1, "c3": 1}),
        LatencyGroup("g", rng.gamma(1.0, size=24), {"c3": 1}, {"c4": 1}),
    ]
    return table, groups


@pytest.mark.parametrize("method", ["greedy", "knapsack"])
def test_selection_respects_constraints_and_coupled_groups(method):
    table, groups = _coupled()
    model = _model(table, residual_ms=0.5)
    cons = Constraints(round_to=8, min_channels=8, max_fraction=0.7)
    sel = select(groups, model, 0.6 * model.baseline_ms, constraints=cons, method=method)
    assert sel.predicted_ms <= 0.6 * model.baseline_ms + 1e-9
    for g in groups:
        assert sel.keep[g.name] in allowed_keep(g, cons).tolist()
    r, k = sel.keep["r"], sel.keep["g"]
    assert sel.widths == {"c1": (16, r), "c2": (r, r), "c3": (r, k), "c4": (k, 10)}
    assert sel.predicted_ms == pytest.approx(model.predict(sel.widths))
    # The removed units are each group's lowest-scored.
    for g in groups:
        gone = sel.removed(g)
        kept = np.setdiff1d(np.arange(g.units), gone)
        assert len(gone) == g.units - sel.keep[g.name]
        assert g.scores[gone].max(initial=-np.inf) <= g.scores[kept].min()


def _separable(seed: int):
    """Three groups, each alone on its layers, with a latency that is not linear in width."""
    rng = np.random.default_rng(seed)
    layers, groups = [], []
    for i, width in enumerate((12, 16, 20)):
        layers.append(_layer(f"l{i}", 8, width, out_elements=1))
        scores = rng.gamma(0.7, size=width) * rng.uniform(0.5, 2.0)
        groups.append(LatencyGroup(f"g{i}", scores, {f"l{i}": 1}))
    # Faster at multiples of 4, as hardware is at aligned widths.
    table = _table(
        layers, lambda lay, a, b: (b + (0 if b % 4 == 0 else 2)) * (1 + int(lay.name[1]))
    )
    return table, groups


def _brute_force(groups, model, budget, cons):
    best = (-math.inf, None)
    options = [allowed_keep(g, cons).tolist() for g in groups]
    for combo in itertools.product(*options):
        widths = {f"l{i}": (8, k) for i, k in enumerate(combo)}
        if model.predict(widths) <= budget:
            sal = sum(np.sort(g.scores)[::-1][:k].sum() for g, k in zip(groups, combo, strict=True))
            best = max(best, (sal, combo), key=lambda t: t[0])
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("fraction", [0.45, 0.6, 0.8])
def test_knapsack_is_optimal_on_a_small_instance(seed, fraction):
    table, groups = _separable(seed)
    model = _model(table)
    cons = Constraints(round_to=2, min_channels=2, max_fraction=0.9)
    budget = fraction * model.baseline_ms
    best_saliency, best_combo = _brute_force(groups, model, budget, cons)
    # Latencies are whole numbers and budgets are not: no combination sits on the boundary.
    assert abs(budget - round(budget)) > 0.1
    sel = select(groups, model, budget, constraints=cons, method="knapsack")
    assert sel.predicted_ms <= budget + 1e-9
    assert sel.saliency_kept == pytest.approx(best_saliency, rel=1e-9), best_combo


def test_greedy_equals_knapsack_when_every_channel_costs_the_same():
    # Latency linear in width with one cost per channel everywhere: keeping the highest scores
    # overall is optimal, and both solvers must find exactly that.
    rng = np.random.default_rng(5)
    layers = [_layer(f"l{i}", 4, w, out_elements=1) for i, w in enumerate((24, 32, 40, 16))]
    table = _table(layers, lambda lay, a, b: 0.5 * b)
    groups = [
        LatencyGroup(f"g{i}", rng.gamma(1.0, size=lay.cout), {lay.name: 1})
        for i, lay in enumerate(layers)
    ]
    model = _model(table)
    cons = Constraints(round_to=1, min_channels=1, max_fraction=1.0)
    keep_total = 70  # of 112 channels
    budget = 0.5 * keep_total + 1e-9
    pooled = np.sort(np.concatenate([g.scores for g in groups]))[::-1]
    threshold = pooled[keep_total - 1]
    expected = {g.name: int((g.scores >= threshold).sum()) for g in groups}
    for method in ("greedy", "knapsack"):
        sel = select(groups, model, budget, constraints=cons, method=method)
        assert sel.keep == expected, method
        assert sel.saliency_kept == pytest.approx(pooled[:keep_total].sum())


@pytest.mark.parametrize("method", ["greedy", "knapsack"])
def test_selection_cuts_where_a_channel_saves_the_most_latency(method):
    # A channel of "slow" costs 10 ms and scores 1, one of "fast" costs 1 ms and scores 0.9.
    # Saving 50 ms loses least by removing 5 channels of "slow" (saliency 5); ranking by score
    # alone would take all of "fast" first and keep far less (17.4 instead of 25.4).
    layers = [_layer("fast", 4, 16), _layer("slow", 4, 16)]
    table = _table(layers, lambda lay, a, b: (10.0 if lay.name == "slow" else 1.0) * b)
    groups = [LatencyGroup(n, np.full(16, v), {n: 1}) for n, v in (("fast", 0.9), ("slow", 1.0))]
    model = _model(table)
    cons = Constraints(max_fraction=1.0)
    sel = select(groups, model, model.baseline_ms - 50.0, constraints=cons, method=method)
    assert sel.keep == {"slow": 11, "fast": 16}


def test_unreachable_budget_names_the_closest_achievable_latency():
    table, groups = _coupled()
    model = _model(table, residual_ms=0.5)
    cons = Constraints(round_to=8, min_channels=8, max_fraction=0.5)
    floor = {"c1": (16, 16), "c2": (16, 16), "c3": (16, 16), "c4": (16, 10)}
    closest = model.predict(floor)
    assert closest_latency(groups, model, constraints=cons) == pytest.approx(closest)
    with pytest.raises(UserError, match=rf"closest achievable is {closest:.4g} ms") as info:
        select(groups, model, 0.9 * closest, constraints=cons)
    assert "round_to=8, min_channels=8, max_fraction=0.5" in str(info.value)
    assert "\n" not in str(info.value)


def test_budget_above_the_prediction_keeps_everything():
    table, groups = _coupled()
    model = _model(table)
    sel = select(groups, model, 1.5 * model.baseline_ms, method="knapsack")
    assert sel.keep == {g.name: g.units for g in groups}


def test_unknown_method_is_a_user_error():
    table, groups = _coupled()
    with pytest.raises(UserError, match="selection method"):
        select(groups, _model(table), 1.0, method="simplex")


# -- torch-pruning groups end to end ---------------------------------------------------------------
def test_groups_from_the_graph_select_and_prune_consistently():
    torch.manual_seed(0)
    net = _Net().eval()
    shape = (3, 8, 8)
    layers = find_layers(net, shape)
    table = _table(layers, lambda lay, a, b: 0.01 * a * b * lay.out_elements + 0.1 * b, shape=shape)
    model = _model(table, residual_ms=1.0)
    graph = ChannelGraph(net, torch.randn(1, *shape), ["fc"])
    groups = latency_groups(graph, graph.groups(), table)
    by_name = {g.name: g for g in groups}
    # stem, a and b write the one residual stream (with dw and gn after it); a's output is its own.
    stream = next(g for g in groups if "stem" in g.out_layers)
    assert set(stream.out_layers) == {"stem", "b", "dw", "gn"}
    assert set(stream.in_layers) == {"a", "fc"}
    assert by_name["a"].out_layers == {"a": 1} and by_name["a"].in_layers == {"b": 1}
    cons = Constraints(round_to=2, min_channels=2, max_fraction=0.75)
    sel = select(groups, model, 0.7 * model.baseline_ms, constraints=cons, method="knapsack")
    keep = {r: range(sel.keep[r], g.size) for r, g in ((g.root, g) for g in graph.groups())}
    pruned = pruned_copy(net, torch.randn(1, *shape), keep, ignored=["fc"])
    got = model.widths(pruned)
    assert {n: got[n] for n in sel.widths} == sel.widths
    assert model.predict_model(pruned) == pytest.approx(sel.predicted_ms)


# -- the command -----------------------------------------------------------------------------------
def test_latency_table_command_reports_layers_and_their_sum(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TAYLORPRUNE_CACHE", str(tmp_path))
    out = tmp_path / "table.json"
    argv = ["latency-table", "resnet20", "--input-size", "3", "8", "8", "--batch-size", "2"]
    rc = cli.main([*argv, "--threads", "1", "--runs", "2", "--json", "--output", str(out)])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in result["layers"]][:2] == ["conv1", "layer1.0.conv1"]
    # One row per convolution (its BN merged) and Linear.
    net = build_model(parse_model_string("resnet20"))
    assert len(result["layers"]) == sum(isinstance(m, nn.Conv2d | nn.Linear) for m in net.modules())
    assert result["table_sum_ms"] == pytest.approx(sum(r["full_ms"] for r in result["layers"]))
    assert LatencyTable.load(out).settings.batch_size == 2
    rc = cli.main([*argv, "--threads", "1", "--runs", "2"])
    text = capsys.readouterr().out
    assert rc == 0 and "from the cache" in text and "not in the table" in text


@pytest.mark.parametrize(
    "extra,message",
    [(["--device", "cuda:9"], "device"), (["--dtype", "int8"], "dtype")],
)
def test_latency_table_command_user_errors_are_one_line_exit_2(capsys, extra, message):
    if extra[0] == "--device" and torch.cuda.device_count() > 9:
        pytest.skip("this machine has 10 GPUs")
    rc = cli.main(["latency-table", "resnet20", "--input-size", "3", "8", "8", *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and "\n" not in err


# -- the benchmark tool ----------------------------------------------------------------------------
@pytest.mark.slow
def test_bench_latency_table_runs_end_to_end_on_a_tiny_model(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import bench_latency_table

    argv = ["--model", "resnet20", "--input-size", "3", "8", "8", "--batch-size", "2"]
    argv += ["--threads", "1", "--runs", "2", "--warmup", "0", "--random", "1"]
    argv += ["--interp-points", "2", "--score-batches", "1", "--table-runs", "1"]
    result = bench_latency_table.main([*argv, "--out", str(tmp_path)])
    for name in (
        "bench_latency_table.json",
        "bench_latency_table.md",
        "bench_latency_table_fit.png",
    ):
        assert (tmp_path / name).stat().st_size > 0
    assert [r["name"] for r in result["fit"]["rows"]] == [
        "uniform-0.9",
        "uniform-0.75",
        "uniform-0.5",
        "random-0",
    ]
    # Both methods at every budget and round_to, each within its budget (timings on a loaded
    # machine can make a budget unreachable; that is reported, not raised).
    assert len(result["selection"]) == 2 * 3 * 2
    assert all("error" in r or r["predicted"] <= r["budget"] + 1e-9 for r in result["selection"])
    assert json.loads((tmp_path / "bench_latency_table.json").read_text())["model"] == "resnet20"


def test_models_are_timed_in_the_settings_layout_whatever_they_were_trained_in():
    """A model fine-tuned in channels_last is timed contiguous when the settings say so (and the
    other way round), so that a pruned model and its baseline are compared in one layout."""
    from taylorprune.latency.timing import module_to_settings

    dev = torch.device("cpu")
    for trained, wanted in ((True, False), (False, True)):
        net = nn.Conv2d(3, 4, 3)
        if trained:
            net = net.to(memory_format=torch.channels_last)
        settings = TimingSettings(channels_last=wanted)
        out = module_to_settings(net, settings, dev)
        fmt = torch.channels_last if wanted else torch.contiguous_format
        assert out.weight.is_contiguous(memory_format=fmt) and not out.training
