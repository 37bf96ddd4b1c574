"""CPU latency of ResNet-50 pruned to -40% MACs, against the ideal speedup (baseline / pruned MACs).

Variants pruned from one random-init model with the same Taylor-FO-BN scores (a few random
minibatches): ours with round_to 1/8/16/32, and torch-pruning's default global Taylor pruning
(TaylorImportance, MetaPruner steps until the MACs target) for reference. Each variant is timed
against the baseline with ``taylorprune.measure.compare_latency`` (runs interleaved, medians).
Writes ``bench_latency.json`` and ``bench_latency.md``.

    nice .venv/bin/python tools/bench_latency.py --runs 7 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import platform
import sys
from pathlib import Path

import torch
import torch_pruning as tp
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as common
import _cli as cli

from taylorprune.measure import compare_latency, count
from taylorprune.pruning import StructuredPruner, Target
from taylorprune.pruning.schedule import Scoring, score_groups


def taylor_scores(pruner: StructuredPruner, batches: int, size: int) -> dict[str, torch.Tensor]:
    """Taylor-FO-BN scores of ``pruner``'s groups on ``batches`` random minibatches of 8."""
    data = common.random_batches((3, size, size), 1000, batches)
    return score_groups(pruner, data, nn.functional.cross_entropy, Scoring("taylor_fo_bn"))


def tp_global_taylor(base: nn.Module, x: torch.Tensor, keep: float, size: int) -> nn.Module:
    """torch-pruning's default global Taylor pruning, stepped until MACs <= keep x baseline."""
    model = copy.deepcopy(base)
    macs0 = count(model, x)[0]
    pruner = tp.pruner.MetaPruner(
        model,
        x,
        importance=tp.importance.TaylorImportance(),
        global_pruning=True,
        pruning_ratio=0.5,
        iterative_steps=20,
        ignored_layers=[model.fc],
    )
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        if count(model, x)[0] <= keep * macs0:
            break
        model.train()
        model.zero_grad()
        xb = torch.randn(8, 3, size, size, generator=g)
        yb = torch.randint(0, 1000, (8,), generator=g)
        nn.functional.cross_entropy(model(xb), yb).backward()
        pruner.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=float, default=0.6, help="fraction of baseline MACs kept")
    ap.add_argument("--round-to", type=int, nargs="+", default=[1, 8, 16, 32])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--runs", type=int, default=7, help="timed runs per model (repeats)")
    ap.add_argument("--warmup", type=int, default=2)
    cli.add_threads(ap, 2)
    ap.add_argument("--score-batches", type=int, default=4)
    ap.add_argument("--score-size", type=int, default=96, help="input side when scoring")
    ap.add_argument("--no-tp", action="store_true", help="skip torch-pruning's reference")
    cli.add_out(ap, "prune")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = torchvision.models.resnet50().eval()
    x1 = torch.randn(1, 3, 224, 224)
    xb = torch.randn(args.batch, 3, 224, 224)
    probe = StructuredPruner(copy.deepcopy(base), x1)
    scores = taylor_scores(probe, args.score_batches, args.score_size)

    variants: dict[str, nn.Module] = {}
    for r in args.round_to:
        model = copy.deepcopy(base)
        pruner = StructuredPruner(model, x1, round_to=r)
        step = pruner.remove_to_target(scores, Target("macs", args.keep))
        variants[f"ours round_to={r}"] = model.eval()
        print(
            f"round_to={r}: {step.channels_removed} channels, stop={step.stopped_short}", flush=True
        )
    if not args.no_tp:
        variants["torch-pruning global Taylor"] = tp_global_taylor(
            base, x1, args.keep, args.score_size
        )

    rows = []
    for name, model in variants.items():
        res = compare_latency(
            base, model, xb, runs=args.runs, warmup=args.warmup, threads=args.threads
        )
        widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
        res.update(
            variant=name,
            fraction_of_ideal=res["speedup"] / res["ideal_speedup"],
            macs=count(model, x1)[0],
            params=sum(p.numel() for p in model.parameters()),
            convs_multiple_of_8=sum(w % 8 == 0 for w in widths) / len(widths),
        )
        rows.append(res)
        print(
            f"{name}: speedup {res['speedup']:.2f} ideal {res['ideal_speedup']:.2f} "
            f"-> {res['fraction_of_ideal']:.2f} of ideal",
            flush=True,
        )

    macs0, params0 = count(base, x1)
    result = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "model": "torchvision resnet50 (random init)",
        "batch": args.batch,
        "threads": args.threads,
        "runs": args.runs,
        "warmup": args.warmup,
        "keep_macs": args.keep,
        "baseline_macs": macs0,
        "baseline_params": params0,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "rows": rows,
    }
    common.write_json(args.out / "bench_latency.json", result)
    lines = [
        f"# CPU latency, ResNet-50 at -{1 - args.keep:.0%} MACs, batch {args.batch}, "
        f"{result['date']}",
        "",
        f"threads={args.threads}, {args.runs} timed runs per model after {args.warmup} warm-up, "
        "baseline and pruned interleaved, medians; eval mode, contiguous (NCHW) memory, "
        f"torch {torch.__version__}. Ideal speedup = baseline MACs / pruned MACs.",
        "",
    ]
    head = ["variant", "GMACs", "M params", "baseline ms", "pruned ms", "speedup", "ideal"]
    head += ["of ideal", "convs %8"]
    cells = [
        [r["variant"], f"{r['macs'] / 1e9:.2f}", f"{r['params'] / 1e6:.1f}",
         f"{r['baseline_ms']:.0f}", f"{r['pruned_ms']:.0f}", f"{r['speedup']:.2f}",
         f"{r['ideal_speedup']:.2f}", f"{r['fraction_of_ideal']:.2f}",
         f"{r['convs_multiple_of_8']:.0%}"]
        for r in rows
    ]  # fmt: skip
    lines += common.markdown_table(head, cells, ["---"] + ["---:"] * (len(head) - 1))
    common.write_file(args.out / "bench_latency.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    cli.run(main)
