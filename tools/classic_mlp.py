"""The classic experiment: weight pruning against unit pruning of an MLP, without fine-tuning.

MLP 784-1000-1000-500-200-10, bias-free (builtin ``mlp``), trained on Fashion-MNIST (cached in
the tools' cache, ``.cache/studies/``). At each sparsity k (percent) the trained model is copied
and, in each of the four hidden Linear layers (``fc1``..``fc4``; the classifier ``fc`` is never
touched):

* ``weight``: the k% smallest-magnitude weights of the layer's weight matrix are zeroed (per-layer
  convention: every hidden matrix loses k% of its own weights);
* ``unit_l2``: the k% of the layer's units (output rows) with the smallest L2 norm of their
  incoming weights are zeroed;
* ``unit_taylor``: the k% of the layer's units with the lowest Taylor score (``taylor_fo_bn``: the
  gate sits on the Linear output here, (Σ_n dL/dy·y)² per minibatch, averaged over
  ``--score-batches`` training minibatches, scored once on the unpruned model) are zeroed;
* ``unit_taylor_fg`` and ``unit_taylor_act``: the same with ``taylor_fo_bn_fg`` (squared per
  example, then summed) and ``taylor_act`` (ICLR'17: per-example |mean of dL/dy·y|), for contrast.

Zeroing a unit's incoming row is the same network as removing the unit (no bias, ReLU(0) = 0), so
accuracies equal those of the physically smaller model. Top-1 is on the full test set.

    nice .venv/bin/python tools/classic_mlp.py          # results in tools/results/mlp/
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as common
import _cli as cli

from taylorprune import channel_scores
from taylorprune._io import atomic_save
from taylorprune.data import build_data
from taylorprune.models import build_model
from taylorprune.recipe import TrainConfig
from taylorprune.train import evaluate, fit

log = logging.getLogger("taylorprune.bench")

SPARSITIES = (0, 25, 50, 60, 70, 75, 80, 85, 90, 92.5, 95, 97.5, 99)
METHODS = ("weight", "unit_l2", "unit_taylor", "unit_taylor_fg", "unit_taylor_act")
#: Unit-pruning methods scored by a taylorprune criterion, by the criterion's name.
TAYLOR_UNITS = {
    "unit_taylor": "taylor_fo_bn",
    "unit_taylor_fg": "taylor_fo_bn_fg",
    "unit_taylor_act": "taylor_act",
}


def hidden_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The hidden Linear layers by qualified name (every Linear except the classifier ``fc``)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "fc"}


def _n_pruned(total: int, k: float) -> int:
    return min(total, int(math.floor(total * k / 100 + 1e-9)))


def prune_weights(model: nn.Module, k: float) -> None:
    """Zero the k% smallest-|w| weights of every hidden Linear (per layer)."""
    with torch.no_grad():
        for layer in hidden_linears(model).values():
            w = layer.weight
            n = _n_pruned(w.numel(), k)
            if n:
                idx = w.abs().flatten().argsort()[:n]
                w.view(-1)[idx] = 0.0


def prune_units(model: nn.Module, k: float, scores: dict[str, torch.Tensor]) -> None:
    """Zero the incoming rows of the k% lowest-scored units of every hidden Linear (per layer)."""
    with torch.no_grad():
        for name, layer in hidden_linears(model).items():
            s = scores[name]
            n = _n_pruned(s.numel(), k)
            if n:
                layer.weight[s.argsort()[:n]] = 0.0


def l2_scores(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().norm(dim=1) for n, m in hidden_linears(model).items()}


# -- model and data --------------------------------------------------------------------------------
def _setup(args: argparse.Namespace) -> tuple[nn.Module, Any, list, dict[str, Any]]:
    if args.smoke:
        data = build_data("digits", batch_size=64, seed=0, augment=False)
        spec = {
            "source": "builtin",
            "name": "mlp",
            "num_classes": 10,
            "in_chans": 1,
            "kwargs": {"input_size": 8, "hidden": [64, 64, 32, 16]},
        }
        cfg = TrainConfig(epochs=10, lr=0.05, schedule="constant", weight_decay=0.0)
        cache = None
    else:
        data = build_data(
            "fashion_mnist", batch_size=128, eval_batch_size=1000, seed=0, augment=False
        )
        spec = {"source": "builtin", "name": "mlp", "num_classes": 10, "in_chans": 1}
        cfg = TrainConfig(
            epochs=args.epochs, lr=0.05, momentum=0.9, weight_decay=0.0, schedule="onecycle"
        )
        cache = common.cache_dir() / f"mlp-fashion_mnist-e{args.epochs}.pt"
    torch.manual_seed(0)
    model = build_model(spec)
    info: dict[str, Any] = {"spec": spec, "train": cfg.model_dump(mode="json")}
    if cache is not None and cache.is_file():
        model.load_state_dict(torch.load(cache, weights_only=True))
    else:
        t0 = time.perf_counter()
        fit(model, data.train, None, cfg, progress=False)
        info["train_s"] = time.perf_counter() - t0
        if cache is not None:
            atomic_save(model.state_dict(), cache)
    score_data = build_data(
        "digits" if args.smoke else "fashion_mnist", batch_size=64, seed=1, augment=False
    )
    batches = common.first_batches(score_data.train, args.score_batches)
    return model.eval(), data.val, batches, info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_out(p, "mlp")
    p.add_argument("--epochs", type=int, default=5, help="MLP training epochs")
    p.add_argument("--score-batches", type=int, default=30)
    cli.add_threads(p, 2)
    cli.add_smoke(p, "tiny run on sklearn's digits in seconds")
    args = p.parse_args(argv)
    common.start(args)

    model, val, batches, info = _setup(args)
    scores = {"unit_l2": l2_scores(model)}
    for method, criterion in TAYLOR_UNITS.items():
        scores[method] = channel_scores(model, batches, nn.CrossEntropyLoss(), criterion)
    results: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
    for k in SPARSITIES:
        for m in METHODS:
            net = copy.deepcopy(model)
            if m == "weight":
                prune_weights(net, k)
            else:
                prune_units(net, k, scores[m])
            top1 = evaluate(net, val)["top1"]
            results[m].append({"sparsity": k, "top1": top1})
            log.info("%s k=%g%%: top-1 %.2f", m, k, top1)
    record = {
        "sparsities": list(SPARSITIES),
        "results": results,
        "model": info,
        "machine": common.machine(),
        "command": " ".join(
            ["tools/classic_mlp.py", *(argv if argv is not None else sys.argv[1:])]
        ),
    }
    common.write_json(args.out / "results.json", record)
    common.write_file(args.out / "table.md", markdown(record))
    plot(record, args.out / "mlp_weight_vs_unit.png")
    print((args.out / "table.md").read_text())
    return 0


LABELS = {
    "weight": "weight magnitude (per layer)",
    "unit_l2": "unit, L2 norm",
    "unit_taylor": "unit, Taylor FO (taylor_fo_bn)",
    "unit_taylor_fg": "unit, Taylor FO full grad (taylor_fo_bn_fg)",
    "unit_taylor_act": "unit, Taylor ICLR'17 (taylor_act)",
}


def markdown(record: dict[str, Any]) -> str:
    rows = [
        [f"{k:g}"] + [f"{record['results'][m][i]['top1']:.2f}" for m in METHODS]
        for i, k in enumerate(record["sparsities"])
    ]
    return "\n".join(common.markdown_table(["sparsity k (%)", *METHODS], rows)) + "\n"


def plot(record: dict[str, Any], path: Path) -> None:
    common.save_png(figure(record), path, dpi=100)


def figure(record: dict[str, Any]) -> Any:
    """Top-1 against sparsity, one line per method labelled as in ``LABELS``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    for m in METHODS:
        pts = record["results"][m]
        style = "o-" if m in ("weight", "unit_l2", "unit_taylor") else "o--"
        ax.plot(
            [p["sparsity"] for p in pts], [p["top1"] for p in pts], style, ms=4, label=LABELS[m]
        )
    ax.set_xlabel("sparsity k (% of each hidden layer's weights or units)")
    ax.set_ylabel("top-1 (%), test set")
    ax.set_title("MLP 784-1000-1000-500-200-10, Fashion-MNIST, no fine-tuning")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


if __name__ == "__main__":
    cli.run(main)
