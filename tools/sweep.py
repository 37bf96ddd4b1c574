"""Accuracy against pruning level, one line per criterion (ResNet-20, Fashion-MNIST, no fine-tune).

The cached baseline of ``recipes/fashion_mnist_resnet20.yaml`` is scored once per criterion on the
same ``--score-batches`` training minibatches (train mode, running statistics restored), then a
fresh copy is pruned one-shot to every level in ``--levels`` (fraction of baseline MACs kept) from
those scores. No fine-tuning: top-1 on the full test set right after removal (``top1``), and after
re-estimating BatchNorm running statistics on ``--recal-batches`` training minibatches, forward
passes only, no weight changes (``top1_recal``; 0 disables it).

Each criterion writes ``<out>/runs/<criterion>.json``; a rerun skips criteria already on disk.

    nice .venv/bin/python tools/sweep.py            # results in tools/results/sweep/
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
from taylorprune.measure import count
from taylorprune.plots import plot_sweep
from taylorprune.pruning.schedule import Scoring, score_groups
from taylorprune.train import evaluate, recalibrate_bn

log = logging.getLogger("taylorprune.bench")

CRITERIA = (
    "taylor_fo_bn",
    "taylor_so",
    "taylor_fo_weight",
    "taylor_act",
    "l1_norm",
    "bn_scale",
    "random",
)
LEVELS = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)


def group_scores(
    model: nn.Module, example: torch.Tensor, batches: list, criterion: str, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Group scores of ``criterion`` on ``batches``; the model's weights and buffers are kept."""
    pruner = StructuredPruner(model, example)
    return score_groups(pruner, batches, nn.CrossEntropyLoss(), Scoring(criterion, seed=seed))


def sweep_criterion(
    baseline: nn.Module,
    example: torch.Tensor,
    data: dict[str, Any],
    criterion: str,
    levels: list[float],
    recal_batches: int,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    scores = group_scores(copy.deepcopy(baseline), example, data["score"], criterion)
    score_s = time.perf_counter() - t0
    base_macs, _ = count(baseline, example)
    points = []
    for keep in levels:
        model = copy.deepcopy(baseline)
        StructuredPruner(model, example).remove_to_target(scores, Target("macs", keep))
        macs, params = count(model, example)
        point = {
            "criterion": criterion,
            "keep": keep,
            "macs": macs,
            "params": params,
            "macs_removed": 1 - macs / base_macs,
            "top1": evaluate(model, data["val"])["top1"],
        }
        if recal_batches:
            recalibrate_bn(model, data["train"], batches=recal_batches)
            point["top1_recal"] = evaluate(model, data["val"])["top1"]
        points.append(point)
        log.info("%s keep %.2f: top-1 %.2f %s", criterion, keep, point["top1"],
                 point.get("top1_recal", ""))  # fmt: skip
    return {"criterion": criterion, "score_s": score_s, "points": points}


def _setup(args: argparse.Namespace) -> tuple[nn.Module, torch.Tensor, dict[str, Any]]:
    if args.smoke:
        from taylorprune.models import build_model

        torch.manual_seed(0)
        spec = {"source": "builtin", "name": "resnet20", "num_classes": 10, "in_chans": 1}
        model = build_model(spec).eval()
        kw = {"num_classes": 10, "input_shape": (1, 16, 16), "num_train": 256, "num_val": 128}
        d = build_data("synthetic", batch_size=32, seed=0, augment=False, **kw)
        example = torch.zeros(1, 1, 16, 16)
        source = "random init (smoke)"
    else:
        model, _, source = common.fashion_resnet20_baseline()
        d = build_data(
            "fashion_mnist",
            batch_size=64,
            eval_batch_size=1000,
            seed=0,
            augment=False,
            val_subset=args.val_subset,
        )
        example = torch.zeros(1, 1, 28, 28)
    data = {
        "score": common.first_batches(d.train, args.score_batches),
        "train": d.train,
        "val": d.val,
        "baseline": source,
    }
    return model, example, data


def summarize(out: Path) -> dict[str, Any]:
    runs = common.runs_in(out)
    baseline = common.read_json(out / "baseline.json") or {}
    flat = [p for r in runs for p in r["points"]]
    if flat:
        records = [{**p, "baseline": baseline} for p in flat]
        plot_sweep(records, out / "sweep.png", x="sparsity")
        if any("top1_recal" in p for p in flat):
            recal = [{**p, "top1": p["top1_recal"]} for p in flat if "top1_recal" in p]
            plot_sweep([{**r, "baseline": baseline} for r in recal], out / "sweep_recal.png",
                       x="sparsity")  # fmt: skip
    (out / "table.md").write_text(markdown(runs, baseline))
    return {"runs": runs, "baseline": baseline}


def markdown(runs: list[dict[str, Any]], baseline: dict[str, Any]) -> str:
    if not runs:
        return "no runs yet\n"
    levels = [p["keep"] for p in runs[0]["points"]]
    head = ["criterion", *(f"keep {k:g}" for k in levels)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        cells = []
        for p in r["points"]:
            cell = f"{p['top1']:.1f}"
            if "top1_recal" in p:
                cell += f" / {p['top1_recal']:.1f}"
            cells.append(cell)
        lines.append("| " + " | ".join([f"`{r['criterion']}`", *cells]) + " |")
    if baseline.get("top1") is not None:
        lines += ["", f"Baseline top-1 {baseline['top1']:.2f}%. Cells: top-1 right after removal"
                  " / after BatchNorm re-estimation (no weight updates)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=common.REPO / "tools" / "results" / "sweep")
    p.add_argument("--criteria", nargs="+", default=list(CRITERIA))
    p.add_argument("--levels", nargs="+", type=float, default=list(LEVELS))
    p.add_argument("--score-batches", type=int, default=30)
    p.add_argument("--recal-batches", type=int, default=50)
    p.add_argument("--val-subset", type=int, default=None, help="test images (default: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="tiny synthetic run in seconds")
    args = p.parse_args(argv)
    common.start(args)
    baseline, example, data = _setup(args)
    if common.read_json(args.out / "baseline.json") is None:
        macs, params = count(baseline, example)
        common.write_json(
            args.out / "baseline.json",
            {
                "macs": macs,
                "params": params,
                "top1": evaluate(baseline, data["val"])["top1"],
                "baseline": data["baseline"],
                "machine": common.machine(),
                "command": " ".join(
                    ["tools/sweep.py", *(argv if argv is not None else sys.argv[1:])]
                ),
            },
        )
    for crit in args.criteria:
        path = args.out / "runs" / f"{crit}.json"
        if path.exists():
            continue
        rec = sweep_criterion(baseline, example, data, crit, args.levels, args.recal_batches)
        common.write_json(path, rec)
    summarize(args.out)
    print((args.out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
