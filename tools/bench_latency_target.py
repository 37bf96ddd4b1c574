"""A latency target on ResNet-50 (CPU): is it met, and does it keep more saliency than MACs?

One run of the product's code path, on one set of Taylor-FO-BN scores (random minibatches, the
run's ``score_groups``):

1. a pruner built with ``latency=LatencySetup(...)``: the latency table (built here, or read from
   the cache) and the baseline timed;
2. ``Target("latency", keep)`` removed in one step by ``StructuredPruner.remove_to_target`` with
   the pruner's latency planner (selection, trial timed beside the baseline, recalibration);
3. the same scores pruned to several MACs targets (the pruner's MACs path);
4. every pruned model timed side by side with the baseline, in pairs of interleaved rounds
   (``taylorprune.latency.timing.interleaved_times``; fraction = median per-round ratio), in
   ``--final-passes`` passes over all the models whose rounds are pooled per model.

Bars: the latency-targeted model measures within 5% of the target; at its measured latency, the
MACs-targeted models (interpolated between the two whose measured latency brackets it) keep no
more total Taylor saliency; when the latency-targeted model is faster than every MACs-targeted
one, the fastest of them stands in (a slower model with no more saliency is dominated). Saliency is
raw (what the default ranking and the knapsack maximise) and, for comparison with older runs,
per-group mean-normalised.

Writes ``bench_latency_target.json`` and ``.md`` into ``--out``. On the 2-core machine:

    nice -n 10 python tools/bench_latency_target.py --threads 2 --batch-size 16 --keep 0.6
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import itertools
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as common
import _cli as cli

from taylorprune.latency import TimingSettings
from taylorprune.latency.setup import LatencySetup
from taylorprune.latency.timing import cpu_name, interleaved_times, ratio_summary, summary
from taylorprune.models import build_model, parse_model_string
from taylorprune.pruning import StructuredPruner, Target
from taylorprune.pruning.schedule import score_groups


def kept_saliency(pruner: StructuredPruner, scores: dict[str, torch.Tensor]) -> dict[str, float]:
    """Total score kept (raw and per-group mean-normalised) over every step of ``pruner``."""
    raw = norm = 0.0
    for root, s in scores.items():
        s = s.double()
        keep = torch.ones(len(s), dtype=torch.bool)
        idx = torch.arange(len(s))
        for step in pruner.history:  # indices of each step are relative to the widths before it
            k = step.kept.get(root)
            if k is not None:
                idx = idx[k]
        keep[:] = False
        keep[idx] = True
        raw += float(s[keep].sum())
        norm += float((s / s.abs().mean().clamp_min(1e-30))[keep].sum())
    return {"raw": raw, "normalized": norm}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_timed_model(ap)
    cli.add_threads(ap, 2)
    ap.add_argument("--keep", type=float, default=0.6, help="latency target (fraction kept)")
    ap.add_argument("--macs", type=float, nargs="+", default=[0.3, 0.35, 0.4, 0.5])
    ap.add_argument("--method", default="knapsack")
    ap.add_argument("--round-to", type=int, default=8)
    ap.add_argument("--runs", type=int, default=20, help="rounds of each trial's timing")
    ap.add_argument("--final-runs", type=int, default=10, help="rounds of a final pair per pass")
    ap.add_argument("--final-passes", type=int, default=3, help="passes over the final pairs")
    ap.add_argument("--copies", type=int, default=3, help="fresh copies per timing (pooled)")
    ap.add_argument("--score-batches", type=int, default=4)
    cli.add_out(ap, "latency_target")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    common.use_tools_cache()
    torch.manual_seed(0)
    shape = tuple(args.input_size)
    spec = parse_model_string(args.model)
    model = build_model(spec).eval()
    classes = int(model(torch.zeros(1, *shape)).shape[1])
    settings = TimingSettings(batch_size=args.batch_size, threads=args.threads)
    setup = LatencySetup(settings, method=args.method, runs=args.runs, copies=args.copies)
    load = {"before": os.getloadavg()}
    result: dict[str, Any] = {
        "argv": sys.argv[1:] if argv is None else argv,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__},
        "settings": settings.as_dict(),
        "keep": args.keep,
    }
    example = torch.zeros(1, *shape)

    kwargs = {"round_to": args.round_to}
    t0 = time.perf_counter()
    lat_pruner = StructuredPruner(copy.deepcopy(model), example, latency=setup, **kwargs)
    assert lat_pruner.latency is not None
    latency = lat_pruner.latency.latency
    result["table"] = {**latency.table.stats, "total_s": time.perf_counter() - t0}
    result["baseline_ms"] = latency.baseline_ms
    print(f"table + baseline: {time.perf_counter() - t0:.1f} s", flush=True)

    scorer = StructuredPruner(copy.deepcopy(model), example, **kwargs)
    batches = common.random_batches(shape, classes, args.score_batches)
    scores = score_groups(scorer, batches, nn.functional.cross_entropy)
    scores = {k: v.detach().cpu() for k, v in scores.items()}

    t0 = time.perf_counter()
    target = Target("latency", args.keep)
    step = lat_pruner.remove_to_target(scores, target)
    result["latency_run"] = {
        "seconds": time.perf_counter() - t0,
        "trials": lat_pruner.latency.checks,
        "fraction_in_run": lat_pruner.fraction("latency"),
        "stopped_short": None if step.stopped_short is None else step.stopped_short.message,
        "macs": lat_pruner.fraction("macs"),
        "saliency": kept_saliency(lat_pruner, scores),
    }
    print(f"latency target: {time.perf_counter() - t0:.1f} s", flush=True)

    macs_models = []
    for k in args.macs:
        p = StructuredPruner(copy.deepcopy(model), example, **kwargs)
        p.remove_to_target(scores, Target("macs", k))
        macs_models.append(
            {"target": k, "macs": p.fraction("macs"), "saliency": kept_saliency(p, scores)}
        )
        macs_models[-1]["model"] = p.model

    # Each pruned model is timed in its own pair with the baseline: the per-round ratio then
    # compares runs one pass apart, not up to a whole round of seven models apart. The pairs are
    # timed in passes over all models and each model's rounds pooled over the passes: readings
    # minutes apart differ by more than the rounds of one reading, so each model's reading is
    # spread over the whole measurement instead of one stretch of it.
    nets = [lat_pruner.model, *(m.pop("model") for m in macs_models)]
    pooled: list[tuple[list[float], list[float]]] = [([], []) for _ in nets]
    passes: list[list[float]] = [[] for _ in nets]
    for k in range(args.final_passes):
        for i, net in enumerate(nets):
            times = interleaved_times(
                [model, net], shape, settings, runs=args.final_runs, warmup=2, copies=args.copies
            )
            pooled[i][0].extend(times[0])
            pooled[i][1].extend(times[1])
            passes[i].append(ratio_summary(times[1], times[0])["median"])
            print(f"final pass {k + 1} pair {i + 1}: {passes[i][-1]:.3f}", flush=True)
    pairs = [(ratio_summary(t, b), summary(t), summary(b)) for b, t in pooled]
    result["final"] = {
        "baseline": pairs[0][2],
        "latency": {**pairs[0][1], "fraction": pairs[0][0]},
        "passes": passes[0],
    }
    for m, (f, t, base) in zip(macs_models, pairs[1:], strict=True):
        m["fraction"] = f
        m["timing"] = t
        m["baseline_timing"] = base
    for m, each in zip(macs_models, passes[1:], strict=True):
        m["passes"] = each
    result["macs_runs"] = macs_models
    f_lat = pairs[0][0]["median"]
    result["met"] = abs(f_lat / args.keep - 1.0) <= 0.05
    result["macs_at_equal_latency"] = _interpolate(macs_models, f_lat)
    eq = result["macs_at_equal_latency"]
    sal = result["latency_run"]["saliency"]
    result["saliency_bar"] = None if eq is None else sal["raw"] >= eq["raw"]
    load["after"] = os.getloadavg()
    result["load_average"] = load
    common.write_json(args.out / "bench_latency_target.json", result)
    common.write_file(args.out / "bench_latency_target.md", _markdown(result))
    print(_markdown(result))
    return result


def _interpolate(runs: list[dict[str, Any]], fraction: float) -> dict[str, Any] | None:
    """Saliency of the MACs-targeted models at measured latency ``fraction``: linear between the
    two that bracket it; the fastest one's when ``fraction`` is below them all (``"faster"``);
    None when it is above them all."""
    pts = sorted((r["fraction"]["median"], r["saliency"]) for r in runs)
    for (f0, s0), (f1, s1) in itertools.pairwise(pts):
        if f0 <= fraction <= f1:
            t = 0.0 if f1 == f0 else (fraction - f0) / (f1 - f0)
            out: dict[str, Any] = {k: s0[k] + t * (s1[k] - s0[k]) for k in ("raw", "normalized")}
            return out | {"how": "interpolated"}
    if pts and fraction < pts[0][0]:
        return {**pts[0][1], "how": "faster", "fraction": pts[0][0]}
    return None


def _markdown(r: dict[str, Any]) -> str:
    s, lat, base = r["settings"], r["latency_run"], r["final"]["baseline"]
    f = r["final"]["latency"]["fraction"]
    tb = r["table"]
    lines = [
        "# Latency target benchmark",
        "",
        f"`python tools/bench_latency_target.py {' '.join(r['argv'])}`, {r['date']}, "
        f"{r['machine']['cpu']} ({r['machine']['cores']} cores), torch {r['machine']['torch']}; "
        f"batch {s['batch_size']}, {s['threads']} threads, {s['dtype']}. Load average (1/5/15 "
        f"min) before {_load(r['load_average']['before'])}, after "
        f"{_load(r['load_average']['after'])}.",
        "",
        f"- Table: {tb['points']} points ({tb['measured']} measured, {tb['cached']} from the "
        f"cache) in {tb['seconds']:.0f} s; with the baseline timing {tb['total_s']:.0f} s.",
        f"- Baseline {base['median_ms']:.1f} ms per batch (median in its pair with the "
        f"latency-targeted model; p10 {base['p10_ms']:.1f}, p90 {base['p90_ms']:.1f}).",
        f"- Latency target {r['keep']}: {len(lat['trials'])} trial(s) in {lat['seconds']:.0f} s; "
        f"measured in the run {lat['fraction_in_run']:.3f}; final side-by-side measurement "
        f"**{f['median']:.3f}** of the baseline (p10 {f['p10']:.3f}, p90 {f['p90']:.3f}; "
        f"passes {_passes(r['final'])}; "
        f"speed-up {1 / f['median']:.2f}x), MACs {lat['macs']:.3f}. Within 5% of the target: "
        f"**{'yes' if r['met'] else 'no'}**.",
        "",
        "Each trial is read beside the baseline; one in the band is read again and judged on both "
        "readings' rounds pooled (fraction); the model applied is timed once more on its own and "
        "the run's fraction pools all its readings.",
        "",
        "| trial | budget ms | predicted ms | measured ms | readings | fraction | error | "
        "applied | timed again, on its own | all readings pooled |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in lat["trials"]:
        lines.append(
            f"| {t['attempt']} | {t['budget_ms']:.1f} | {t['predicted_ms']:.1f} | "
            f"{t['measured_ms']:.1f} | {_readings(t)} | {t['fraction']:.3f} | "
            f"{100 * t['error']:+.1f}% | {'yes' if t['applied'] else ''} | {_confirmed(t)} | "
            f"{_pooled(t)} |"
        )
    lines += [
        "",
        "Saliency kept (sum of Taylor-FO-BN scores of kept channels, raw as the default ranking "
        "uses them; normalised: per group divided by its mean):",
        "",
        "| model | MACs kept | measured latency (p10-p90) | saliency normalised | raw |",
        "|---|---|---|---|---|",
        f"| latency {r['keep']} | {lat['macs']:.3f} | {f['median']:.3f} ({f['p10']:.3f}-"
        f"{f['p90']:.3f}) | {lat['saliency']['normalized']:.1f} | "
        f"{lat['saliency']['raw']:.4g} |",
    ]
    for m in r["macs_runs"]:
        mf = m["fraction"]
        lines.append(
            f"| macs {m['target']} | {m['macs']:.3f} | {mf['median']:.3f} ({mf['p10']:.3f}-"
            f"{mf['p90']:.3f}) | {m['saliency']['normalized']:.1f} | "
            f"{m['saliency']['raw']:.4g} |"
        )
    eq = r["macs_at_equal_latency"]
    lines.append("")
    if eq is None:
        lines.append("No two MACs-targeted models bracket the latency-targeted one's latency.")
    else:
        how = (
            "interpolated to the same measured latency"
            if eq.get("how", "interpolated") == "interpolated"
            else f"the fastest ({eq['fraction']:.3f} of the latency, slower than the "
            "latency-targeted model)"
        )
        lines.append(
            f"MACs-targeted, {how}: saliency {eq['raw']:.4g} raw ({eq['normalized']:.1f} "
            f"normalised). Latency-targeted keeps at least as much raw saliency: "
            f"**{'yes' if r['saliency_bar'] else 'no'}**."
        )
    return "\n".join(lines) + "\n"


def _confirmed(trial: dict[str, Any]) -> str:
    if "confirmed_fraction" not in trial:
        return ""
    return (
        f"{trial['confirmed_fraction']:.3f} ({trial['confirmed_p10']:.3f}-"
        f"{trial['confirmed_p90']:.3f})"
    )


def _passes(final: dict[str, Any]) -> str:
    return " / ".join(f"{v:.3f}" for v in final.get("passes", ()))


def _readings(trial: dict[str, Any]) -> str:
    return ", ".join(f"{v:.3f}" for v in trial.get("readings", [trial["fraction"]]))


def _pooled(trial: dict[str, Any]) -> str:
    if "pooled_fraction" not in trial:
        return ""
    return f"{trial['pooled_fraction']:.3f} ({trial['pooled_p10']:.3f}-{trial['pooled_p90']:.3f})"


def _load(values: Any) -> str:
    return " / ".join(f"{v:.1f}" for v in values)


if __name__ == "__main__":
    cli.run(main)
