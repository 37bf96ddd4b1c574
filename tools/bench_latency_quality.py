"""Latency-targeted against MACs-targeted pruning at equal measured latency: top-1 after the same
fine-tuning, on the quality study's paper-regime Fashion-MNIST benchmark.

Both sides are ``tools/bench_quality.py`` trajectories of the library's default method (its own
iterative schedule, scoring and ranking; the same seeds, fine-tuning and test set):

1. MACs-targeted: the trajectory stops at ``--macs`` levels; every snapshot is timed beside the
   baseline (CPU, ``--threads``, batch ``--latency-batch``), which gives its measured latency.
2. Latency-targeted: ``Target("latency", f)`` at the mean measured latency ``f`` of each MACs
   level, so that both sides end at the same latency; the pruner carries the latency model a run
   builds (table, baseline timed beside every trial) and its snapshots are timed the same way.

Results: ``<out>/macs/`` and ``<out>/latency/`` (bench_quality's own runs, resumable), and
``<out>/table.md``, ``<out>/summary.json``, ``<out>/top1_vs_latency.png``. Timings need a quiet
machine: run nothing else beside it.

    .venv/bin/python tools/bench_latency_quality.py            # 6 runs, about 20 min on 2 cores
    .venv/bin/python tools/bench_latency_quality.py --smoke    # seconds, synthetic
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as common
import _cli as cli
import bench_quality as bq


def _levels(summary: dict[str, Any], method: str, keeps: list[float]) -> list[float]:
    """The mean measured latency of each MACs level, rounded to 0.001 and decreasing."""
    per = summary["table"][method]
    return [round(per[f"{k:g}"]["latency_fraction"][0], 3) for k in keeps]


def report(out: Path, method: str, macs: dict[str, Any], lat: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for km, kl in zip(macs["levels"], lat["levels"], strict=True):
        a, b = macs["table"][method][f"{km:g}"], lat["table"][method][f"{kl:g}"]
        rows.append(
            {"macs_level": km, "latency_level": kl, "macs_targeted": a, "latency_targeted": b}
        )
    summary = {"method": method, "rows": rows, "baseline": macs.get("baseline")}
    common.write_json(out / "summary.json", summary)
    lines = [
        f"Method `{method}` (the library's default) under the quality study's schedule; top-1 (%) "
        "on the 10,000 test images after the same fine-tuning, mean ± std over seeds. Latency: "
        "median per-round ratio to the baseline, timed side by side, mean over seeds.",
        "",
        "| target | measured latency | MACs kept | top-1 pruned | top-1 fine-tuned | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        for name, c in (
            (f"MACs {r['macs_level']:g}", r["macs_targeted"]),
            (f"latency {r['latency_level']:g}", r["latency_targeted"]),
        ):
            lat_mean, lat_std = c["latency_fraction"]
            lines.append(
                f"| {name} | {lat_mean:.3f} ± {lat_std:.3f} | {c['macs_fraction']:.3f} | "
                f"{c['top1_pruned_mean']:.1f} | **{c['top1_finetuned_mean']:.2f}** ± "
                f"{c['top1_finetuned_std']:.2f} | {c['n']} |"
            )
    lines += ["", "Latency-targeted minus MACs-targeted, top-1 after fine-tuning:", ""]
    for r in rows:
        d = r["latency_targeted"]["top1_finetuned_mean"] - r["macs_targeted"]["top1_finetuned_mean"]
        lines.append(f"- at {r['latency_level']:g} of the latency: {d:+.2f} points")
    common.write_file(out / "table.md", "\n".join(lines) + "\n")
    _plot(rows, out / "top1_vs_latency.png")
    return summary


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for key, label, fmt in (
        ("macs_targeted", "MACs-targeted", "o-"),
        ("latency_targeted", "latency-targeted", "s-"),
    ):
        cs = [r[key] for r in rows]
        ax.errorbar(
            [c["latency_fraction"][0] for c in cs],
            [c["top1_finetuned_mean"] for c in cs],
            xerr=[c["latency_fraction"][1] for c in cs],
            yerr=[c["top1_finetuned_std"] for c in cs],
            fmt=fmt, capsize=3, label=label,
        )  # fmt: skip
    ax.invert_xaxis()
    ax.set_xlabel("measured latency (fraction of the baseline, CPU)")
    ax.set_ylabel("top-1 (%) after fine-tuning")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("ResNet-20, Fashion-MNIST: equal latency, equal fine-tuning")
    common.save_png(fig, path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_out(p, "quality_latency")
    p.add_argument("--macs", nargs="+", type=float, default=[0.5, 0.3])
    cli.add_seeds(p, 3)
    cli.add_threads(p, 2)
    p.add_argument("--latency-batch", type=int, default=64)
    cli.add_smoke(p, "seconds, synthetic")
    args = p.parse_args(argv)
    method = bq.default_method()
    assert method is not None, "the library's default has no entry in bench_quality.METHODS"
    common_args = ["--methods", method, "--seeds", str(args.seeds), "--threads", str(args.threads)]
    common_args += ["--latency-batch", str(args.latency_batch)]
    if args.smoke:
        common_args += ["--smoke", "--latency-runs", "3"]
    levels = [str(k) for k in args.macs]
    bq.main([*common_args, "--out", str(args.out / "macs"), "--levels", *levels,
             "--measure-latency"])  # fmt: skip
    macs = common.read_json(args.out / "macs" / "summary.json")
    lat_levels = _levels(macs, method, args.macs)
    valid = sorted(set(lat_levels), reverse=True) == lat_levels  # decreasing, no repeats
    if not valid or not all(0 < k < 1 for k in lat_levels):
        if not args.smoke:  # timings this noisy cannot compare anything: say so
            p.error(
                f"the MACs levels measured latencies {lat_levels}: not a decreasing series of "
                "fractions in (0, 1)"
            )
        # --smoke times a toy model for 3 rounds on whatever load there is: only the code path
        # is under test, so the levels are made decreasing instead
        lat_levels = [round(0.9 - 0.1 * i, 3) for i in range(len(lat_levels))]
    bq.main([*common_args, "--out", str(args.out / "latency"), "--target", "latency",
             "--levels", *(str(k) for k in lat_levels)])  # fmt: skip
    lat = common.read_json(args.out / "latency" / "summary.json")
    report(args.out, method, macs, lat)
    print((args.out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
