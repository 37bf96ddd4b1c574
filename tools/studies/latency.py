"""How well the latency table serves pruning, beyond what ``taylorprune latency-table --check``
measures (``tools/bench_latency_table.py``, docs/latency.md): the recalibration rules replayed on
measured variants, single layers measured off the grid against the interpolation, and the two
selection methods side by side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from taylorprune.errors import UserError
from taylorprune.latency.build import measure_point
from taylorprune.latency.model import CORRECTIONS, Calibration, LatencyModel, fit_correction
from taylorprune.latency.selection import Constraints, LatencyGroup, select
from taylorprune.latency.table import LatencyTable
from taylorprune.latency.timing import resolve_device, threads_set


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


def compare_methods(
    groups: Sequence[LatencyGroup],
    model: LatencyModel,
    fractions: Sequence[float],
    constraints: Sequence[Constraints],
    methods: Sequence[str] = ("greedy", "knapsack"),
) -> list[dict[str, float | int | str]]:
    """Every method at every budget (``fractions`` of the baseline's latency) and constraint set:
    the fraction of saliency kept, the predicted fraction of the baseline, and seconds taken (an
    unreachable budget: its message under ``error``)."""
    rows: list[dict[str, float | int | str]] = []
    for cons in constraints:
        for frac in fractions:
            for method in methods:
                try:
                    sel = select(
                        groups, model, frac * model.baseline_ms, constraints=cons, method=method
                    )
                except UserError as exc:
                    rows.append(
                        {
                            "method": method,
                            "round_to": cons.round_to,
                            "budget": frac,
                            "error": str(exc),
                        }
                    )
                    continue
                rows.append(
                    {
                        "method": method,
                        "round_to": cons.round_to,
                        "budget": frac,
                        "predicted": sel.predicted_ms / model.baseline_ms,
                        "saliency_kept": sel.saliency_kept / sel.saliency_total,
                        "seconds": sel.seconds,
                    }
                )
    return rows
