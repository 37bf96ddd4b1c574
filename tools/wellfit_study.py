"""How criteria rank channels of a well-fit network, against what removing each one does.

The network is ``tools/recipes/digits_narrow_cnn.yaml``'s: a narrow plain CNN trained by the
pipeline's baseline phase to 100% training accuracy on the bundled digits (the regime of a
pretrained network fine-tuned on a small dataset). For it:

* the **population oracle**: the held-out loss change of zeroing each channel (450 validation
  images, BatchNorm in eval mode: the deployed network), with its split-half reliability;
* every criterion variant, scored over ``--windows`` minibatches of training data by the library's
  one-shot scoring (:func:`~taylorprune.pruning.schedule.score_groups`), once per seed of the
  minibatch order; Spearman against the oracle over every channel of every prunable group;
* the **diagnosis** of train-mode scoring: the mean per-minibatch gate gradient
  (γ·∂L/∂γ + β·∂L/∂β, the gate after BatchNorm) against the weight-decay term λ·(γ² + β²). At the
  equilibrium of training with weight decay λ the mean gradient of the training loss balances
  weight decay, so in train mode the first-order signal is that balance, not the channel's effect
  on the deployed network.

    python tools/wellfit_study.py                  # tools/results/wellfit/, about a minute
    python tools/wellfit_study.py --smoke --out /tmp/wellfit
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as common
import _cli as cli
from scipy.stats import spearmanr
from studies.oracle import population_oracle

from taylorprune.data import build_data
from taylorprune.models import build_model
from taylorprune.pipeline.context import model_spec
from taylorprune.pipeline.options import RunOptions
from taylorprune.pruning import StructuredPruner
from taylorprune.pruning.schedule import Scoring, score_groups
from taylorprune.recipe import load_recipe
from taylorprune.train import evaluate

RECIPE = Path(__file__).resolve().parent / "recipes" / "digits_narrow_cnn.yaml"

#: (criterion, BatchNorm mode while scoring, minibatch size): the variants compared.
VARIANTS: tuple[tuple[str, str, int], ...] = (
    ("taylor_fo_bn", "train", 32),
    ("taylor_fo_bn", "eval", 32),
    ("taylor_fo_bn", "train", 128),
    ("taylor_fo_bn", "eval", 128),
    ("taylor_fo_bn_var", "train", 32),
    ("taylor_fo_bn_var", "eval", 32),
    ("taylor_fo_bn_var", "eval", 128),
    ("taylor_fo_bn_fg", "train", 32),
    ("taylor_fo_bn_fg", "eval", 32),
    ("tp_taylor", "train", 32),
    ("tp_taylor", "eval", 32),
    ("l1_norm", "-", 32),
    ("bn_scale", "-", 32),
)


def scoring_batches(data_spec: dict[str, Any], batch: int, n: int, seed: int) -> list:
    """``n`` minibatches of training data in the order ``seed`` shuffles them (epochs repeat)."""
    d = data_spec
    loader = build_data(d["name"], batch_size=batch, seed=seed, augment=d["augment"]).train
    out: list = []
    while len(out) < n:
        out += common.first_batches(loader, n - len(out))
    return out


def gate_gradients(
    model: nn.Module, pruner: StructuredPruner, batches: list, train_mode: bool
) -> np.ndarray:
    """Per minibatch, the gate gradient γ·∂L/∂γ + β·∂L/∂β of every channel (groups summed over
    their coupled gates), in group order: ``(minibatches, channels)``."""
    groups = pruner.groups()
    rows = []
    for x, y in batches:
        net = copy.deepcopy(model).train(train_mode)  # running statistics left as they were
        F.cross_entropy(net(x), y).backward()
        mods = dict(net.named_modules())
        row = []
        for g in groups:
            s = torch.zeros(g.size, dtype=torch.float64)
            for gate in g.gates:
                bn = mods[gate.name]
                grad = (bn.weight.grad * bn.weight + bn.bias.grad * bn.bias).detach().double()
                s[list(gate.root_idxs)] += grad[list(gate.idxs)]
            row.append(s)
        rows.append(torch.cat(row).numpy())
    return np.stack(rows)


def weight_decay_term(model: nn.Module, pruner: StructuredPruner, wd: float) -> np.ndarray:
    """λ·(γ² + β²) per channel, groups summed over their coupled gates, in group order."""
    mods = dict(model.named_modules())
    out = []
    for g in pruner.groups():
        s = torch.zeros(g.size, dtype=torch.float64)
        for gate in g.gates:
            bn = mods[gate.name]
            t = wd * (bn.weight**2 + bn.bias**2).detach().double()
            s[list(gate.root_idxs)] += t[list(gate.idxs)]
        out.append(s)
    return torch.cat(out).numpy()


def flat(scores: dict[str, torch.Tensor], pruner: StructuredPruner) -> np.ndarray:
    return np.concatenate([np.asarray(scores[g.root], dtype=np.float64) for g in pruner.groups()])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_out(p, "wellfit")
    cli.add_recipe(p, RECIPE, "the well-fit network's recipe (its baseline phase trains it)")
    cli.add_seeds(p, [0, 1, 2], "orders of the scoring minibatches")
    p.add_argument("--windows", type=int, default=30, help="minibatches each score is taken over")
    cli.add_threads(p, 1)
    cli.add_smoke(p, "a 2-epoch baseline and 2 scoring minibatches, in seconds")
    args = p.parse_args(argv)
    common.start(args)
    overrides = ["baseline.train.epochs=2"] if args.smoke else None
    recipe = load_recipe(str(args.recipe), overrides or ())
    options = RunOptions.from_recipe(recipe)
    data = build_data(
        options.data["name"],
        batch_size=options.data["batch_size"],
        eval_batch_size=options.data["eval_batch_size"],
        seed=0,
        augment=False,
    )
    model = build_model(model_spec(options.model, data))
    if args.smoke:
        args.windows, args.seeds = 2, args.seeds[:1]
    path = common.study_baseline(Path(args.recipe), overrides=overrides)["final"]
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model.eval()
    example = torch.zeros(1, *data.input_shape)
    pruner = StructuredPruner(copy.deepcopy(model), example)  # the groups scored and removed
    fit = {"train": evaluate(model, data.train), "val": evaluate(model, data.val)}
    held_out = list(data.val)
    halves = build_data(
        options.data["name"], batch_size=32, eval_batch_size=len(held_out[0][1]) // 2, seed=0
    ).val
    parts = list(halves)
    oracle = flat(population_oracle(model, pruner.groups(), held_out), pruner)
    h1 = flat(population_oracle(model, pruner.groups(), parts[:1]), pruner)
    h2 = flat(population_oracle(model, pruner.groups(), parts[1:]), pruner)
    split_half = float(spearmanr(h1, h2).statistic)
    rows = []
    for criterion, bn, batch in VARIANTS:
        rhos = []
        for seed in args.seeds:
            batches = scoring_batches(options.data, batch, args.windows, seed)
            scoring = Scoring(criterion, train_mode=bn != "eval", seed=seed)
            scorer = StructuredPruner(copy.deepcopy(model), example)
            scores = flat(score_groups(scorer, batches, F.cross_entropy, scoring), pruner)
            rhos.append(float(spearmanr(scores, oracle).statistic))
        rows.append(
            {
                "criterion": criterion,
                "bn": bn,
                "batch": batch,
                "spearman": rhos,
                "mean": statistics.fmean(rhos),
                "sd": statistics.stdev(rhos) if len(rhos) > 1 else 0.0,
            }
        )
    train_cfg = recipe.baseline.train
    assert train_cfg is not None
    wd = weight_decay_term(model, pruner, train_cfg.weight_decay)
    diagnosis = {}
    for bn in ("train", "eval"):
        batches = scoring_batches(options.data, 32, args.windows, args.seeds[0])
        grads = gate_gradients(model, pruner, batches, bn == "train")
        mean = grads.mean(axis=0)
        diagnosis[bn] = {
            "pearson_mean_gradient_vs_minus_weight_decay": float(np.corrcoef(mean, -wd)[0, 1]),
            "spearman_mean_squared_vs_oracle": float(spearmanr(mean**2, oracle).statistic),
            "spearman_centred_variance_vs_oracle": float(
                spearmanr(grads.var(axis=0), oracle).statistic
            ),
        }
    result = {
        "recipe": str(Path(args.recipe).name),
        "fit": {k: {"top1": v["top1"], "loss": v["loss"]} for k, v in fit.items()},
        "channels": int(len(oracle)),
        "oracle": {"held_out": len(data.val.dataset), "split_half_spearman": split_half},
        "windows": args.windows,
        "seeds": list(args.seeds),
        "rows": rows,
        "diagnosis": diagnosis,
        "machine": common.machine(),
    }
    common.write_json(args.out / "results.json", result)
    common.write_file(args.out / "table.md", markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict[str, Any]) -> str:
    fit = r["fit"]
    lines = [
        f"Well-fit network ({r['recipe']}): training top-1 {fit['train']['top1']:.2f}% (loss "
        f"{fit['train']['loss']:.4f}), validation {fit['val']['top1']:.2f}%; {r['channels']} "
        f"channels. Population oracle on {r['oracle']['held_out']} held-out images, split-half "
        f"Spearman {r['oracle']['split_half_spearman']:.3f}. Scores over {r['windows']} "
        f"minibatches, seeds {', '.join(map(str, r['seeds']))}.",
        "",
    ]
    table = [
        [
            f"`{x['criterion']}`",
            x["bn"],
            str(x["batch"]),
            f"{x['mean']:.3f} ± {x['sd']:.3f}",
            ", ".join(f"{v:.3f}" for v in x["spearman"]),
        ]
        for x in r["rows"]
    ]
    lines += common.markdown_table(
        ["criterion", "BN while scoring", "minibatch", "Spearman (mean ± sd)", "per seed"], table
    )
    lines += ["", "Mean per-minibatch gate gradient (minibatch 32):", ""]
    diag = [
        [
            bn,
            f"{d['pearson_mean_gradient_vs_minus_weight_decay']:.3f}",
            f"{d['spearman_mean_squared_vs_oracle']:.3f}",
            f"{d['spearman_centred_variance_vs_oracle']:.3f}",
        ]
        for bn, d in r["diagnosis"].items()
    ]
    lines += common.markdown_table(
        [
            "BN",
            "Pearson(mean gradient, −λ(γ²+β²))",
            "Spearman(mean², oracle)",
            "Spearman(variance, oracle)",
        ],
        diag,
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
