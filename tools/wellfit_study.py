"""How criteria rank channels of a well-fit network, against what removing each one does.

The network is ``tools/recipes/digits_narrow_cnn.yaml``'s: a narrow plain CNN trained by the
pipeline's baseline phase to 100% training accuracy on the bundled digits (the regime of a
pretrained network fine-tuned on a small dataset). For it:

* two **oracles**, the held-out loss change of zeroing each channel (450 validation images), each
  with its split-half reliability: as deployed (BatchNorm in eval mode, its running statistics as
  they were before the removal) and after BatchNorm's statistics are re-estimated on training
  images (the network a pruning run ends with: fine-tuning and ``pruning.bn_recalibration``
  re-estimate them);
* every criterion variant, scored over ``--windows`` minibatches of training data by the library's
  one-shot scoring (:func:`~taylorprune.pruning.schedule.score_groups`), once per seed of the
  minibatch order; Spearman against both oracles over every channel of every prunable group;
* the same for a few variants at earlier stages of the same training (``--stages``: the recipe's
  baseline trained for fewer epochs);
* the **diagnosis** of train-mode scoring: the mean per-minibatch gate gradient
  (γ·∂L/∂γ + β·∂L/∂β, the gate after BatchNorm) against the weight-decay term λ·(γ² + β²), and what
  its square and its variance across minibatches say of the oracle as deployed.

    python tools/wellfit_study.py                  # tools/results/wellfit/, a few minutes
    python tools/wellfit_study.py --end-to-end     # tools/results/wellfit/e2e*, about 5 minutes
    python tools/wellfit_study.py --smoke --out /tmp/wellfit

Any recipe whose baseline the pipeline trains can be measured the same way; on a larger network
the oracles take one pass per channel, so ``--channels`` and ``--held-out`` sample them:

    python tools/wellfit_study.py --recipe recipes/fashion_mnist_resnet20_converged.yaml \\
        --stages --channels 64 --held-out 1000 --out tools/results/wellfit/resnet20
"""

from __future__ import annotations

import argparse
import copy
import json
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
import _wellfit_e2e
from scipy.stats import spearmanr
from studies.oracle import population_oracle, recalibrated_oracle

from taylorprune.data import build_data, calibration_loader
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


def _data(d: dict[str, Any], batch: int, eval_batch: int | None, seed: int, augment: bool):
    """The recipe's dataset (its holdout split included, so that validation images are never
    scored on) with these loader settings."""
    return build_data(
        d["name"], batch_size=batch, eval_batch_size=eval_batch, seed=seed, augment=augment,
        holdout=d.get("holdout"), holdout_seed=d.get("holdout_seed", 0),
    )  # fmt: skip


def scoring_batches(data_spec: dict[str, Any], batch: int, n: int, seed: int) -> list:
    """``n`` minibatches of training data in the order ``seed`` shuffles them (epochs repeat)."""
    loader = _data(data_spec, batch, None, seed, data_spec["augment"]).train
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


