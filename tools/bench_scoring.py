"""Cost of importance accumulation in a training step: torchvision ResNet-50, CPU.

Time: one process runs rounds of training steps (a scored variant's is the iterative schedule's own,
``ScheduleHooks.train`` on a window of one minibatch; the plain step is forward, backward, SGD step,
zero_grad), one step per variant per round in a rotating order, and reports each variant's median
step time and its ratio to the plain step (train-mode BatchNorm) measured in the same rounds. A
variant ``<criterion>@eval`` scores with BatchNorm on its running statistics (``train_mode=False``)
as the iterative schedule does (``WindowScorer``): a scoring pass of its own before each training
step. Peak memory: one fresh
subprocess per variant (``ru_maxrss``, the process's peak resident memory) runs two steps.
Writes ``results.json`` and ``results.md`` under ``--out``. ``--device cuda`` times the same steps
on a GPU (each step between two synchronisations; use ``--no-memory`` there: RSS says nothing of
GPU memory). Example::

    nice python tools/bench_scoring.py --repeats 5 --out tools/results/scoring
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as common
import _cli as cli

from taylorprune.graph import ChannelGraph
from taylorprune.importance import ImportanceAccumulator
from taylorprune.pruning.schedule import ScheduleHooks, WindowScorer

VARIANTS = [
    "plain",
    "taylor_fo_bn",
    "taylor_fo_bn@eval",
    "taylor_fo_weight",
    "taylor_fo_bn_fg",
    "taylor_act",
    "taylor_so",
]
# the bars: ratio of step time with accumulation to the plain step
BARS = {"taylor_fo_bn": 1.03, "taylor_fo_bn@eval": 1.03, "taylor_so": 1.5}
HOOK_BAR = 1.15


class Setup:
    """ResNet-50, one fixed minibatch, SGD; each step builds the variant's accumulator."""

    def __init__(self, batch: int, size: int, seed: int, device: str = "cpu") -> None:
        torch.manual_seed(seed)
        self.device = torch.device(device)
        self.model = torchvision.models.resnet50()
        self.x = torch.randn(batch, 3, size, size)
        self.y = torch.randint(0, 1000, (batch,))
        self.groups = ChannelGraph(self.model, self.x[:1]).groups()
        self.model.to(self.device).train()
        self.x, self.y = self.x.to(self.device), self.y.to(self.device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-4, momentum=0.9)

    def _sync(self) -> None:
        # CUDA kernels run asynchronously: a step's time ends when its last kernel has.
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step(self, variant: str) -> float:
        acc = scorer = None
        criterion, _, mode = variant.partition("@")
        if criterion != "plain":
            acc = ImportanceAccumulator(self.model, self.groups, criterion)
            scorer = WindowScorer(self.model, acc, train_mode=mode != "eval")
        self._sync()
        t0 = time.perf_counter()
        if scorer is None:
            F.cross_entropy(self.model(self.x), self.y).backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        else:  # the iterative schedule's training step, on a window of one minibatch
            ScheduleHooks().train(self.model, [(self.x, self.y)], self.opt, F.cross_entropy, scorer)
        self._sync()
        elapsed = time.perf_counter() - t0
        if acc is not None:
            acc.close()
        return elapsed


def time_variants(args: argparse.Namespace) -> dict[str, list[float]]:
    setup = Setup(args.batch, args.size, args.seed, args.device)
    for v in args.variants:  # warm-up: allocator, first hook registration
        setup.step(v)
    times: dict[str, list[float]] = {v: [] for v in args.variants}
    for r in range(args.repeats):
        order = args.variants[r % len(args.variants) :] + args.variants[: r % len(args.variants)]
        for v in order:
            times[v].append(setup.step(v))
        print(
            f"round {r + 1}/{args.repeats}: "
            + ", ".join(f"{v} {times[v][-1]:.2f}s" for v in args.variants),
            file=sys.stderr,
        )
    return times


def worker(args: argparse.Namespace) -> None:
    """Child process: two steps of one variant, then print peak RSS in MiB as JSON."""
    torch.set_num_threads(args.threads)
    setup = Setup(args.batch, args.size, args.seed)
    for _ in range(2):
        setup.step(args.worker)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"variant": args.worker, "peak_rss_mib": rss_mib}))


def peak_memory(args: argparse.Namespace) -> dict[str, float]:
    out = {}
    for v in args.variants:
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            v,
            "--batch",
            str(args.batch),
            "--size",
            str(args.size),
            "--threads",
            str(args.threads),
            "--seed",
            str(args.seed),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[v] = json.loads(res.stdout.strip().splitlines()[-1])["peak_rss_mib"]
        print(f"memory {v}: {out[v]:.0f} MiB", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (one step per variant)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    cli.add_threads(p, 1)
    cli.add_seed(p, 0)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    p.add_argument("--variants", nargs="+", default=VARIANTS)
    p.add_argument("--no-memory", action="store_true", help="skip the per-variant subprocesses")
    cli.add_out(p, "scoring")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    torch.set_num_threads(args.threads)
    if "plain" not in args.variants:
        args.variants.insert(0, "plain")
    times = time_variants(args)
    memory = {} if args.no_memory else peak_memory(args)
    plain_t = statistics.median(times["plain"])
    rows = []
    for v in args.variants:
        med = statistics.median(times[v])
        bar = None if v == "plain" else BARS.get(v, HOOK_BAR)
        row = {
            "variant": v,
            "median_s": med,
            "ratio": med / plain_t,
            "bar": bar,
            "times_s": times[v],
        }
        if memory:
            row["peak_rss_mib"] = memory[v]
            row["memory_ratio"] = memory[v] / memory["plain"]
        rows.append(row)
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "model": "torchvision resnet50 (random init)",
        "batch": args.batch,
        "input": [3, args.size, args.size],
        "threads": args.threads,
        "device": args.device,
        "device_name": torch.cuda.get_device_name(args.device) if "cuda" in args.device else None,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpus": _cpus(),
    }
    out = Path(args.out)
    common.write_json(out / "results.json", {"meta": meta, "rows": rows})
    lines = [
        f"# Scoring cost, ResNet-50 training step on {args.device} ({meta['date']})",
        "",
        f"Batch {args.batch}, {args.size}×{args.size}, {args.threads} thread(s), median of "
        f"{args.repeats} interleaved rounds; peak RSS from one subprocess per variant.",
        "",
        "| variant | median step (s) | ratio to plain | bar | peak RSS (MiB) | memory ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        bar = "" if r["bar"] is None else f"≤ {r['bar']:.2f}"
        mem = f"{r['peak_rss_mib']:.0f} | {r['memory_ratio']:.3f}" if memory else "n/a | n/a"
        lines.append(f"| {r['variant']} | {r['median_s']:.2f} | {r['ratio']:.3f} | {bar} | {mem} |")
    common.write_file(out / "results.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    cli.run(main)
