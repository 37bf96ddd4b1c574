"""Cost of one pruning step on ResNet-50: StructuredPruner.remove vs MetaPruner.step.

Both remove the same channels' count from fresh copies of one random-init model, on the same scores
(MetaPruner reads them through ScoreImportance), timed side by side in one run, repeats interleaved.
Graph construction is not timed for either. Writes ``bench_prune.json`` and ``bench_prune.md``.

    nice .venv/bin/python tools/bench_prune.py --repeats 5 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch_pruning as tp
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as common
import _cli as cli

from taylorprune.pruning import ScoreImportance, StructuredPruner


def _channels(model: torch.nn.Module, roots: list[str]) -> int:
    return sum(model.get_submodule(r).out_channels for r in roots)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", type=int, default=224, help="input side in pixels")
    ap.add_argument(
        "--ratios",
        type=float,
        nargs="+",
        default=[0.004, 0.04],
        help="MetaPruner pruning_ratio per step (fraction of prunable channels)",
    )
    ap.add_argument("--repeats", type=int, default=5)
    cli.add_threads(ap, 2)
    cli.add_out(ap, "prune")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = getattr(torchvision.models, args.model)().eval()
    x = torch.randn(1, 3, args.size, args.size)
    probe = StructuredPruner(copy.deepcopy(base), x)
    roots = [g.root for g in probe.groups()]
    g = torch.Generator().manual_seed(0)
    scores = {grp.root: torch.rand(grp.size, generator=g) for grp in probe.groups()}
    total = sum(grp.size for grp in probe.groups())

    rows = []
    for ratio in args.ratios:
        times: dict[str, list[float]] = {"metapruner": [], "ours": [], "ours_lean": []}
        removed: dict[str, int] = {}
        for rep in range(args.repeats + 1):  # the first round warms both up and is dropped
            order = ["metapruner", "ours", "ours_lean"]
            if rep % 2:
                order.reverse()
            for kind in order:
                model = copy.deepcopy(base)
                if kind == "metapruner":
                    pruner = tp.pruner.MetaPruner(
                        model,
                        x,
                        importance=ScoreImportance(model, scores),
                        global_pruning=True,
                        pruning_ratio=ratio,
                        max_pruning_ratio=0.9,
                        ignored_layers=[model.fc],
                    )
                    before = _channels(model, roots)
                    t0 = time.perf_counter()
                    pruner.step()
                    times[kind].append(time.perf_counter() - t0)
                    removed[kind] = before - _channels(model, roots)
                else:
                    lean = kind == "ours_lean"
                    ours = StructuredPruner(model, x, verify=not lean, track_params=not lean)
                    n = removed.get("metapruner", round(ratio * total))
                    t0 = time.perf_counter()
                    step = ours.remove(scores, n)
                    times[kind].append(time.perf_counter() - t0)
                    removed[kind] = step.channels_removed
        times = {k: v[1:] for k, v in times.items()}
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append(
            {
                "pruning_ratio": ratio,
                "channels_removed": removed,
                "median_s": med,
                "all_s": times,
                "ours_over_metapruner": med["ours"] / med["metapruner"],
                "ours_lean_over_metapruner": med["ours_lean"] / med["metapruner"],
            }
        )
        print(json.dumps(rows[-1]["median_s"]), removed, flush=True)

    result = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "model": args.model,
        "input": [1, 3, args.size, args.size],
        "threads": args.threads,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "torch_pruning": tp.__version__,
        "machine": platform.processor() or platform.machine(),
        "prunable_channels": total,
        "rows": rows,
    }
    common.write_json(args.out / "bench_prune.json", result)
    lines = [
        f"# Pruning-step cost, {args.model} ({args.size}x{args.size}), {result['date']}",
        "",
        f"threads={args.threads}, repeats={args.repeats} (median), torch {torch.__version__}, "
        f"torch-pruning {tp.__version__}. `ours` = StructuredPruner.remove with the forward check "
        "and optimizer tracking on (defaults); `ours_lean` = both off.",
        "",
    ]
    head = ["channels removed", "MetaPruner.step (s)", "ours (s)", "ours_lean (s)", "ours/tp"]
    head += ["lean/tp"]
    cells = [
        [str(r["channels_removed"]["ours"]), f"{r['median_s']['metapruner']:.3f}",
         f"{r['median_s']['ours']:.3f}", f"{r['median_s']['ours_lean']:.3f}",
         f"{r['ours_over_metapruner']:.2f}", f"{r['ours_lean_over_metapruner']:.2f}"]
        for r in rows
    ]  # fmt: skip
    lines += common.markdown_table(head, cells, "---:")
    common.write_file(args.out / "bench_prune.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    cli.run(main)