#: Baseline epochs of the earlier stages of training measured beside the converged network.
STAGES: tuple[int, ...] = (3, 8, 20)
#: The variants measured at those stages.
STAGE_VARIANTS: tuple[tuple[str, str, int], ...] = (
    ("taylor_fo_bn", "train", 32),
    ("taylor_fo_bn", "eval", 32),
    ("taylor_fo_bn_var", "eval", 32),
    ("taylor_fo_bn_fg", "train", 32),
    ("taylor_fo_bn_fg", "eval", 32),  # what the well-fit switch scores with
)
#: Training images (unaugmented, a fixed choice; whole minibatches) BatchNorm is re-estimated on.
CALIBRATION_IMAGES = 640


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_out(p, "wellfit")
    cli.add_recipe(p, RECIPE, "the well-fit network's recipe (its baseline phase trains it)")
    cli.add_seeds(p, [0, 1, 2], "orders of the scoring minibatches")
    p.add_argument("--windows", type=int, default=30, help="minibatches each score is taken over")
    p.add_argument(
        "--stages", type=int, nargs="*", default=list(STAGES),
        help="baseline epochs of earlier stages of training to measure too",
    )  # fmt: skip
    p.add_argument(
        "--end-to-end", action="store_true",
        help="prune the network to -50/-70%% MACs with e2e_variants and fine-tune, per seed "
        "(tools/bench_quality.py's run_job; resumable), instead of the ranking study",
    )  # fmt: skip
    p.add_argument(
        "--channels", type=cli.positive_int, default=None,
        help="measure the oracles on this many channels drawn at random (default: all)",
    )  # fmt: skip
    p.add_argument(
        "--held-out", type=cli.positive_int, default=None,
        help="the oracles' held-out images: the first N validation images (default: all)",
    )  # fmt: skip
    p.add_argument(
        "--reading", action="store_true",
        help="only the product's well-fit reading of the baseline, into well_fit.json",
    )  # fmt: skip
    cli.add_threads(p, 1)
    cli.add_smoke(p, "a 2-epoch baseline and 2 scoring minibatches, in seconds")
    args = p.parse_args(argv)
    common.start(args)
    if args.end_to_end:
        return _wellfit_e2e.end_to_end(args)
    if args.reading:
        return reading(Path(args.recipe), args)
    if args.smoke:
        args.windows, args.seeds, args.stages = 2, args.seeds[:1], [2]
    args.calibration = 64 if args.smoke else CALIBRATION_IMAGES
    epochs = 2 if args.smoke else None
    main_net = measure(Path(args.recipe), epochs, VARIANTS, args, diagnose=True)
    stages = [measure(Path(args.recipe), e, STAGE_VARIANTS, args) for e in args.stages]
    result = {
        "recipe": str(Path(args.recipe).name),
        **main_net,
        "windows": args.windows,
        "seeds": list(args.seeds),
        "calibration_images": main_net.pop("calibration_images"),
        "stages": stages,
        "machine": common.machine(),
    }
    common.write_json(args.out / "results.json", result)
    common.write_file(args.out / "table.md", markdown(result))
    print(markdown(result))
    return 0


def reading(recipe_path: Path, args: argparse.Namespace) -> int:
    """What a run scores this recipe's baseline with: the product's well-fit reading, written to
    ``well_fit.json`` (with the recipe's name) and printed."""
    overrides = ["baseline.train.epochs=2"] if args.smoke else []
    options = RunOptions.from_recipe(load_recipe(str(recipe_path), overrides))
    d = options.data
    data = _data(d, d["batch_size"], d["eval_batch_size"], 0, False)
    model = build_model(model_spec(options.model, data))
    path = common.study_baseline(recipe_path, overrides=overrides)["final"]
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    result = {"recipe": recipe_path.name, "well_fit": _product_choice(model.eval(), data)}
    common.write_json(args.out / "well_fit.json", result)
    print(json.dumps(result))
    return 0


