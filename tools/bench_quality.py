"""Quality at equal MACs under the product's own iterative schedule, every method alike.

Protocol (one for every method; docs/benchmarks.md reads the results):

* baseline: the converged Fashion-MNIST ResNet-20 of
  ``recipes/fashion_mnist_resnet20_converged.yaml`` (12 epochs), trained once and cached under
  ``.cache/`` (shared with ``tools/oracle_study.py``);
* pruning: one trajectory per (method, seed) through the library's
  :func:`~taylorprune.pruning.schedule.run_schedule`, the paper's schedule: train on
  ``--window`` minibatches of ``--batch-size`` augmented training images while scoring them,
  remove the ``--channels-per-step`` globally lowest channels, repeat; the trajectory stops at each
  of ``--levels`` (fractions of the baseline MACs kept) for a snapshot and goes on to the next;
* the pruning curve: top-1 on the full test set after every removal;
* fine-tuning: from each snapshot, the same budget for every method (the recipe's ``finetune``
  settings, one epoch over a ``--ft-subset`` image subset drawn per seed), then top-1 on the full
  10,000-image test set.

A method is a criterion (any ``CRITERIA`` name, torch-pruning's importances included: ``tp_*``),
the BatchNorm mode while scoring, an EMA of the scores across removals, and the pruner's ranking
(``normalize``, ``cost_aware``); see
:data:`METHODS`. Each (method, seed) writes ``<out>/runs/<method>_s<seed>.json``; a rerun skips
those on disk. ``--shard i/n`` runs every n-th job from the i-th (0-based), for parallel processes.
``--smoke`` runs a random-init ResNet-20 on synthetic data in seconds.

    .venv/bin/python tools/bench_quality.py --shard 0/2 & .venv/bin/python tools/bench_quality.py \
        --shard 1/2          # the study: 33 runs, 30-60 minutes on 2 cores; resumable
    .venv/bin/python tools/bench_quality.py --report-only   # table and plots from the runs on disk
"""

from __future__ import annotations

import argparse
import copy
import itertools
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as common
import _cli as cli

from taylorprune import StructuredPruner, Target
from taylorprune.data import build_data
from taylorprune.importance import defaults
from taylorprune.latency import TimingSettings
from taylorprune.latency.timing import side_by_side
from taylorprune.measure import count
from taylorprune.pruning.latency_target import LatencyPruning, LatencySetup, latency_model_for
from taylorprune.pruning.schedule import Schedule, ScheduleHooks, Scoring, run_schedule
from taylorprune.recipe import TrainConfig
from taylorprune.train import TrainingDiverged, evaluate, fit

log = logging.getLogger("taylorprune.bench")


@dataclass(frozen=True)
class Method:
    """A criterion, the BatchNorm mode while scoring, the ranking, the EMA of the scores across
    removals (None: each window alone), and how many seeds it gets."""

    criterion: str
    train_mode: bool = True
    normalize: str | None = "mean"
    cost_aware: bool = False
    seeds: int = 3
    ema: float | None = None


#: In priority order. ``seeds=0``: run only when asked for with ``--seeds`` (beyond the 90-minute
#: budget of the default study on 2 cores).
METHODS: dict[str, Method] = {
    # the oracle study's best single step: raw scores ranked per MAC saved
    "taylor_fo_bn_raw_cost": Method("taylor_fo_bn", True, None, True),
    "tp_magnitude": Method("tp_magnitude", normalize=None),
    "l1_norm": Method("l1_norm"),
    "bn_scale": Method("bn_scale"),
    "random": Method("random"),
    "tp_taylor": Method("tp_taylor", normalize=None),
    # eval-mode BN while scoring (the population oracle's better mode); the window's training then
    # normalises with running statistics that follow each minibatch
    "taylor_fo_bn_eval_raw_cost": Method("taylor_fo_bn", False, None, True),
    "tp_taylor_cost": Method("tp_taylor", normalize=None, cost_aware=True),
    # the scores averaged across removals (a longer effective window at the same removal rate)
    "taylor_fo_bn_raw_cost_ema": Method("taylor_fo_bn", True, None, True, ema=0.5),
    "taylor_fo_bn_raw_cost_ema8": Method("taylor_fo_bn", True, None, True, ema=0.8),
    # the default before the study: train-mode BN, each group divided by its mean
    "taylor_fo_bn": Method("taylor_fo_bn", seeds=1),
    "taylor_fo_bn_raw": Method("taylor_fo_bn", True, None, seeds=1),
    "taylor_fo_bn_eval": Method("taylor_fo_bn", False, seeds=1),
    "tp_bn_scale": Method("tp_bn_scale", normalize=None, seeds=1),
    "taylor_fo_bn_fg_eval_raw_cost": Method("taylor_fo_bn_fg", False, None, True, seeds=1),
    "l1_norm_cost": Method("l1_norm", cost_aware=True, seeds=1),
    "taylor_so_eval_raw_cost": Method("taylor_so", False, None, True, seeds=0),
}


