"""How well the table predicts: pruned networks measured against their prediction, and single
layers measured off the grid against the interpolation.

Networks are measured *side by side*: the baseline and every pruned variant interleaved in each
round (:func:`~taylorprune.latency.timing.measure_models`), so a ratio to the baseline is far
steadier than an absolute time on a shared machine. Each row carries both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import nn

from taylorprune.graph import ChannelGroup
from taylorprune.latency.build import measure_point
from taylorprune.latency.groups import prune_to_keep
from taylorprune.latency.model import CORRECTIONS, Calibration, LatencyModel, fit_correction
from taylorprune.latency.table import LatencyTable
from taylorprune.latency.timing import measure_models, resolve_device, threads_set


def width_configs(
    groups: Sequence[ChannelGroup],
    *,
    uniform: Sequence[float] = (0.9, 0.75, 0.5),
    random: int = 3,
    low: float = 0.3,
    align: int = 8,
    seed: int = 0,
) -> dict[str, dict[str, int]]:
    """Kept channels per group root for a few pruned variants of one model.

    ``uniform-<f>`` keeps the fraction ``f`` of every group; ``random-<i>`` a fraction drawn
    uniformly from ``[low, 1]`` per group. Widths are rounded to multiples of ``align`` (at least
    ``align``, at most the group's width).
    """

    def rounded(size: int, frac: float) -> int:
        return int(min(size, max(align, align * round(frac * size / align))))

    out: dict[str, dict[str, int]] = {}
    for f in uniform:
        out[f"uniform-{f:g}"] = {g.root: rounded(g.size, f) for g in groups}
    rng = np.random.default_rng(seed)
    for i in range(random):
        out[f"random-{i}"] = {g.root: rounded(g.size, rng.uniform(low, 1.0)) for g in groups}
    return out


def check_fit(
    model: nn.Module,
    latency: LatencyModel,
    configs: Mapping[str, Mapping[str, int]],
    *,
    runs: int = 10,
    warmup: int = 2,
) -> dict[str, Any]:
    """Predicted against measured latency for each pruned variant in ``configs`` (see
    :func:`width_configs`), measured side by side with the baseline ``model``.

    Returns ``baseline`` (measured now) and ``rows``: per variant ``name``, ``predicted_ms`` (raw
    prediction, i.e. without any correction), ``measured_ms`` (median) with ``p10_ms``/``p90_ms``,
    ``predicted_ratio``/``measured_ratio`` (to the baseline's prediction / measurement in the same
    run), their relative error ``error`` = predicted_ratio / measured_ratio - 1, and the
    variant's table-layer ``widths``.
    """
    table = latency.table
    variants = {
        name: prune_to_keep(model, table.input_shape, keep) for name, keep in configs.items()
    }
    times = measure_models(
        [model, *variants.values()], table.input_shape, table.settings, runs=runs, warmup=warmup
    )
    base, rest = times[0], times[1:]
    base_raw = latency.raw()
    rows = []
    for (name, net), t in zip(variants.items(), rest, strict=True):
        raw = latency.raw(latency.widths(net))
        pred_ratio = raw / base_raw
        meas_ratio = t["median_ms"] / base["median_ms"]
        rows.append(
            {
                "name": name,
                "predicted_ms": raw,
                "measured_ms": t["median_ms"],
                "p10_ms": t["p10_ms"],
                "p90_ms": t["p90_ms"],
                "predicted_ratio": pred_ratio,
                "measured_ratio": meas_ratio,
                "error": pred_ratio / meas_ratio - 1.0,
                "widths": latency.widths(net),
            }
        )
    return {"baseline": base, "table_baseline_ms": latency.baseline_ms, "rows": rows}


def recalibration_errors(rows: Sequence[Mapping[str, Any]], correction: str) -> list[float]:
    """Relative errors of ratio predictions after one recalibration, as an iterative run makes it.

    Variants sorted by measured latency play the steps of a run: each is predicted by a model
    recalibrated on the variant just above it (the previous, less pruned step; the first on the
    baseline alone). Ratios to the baseline are used, so the baseline is (1, 1).
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}")
    ordered = sorted(rows, key=lambda r: -r["measured_ratio"])
    base = Calibration(1.0, 1.0)
    errors = []
    prev: Calibration | None = None
    for r in ordered:
        pairs = [base] if prev is None else [base, prev]
        a, b = fit_correction(correction, pairs)
        errors.append((a * r["predicted_ratio"] + b) / r["measured_ratio"] - 1.0)
        prev = Calibration(r["predicted_ratio"], r["measured_ratio"])
    return errors


def check_interpolation(
    table: LatencyTable,
    points: int = 12,
    *,
    seed: int = 0,
    warmup: int | None = None,
    runs: int | None = None,
) -> list[dict[str, Any]]:
    """Single layers measured at random widths off the grid against the table's interpolation.

    Half of the points are grid points measured again (their error is the measurement noise the
    off-grid errors should be read against). Rows: ``layer``, ``cin``, ``cout``, ``on_grid``,
    ``table_ms``, ``measured_ms``, ``error`` (table / measured - 1).
    """
    rng = np.random.default_rng(seed)
    dev = resolve_device(table.settings.device)
    warmup = table.stats.get("warmup", 1) if warmup is None else warmup
    runs = table.stats.get("runs", 5) if runs is None else runs
    entries = [e for e in table.entries.values() if len(e.cout_axis) > 1]
    rows = []
    with threads_set(table.settings.threads):
        for i in range(points):
            e = entries[int(rng.integers(len(entries)))]
            on_grid = i % 2 == 1
            if on_grid:
                cin = int(rng.choice(e.cin_axis))
                cout = int(rng.choice(e.cout_axis))
            else:
                cin = int(rng.integers(int(e.cin_axis[0]), int(e.cin_axis[-1]) + 1))
                cout = int(rng.integers(int(e.cout_axis[0]), int(e.cout_axis[-1]) + 1))
            if e.layer.tied:
                cin = cout
            groups = int(e.layer.signature.get("groups") or 1) if e.layer.kind == "conv" else 1
            cin, cout = cin - cin % groups or groups, cout - cout % groups or groups
            if e.layer.fixed_in:
                cin = e.layer.cin
            ms = e.layer.calls * measure_point(
                e.layer.signature, cin, cout, table.settings, dev, warmup=warmup, runs=runs
            )
            pred = float(e.latency(cin, cout))
            rows.append(
                {
                    "layer": e.name,
                    "cin": cin,
                    "cout": cout,
                    "on_grid": on_grid,
                    "table_ms": pred,
                    "measured_ms": ms,
                    "error": pred / ms - 1.0,
                }
            )
    return rows
