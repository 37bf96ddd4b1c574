"""What distillation from the baseline costs a fine-tuning step: the step time with and without
the teacher, side by side.

A fine-tuning step (forward, loss, backward, SGD step; ``taylorprune.train.train_epoch`` on one
minibatch) of a student ResNet-20 on a Fashion-MNIST-shaped batch (1×28×28, batch 128 as the
recipe trains), plain and with ``finetune.distill`` (the unpruned ResNet-20 as the teacher, its
forward under ``torch.no_grad()``). The two are timed in alternation on the same batch, their
order swapped every step, so that load changes on the machine hit both alike; the cost is the
ratio of the medians. Students: the unpruned ResNet-20 (teacher and student the same size) and
the ResNet-20 pruned to half its MACs (what fine-tuning trains after ``-50%``; random init, L1
scores: the timing does not depend on the weights).

    nice -n 10 .venv/bin/python tools/bench_distill.py   # results in tools/results/distill/
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as common
import _cli as cli

from taylorprune import StructuredPruner, Target
from taylorprune.distill import Distiller
from taylorprune.measure import count
from taylorprune.models import build_model
from taylorprune.optimizers import build_optimizer, make_loss
from taylorprune.pruning.schedule import Scoring, score_groups
from taylorprune.recipe import TrainConfig
from taylorprune.train import train_epoch

log = logging.getLogger("taylorprune.bench")


def _student(keep: float, example: torch.Tensor) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(common.FASHION_RESNET20)
    if keep < 1.0:
        pruner = StructuredPruner(model, example)
        scores = score_groups(pruner, [], nn.functional.cross_entropy, Scoring("l1_norm"))
        pruner.remove_to_target(scores, Target("macs", keep))
    return model


def step_times(keep: float, batch: int, steps: int, warmup: int, side: int) -> dict[str, Any]:
    """Median milliseconds of a fine-tuning step without and with the teacher, in alternation."""
    example = torch.zeros(1, 1, side, side)
    torch.manual_seed(1)
    teacher = build_model(common.FASHION_RESNET20).eval()
    student = _student(keep, example)
    cfg = TrainConfig(lr=1e-4, distill={"weight": 0.5, "temperature": 4.0})
    optimizer, loss_fn = build_optimizer(student, cfg), make_loss(cfg)
    distill = Distiller(teacher, weight=0.5, temperature=4.0)
    g = torch.Generator().manual_seed(2)
    minibatch = [(torch.randn(batch, 1, side, side, generator=g), torch.randint(0, 10, (batch,)))]

    def step(with_teacher: bool) -> tuple[float, float]:
        stats = train_epoch(
            student, minibatch, optimizer, loss_fn, progress=False,
            distill=distill if with_teacher else None,
        )  # fmt: skip
        return stats["time_s"] * 1e3, stats.get("teacher_s", 0.0) * 1e3

    for _ in range(warmup):
        step(False)
        step(True)
    plain, kd, teacher_ms = [], [], []
    for i in range(steps):  # alternate the order so that load drifts hit both alike
        for with_teacher in (i % 2 == 0, i % 2 == 1):
            ms, t_ms = step(with_teacher)
            (kd if with_teacher else plain).append(ms)
            if with_teacher:
                teacher_ms.append(t_ms)
    p, k, t = (statistics.median(v) for v in (plain, kd, teacher_ms))
    macs = count(student, example)[0] / count(teacher, example)[0]
    log.info("student %.2f of the MACs: %.1f ms -> %.1f ms (%.2fx)", macs, p, k, k / p)
    return {
        "student_macs_fraction": macs,
        "plain_ms": p,
        "distill_ms": k,
        "ratio": k / p,
        "teacher_forward_ms": t,
        "teacher_share_of_plain_step": t / p,
        "plain_p10_p90_ms": _spread(plain),
        "distill_p10_p90_ms": _spread(kd),
    }


def _spread(values: list[float]) -> list[float]:
    q = statistics.quantiles(values, n=10)
    return [q[0], q[-1]]


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        "# Cost of distillation from the baseline in a fine-tuning step",
        "",
        f"`{res['command']}` on {m['date']}: {m['cpu_count']} CPU cores ({m['cpu']}), "
        f"{m['torch_threads']} torch threads, torch {m['torch']}. Batch {res['batch']} of "
        f"1x{res['side']}x{res['side']}, {res['steps']} steps of each kind in alternation "
        "(medians). Teacher: the unpruned ResNet-20; loss weight 0.5, temperature 4.",
        "",
        "| student (fraction of MACs) | plain step | with teacher | ratio | teacher forward "
        "| teacher / plain step |",
        "|---|---|---|---|---|---|",
    ]
    for r in res["students"]:
        lines.append(
            f"| ResNet-20 ({r['student_macs_fraction']:.2f}) | {r['plain_ms']:.1f} ms | "
            f"{r['distill_ms']:.1f} ms | {r['ratio']:.2f}x | {r['teacher_forward_ms']:.1f} ms | "
            f"{r['teacher_share_of_plain_step']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_out(p, "distill")
    cli.add_threads(p, 2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=40, help="timed steps of each kind")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--keep", type=float, nargs="+", default=[1.0, 0.5], help="students' MACs")
    cli.add_smoke(p, "small inputs, few steps")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    side = 16 if args.smoke else 28
    if args.smoke:
        args.batch, args.steps, args.warmup = 8, 4, 1
    res: dict[str, Any] = {
        "machine": common.machine(),
        "command": " ".join(
            ["tools/bench_distill.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "batch": args.batch,
        "side": side,
        "steps": args.steps,
        "students": [
            step_times(keep, args.batch, args.steps, args.warmup, side) for keep in args.keep
        ],
    }
    common.write_json(args.out / "results.json", res)
    common.write_file(args.out / "results.md", markdown(res))
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    cli.run(main)
