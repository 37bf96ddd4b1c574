"""How well does each importance criterion rank channels like the oracle? (ResNet-20, Fashion-MNIST)

Trains a CIFAR-style ResNet-20 on Fashion-MNIST (SGD, one-cycle; checkpoints cached), then for a
mid-training and the converged checkpoint, BatchNorm in train and in eval mode, and each batch size:
draws ``--examples`` training examples in minibatches, measures the oracle |L − L_{c=0}| of every
channel (coupled channels zeroed together) and every criterion on the same minibatches, and writes
Spearman and Kendall correlations per layer group (mean over groups) and across all groups to
``results.json`` and ``results.md``. The classifier's units are left out of the correlations
(removing a class is not a pruning option). Example::

    nice python tools/oracle_study.py --out tools/results/oracle --batch-sizes 16 64 --examples 64
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import kendalltau, spearmanr

from taylorprune.data import build_data
from taylorprune.graph import ChannelGraph
from taylorprune.importance import CRITERIA, TaylorSO, channel_scores
from taylorprune.importance.oracle import oracle_scores
from taylorprune.models import build_model
from taylorprune.train import evaluate, train_epoch

SPEC = {"source": "builtin", "name": "resnet20", "num_classes": 10, "in_chans": 1}
log = logging.getLogger("oracle_study")


def train(out: Path, epochs: int, batch_size: int, seed: int) -> dict[str, Path]:
    """Checkpoints ``mid`` (after a quarter of the iterations) and ``final``; cached in ``out``."""
    paths = {"mid": out / "resnet20_fmnist_mid.pt", "final": out / "resnet20_fmnist_final.pt"}
    if all(p.exists() for p in paths.values()):
        return paths
    torch.manual_seed(seed)
    model = build_model(SPEC)
    data = build_data("fashion_mnist", batch_size=batch_size, seed=seed, augment=False)
    steps = epochs * len(data.train)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=steps)
    done = 0

    def after_step(n: int) -> None:
        if done + n == steps // 4:
            torch.save(model.state_dict(), paths["mid"])

    for epoch in range(epochs):
        row = train_epoch(
            model,
            data.train,
            opt,
            F.cross_entropy,
            scheduler=sched,
            after_step=after_step,
            progress=False,
        )
        done += row["iters"]
        log.info(
            "epoch %d: loss %.4f, top-1 %.2f%%, %.0f s",
            epoch + 1,
            row["loss"],
            row["top1"],
            row["time_s"],
        )
    torch.save(model.state_dict(), paths["final"])
    return paths


def correlations(crit: dict[str, torch.Tensor], oracle: dict[str, torch.Tensor]) -> dict:
    """Spearman/Kendall per group (mean over groups with non-constant scores) and across groups."""
    per = {"spearman": [], "kendall": []}
    for root, o in oracle.items():
        c = crit[root].numpy()
        o = o.numpy()
        if len(o) < 3 or np.ptp(o) == 0 or np.ptp(c) == 0:
            continue
        per["spearman"].append(spearmanr(c, o).statistic)
        per["kendall"].append(kendalltau(c, o).statistic)
    c_all = np.concatenate([crit[r].numpy() for r in oracle])
    o_all = np.concatenate([oracle[r].numpy() for r in oracle])
    finite = np.isfinite(c_all)
    return {
        "spearman_layer": float(np.mean(per["spearman"])),
        "kendall_layer": float(np.mean(per["kendall"])),
        "spearman_all": float(spearmanr(c_all[finite], o_all[finite]).statistic),
        "kendall_all": float(kendalltau(c_all[finite], o_all[finite]).statistic),
    }


def criteria_list(names: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for name in names:
        if name == "taylor_so_exact":
            out[name] = TaylorSO(hessian="exact")
        elif name == "taylor_so_hutchinson":
            out[name] = TaylorSO(hessian="hutchinson", probes=4)
        else:
            CRITERIA.get(name)
            out[name] = name
    return out


def study(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = train(
        out if args.checkpoints is None else Path(args.checkpoints),
        args.epochs,
        args.train_batch,
        args.seed,
    )
    val = build_data("fashion_mnist", batch_size=512, seed=args.seed, augment=False).val
    criteria = criteria_list(args.criteria)
    rows = []
    for stage, path in paths.items():
        if stage not in args.stages:
            continue
        model = build_model(SPEC)
        model.load_state_dict(torch.load(path, weights_only=True))
        acc = evaluate(model, val)["top1"]
        log.info("%s checkpoint: val top-1 %.2f%%", stage, acc)
        groups = [
            g for g in ChannelGraph(model, torch.zeros(1, 1, 28, 28)).groups() if g.root != "fc"
        ]
        gate_of = {g.root: g.gates[0].name for g in groups}
        for batch_size in args.batch_sizes:
            loader = build_data(
                "fashion_mnist", batch_size=batch_size, seed=args.seed + batch_size, augment=False
            ).train
            n_batches = max(1, args.examples // batch_size)
            batches = []
            for x, y in loader:
                batches.append((x, y))
                if len(batches) == n_batches:
                    break
            for train_mode in (True, False):
                t0 = time.perf_counter()
                oracle = oracle_scores(
                    model, groups, batches, train_mode=train_mode, chunk=args.chunk
                )
                t_oracle = time.perf_counter() - t0
                for name, crit in criteria.items():
                    if name == "taylor_so_exact" and batch_size > args.exact_max_batch:
                        continue
                    t0 = time.perf_counter()
                    by_gate = channel_scores(model, batches, F.cross_entropy, crit, train_mode)
                    scores = {r: by_gate[gate] for r, gate in gate_of.items()}
                    row = {
                        "checkpoint": stage,
                        "val_top1": acc,
                        "batch_size": batch_size,
                        "bn": "train" if train_mode else "eval",
                        "criterion": name,
                        **correlations(scores, oracle),
                        "criterion_s": time.perf_counter() - t0,
                        "oracle_s": t_oracle,
                    }
                    rows.append(row)
                    log.info(
                        "%(checkpoint)s B=%(batch_size)d BN-%(bn)s %(criterion)-20s "
                        "spearman all %(spearman_all).3f layer %(spearman_layer).3f",
                        row,
                    )
                _write(out, rows, args)
    return {"rows": rows}


def _write(out: Path, rows: list[dict], args: argparse.Namespace) -> None:
    meta = {
        "date": datetime.date.today().isoformat(),
        "model": SPEC,
        "examples_per_setting": args.examples,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "note": "correlations exclude the classifier's units; per-layer = mean over groups",
    }
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [
        f"# Oracle correlation, ResNet-20 on Fashion-MNIST ({meta['date']})",
        "",
        f"{args.examples} training examples per setting (examples // batch size minibatches, "
        "the same for oracle and criteria); Spearman / Kendall of each criterion against the "
        "oracle |L − L_{c=0}| (classifier excluded). 'layer' = mean over layer groups, 'all' = "
        "every channel ranked together.",
        "",
        "| checkpoint | top-1 | BN | batch | criterion | Spearman all | Kendall all | "
        "Spearman layer | Kendall layer |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['checkpoint']} | {r['val_top1']:.2f} | {r['bn']} | {r['batch_size']} | "
            f"{r['criterion']} | {_f(r['spearman_all'])} | {_f(r['kendall_all'])} | "
            f"{_f(r['spearman_layer'])} | {_f(r['kendall_layer'])} |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")


def _f(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="tools/results/oracle")
    p.add_argument(
        "--checkpoints", default=None, help="folder of cached checkpoints (default: --out)"
    )
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-batch", type=int, default=128)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    p.add_argument(
        "--examples",
        type=int,
        default=64,
        help="examples per setting: examples // batch size minibatches (at least one)",
    )
    p.add_argument("--chunk", type=int, default=8, help="channel removals per forward pass")
    p.add_argument(
        "--criteria",
        nargs="+",
        default=[*CRITERIA.names(), "taylor_so_hutchinson"],
        help="registered names, plus taylor_so_hutchinson and taylor_so_exact",
    )
    p.add_argument(
        "--exact-max-batch",
        type=int,
        default=16,
        help="run taylor_so_exact (one double backward per channel) up to this batch",
    )
    p.add_argument("--stages", nargs="+", default=["mid", "final"], choices=["mid", "final"])
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared CPU)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    study(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
