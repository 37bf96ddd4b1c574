"""Latency table of ResNet-50 on CPU: construction time, prediction against measurement, selection.

1. Builds the table without the cache (``taylorprune.latency.build_table``) and times it.
2. Measures the baseline and pruned variants side by side (uniform width multipliers and random
   per-group widths, ``taylorprune.latency.fit``) and compares with the table's prediction; also
   the residual held constant, and each recalibration rule replayed as an iterative run would
   (``studies.latency``).
3. Times single layers off the grid against the interpolation (and on the grid: the noise floor).
4. Runs both selection methods (``taylorprune.latency.selection``) on Taylor-FO-BN scores (random
   minibatches, per-group mean-normalised) at several budgets, on the measured
   table and on two synthetic ones over the same layers (latency smooth in width; in steps of 32).

Writes ``bench_latency_table.json``, ``.md``, ``_fit.png`` and the table itself (``_table.json``,
loadable with ``LatencyTable.load``) into ``--out``. On a quiet machine:

    nice python tools/bench_latency_table.py --threads 2 --batch-size 16
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as common
import _cli as cli
from studies.latency import check_interpolation, compare_methods, recalibration_errors

from taylorprune.latency import (
    Constraints,
    LatencyModel,
    LatencyTable,
    TimingSettings,
    build_table,
    latency_groups,
)
from taylorprune.latency.fit import check_fit, width_configs
from taylorprune.latency.layers import TableLayer
from taylorprune.latency.model import CORRECTIONS
from taylorprune.latency.table import entries_from_function
from taylorprune.models import build_model, parse_model_string
from taylorprune.pruning import StructuredPruner
from taylorprune.pruning.schedule import Scoring, score_groups


def taylor_scores(pruner: StructuredPruner, shape, batches: int) -> dict[str, np.ndarray]:
    """Taylor-FO-BN scores of ``pruner``'s groups on random minibatches of 8 (the library's
    scoring), divided by each group's mean: the selection methods are compared on per-group
    normalised scores, a choice of this study (docs/latency.md)."""
    classes = int(pruner.model.eval()(torch.zeros(1, *shape)).shape[1])
    data = common.random_batches(shape, classes, batches)
    scores = score_groups(pruner, data, nn.functional.cross_entropy, Scoring("taylor_fo_bn"))
    return {k: (s / s.abs().mean().clamp_min(1e-30)).double().numpy() for k, s in scores.items()}


def smooth_cost(layer: TableLayer, cin: int, cout: int) -> float:
    """ms: MACs at a rate that drops for thin layers (below 256 channels), plus a fixed overhead."""
    k = float(np.prod(layer.signature.get("kernel", [1])))
    rate = min(1.0, 0.3 + cout / 256) * min(1.0, 0.3 + cin / 256)
    return 1e-6 * cin * cout * k * layer.out_elements / rate + 0.02


def staircase_cost(layer: TableLayer, cin: int, cout: int) -> float:
    """ms: MACs rounded up to tiles of 32 channels each way (as GPU kernels run), plus overhead."""
    k = float(np.prod(layer.signature.get("kernel", [1])))
    tiles = math.ceil(cin / 32) * math.ceil(cout / 32)
    return 1e-6 * 1024 * tiles * k * layer.out_elements + 0.02


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_timed_model(ap)
    cli.add_threads(ap, 2)
    ap.add_argument("--table-runs", type=int, default=5, help="timed runs per grid point")
    ap.add_argument("--table-warmup", type=int, default=1)
    ap.add_argument("--runs", type=int, default=10, help="timed end-to-end runs per model")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--random", type=int, default=3, help="random-width variants")
    ap.add_argument("--interp-points", type=int, default=16)
    ap.add_argument("--score-batches", type=int, default=2)
    cli.add_out(ap, "latency_table")
    args = ap.parse_args(argv)
    common.use_tools_cache()
    torch.manual_seed(0)
    shape = tuple(args.input_size)
    model = build_model(parse_model_string(args.model)).eval()
    settings = TimingSettings(batch_size=args.batch_size, threads=args.threads)

    # 1. Construction without the cache (layers of equal signature still share measurements).
    table = build_table(
        model, shape, settings, warmup=args.table_warmup, runs=args.table_runs, use_cache=False
    )
    print(f"table: {table.stats}", flush=True)
    table.save(args.out / "bench_latency_table_table.json")  # atomically, by the library
    latency = LatencyModel.measure(table, model, runs=args.runs, warmup=args.warmup)
    constant = LatencyModel(table, latency.baseline_ms, residual="constant")

    # 2. Pruned variants measured side by side with the baseline.
    pruner = StructuredPruner(model, torch.randn(1, *shape))  # its groups: classifier kept
    graph, groups = pruner.graph, pruner.groups()
    configs = width_configs(groups, random=args.random)
    fit = check_fit(model, latency, configs, runs=args.runs, warmup=args.warmup)
    for r in fit["rows"]:
        widths = r.pop("widths")
        r["predicted_ratio_constant_residual"] = constant.raw(widths) / constant.raw()
        print(
            f"{r['name']}: predicted {r['predicted_ratio']:.3f} measured "
            f"{r['measured_ratio']:.3f} ({100 * r['error']:+.1f}%)",
            flush=True,
        )
    recal = {c: recalibration_errors(fit["rows"], c) for c in CORRECTIONS}

    # 3. Interpolation against single-layer measurements.
    interp = check_interpolation(table, args.interp_points)

    # 4. Selection methods on Taylor scores.
    scores = taylor_scores(pruner, shape, args.score_batches)
    lgroups = latency_groups(graph, groups, table, scores)
    constraints = (Constraints(round_to=1), Constraints(round_to=8))
    selection = compare_methods(lgroups, latency, (0.8, 0.6, 0.5), constraints)
    # The same on known cost functions: smooth in width, and in steps of 32 channels.
    synthetic = {}
    for name, cost in (("smooth", smooth_cost), ("staircase", staircase_cost)):
        fake = LatencyTable(
            table.device, settings, shape, entries_from_function(list(_layers(table)), cost)
        )
        fake_model = LatencyModel(fake, 1.3 * fake.total())
        fake_groups = latency_groups(graph, groups, fake, scores)
        synthetic[name] = compare_methods(fake_groups, fake_model, (0.8, 0.6, 0.5), constraints)

    result = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(["python tools/bench_latency_table.py", *(argv or sys.argv[1:])]),
        "model": args.model,
        "input_shape": list(shape),
        "settings": settings.as_dict(),
        "device": table.device.as_dict(),
        "load_average": list(os.getloadavg()),
        "table": {
            **table.stats,
            "table_sum_ms": latency.table_ms,
            "baseline_ms": latency.baseline_ms,
            "residual_ms": latency.residual_ms,
        },
        "fit": fit,
        "fit_summary": {
            "mean_abs_error": _mean_abs([r["error"] for r in fit["rows"]]),
            "mean_abs_error_constant_residual": _mean_abs(
                [
                    r["predicted_ratio_constant_residual"] / r["measured_ratio"] - 1
                    for r in fit["rows"]
                ]
            ),
            **{f"mean_abs_error_recalibrated_{c}": _mean_abs(e) for c, e in recal.items()},
        },
        "recalibration_errors": recal,
        "interpolation": interp,
        "interpolation_summary": {
            "off_grid_mean_abs_error": _mean_abs([r["error"] for r in interp if not r["on_grid"]]),
            "on_grid_mean_abs_error": _mean_abs([r["error"] for r in interp if r["on_grid"]]),
        },
        "selection": selection,
        "selection_synthetic": synthetic,
    }
    common.write_json(args.out / "bench_latency_table.json", result)
    common.write_file(args.out / "bench_latency_table.md", _markdown(result))
    _plot(result, args.out / "bench_latency_table_fit.png")
    return result


def _layers(table: LatencyTable):
    return (e.layer for e in table.entries.values())


def _mean_abs(values: list[float]) -> float:
    return statistics.fmean(abs(v) for v in values) if values else float("nan")


def _markdown(r: dict[str, Any]) -> str:
    t, s, d = r["table"], r["settings"], r["device"]
    lines = [
        f"# Latency table: {r['model']}, {d['type']} '{d['name']}', {r['date']}",
        "",
        f"batch {s['batch_size']}, {d['threads']} threads, {s['dtype']}, torch {d['torch']}; "
        f"load average at the end {', '.join(f'{x:.1f}' for x in r['load_average'])}.",
        f"`{r['command']}`",
        "",
        f"- Construction without the cache: **{t['seconds']:.1f} s** ({t['layers']} layers, "
        f"{t['signatures']} signatures, {t['points']} grid points, {t['warmup']} warm-up + "
        f"{t['runs']} timed calls each).",
        f"- Baseline measured {t['baseline_ms']:.1f} ms; the table's layers sum to "
        f"{t['table_sum_ms']:.1f} ms; residual {t['residual_ms']:.1f} ms.",
        "",
        "## Whole network: predicted vs measured (ratios to the baseline, side by side)",
        "",
        "| variant | predicted | measured (p10-p90 ms) | error | residual constant |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in r["fit"]["rows"]:
        const = row["predicted_ratio_constant_residual"] / row["measured_ratio"] - 1
        lines.append(
            f"| {row['name']} | {row['predicted_ratio']:.3f} | {row['measured_ratio']:.3f} "
            f"({row['p10_ms']:.0f}-{row['p90_ms']:.0f}) | {100 * row['error']:+.1f}% | "
            f"{100 * const:+.1f}% |"
        )
    fs, it = r["fit_summary"], r["interpolation_summary"]
    recal = ", ".join(
        f"{c} {100 * fs[f'mean_abs_error_recalibrated_{c}']:.1f}%" for c in CORRECTIONS
    )
    lines += [
        "",
        f"Mean |error|: {100 * fs['mean_abs_error']:.1f}% (residual constant: "
        f"{100 * fs['mean_abs_error_constant_residual']:.1f}%); recalibrated on the next less "
        f"pruned variant, as in an iterative run: {recal}.",
        "",
        "## Interpolation against single-layer measurements",
        "",
        f"Mean |error| off the grid {100 * it['off_grid_mean_abs_error']:.1f}%; on grid points "
        f"measured again {100 * it['on_grid_mean_abs_error']:.1f}% (the noise floor).",
        "",
        "## Selection: greedy vs knapsack (Taylor-FO-BN, mean-normalised)",
        "",
        "| round_to | budget | method | predicted | saliency kept | seconds |",
        "|---:|---:|---|---:|---:|---:|",
    ]
    lines += _selection_rows(r["selection"])
    for name, rows in r["selection_synthetic"].items():
        lines += [
            "",
            f"On a synthetic {name} table (same layers and scores; residual 30%):",
            "",
            "| round_to | budget | method | predicted | saliency kept | seconds |",
            "|---:|---:|---|---:|---:|---:|",
            *_selection_rows(rows),
        ]
    return "\n".join(lines) + "\n"


def _selection_rows(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for row in rows:
        if "error" in row:
            lines.append(
                f"| {row['round_to']} | {row['budget']:.2f} | {row['method']} | "
                f"unreachable | | |"
            )
            continue
        lines.append(
            f"| {row['round_to']} | {row['budget']:.2f} | {row['method']} | "
            f"{row['predicted']:.4f} | {row['saliency_kept']:.5f} | {row['seconds']:.2f} |"
        )
    return lines


def _plot(r: dict[str, Any], path: Path) -> None:
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    rows = r["fit"]["rows"]
    meas = [row["measured_ratio"] for row in rows]
    ax.scatter(meas, [row["predicted_ratio"] for row in rows], label="table, residual ~ outputs")
    ax.scatter(
        meas,
        [row["predicted_ratio_constant_residual"] for row in rows],
        marker="x",
        label="table, residual constant",
    )
    for row in rows:
        ax.annotate(row["name"], (row["measured_ratio"], row["predicted_ratio"]), fontsize=7)
    lo = min([*meas, *(row["predicted_ratio"] for row in rows)]) - 0.05
    ax.plot([lo, 1.0], [lo, 1.0], color="grey", lw=0.8, label="exact")
    ax.set_xlabel("measured latency / baseline")
    ax.set_ylabel("predicted latency / baseline")
    d = r["device"]
    ax.set_title(f"{r['model']}, {d['type']}, batch {r['settings']['batch_size']}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    common.save_png(fig, path, dpi=120)


if __name__ == "__main__":
    cli.run(main)
