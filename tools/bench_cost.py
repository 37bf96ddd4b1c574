"""What taylorprune costs: scoring overhead, pruning-step time, latency gain, end-to-end time.

Four measurements in one run, each saved to ``<out>/<name>.json`` as soon as it is done (a rerun
skips those already on disk unless ``--force``):

* ``scoring``: a training step (forward, backward, SGD step) of ResNet-20 on a 64-image
  Fashion-MNIST-shaped batch, plain and as the iterative schedule trains while scoring
  (``ScheduleHooks.train``: an :class:`ImportanceAccumulator` fed by the backward), per criterion;
  the two are timed in alternation and the overhead is the ratio of
  medians minus one.
* ``prune``: wall time of one removal to -50% MACs: taylorprune (``StructuredPruner`` built, then
  ``remove_to_target`` on ``l1_norm`` scores, fvcore verification included) against torch-pruning's
  ``MetaPruner`` (built, then one ``step()`` with ``MagnitudeImportance``, global ranking, at the
  ``pruning_ratio`` that lands on -50%, found beforehand and not timed). Random-init ResNet-20
  (1×28×28) and torchvision ResNet-50 (3×224×224).
* ``latency``: :func:`taylorprune.measure.compare_latency` of those models before and after
  taylorprune's removal, against the ideal speedup (MACs ratio).
* ``e2e``: ``taylorprune run recipes/fashion_mnist_resnet20.yaml`` in a subprocess, wall time, with
  the baseline cache in ``.cache/`` (a first run also trains the baseline; the JSON says which).

    nice .venv/bin/python tools/bench_cost.py           # results in tools/results/cost/
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as common
import _cli as cli

from taylorprune import StructuredPruner, Target
from taylorprune.importance import ImportanceAccumulator
from taylorprune.measure import compare_latency, count
from taylorprune.models import build_model
from taylorprune.pruning.schedule import ScheduleHooks, Scoring, WindowScorer, score_groups

log = logging.getLogger("taylorprune.bench")

SCORING_CRITERIA = ("taylor_fo_bn", "taylor_fo_weight", "taylor_act", "taylor_so")


def _resnet(name: str, smoke: bool) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if name == "resnet20":
        spec = {"source": "builtin", "name": "resnet20", "num_classes": 10, "in_chans": 1}
        side = 16 if smoke else 28
        return build_model(spec).eval(), torch.randn(1, 1, side, side)
    spec = {"source": "torchvision", "name": name, "num_classes": 1000}
    side = 64 if smoke else 224
    return build_model(spec).eval(), torch.randn(1, 3, side, side)


# -- scoring overhead ------------------------------------------------------------------------------
def scoring_overhead(batch: int, steps: int, warmup: int, smoke: bool) -> dict[str, Any]:
    """Median training-step time with and without the accumulator, per criterion."""
    model, example = _resnet("resnet20", smoke)
    x = torch.randn(batch, *example.shape[1:])
    y = torch.randint(0, 10, (batch,))
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    pruner = StructuredPruner(model, example, verify=False, track_params=False)
    model.train()

    hooks = ScheduleHooks()

    def step(acc: ImportanceAccumulator | None) -> float:
        t0 = time.perf_counter()
        if acc is None:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
        else:  # the iterative schedule's training step on a window of one minibatch
            hooks.train(model, [(x, y)], opt, loss_fn, WindowScorer(model, acc, train_mode=True))
        return (time.perf_counter() - t0) * 1e3

    out: dict[str, Any] = {"batch": batch, "steps": steps, "input": list(x.shape), "criteria": {}}
    for crit in SCORING_CRITERIA:
        acc = ImportanceAccumulator(model, pruner.groups(), crit)
        try:
            for _ in range(warmup):
                step(None)
                step(acc)
            plain, scored = [], []
            for i in range(steps):  # alternate so that load drifts hit both alike
                if i % 2:
                    plain.append(step(None))
                    scored.append(step(acc))
                else:
                    scored.append(step(acc))
                    plain.append(step(None))
        finally:
            acc.close()
        p, s = statistics.median(plain), statistics.median(scored)
        out["criteria"][crit] = {"plain_ms": p, "scored_ms": s, "overhead": s / p - 1}
        log.info("scoring %s: %.1f ms -> %.1f ms (%+.1f%%)", crit, p, s, 100 * (s / p - 1))
    return out


# -- pruning step ----------------------------------------------------------------------------------
def _l1_scores(pruner: StructuredPruner) -> dict[str, torch.Tensor]:
    return score_groups(pruner, [], nn.functional.cross_entropy, Scoring("l1_norm"))


def _tp_prune(model: nn.Module, example: torch.Tensor, ratio: float) -> nn.Module:
    import torch_pruning as tp

    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(),
        global_pruning=True,
        pruning_ratio=ratio,
        ignored_layers=[classifier],
    )
    pruner.step()
    return model


def _tp_ratio_for(model: nn.Module, example: torch.Tensor, keep: float) -> tuple[float, float]:
    """The pruning_ratio that brings fvcore MACs within 0.5% of ``keep`` (bisection, untimed)."""
    base = count(model, example)[0]
    lo, hi = 0.0, 1.0
    best = (0.5, 1.0)
    for _ in range(16):
        ratio = (lo + hi) / 2
        frac = count(_tp_prune(copy.deepcopy(model), example, ratio), example)[0] / base
        if abs(frac - keep) < abs(best[1] - keep):
            best = (ratio, frac)
        if abs(frac - keep) <= 0.005:
            break
        lo, hi = (ratio, hi) if frac > keep else (lo, ratio)
    return best


def prune_time(name: str, keep: float, repeats: int, smoke: bool) -> dict[str, Any]:
    model, example = _resnet(name, smoke)
    ratio, tp_frac = _tp_ratio_for(model, example, keep)
    ours_s, tp_s, ours_frac = [], [], 1.0
    base = count(model, example)[0]
    for _ in range(repeats):
        m = copy.deepcopy(model)
        t0 = time.perf_counter()
        pruner = StructuredPruner(m, example)
        pruner.remove_to_target(_l1_scores(pruner), Target("macs", keep))
        ours_s.append(time.perf_counter() - t0)
        ours_frac = count(m, example)[0] / base
        m = copy.deepcopy(model)
        t0 = time.perf_counter()
        _tp_prune(m, example, ratio)
        tp_s.append(time.perf_counter() - t0)
    o, t = statistics.median(ours_s), statistics.median(tp_s)
    log.info("prune %s: taylorprune %.2f s, torch-pruning %.2f s", name, o, t)
    return {
        "model": name,
        "input": list(example.shape),
        "keep": keep,
        "taylorprune_s": o,
        "torch_pruning_s": t,
        "ratio": o / t,
        "taylorprune_macs_fraction": ours_frac,
        "torch_pruning_macs_fraction": tp_frac,
        "torch_pruning_ratio": ratio,
        "repeats": repeats,
    }


# -- latency ---------------------------------------------------------------------------------------
def latency_gain(
    name: str, keep: float, batch: int, runs: int, threads: int, smoke: bool
) -> dict[str, Any]:
    model, example = _resnet(name, smoke)
    pruned = copy.deepcopy(model)
    pruner = StructuredPruner(pruned, example)
    pruner.remove_to_target(_l1_scores(pruner), Target("macs", keep))
    x = torch.randn(batch, *example.shape[1:])
    res = compare_latency(model, pruned, x, runs=runs, warmup=max(2, runs // 5), threads=threads)
    res["model"] = name
    res["keep"] = keep
    res["fraction_of_ideal"] = res["speedup"] / res["ideal_speedup"]
    log.info("latency %s: %.2fx of ideal %.2fx", name, res["speedup"], res["ideal_speedup"])
    return res


# -- end to end ------------------------------------------------------------------------------------
def end_to_end(recipe: Path, overrides: list[str]) -> dict[str, Any]:
    env = common.tools_env()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            str(Path(sys.executable).parent / "taylorprune"),
            "--quiet",
            "run",
            str(recipe),
            "-o",
            str(Path(tmp) / "run"),
        ]
        for o in overrides:
            cmd += ["--set", o]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"recipe run failed ({proc.returncode}): {proc.stderr[-2000:]}")
        report = json.loads((Path(tmp) / "run" / "report.json").read_text())
    timings = report.get("timings", {})
    return {
        "command": " ".join(["taylorprune", *cmd[1:4], "-o", "<tmp>", *cmd[6:]]),
        "wall_s": wall,
        "timings": timings,
        "recipe": str(recipe.resolve().relative_to(common.REPO)),
        "baseline_s": timings.get("baseline_s"),
        "baseline_top1": (report.get("baseline") or {}).get("top1"),
        "final_top1": (report.get("finetuned") or report.get("pruned") or {}).get("top1"),
        "macs_fraction": 1 - ((report.get("reduction") or {}).get("macs") or 0.0),
    }


def markdown(res: dict[str, Any]) -> str:
    m = res.get("machine", {})
    lines = [
        f"Device: {m.get('device')} ({m.get('cpu')}, {m.get('cpu_count')} cores), "
        f"torch threads {m.get('torch_threads')}, torch {m.get('torch')}, "
        f"torch-pruning {m.get('torch_pruning')}, {m.get('date')}.",
        "",
    ]
    if "scoring" in res:
        s = res["scoring"]
        lines += [
            f"Scoring overhead per training step (ResNet-20, batch {s['batch']}, "
            f"median of {s['steps']}):",
            "",
            "| criterion | plain step (ms) | with scoring (ms) | overhead |",
            "|---|---|---|---|",
        ]
        for c, v in s["criteria"].items():
            lines.append(
                f"| `{c}` | {v['plain_ms']:.1f} | {v['scored_ms']:.1f} | "
                f"{100 * v['overhead']:+.1f}% |"
            )
        lines.append("")
    if "prune" in res:
        lines += [
            "Pruning-step time to -50% MACs (median):",
            "",
            "| model | taylorprune (s) | torch-pruning MetaPruner (s) | ratio "
            "| MACs kept (ours / tp) |",
            "|---|---|---|---|---|",
        ]
        for v in res["prune"]:
            lines.append(
                f"| {v['model']} | {v['taylorprune_s']:.2f} | {v['torch_pruning_s']:.2f} | "
                f"{v['ratio']:.2f}x | {100 * v['taylorprune_macs_fraction']:.1f}% / "
                f"{100 * v['torch_pruning_macs_fraction']:.1f}% |"
            )
        lines.append("")
    if "latency" in res:
        lines += [
            "Latency at -50% MACs (median of interleaved runs):",
            "",
            "| model | batch | threads | baseline (ms) | pruned (ms) | speedup | ideal "
            "| of ideal |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for v in res["latency"]:
            lines.append(
                f"| {v['model']} | {v['batch_size']} | {v['threads']} | {v['baseline_ms']:.1f} | "
                f"{v['pruned_ms']:.1f} | {v['speedup']:.2f}x | {v['ideal_speedup']:.2f}x | "
                f"{v['fraction_of_ideal']:.2f} |"
            )
        lines.append("")
    if "e2e" in res:
        e = res["e2e"]
        lines += [
            f"End to end: `{e['command']}` took {e['wall_s']:.0f} s wall (baseline phase "
            f"{e['baseline_s']:.0f} s); "
            f"top-1 {e['baseline_top1']:.2f} -> {e['final_top1']:.2f} at "
            f"{100 * e['macs_fraction']:.1f}% of the MACs.",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_out(p, "cost")
    cli.add_threads(p, 2)
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet50"])
    p.add_argument("--steps", type=int, default=30, help="timed training steps per criterion")
    p.add_argument("--repeats", type=int, default=3, help="pruning-step repeats")
    p.add_argument("--runs", type=int, default=20, help="latency runs")
    p.add_argument("--skip", nargs="*", default=[], choices=["scoring", "prune", "latency", "e2e"])
    p.add_argument("--force", action="store_true", help="measure again what is on disk")
    cli.add_recipe(p, common.RECIPE, "recipe timed end to end")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override")
    cli.add_smoke(p, "tiny inputs, no recipe run")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.steps, args.repeats, args.runs = 4, 1, 3
        args.models = ["resnet20"]
        args.skip = sorted({*args.skip, "e2e"})
    todo = {
        "scoring": lambda: scoring_overhead(16 if args.smoke else 64, args.steps, 3, args.smoke),
        "prune": lambda: [prune_time(m, 0.5, args.repeats, args.smoke) for m in args.models],
        "latency": lambda: [
            latency_gain(m, 0.5, 64 if m == "resnet20" else 8, args.runs, args.threads, args.smoke)
            for m in args.models
        ],
        "e2e": lambda: end_to_end(args.recipe, args.set),
    }
    res: dict[str, Any] = {"machine": common.machine()}
    for name, fn in todo.items():
        path = args.out / f"{name}.json"
        if name in args.skip or (path.exists() and not args.force):
            if path.exists():
                res[name] = common.read_json(path)
            continue
        res[name] = fn()
        common.write_json(path, res[name])
    res["command"] = " ".join(
        ["tools/bench_cost.py", *(argv if argv is not None else sys.argv[1:])]
    )
    common.write_json(args.out / "machine.json", {**res["machine"], "command": res["command"]})
    common.write_file(args.out / "table.md", markdown(res))
    print((args.out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    cli.run(main)
