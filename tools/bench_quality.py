"""Quality at equal MACs: taylorprune's criteria against torch-pruning's own pipeline.

Protocol (one for every method; see docs/benchmarks.md):

* baseline: the Fashion-MNIST ResNet-20 of ``recipes/fashion_mnist_resnet20.yaml``, trained once
  and cached under ``.cache/``;
* scoring: the same ``--score-batches`` minibatches of ``--score-batch-size`` training images (no
  augmentation; per seed) for every method, forward and backward in train mode, BatchNorm running
  statistics restored afterwards;
* one-shot removal to ``--levels`` (fractions of the baseline MACs kept, fvcore, batch of one);
* fine-tuning: the recipe's ``finetune`` settings on a ``--ft-subset`` image subset of the training
  set (per seed, the same for every method), evaluated on the full test set before and after.

taylorprune methods use :class:`StructuredPruner` with a MACs :class:`Target`. torch-pruning
methods (``tp_taylor``: ``GroupTaylorImportance()``, ``tp_magnitude``: ``MagnitudeImportance()``,
their defaults) use its ``MetaPruner`` with ``global_pruning=True``, ``iterative_steps=1``, the
classifier ignored, and a bisection on ``pruning_ratio`` until fvcore's MACs fraction is within
``--tp-tol`` of the level. ``GroupTaylorImportance`` reads ``.grad``: the gradients summed over the
same scoring minibatches.

Each (method, level, seed) writes ``<out>/runs/<method>_k<level>_s<seed>.json``; a rerun skips runs
already on disk. ``--smoke`` runs a random-init ResNet-20 on synthetic data in a few seconds.

    nice .venv/bin/python tools/bench_quality.py            # the study, resumable
    .venv/bin/python tools/bench_quality.py --report-only   # tables and plot from runs on disk
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as common

from taylorprune import StructuredPruner, Target
from taylorprune.data import build_data
from taylorprune.importance.scoring import preserved_state
from taylorprune.measure import count
from taylorprune.pruning.schedule import Schedule, Scoring, run_schedule
from taylorprune.recipe import TrainConfig
from taylorprune.train import evaluate, fit, recalibrate_bn

log = logging.getLogger("taylorprune.bench")

OURS = ("taylor_fo_bn", "taylor_so", "taylor_fo_weight", "taylor_act", "l1_norm", "random")
#: taylorprune variants ranked after a per-group normalisation: name -> (criterion, normalize)
NORMALIZED = {"taylor_fo_bn_mean": ("taylor_fo_bn", "mean")}
PEERS = ("tp_taylor", "tp_magnitude")
#: In the order they run: the headline method, its floor and its peers first.
METHODS = (
    "taylor_fo_bn",
    "random",
    "tp_taylor",
    "tp_magnitude",
    "l1_norm",
    "taylor_fo_weight",
    "taylor_so",
    "taylor_act",
    "taylor_fo_bn_mean",
)


# -- pruning by method -----------------------------------------------------------------------------
def prune_ours(
    model: nn.Module,
    example: torch.Tensor,
    batches: list,
    criterion: str,
    keep: float,
    seed: int,
    normalize: str | None = None,
) -> dict[str, Any]:
    """The library's one-shot schedule: score over ``batches`` with ``criterion`` and remove to
    ``keep`` of the baseline MACs, ranking raw scores or, with ``normalize``, scores normalised
    per group."""
    pruner = StructuredPruner(model, example, normalize=normalize)
    result = run_schedule(
        pruner,
        batches,
        nn.CrossEntropyLoss(),
        Target("macs", keep),
        Schedule("oneshot"),
        Scoring(criterion, seed=seed),
    )
    (step,) = result.steps
    return {
        "score_s": result.score_s,
        "prune_s": result.seconds - result.score_s,
        "stopped_short": None if step.stopped_short is None else step.stopped_short.message,
    }


def _tp_importance(method: str) -> Any:
    import torch_pruning as tp

    if method == "tp_taylor":
        return tp.importance.GroupTaylorImportance()
    return tp.importance.MagnitudeImportance()


def prune_tp(
    model: nn.Module,
    example: torch.Tensor,
    batches: list,
    method: str,
    keep: float,
    tol: float,
    max_tries: int = 20,
) -> tuple[nn.Module, dict[str, Any]]:
    """torch-pruning's MetaPruner, global ranking, ``pruning_ratio`` bisected to the MACs level.

    Returns the pruned copy (``model`` itself is untouched) and what the search did.
    """
    import torch_pruning as tp

    base_macs, _ = count(model, example)
    scored = copy.deepcopy(model)
    t0 = time.perf_counter()
    if method == "tp_taylor":
        loss_fn = nn.CrossEntropyLoss()
        with preserved_state(scored):  # running statistics and modes as before scoring
            scored.train()
            scored.zero_grad(set_to_none=True)
            for x, y in batches:  # gradients accumulate: GroupTaylorImportance reads their sum
                loss_fn(scored(x), y).backward()
            grads = [q.grad for q in scored.parameters()]
        for q, g in zip(scored.parameters(), grads, strict=True):
            q.grad = g
    score_s = time.perf_counter() - t0

    lo, hi = 0.0, 1.0
    best: tuple[float, nn.Module, float] | None = None
    tries = []
    t1 = time.perf_counter()
    for _ in range(max_tries):
        ratio = (lo + hi) / 2
        cand = copy.deepcopy(scored)
        if method == "tp_taylor":  # deepcopy drops .grad, which the Taylor importance reads
            for (_, q), (_, src) in zip(
                cand.named_parameters(), scored.named_parameters(), strict=True
            ):
                q.grad = None if src.grad is None else src.grad.clone()
        pruner = tp.pruner.MetaPruner(
            cand,
            example,
            importance=_tp_importance(method),
            global_pruning=True,
            pruning_ratio=ratio,
            ignored_layers=[_classifier(cand)],
        )
        pruner.step()
        frac = count(cand, example)[0] / base_macs
        tries.append({"pruning_ratio": ratio, "macs_fraction": frac})
        if best is None or abs(frac - keep) < abs(best[2] - keep):
            best = (ratio, cand, frac)
        if abs(frac - keep) <= tol:
            break
        if frac > keep:
            lo = ratio
        else:
            hi = ratio
    assert best is not None
    pruned = best[1]
    pruned.zero_grad(set_to_none=True)
    return pruned, {
        "score_s": score_s,
        "prune_s": time.perf_counter() - t1,
        "pruning_ratio": best[0],
        "tries": tries,
    }


def _classifier(model: nn.Module) -> nn.Module:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1]


# -- one run ---------------------------------------------------------------------------------------
def run_one(
    baseline: nn.Module,
    example: torch.Tensor,
    data: dict[str, Any],
    method: str,
    keep: float,
    seed: int,
    ft_cfg: TrainConfig,
    tp_tol: float,
    recal_batches: int,
) -> dict[str, Any]:
    torch.manual_seed(seed)
    base_macs, base_params = count(baseline, example)
    model = copy.deepcopy(baseline)
    if method in OURS:
        info = prune_ours(model, example, data["score"], method, keep, seed)
    elif method in NORMALIZED:
        criterion, how = NORMALIZED[method]
        info = prune_ours(model, example, data["score"], criterion, keep, seed, normalize=how)
    else:
        model, info = prune_tp(model, example, data["score"], method, keep, tp_tol)
    macs, params = count(model, example)
    pruned_eval = evaluate(model, data["val"])
    # Re-estimating BatchNorm statistics (forward passes only, no weight change) undoes most of
    # the shift a one-shot removal causes; fine-tuning starts from there for every method.
    recalibrate_bn(model, data["ft"], batches=recal_batches)
    recal_eval = evaluate(model, data["val"])
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    rows = fit(model, data["ft"], data["val"], ft_cfg, progress=False)
    return {
        "method": method,
        "criterion": method,
        "keep": keep,
        "seed": seed,
        "macs": macs,
        "params": params,
        "macs_fraction": macs / base_macs,
        "params_fraction": params / base_params,
        "top1_pruned": pruned_eval["top1"],
        "top1_recal": recal_eval["top1"],
        "top1_finetuned": rows[-1]["val_top1"],
        "finetune_s": time.perf_counter() - t0,
        **info,
    }


# -- setup -----------------------------------------------------------------------------------------
def _setup(args: argparse.Namespace) -> tuple[nn.Module, torch.Tensor, TrainConfig, dict]:
    if args.smoke:
        from taylorprune.models import build_model

        torch.manual_seed(0)
        spec = {"source": "builtin", "name": "resnet20", "num_classes": 10, "in_chans": 1}
        model = build_model(spec).eval()
        ft = TrainConfig(epochs=1, lr=0.05, schedule="constant", weight_decay=0.0)
        return model, torch.zeros(1, 1, 16, 16), ft, {"name": "synthetic", "smoke": True}
    from taylorprune.recipe import load_recipe

    model, _, source = common.fashion_resnet20_baseline()
    finetune = load_recipe(str(common.RECIPE)).finetune  # the recipe's fine-tuning settings
    return model, torch.zeros(1, 1, 28, 28), finetune, {"name": "fashion_mnist", "baseline": source}


def _data(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    if args.smoke:
        kw = {"num_classes": 10, "input_shape": (1, 16, 16), "num_train": 256, "num_val": 128}
        score = build_data("synthetic", batch_size=32, seed=seed, augment=False, **kw)
        return {
            "score": common.first_batches(score.train, args.score_batches),
            "ft": score.train,
            "val": score.val,
        }
    score = build_data("fashion_mnist", batch_size=args.score_batch_size, seed=seed, augment=False)
    ft = build_data(
        "fashion_mnist", batch_size=128, seed=seed, train_subset=args.ft_subset, augment=True
    )
    # The test images are the same for every seed (a subset, when asked, drawn with seed 0).
    test = build_data(
        "fashion_mnist", batch_size=128, eval_batch_size=1000, seed=0, val_subset=args.val_subset
    )
    return {
        "score": common.first_batches(score.train, args.score_batches),
        "ft": ft.train,
        "val": test.val,
    }


# -- report ----------------------------------------------------------------------------------------
def summarize(out: Path, methods: tuple[str, ...], levels: list[float]) -> dict[str, Any]:
    """Mean and spread per (method, level), the markdown table and the plot."""
    runs = common.runs_in(out)
    baseline = common.read_json(out / "baseline.json") or {}
    table: dict[str, dict[str, Any]] = {}
    for m in methods:
        for k in levels:
            rs = [r for r in runs if r["method"] == m and abs(r["keep"] - k) < 1e-9]
            if not rs:
                continue
            p_mean, p_std = common.mean_std([r["top1_pruned"] for r in rs])
            r_mean, r_std = common.mean_std([r["top1_recal"] for r in rs])
            f_mean, f_std = common.mean_std([r["top1_finetuned"] for r in rs])
            table.setdefault(m, {})[f"{k:g}"] = {
                "n": len(rs),
                "seeds": sorted(r["seed"] for r in rs),
                "macs_fraction": common.mean_std([r["macs_fraction"] for r in rs])[0],
                "params_fraction": common.mean_std([r["params_fraction"] for r in rs])[0],
                "top1_pruned_mean": p_mean,
                "top1_pruned_std": p_std,
                "top1_recal_mean": r_mean,
                "top1_recal_std": r_std,
                "top1_finetuned_mean": f_mean,
                "top1_finetuned_std": f_std,
                "top1_finetuned_min": min(r["top1_finetuned"] for r in rs),
                "top1_finetuned_max": max(r["top1_finetuned"] for r in rs),
            }
    summary = {"baseline": baseline, "levels": levels, "table": table}
    common.write_json(out / "summary.json", summary)
    (out / "table.md").write_text(markdown(summary))
    if table:
        _plot(summary, out / "quality.png")
    return summary


def markdown(summary: dict[str, Any]) -> str:
    head = ["level", "method", "MACs kept", "top-1 pruned", "+ BN re-estimated", "fine-tuned", "n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in summary["levels"]:
        for m, per in summary["table"].items():
            c = per.get(f"{k:g}")
            if c is None:
                continue
            cells = [
                f"-{round(100 * (1 - k))}% MACs",
                f"`{m}`",
                f"{100 * c['macs_fraction']:.1f}%",
                f"{c['top1_pruned_mean']:.2f} ± {c['top1_pruned_std']:.2f}",
                f"{c['top1_recal_mean']:.2f} ± {c['top1_recal_std']:.2f}",
                f"**{c['top1_finetuned_mean']:.2f}** ± {c['top1_finetuned_std']:.2f}",
                str(c["n"]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    base = summary.get("baseline") or {}
    if base.get("top1") is not None:
        lines.append("")
        lines.append(
            f"Baseline: top-1 {base['top1']:.2f}%, {base['macs'] / 1e6:.2f} M MACs, "
            f"{base['params'] / 1e6:.3f} M params. Top-1 in %, mean ± sample std over seeds."
        )
    return "\n".join(lines) + "\n"


def _plot(summary: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    levels = summary["levels"]
    fig = Figure(figsize=(15.5, 4.4), layout="constrained")
    axes = fig.subplots(1, 3, sharey=False)
    methods = list(summary["table"])
    width = 0.8 / max(1, len(methods))
    for ax, key, title in zip(
        axes,
        ("top1_pruned", "top1_recal", "top1_finetuned"),
        ("right after pruning", "BN statistics re-estimated", "after fine-tuning"),
        strict=True,
    ):
        for i, m in enumerate(methods):
            xs, ys, es = [], [], []
            for j, k in enumerate(levels):
                c = summary["table"][m].get(f"{k:g}")
                if c is None:
                    continue
                xs.append(j + (i - (len(methods) - 1) / 2) * width)
                ys.append(c[f"{key}_mean"])
                es.append(c[f"{key}_std"])
            ax.bar(xs, ys, width, yerr=es, capsize=2, label=m)
        ax.set_xticks(range(len(levels)))
        ax.set_xticklabels([f"-{round(100 * (1 - k))}% MACs" for k in levels])
        ax.set_ylabel("top-1 (%), test set")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        base = (summary.get("baseline") or {}).get("top1")
        if base is not None:
            ax.axhline(base, color="k", ls="--", lw=1, label="baseline")
        ax.set_ylim(0, 100)
    handles, labels = axes[2].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    fig.suptitle("ResNet-20, Fashion-MNIST: one-shot pruning to equal MACs")
    fig.savefig(path, dpi=100)


# -- main ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=common.REPO / "tools" / "results" / "quality")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--levels", nargs="+", type=float, default=[0.5, 0.3])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--score-batches", type=int, default=30)
    p.add_argument("--score-batch-size", type=int, default=64)
    p.add_argument("--ft-subset", type=int, default=10_000, help="fine-tuning images (1 epoch)")
    p.add_argument("--val-subset", type=int, default=None, help="test images (default: all)")
    p.add_argument("--ft-lr", type=float, default=None, help="fine-tuning lr (default: recipe's)")
    p.add_argument("--ft-schedule", default=None, help="fine-tuning schedule (default: recipe's)")
    p.add_argument("--recal-batches", type=int, default=20, help="BN re-estimation batches")
    p.add_argument("--tp-tol", type=float, default=0.005, help="MACs fraction tolerance for tp")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="tiny synthetic run in seconds")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    common.start(args)
    methods = tuple(args.methods)
    if not args.report_only:
        baseline, example, ft_cfg, dataset = _setup(args)
        changes = {"lr": args.ft_lr, "schedule": args.ft_schedule}
        ft_cfg = ft_cfg.model_copy(update={k: v for k, v in changes.items() if v is not None})
        dataset["finetune"] = ft_cfg.model_dump(mode="json")
        base_file = args.out / "baseline.json"
        if common.read_json(base_file) is None:
            macs, params = count(baseline, example)
            val = _data(args, args.seeds[0])["val"]
            common.write_json(
                base_file,
                {
                    "macs": macs,
                    "params": params,
                    "top1": evaluate(baseline, val)["top1"],
                    "dataset": dataset,
                    "machine": common.machine(),
                    "command": " ".join(["tools/bench_quality.py", *(argv or sys.argv[1:])]),
                },
            )
        for seed in args.seeds:
            data = None
            for m in methods:  # methods outermost: a cut-short study still has whole rows
                for keep in args.levels:
                    path = args.out / "runs" / f"{m}_k{keep:g}_s{seed}.json"
                    if path.exists():
                        continue
                    data = data or _data(args, seed)
                    t0 = time.perf_counter()
                    rec = run_one(
                        baseline, example, data, m, keep, seed, ft_cfg, args.tp_tol,
                        args.recal_batches,
                    )  # fmt: skip
                    rec["total_s"] = time.perf_counter() - t0
                    common.write_json(path, rec)
                    log.info(
                        "%s keep %.2f seed %d: MACs %.3f, top-1 %.2f -> %.2f (%.0f s)",
                        m, keep, seed, rec["macs_fraction"], rec["top1_pruned"],
                        rec["top1_finetuned"], rec["total_s"],
                    )  # fmt: skip
    summary = summarize(args.out, methods, args.levels)
    print((args.out / "table.md").read_text() if summary["table"] else "no runs yet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