def measure(
    recipe_path: Path,
    epochs: int | None,
    variants: tuple[tuple[str, str, int], ...],
    args: argparse.Namespace,
    diagnose: bool = False,
) -> dict[str, Any]:
    """The recipe's baseline (trained for ``epochs`` instead of the recipe's, if given): its fit,
    both oracles, and each variant's Spearman against both; with ``diagnose``, the oracles'
    split-half reliability and the gate-gradient diagnosis too."""
    overrides = [f"baseline.train.epochs={epochs}"] if epochs is not None else []
    recipe = load_recipe(str(recipe_path), overrides)
    options = RunOptions.from_recipe(recipe)
    d = options.data
    data = _data(d, d["batch_size"], d["eval_batch_size"], 0, False)
    model = build_model(model_spec(options.model, data))
    path = common.study_baseline(recipe_path, overrides=overrides)["final"]
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model.eval()
    example = torch.zeros(1, *data.input_shape)
    pruner = StructuredPruner(copy.deepcopy(model), example)  # the groups scored and removed
    groups = pruner.groups()
    fit = {"train": evaluate(model, data.train), "val": evaluate(model, data.val)}
    x, y = (torch.cat(t) for t in zip(*data.val, strict=True))
    n = len(y) if args.held_out is None else min(args.held_out, len(y))
    held_out, halves = _minibatches(x[:n], y[:n]), [
        _minibatches(x[: n // 2], y[: n // 2]), _minibatches(x[n // 2 : n], y[n // 2 : n])
    ]  # fmt: skip
    calibration = list(calibration_loader(data, -(-args.calibration // d["batch_size"])))
    channels = _sample(groups, args.channels)
    oracles = {
        "eval": lambda batches: population_oracle(model, groups, batches, channels=channels),
        "recalibrated": lambda batches: recalibrated_oracle(
            model, groups, batches, calibration, channels=channels
        ),
    }
    oracle, reliability = {}, {}
    for kind, fn in oracles.items():
        oracle[kind] = flat(fn(held_out), pruner)
        if diagnose:  # the converged network's; the earlier stages share its held-out images
            h1, h2 = flat(fn(halves[0]), pruner), flat(fn(halves[1]), pruner)
            reliability[kind] = _spearman(h1, h2)
    rows = []
    for criterion, bn, batch in variants:
        rhos: dict[str, list[float]] = {kind: [] for kind in oracles}
        for seed in args.seeds:
            batches = scoring_batches(options.data, batch, args.windows, seed)
            scoring = Scoring(criterion, train_mode=bn != "eval", seed=seed)
            scorer = StructuredPruner(copy.deepcopy(model), example)
            scores = flat(score_groups(scorer, batches, F.cross_entropy, scoring), pruner)
            for kind in oracles:
                rhos[kind].append(_spearman(scores, oracle[kind]))
        row: dict[str, Any] = {"criterion": criterion, "bn": bn, "batch": batch}
        for kind, values in rhos.items():
            row[kind] = {
                "spearman": values,
                "mean": statistics.fmean(values),
                "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            }
        rows.append(row)
    out: dict[str, Any] = {
        "epochs": recipe.baseline.train.epochs if recipe.baseline.train else None,
        "fit": {k: {"top1": v["top1"], "loss": v["loss"]} for k, v in fit.items()},
        # the product's reading of this baseline: what a run would score its channels with
        "well_fit": _product_choice(model, data),
        "channels": int(len(oracle["eval"])),
        "measured_channels": int(np.isfinite(oracle["eval"]).sum()),
        "oracle": {
            "held_out": n,
            "split_half_spearman": reliability,
            "eval_vs_recalibrated_spearman": _spearman(oracle["eval"], oracle["recalibrated"]),
        },
        "calibration_images": sum(len(y) for _, y in calibration),
        "rows": rows,
    }
    if diagnose:
        train_cfg = recipe.baseline.train
        assert train_cfg is not None
        wd = weight_decay_term(model, pruner, train_cfg.weight_decay)
        out["diagnosis"] = diagnosis(model, pruner, options.data, args, wd, oracle["eval"])
    return out


def _minibatches(x: torch.Tensor, y: torch.Tensor, size: int = 250) -> list:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]


def _sample(groups: list, k: int | None) -> dict[str, list[int]] | None:
    """``k`` channels drawn uniformly (seed 0) from every prunable group's channels; None: all."""
    every = [(g.root, c) for g in groups for c in range(g.size)]
    if k is None or k >= len(every):
        return None
    picked: dict[str, list[int]] = {}
    for i in torch.randperm(len(every), generator=torch.Generator().manual_seed(0))[:k].tolist():
        root, c = every[i]
        picked.setdefault(root, []).append(c)
    return picked


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman over the channels both measured (an oracle on a sample is NaN elsewhere)."""
    ok = np.isfinite(a) & np.isfinite(b)
    return float(spearmanr(a[ok], b[ok]).statistic)


def diagnosis(
    model: nn.Module,
    pruner: StructuredPruner,
    data_spec: dict[str, Any],
    args: argparse.Namespace,
    wd: np.ndarray,
    oracle: np.ndarray,
) -> dict[str, dict[str, float]]:
    """The mean per-minibatch gate gradient against −λ(γ²+β²), and what its square and its
    variance say of the (eval-mode) oracle, per BatchNorm mode."""
    out = {}
    for bn in ("train", "eval"):
        batches = scoring_batches(data_spec, 32, args.windows, args.seeds[0])
        grads = gate_gradients(model, pruner, batches, bn == "train")
        mean = grads.mean(axis=0)
        out[bn] = {
            "pearson_mean_gradient_vs_minus_weight_decay": float(np.corrcoef(mean, -wd)[0, 1]),
            "spearman_mean_squared_vs_oracle": _spearman(mean**2, oracle),
            "spearman_centred_variance_vs_oracle": _spearman(grads.var(axis=0), oracle),
        }
    return out


def _product_choice(model: nn.Module, data: Any) -> dict[str, Any] | None:
    fit = _wellfit_e2e.product_reading(model, data)
    return None if fit is None else fit.as_dict()


def _choice_text(fit: dict[str, Any] | None) -> str:
    if fit is None:
        return ""
    return (
        f" A run scores this network with `{fit['criterion']}` (well-fit reading: training top-1 "
        f"{fit['top1']:.2f}% on {fit['images']} images, threshold {fit['threshold']:g}%)."
    )


def _cell(x: dict[str, Any]) -> str:
    return f"{x['mean']:.3f} ± {x['sd']:.3f}"


def markdown(r: dict[str, Any]) -> str:
    fit, o = r["fit"], r["oracle"]
    rel = o["split_half_spearman"]
    lines = [
        f"Network {r['recipe']} ({r['epochs']} epochs): training top-1 "
        f"{fit['train']['top1']:.2f}% (loss {fit['train']['loss']:.4f}), validation "
        f"{fit['val']['top1']:.2f}%; {r['channels']} channels"
        + (
            f", the oracles measured on {r['measured_channels']} drawn at random (seed 0)"
            if r["measured_channels"] < r["channels"]
            else ""
        )
        + f". Oracles on {o['held_out']} held-out "
        f"images: as deployed (eval-mode BatchNorm, running statistics as they are; split-half "
        f"Spearman {rel['eval']:.3f}) and after re-estimating BatchNorm on "
        f"{r['calibration_images']} training images (split-half {rel['recalibrated']:.3f}); "
        f"the two agree at Spearman {o['eval_vs_recalibrated_spearman']:.3f}. Scores over "
        f"{r['windows']} minibatches, seeds {', '.join(map(str, r['seeds']))}."
        + _choice_text(r.get("well_fit")),
        "",
    ]
    table = [
        [
            f"`{x['criterion']}`",
            x["bn"],
            str(x["batch"]),
            _cell(x["eval"]),
            ", ".join(f"{v:.3f}" for v in x["eval"]["spearman"]),
            _cell(x["recalibrated"]),
        ]
        for x in r["rows"]
    ]
    lines += common.markdown_table(
        [
            "criterion",
            "BN while scoring",
            "minibatch",
            "Spearman, oracle as deployed",
            "per seed",
            "Spearman, oracle after BN re-estimation",
        ],
        table,
    )
    if r["stages"]:
        lines += ["", "Earlier stages of the same training (the recipe with fewer epochs):", ""]
        stage_rows = []
        for st in r["stages"]:
            tr = st["fit"]["train"]
            head = f"{st['epochs']} ({tr['top1']:.2f}%, {tr['loss']:.4f})"
            for x in st["rows"]:
                name = f"`{x['criterion']}` {x['bn']}"
                stage_rows.append([head, name, _cell(x["eval"]), _cell(x["recalibrated"])])
                head = ""
        lines += common.markdown_table(
            [
                "epochs (training top-1, loss)",
                "criterion, BN",
                "Spearman, as deployed",
                "Spearman, after re-estimation",
            ],
            stage_rows,
        )
    lines += ["", "Mean per-minibatch gate gradient (minibatch 32, oracle as deployed):", ""]
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
    cli.run(main)
