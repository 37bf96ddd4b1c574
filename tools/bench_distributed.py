"""Fine-tuning throughput of 1 against N torchrun processes on the same recipe, side by side.

Each configuration runs ``torchrun --standalone --nproc_per_node=P -m taylorprune run RECIPE`` with
a fixed number of fine-tuning iterations and reads the fine-tuning rows of its ``report.json``:
samples/s = iterations × per-process batch × processes / time (the per-process batch is fixed, so
N processes train on N times the global batch: weak scaling). Runs alternate (1, N, 1, N, ...) so
machine noise hits both; the median per configuration is reported.

    python tools/bench_distributed.py --procs 2 --repeats 2 --out tools/results/distributed
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as common
import _cli as cli

ROOT = Path(__file__).resolve().parents[1]


def one_run(procs: int, recipe: Path, batch: int, iters: int, threads: int) -> float:
    """Fine-tuning samples/s of one run with ``procs`` processes."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TAYLORPRUNE_CACHE": tmp}
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={procs}", "-m", "taylorprune", "--quiet", "run", str(recipe),
            "-o", str(out),
            "--set", "baseline.train=null", "--set", "measure.latency=false",
            "--set", f"data.batch_size={batch}", "--set", "finetune.epochs=1",
            "--set", f"finetune.max_iters={iters}",
            "--set", "finetune.distill=null",  # the training step alone, as committed
        ]  # fmt: skip
        subprocess.run(cmd, env=env, check=True, cwd=ROOT, capture_output=True)
        report = json.loads((out / "report.json").read_text())
    rows = [m for m in report["metrics"] if m.get("phase") == "finetune" and m.get("iters")]
    n_iters = sum(m["iters"] for m in rows)
    seconds = sum(m["time_s"] for m in rows)
    return n_iters * batch * procs / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_recipe(ap, ROOT / "recipes/tiny/fashion_mnist_resnet20.yaml", "recipe fine-tuned")
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64, help="per-process batch size")
    ap.add_argument("--iters", type=int, default=40, help="fine-tuning iterations per run")
    ap.add_argument("--repeats", type=int, default=2)
    cli.add_out(ap, "distributed")
    args = ap.parse_args()

    cores = os.cpu_count() or 1
    configs = {
        1: max(1, cores),  # one process may use every core
        args.procs: max(1, cores // args.procs),  # N processes share them
    }
    samples: dict[int, list[float]] = {p: [] for p in configs}
    for _ in range(args.repeats):
        for procs, threads in configs.items():
            samples[procs].append(one_run(procs, args.recipe, args.batch, args.iters, threads))
    result = {
        "recipe": str(args.recipe.relative_to(ROOT)),
        "device": "cpu",
        "cores": cores,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "per_process_batch": args.batch,
        "iters": args.iters,
        "threads_per_process": {str(p): t for p, t in configs.items()},
        "samples_per_s": {str(p): s for p, s in samples.items()},
        "median_samples_per_s": {str(p): statistics.median(s) for p, s in samples.items()},
    }
    one, many = (result["median_samples_per_s"][str(p)] for p in configs)
    result["speedup"] = many / one
    common.write_json(args.out / "result.json", result)
    print(
        f"1 process: {one:.0f} samples/s; {args.procs} processes: {many:.0f} samples/s "
        f"({result['speedup']:.2f}x) on {cores} CPU cores"
    )


if __name__ == "__main__":
    cli.run(main)