# -- one trajectory --------------------------------------------------------------------------------
class CurveHooks(ScheduleHooks):
    """The library's training hook plus the pruning curve: top-1 on the test set after each
    removal (every ``every``-th removal)."""

    def __init__(self, pruner: StructuredPruner, test: Any, every: int, t0: float) -> None:
        self.pruner, self.test, self.every, self.t0 = pruner, test, every, t0
        self.curve: list[dict[str, Any]] = []
        self.steps = 0

    def after_step(self, step: Any, state: Any) -> None:
        self.steps += 1
        if self.steps % self.every:
            return
        self.curve.append(
            {
                "step": self.steps,
                "trained": state.trained,
                "macs_fraction": self.pruner.fraction("macs"),
                "top1": evaluate(self.pruner.model, self.test)["top1"],
                "time_s": time.perf_counter() - self.t0,
            }
        )


def _latency_fraction(
    baseline: nn.Module,
    snapshot: nn.Module,
    example: torch.Tensor,
    timing: TimingSettings,
    args: argparse.Namespace,
) -> dict[str, float]:
    """``snapshot``'s latency as a fraction of ``baseline``'s, timed side by side as a run times
    its final model (median of the per-round ratios, with p10 and p90)."""
    setup = LatencySetup(timing, runs=args.latency_runs)
    c = side_by_side(
        baseline, snapshot, tuple(example.shape[1:]), timing, runs=setup.runs,
        warmup=setup.warmup, copies=setup.copies,
    )  # fmt: skip
    return {"fraction": c["fraction"], "p10": c["fraction_p10"], "p90": c["fraction_p90"]}


def endless(loader: Any) -> Iterator[Any]:
    """The loader's minibatches, epoch after epoch."""
    for _ in itertools.count():
        yield from loader


def run_trajectory(
    baseline: nn.Module,
    example: torch.Tensor,
    data: dict[str, Any],
    method: Method,
    seed: int,
    args: argparse.Namespace,
    ft_cfg: TrainConfig,
) -> dict[str, Any]:
    """Prune a copy of ``baseline`` through every level with ``method``; fine-tune a copy of each
    snapshot. Returns the run's record."""
    torch.manual_seed(seed)
    model = copy.deepcopy(baseline)
    pruner = StructuredPruner(
        model, example, normalize=method.normalize, cost_aware=method.cost_aware
    )
    optimizer = torch.optim.SGD(
        model.parameters(), lr=args.prune_lr, momentum=0.9, weight_decay=5e-4
    )
    scoring = Scoring(method.criterion, train_mode=method.train_mode, ema=method.ema, seed=seed)
    timing = TimingSettings(batch_size=args.latency_batch, threads=args.threads)
    if args.target == "latency":  # the baseline is timed beside every trial, as a run does
        setup = LatencySetup(timing, runs=args.latency_runs)
        latency = latency_model_for(model, tuple(example.shape[1:]), setup)
        pruner.latency = LatencyPruning(pruner, latency, setup)
    t0 = time.perf_counter()
    hooks = CurveHooks(pruner, data["test"], args.curve_every, t0)
    batches = endless(data["prune"])
    levels: list[dict[str, Any]] = []
    trained = 0  # minibatches trained on while pruning, over the whole trajectory
    for i, keep in enumerate(args.levels):
        last = i == len(args.levels) - 1
        schedule = Schedule("iterative", args.window, args.channels_per_step, clear_momentum=last)
        result = run_schedule(
            pruner,
            batches,
            nn.CrossEntropyLoss(),
            Target(args.target, keep),
            schedule,
            scoring,
            optimizer=optimizer,
            hooks=hooks,
        )
        snapshot = copy.deepcopy(model).eval()
        macs, params = count(snapshot, example)
        top1 = evaluate(snapshot, data["test"])["top1"]
        if not hooks.curve or hooks.curve[-1]["step"] != hooks.steps:  # the curve passes each level
            hooks.curve.append(
                {
                    "step": hooks.steps,
                    "trained": trained + result.state.trained,
                    "macs_fraction": pruner.fraction("macs"),
                    "top1": top1,
                    "time_s": time.perf_counter() - t0,
                }
            )
        levels.append(
            {
                "keep": keep,
                "reached": result.reached,
                "stop": result.stop,
                "steps": hooks.steps,
                "trained": trained + result.state.trained,
                "macs": macs,
                "params": params,
                "macs_fraction": pruner.fraction("macs"),
                "top1_pruned": top1,
                "prune_s": time.perf_counter() - t0,
                "snapshot": snapshot,
            }
        )
        if args.target == "latency":
            levels[-1]["latency_fraction_in_run"] = pruner.fraction("latency")
        if args.measure_latency or args.target == "latency":
            levels[-1]["latency"] = _latency_fraction(baseline, snapshot, example, timing, args)
        trained += result.state.trained
    for lv in levels:
        snapshot = lv.pop("snapshot")
        t1 = time.perf_counter()
        torch.manual_seed(seed)
        try:
            rows = fit(snapshot, data["ft"], data["test"], ft_cfg, progress=False)
            lv["top1_finetuned"] = rows[-1]["val_top1"]
        except TrainingDiverged as exc:  # recorded as what the user would get, not dropped
            log.warning("%s: %s", method, exc)
            lv["diverged"] = str(exc)
            lv["top1_finetuned"] = evaluate(snapshot, data["test"])["top1"]
        lv["finetune_s"] = time.perf_counter() - t1
    return {"curve": hooks.curve, "levels": levels}


