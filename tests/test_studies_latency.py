"""The latency studies (``tools/studies/latency.py``): recalibration replayed against hand-worked
ratios, the method comparison against :func:`select` called directly, and single layers measured
off and on the grid (only what does not depend on the timings is asserted)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from taylorprune.latency import (
    Constraints,
    DeviceInfo,
    LatencyGroup,
    LatencyModel,
    LatencyTable,
    TimingSettings,
    build_table,
    select,
)
from taylorprune.latency.layers import TableLayer
from taylorprune.latency.table import entries_from_function

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from studies.latency import check_interpolation, compare_methods, recalibration_errors

# Three variants given out of order; sorted by measured latency they are a (0.9), c (0.75), b (0.6).
ROWS = [
    {"name": "a", "predicted_ratio": 0.8, "measured_ratio": 0.9},
    {"name": "b", "predicted_ratio": 0.5, "measured_ratio": 0.6},
    {"name": "c", "predicted_ratio": 0.7, "measured_ratio": 0.75},
]


def test_recalibration_errors_replay_each_rule_on_the_variant_above():
    raw = [0.8 / 0.9 - 1, 0.7 / 0.75 - 1, 0.5 / 0.6 - 1]
    assert recalibration_errors(ROWS, "none") == pytest.approx(raw)
    # scale: each prediction times measured / predicted of the variant above (a for c, c for b)
    scaled = [0.8 / 0.9 - 1, 0.7 * (0.9 / 0.8) / 0.75 - 1, 0.5 * (0.75 / 0.7) / 0.6 - 1]
    assert recalibration_errors(ROWS, "scale") == pytest.approx(scaled)
    # anchored: the line through the baseline (1, 1) and the variant above
    # c: slope (1 - 0.9) / (1 - 0.8) = 0.5, so 0.5 * 0.7 + 0.5 = 0.85
    # b: slope (1 - 0.75) / (1 - 0.7) = 5/6, so 5/6 * 0.5 + 1/6 = 7/12
    anchored = [0.8 / 0.9 - 1, 0.85 / 0.75 - 1, (7 / 12) / 0.6 - 1]
    assert recalibration_errors(ROWS, "anchored") == pytest.approx(anchored)
    with pytest.raises(ValueError, match="unknown correction"):
        recalibration_errors(ROWS, "linear")


def _layer(name: str, cin: int, cout: int) -> TableLayer:
    return TableLayer(name, "conv", {"kind": "conv", "name": name, "input": []}, cin, cout, 1)


def test_compare_methods_is_select_at_every_budget_and_constraint():
    layers = [_layer("l0", 4, 16), _layer("l1", 16, 24)]
    entries = entries_from_function(layers, lambda lay, a, b: 0.01 * a * b + 0.1, align=1, low=0.0)
    device = DeviceInfo("cpu", "test cpu", 2, torch.__version__)
    table = LatencyTable(device, TimingSettings(batch_size=2), (4, 8, 8), entries, 1, 0.0)
    model = LatencyModel(table, table.total() + 0.5)
    rng = np.random.default_rng(0)
    groups = [
        LatencyGroup("g0", rng.gamma(1.0, size=16), {"l0": 1}, {"l1": 1}),
        LatencyGroup("g1", rng.gamma(1.0, size=24), {"l1": 1}),
    ]
    fractions = (0.8, 0.5, 0.05)  # 0.05: below what max_fraction allows
    constraints = (Constraints(round_to=1), Constraints(round_to=8, max_fraction=0.5))
    rows = compare_methods(groups, model, fractions, constraints)
    assert len(rows) == 2 * 3 * 2
    it = iter(rows)
    for cons in constraints:
        for frac in fractions:
            for method in ("greedy", "knapsack"):
                row = next(it)
                assert (row["method"], row["round_to"], row["budget"]) == (
                    method,
                    cons.round_to,
                    frac,
                )
                if frac == 0.05:
                    assert "cannot be reached" in row["error"]
                    continue
                sel = select(
                    groups, model, frac * model.baseline_ms, constraints=cons, method=method
                )
                assert row["predicted"] == pytest.approx(sel.predicted_ms / model.baseline_ms)
                assert row["saliency_kept"] == pytest.approx(sel.saliency_kept / sel.saliency_total)
                assert row["predicted"] <= frac + 1e-9 and row["seconds"] >= 0


def test_check_interpolation_alternates_off_and_on_grid_points(monkeypatch, tmp_path):
    monkeypatch.setenv("TAYLORPRUNE_CACHE", str(tmp_path))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, bias=False), nn.BatchNorm2d(32), nn.Conv2d(32, 24, 1))
    table = build_table(net, (3, 6, 6), TimingSettings(batch_size=2, threads=1), warmup=0, runs=1)
    rows = check_interpolation(table, 6, seed=3, warmup=0, runs=1)
    assert [r["on_grid"] for r in rows] == [False, True] * 3
    for r in rows:
        e = table.entries[r["layer"]]
        assert len(e.cout_axis) > 1
        if e.layer.fixed_in:
            assert r["cin"] == e.layer.cin
        if r["on_grid"]:  # the table's own grid value, no interpolation
            i = 0 if e.layer.fixed_in else list(e.cin_axis).index(r["cin"])
            j = list(e.cout_axis).index(r["cout"])
            assert r["table_ms"] == pytest.approx(e.values[i, j])
        else:
            assert e.cin_axis[0] <= r["cin"] <= e.cin_axis[-1]
            assert e.cout_axis[0] <= r["cout"] <= e.cout_axis[-1]
            assert r["table_ms"] == pytest.approx(float(e.latency(r["cin"], r["cout"])))
        assert r["measured_ms"] > 0
        assert r["error"] == pytest.approx(r["table_ms"] / r["measured_ms"] - 1)
    again = check_interpolation(table, 6, seed=3, warmup=0, runs=1)
    assert [(r["layer"], r["cin"], r["cout"]) for r in again] == [
        (r["layer"], r["cin"], r["cout"]) for r in rows
    ]