# -- setup -----------------------------------------------------------------------------------------
def _setup(args: argparse.Namespace) -> tuple[nn.Module, torch.Tensor, TrainConfig, dict]:
    if args.smoke:
        from taylorprune.models import build_model

        torch.manual_seed(0)
        spec = {"source": "builtin", "name": "resnet20", "num_classes": 10, "in_chans": 1}
        model = build_model(spec).eval()
        ft = TrainConfig(epochs=1, max_iters=3, lr=0.05, schedule="constant", weight_decay=0.0)
        return model, torch.zeros(1, 1, 16, 16), ft, {"name": "synthetic", "smoke": True}
    from taylorprune.recipe import load_recipe

    model, _, source = common.fashion_resnet20_baseline()
    finetune = load_recipe(str(common.STUDY_RECIPE)).finetune  # the recipe's fine-tuning
    return model, torch.zeros(1, 1, 28, 28), finetune, {"name": "fashion_mnist", "baseline": source}


def _data(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    if args.smoke:
        kw = {"num_classes": 10, "input_shape": (1, 16, 16), "num_train": 256, "num_val": 128}
        d = build_data("synthetic", batch_size=32, seed=seed, augment=False, **kw)
        return {"prune": d.train, "ft": d.train, "test": d.val}
    prune = build_data("fashion_mnist", batch_size=args.batch_size, seed=seed, augment=True)
    ft = build_data(
        "fashion_mnist", batch_size=128, seed=seed, train_subset=args.ft_subset, augment=True
    )
    # Every reported number is on the whole test set (10,000 images), the same for every seed.
    test = build_data("fashion_mnist", batch_size=128, eval_batch_size=250, seed=0)
    return {"prune": prune.train, "ft": ft.train, "test": test.val}


def jobs(methods: list[str], seeds: int | None, shard: tuple[int, int]) -> list[tuple[str, int]]:
    """(method, seed) pairs: the methods with several seeds first, seed-major (a study cut short
    has whole seeds of them), then the single-seed variants; then every n-th from the i-th for
    ``shard = (i, n)``. ``seeds`` overrides every method's count."""

    def count(m: str) -> int:
        return METHODS[m].seeds if seeds is None else seeds

    several = [m for m in methods if count(m) > 1]
    out = [
        (m, seed)
        for seed in range(max((count(m) for m in several), default=0))
        for m in several
        if seed < count(m)
    ]
    out += [(m, 0) for m in methods if count(m) == 1]
    i, n = shard
    return out[i::n]


# -- report ----------------------------------------------------------------------------------------
def summarize(out: Path, methods: list[str], levels: list[float]) -> dict[str, Any]:
    """Mean ± std per (method, level), the markdown table and both plots."""
    runs = common.runs_in(out)
    baseline = common.read_json(out / "baseline.json") or {}
    table: dict[str, dict[str, Any]] = {}
    for m in methods:
        rs = [r for r in runs if r["method"] == m]
        for k in levels:
            lv = [x for r in rs for x in r["levels"] if abs(x["keep"] - k) < 1e-9]
            if not lv:
                continue
            p_mean, p_std = common.mean_std([x["top1_pruned"] for x in lv])
            f_mean, f_std = common.mean_std([x["top1_finetuned"] for x in lv])
            timed = [x["latency"]["fraction"] for x in lv if "latency" in x]
            table.setdefault(m, {})[f"{k:g}"] = {
                "n": len(lv),
                "macs_fraction": common.mean_std([x["macs_fraction"] for x in lv])[0],
                "latency_fraction": common.mean_std(timed) if len(timed) == len(lv) else None,
                "steps": common.mean_std([x["steps"] for x in lv])[0],
                "top1_pruned_mean": p_mean,
                "top1_pruned_std": p_std,
                "top1_finetuned_mean": f_mean,
                "top1_finetuned_std": f_std,
            }
    summary = {"baseline": baseline, "levels": levels, "table": table}
    common.write_json(out / "summary.json", summary)
    common.write_file(out / "table.md", markdown(summary | {"out": out}, methods))
    if table:
        _plot_curve(runs, methods, baseline, out / "pruning_curve.png")
        _plot_finetuned(summary, out / "finetuned_vs_macs.png")
    return summary


def markdown(summary: dict[str, Any], methods: list[str]) -> str:
    levels = summary["levels"]
    kind = ((summary.get("baseline") or {}).get("settings") or {}).get("target", "macs")
    head = ["method", "criterion", "BN while scoring", "ranking", "seeds"]
    head += [_level_name(kind, k) for k in levels]
    lines = [
        "Top-1 (%) on the 10,000 test images after the same fine-tuning, mean ± sample std over "
        "seeds; in brackets: right after the iterative schedule reached the level, before "
        "fine-tuning.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for m in methods:
        per = summary["table"].get(m)
        if not per:
            continue
        spec = METHODS[m]
        ranking = "raw" if spec.normalize is None else f"÷ group {spec.normalize}"
        if spec.cost_aware:
            ranking += ", per MAC"
        if spec.ema is not None:
            ranking += f", EMA {spec.ema:g}"
        bn = "—" if spec.criterion in _STATIC else ("train" if spec.train_mode else "eval")
        cells = [f"`{m}`", f"`{spec.criterion}`", bn, ranking]
        cells.append(str(max(c["n"] for c in per.values())))
        for k in levels:
            c = per.get(f"{k:g}")
            cells.append(
                "–"
                if c is None
                else f"**{c['top1_finetuned_mean']:.2f}** ± {c['top1_finetuned_std']:.2f} "
                f"({c['top1_pruned_mean']:.1f})"
            )
        lines.append("| " + " | ".join(cells) + " |")
    diverged = sorted(
        f"`{r['method']}` seed {r['seed']}"
        for r in common.runs_in(summary["out"])
        if any("diverged" in x for x in r["levels"])
    )
    if diverged:
        lines += ["", "Fine-tuning diverged (loss NaN; the top-1 is the network's as it is): "
                  + ", ".join(diverged) + "."]  # fmt: skip
    lines += _bar_lines(summary, methods)
    base = summary.get("baseline") or {}
    if base.get("top1") is not None:
        lines += [
            "",
            f"Baseline: top-1 {base['top1']:.2f}%, {base['macs'] / 1e6:.2f} M MACs, "
            f"{base['params'] / 1e6:.3f} M params.",
        ]
    return "\n".join(lines) + "\n"


def _level_name(kind: str, keep: float) -> str:
    return f"-{round(100 * (1 - keep))}% MACs" if kind == "macs" else f"{keep:g} of the latency"


def default_method() -> str | None:
    """The method that is the library's default scoring and ranking, if one is."""
    want = Method(
        defaults.CRITERION,
        defaults.TRAIN_MODE,
        defaults.NORMALIZE,
        defaults.COST_AWARE,
        ema=defaults.EMA,
    )
    return next((m for m, spec in METHODS.items() if (spec.criterion, spec.train_mode,
        spec.normalize, spec.cost_aware, spec.ema) == (want.criterion, want.train_mode,
        want.normalize, want.cost_aware, want.ema)), None)  # fmt: skip


def _bar_lines(summary: dict[str, Any], methods: list[str]) -> list[str]:
    """The library default's lead over each baseline, per level (mean after fine-tuning)."""
    table, default = summary["table"], default_method()
    if default not in table:
        return []
    kind = ((summary.get("baseline") or {}).get("settings") or {}).get("target", "macs")
    lines = [
        "",
        f"The library's default is `{default}`. Its lead in top-1 points after fine-tuning "
        "(difference of the means; the seeds of each side in brackets):",
        "",
        "| against | " + " | ".join(_level_name(kind, k) for k in summary["levels"]) + " |",
        "|---|" + "---|" * len(summary["levels"]),
    ]  # fmt: skip
    for other in ("tp_magnitude", "tp_taylor", "l1_norm", "bn_scale", "random", "taylor_fo_bn"):
        if other == default or other not in table or other not in methods:
            continue
        cells = []
        for k in summary["levels"]:
            a, b = table[default].get(f"{k:g}"), table[other].get(f"{k:g}")
            cells.append(
                "–"
                if a is None or b is None
                else f"{a['top1_finetuned_mean'] - b['top1_finetuned_mean']:+.2f} "
                f"({a['n']} vs {b['n']})"
            )
        lines.append(f"| `{other}` | " + " | ".join(cells) + " |")
    return lines


_STATIC = ("l1_norm", "l2_norm", "bn_scale", "random", "tp_magnitude", "tp_bn_scale")


def _plot_curve(runs: list[dict], methods: list[str], baseline: dict, path: Path) -> None:
    """Top-1 along the schedule, one line per method: each run's curve interpolated onto a common
    grid of MACs fractions, then averaged over its seeds (the default drawn thick)."""
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.subplots()
    colors = [f"C{i}" for i in range(10)] + ["k", "olive", "navy", "brown", "teal"]
    default = default_method()
    base = baseline.get("top1", float("nan"))
    for i, m in enumerate(methods):
        rs = [r for r in runs if r["method"] == m and r["curve"]]
        if not rs:
            continue
        low = max(min(p["macs_fraction"] for p in r["curve"]) for r in rs)
        grid = np.linspace(1.0, low, 60)
        ys = []
        for r in rs:
            xs = np.array([1.0] + [p["macs_fraction"] for p in r["curve"]])
            top = np.array([base] + [p["top1"] for p in r["curve"]])
            ys.append(np.interp(grid[::-1], xs[::-1], top[::-1])[::-1])
        ax.plot(
            100 * grid, np.mean(ys, axis=0), "-" if i < 10 else "--",
            color=colors[i % len(colors)], lw=2.5 if m == default else 1, alpha=0.9,
            label=f"{m} (n={len(rs)})" + (": default" if m == default else ""),
        )  # fmt: skip
    ax.invert_xaxis()
    ax.set_xlabel("MACs kept (% of the baseline), along the iterative schedule")
    ax.set_ylabel("top-1 (%), 10,000 test images, before fine-tuning")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title("ResNet-20, Fashion-MNIST: top-1 along the pruning schedule (mean over seeds)")
    common.save_png(fig, path, dpi=100)


def _plot_finetuned(summary: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.subplots()
    colors = [f"C{i}" for i in range(10)] + ["k", "olive", "navy", "brown", "teal"]
    floor = 76.0  # methods below it (a diverged run in the mean) are named, not drawn to scale
    for i, (m, per) in enumerate(summary["table"].items()):
        pts = sorted(per.values(), key=lambda c: -c["macs_fraction"])
        means = [c["top1_finetuned_mean"] for c in pts]
        label = f"{m} (n={max(c['n'] for c in pts)})"
        if min(means) < floor:
            label += " below the axis: " + " / ".join(f"{v:.1f}" for v in means)
        if m == default_method():
            label += ": default"
        ax.errorbar(
            [100 * c["macs_fraction"] for c in pts], means,
            yerr=[c["top1_finetuned_std"] for c in pts],
            fmt="o-" if i < 10 else "s--", color=colors[i % len(colors)], capsize=3,
            lw=2.5 if m == default_method() else 1, label=label,
        )  # fmt: skip
    base = (summary.get("baseline") or {}).get("top1")
    if base is not None:
        ax.axhline(base, color="k", ls=":", lw=1, label="baseline")
    ax.set_ylim(floor, max(90.0, (base or 0) + 0.5))
    ax.invert_xaxis()
    ax.set_xlabel("MACs kept (% of the baseline)")
    ax.set_ylabel("top-1 (%) after fine-tuning, 10,000 test images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title("ResNet-20, Fashion-MNIST: accuracy vs MACs after equal fine-tuning")
    common.save_png(fig, path, dpi=100)


# -- main ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_out(p, "quality")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--levels", nargs="+", type=float, default=[0.5, 0.3, 0.15])
    cli.add_seeds(p, None, "seeds for every method (default: each")
    p.add_argument("--window", type=int, default=10, help="minibatches trained between removals")
    p.add_argument("--batch-size", type=int, default=32, help="minibatch while pruning")
    p.add_argument("--channels-per-step", type=int, default=24)
    p.add_argument("--prune-lr", type=float, default=0.01, help="SGD lr while pruning")
    p.add_argument("--curve-every", type=int, default=2, help="evaluate after every n-th removal")
    p.add_argument("--ft-subset", type=int, default=10_000, help="fine-tuning images (1 epoch)")
    cli.add_threads(p, 1)
    p.add_argument(
        "--target",
        choices=["macs", "latency"],
        default="macs",
        help="what --levels keep: MACs, or latency measured beside the baseline (CPU, --threads)",
    )
    p.add_argument(
        "--measure-latency",
        action="store_true",
        help="time every snapshot beside the baseline (always on for --target latency)",
    )
    p.add_argument("--latency-batch", type=int, default=64, help="batch of the latency timings")
    p.add_argument("--latency-runs", type=int, default=20, help="rounds of each timing pair")
    cli.add_smoke(p, "tiny synthetic run in seconds")
    cli.add_jobs(p)
    args = p.parse_args(argv)
    common.start(args)
    if args.smoke:  # a few removals per level, a few fine-tuning steps
        args.window = min(args.window, 2)
        args.channels_per_step = max(args.channels_per_step, 96)
    if any(not 0 < k < 1 for k in args.levels) or sorted(args.levels, reverse=True) != args.levels:
        p.error("--levels: fractions of the MACs kept, in (0, 1), decreasing")
    methods = list(args.methods)
    if not args.report_only:
        baseline, example, ft_cfg, dataset = _setup(args)
        data_cache: dict[int, dict[str, Any]] = {}
        base_file = args.out / "baseline.json"
        known = common.read_json(base_file)
        if known is not None and known.get("dataset") != dataset:
            p.error(
                f"{args.out} holds runs from another baseline ({known.get('dataset')}); "
                "move them away or pass another --out"
            )
        if known is None:
            macs, params = count(baseline, example)
            test = _data(args, 0)["test"]
            common.write_json(
                base_file,
                {
                    "macs": macs,
                    "params": params,
                    "top1": evaluate(baseline, test)["top1"],
                    "dataset": dataset,
                    "finetune": ft_cfg.model_dump(mode="json"),
                    "settings": {
                        k: getattr(args, k)
                        for k in ("window", "batch_size", "channels_per_step", "prune_lr", "target")
                    }
                    | {"ft_subset": args.ft_subset, "curve_every": args.curve_every},
                    "machine": common.machine(),
                },
            )
        for m, seed in jobs(methods, args.seeds, args.shard):
            path = args.out / "runs" / f"{m}_s{seed}.json"
            if path.exists():
                continue
            if seed not in data_cache:
                data_cache = {seed: _data(args, seed)}
            t0 = time.perf_counter()
            rec = run_trajectory(
                baseline, example, data_cache[seed], METHODS[m], seed, args, ft_cfg
            )
            rec.update(method=m, seed=seed, spec=METHODS[m].__dict__)
            rec["total_s"] = time.perf_counter() - t0
            common.write_json(path, rec)
            log.info(
                "%s seed %d (%.0f s): %s", m, seed, rec["total_s"],
                ", ".join(
                    f"{x['macs_fraction']:.2f} MACs {x['top1_pruned']:.1f} -> "
                    f"{x['top1_finetuned']:.2f}"
                    for x in rec["levels"]
                ),
            )  # fmt: skip
    summary = summarize(args.out, methods, args.levels)
    print((args.out / "table.md").read_text() if summary["table"] else "no runs yet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
