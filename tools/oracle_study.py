"""Which criterion predicts what removing a channel does? ResNet-20 on Fashion-MNIST.

Checkpoints: the recipe ``recipes/fashion_mnist_resnet20.yaml``'s baseline training, after its first
epoch (``mid``) and at the end (``final``), trained once with the library's ``fit`` and cached.
For each checkpoint:

* the **population oracle**: the change of the mean held-out loss (``--oracle-examples`` test
  images, BN in eval mode) when each channel is zeroed, coupled channels together
  (:func:`taylorprune.importance.oracle.population_oracle`), measured on two halves of the set so
  that its own reliability (split-half Spearman) is known;
* every registered criterion (plus ``taylor_so`` with Hutchinson probes), scored with BN in train
  and in eval mode on minibatches of 16, 32 and 128 from the training loader, averaged over windows
  of 10 and 30 minibatches (the recipe default is 30 of 32) and, at batch 32, 100 and 300; seeds
  change the scoring minibatches;
* the **per-minibatch oracle** |L − L_{c=0}| on the first minibatches of each window (seed 0);
* the **removal oracle**: held-out top-1 and loss after removing the lowest 10% / 30% of the
  channels at once by a ranking (raw or divided by the group mean, optionally per MAC saved), BN
  statistics re-estimated on training data, no fine-tuning
  (:func:`taylorprune.importance.oracle.removal_oracle`), on test images the oracle did not see.

Every measurement is one JSON record in ``--cache`` (a rerun skips what is there, so the study can
be stopped and resumed); ``--out`` gets ``results.json``, ``results.md``, ``correlations.csv``,
``removal.csv``, ``population_oracle.json`` and two plots, rewritten after every phase.

The scoring loop below runs all hook- and gradient-based criteria off one backward pass per
minibatch (several accumulators on one model), which is 5x cheaper than one ``channel_scores`` call
per criterion; criteria that need double backprop get a pass of their own. Examples::

    nice -n 10 python tools/oracle_study.py --threads 1        # the committed results
    python tools/oracle_study.py --smoke --out /tmp/oracle --threads 1   # seconds
"""

from __future__ import annotations

import argparse
import copy
import csv
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import _bench_common as common
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from scipy.stats import kendalltau, spearmanr
from torch import Tensor, nn

from taylorprune._io import atomic_save
from taylorprune.baseline_cache import cache_path, store
from taylorprune.data import build_data
from taylorprune.graph import ChannelGraph, ChannelGroup
from taylorprune.importance import CRITERIA, ImportanceAccumulator, TaylorSO
from taylorprune.importance.criteria import Criterion, build_criterion
from taylorprune.importance.oracle import oracle_scores, population_oracle, removal_oracle
from taylorprune.models import build_model
from taylorprune.pruning import StructuredPruner, Target, find_classifier
from taylorprune.recipe import load_recipe
from taylorprune.train import evaluate, fit, recalibrate_bn

log = logging.getLogger("taylorprune.bench")

SPEC = {
    "source": "builtin",
    "name": "resnet20",
    "num_classes": 10,
    "in_chans": 1,
    "pretrained": False,
    "weights": None,
    "checkpoint": None,
    "kwargs": {},
}
BN_MODES = {"train": True, "eval": False}
#: the measurements of one checkpoint (methods of ``_Stage``), in the order they are worth having
CALIBRATION_SEED = 99
PHASES = ("oracle", "scores", "pmo", "removal", "seeds", "extra", "iterative")
HUTCHINSON = "taylor_so_hutchinson"
#: criteria of the headline table, in this order
CRITERIA_ORDER = [
    "taylor_fo_bn",
    "taylor_fo_bn_fg",
    "taylor_so",
    HUTCHINSON,
    "taylor_fo_weight",
    "taylor_act",
    "l2_norm",
    "l1_norm",
    "bn_scale",
    "random",
]


@dataclass
class Plan:
    """Sizes of the study; ``--smoke`` shrinks every one of them."""

    stages: list[str]
    batch_sizes: list[int]
    seeds: list[int]
    criteria: list[str]
    window: int = 30  # the recipe default: pruning.score_batches
    default_batch: int = 32  # the recipe default: data.batch_size
    short_window: int = 10
    long_windows: tuple[int, ...] = (100,)  # at the default batch, every seed
    longest_window: int = 300  # at the default batch, seed 0, final checkpoint
    pmo_examples: int = 256  # per-minibatch oracle: about this many examples per window
    oracle_examples: int = 2048
    # Held-out images added to the oracle after the removal set, per checkpoint: the converged
    # network's loss changes are small, and 2,048 images rank them with split-half Spearman 0.73.
    oracle_extension: dict[str, int] = field(default_factory=lambda: {"final": 2048, "mid": 0})
    oracle_batch: int = 32
    eval_examples: int = 3000
    calibration_batches: int = 10  # of 128 training images, for BN re-estimation
    fractions: tuple[float, ...] = (0.1, 0.3)
    chunk: int = 4
    # Channels measured by the costly oracles: every ``stride``-th of each group, at most ``cap``.
    # Every channel for the converged checkpoint's population oracle (the headline and the
    # oracle's own ranking); every other channel elsewhere, which is plenty for a correlation.
    oracle_stride: dict[str, int] = field(default_factory=lambda: {"final": 1, "mid": 2})
    pmo_stride: int = 2
    channel_cap: int | None = None
    removal_extras: bool = True
    iterative_steps: int = 6  # the larger fraction removed in this many re-scored steps
    data: dict[str, Any] = field(default_factory=dict)

    def pmo_batches(self, batch: int) -> int:
        return max(1, round(self.pmo_examples / batch))

    def pmo_batch_sizes(self, stage: str) -> list[int]:
        return self.batch_sizes if stage == "final" else [self.default_batch]

    def seed_batch_sizes(self, seed: int) -> list[int]:
        """Batch sizes scored with ``seed``: every one with the first seed, the cheap ones (up to
        the recipe's) with the others."""
        if seed == self.seeds[0]:
            return self.batch_sizes
        return [b for b in self.batch_sizes if b <= self.default_batch]

    def windows(self, batch: int, seed: int, stage: str) -> list[int]:
        w = {self.short_window, self.window, self.pmo_batches(batch)}
        if batch == self.default_batch:
            w.update(self.long_windows)
            if seed == self.seeds[0] and stage == "final":
                w.add(self.longest_window)
        return sorted(w)


def make_plan(args: argparse.Namespace) -> Plan:
    if args.smoke:
        return Plan(
            stages=["final"],
            batch_sizes=[8],
            seeds=[0],
            criteria=args.criteria,
            window=2,
            default_batch=8,
            short_window=1,
            long_windows=(3,),
            longest_window=4,
            pmo_examples=8,
            oracle_examples=32,
            oracle_batch=16,
            eval_examples=64,
            calibration_batches=2,
            fractions=(0.1,),
            oracle_extension={"final": 32},
            channel_cap=2,
            removal_extras=False,
            data={
                "name": "synthetic",
                "num_classes": 10,
                "input_shape": (1, 16, 16),
                "num_train": 256,
                "num_val": 128,
            },
        )
    return Plan(
        stages=args.stages,
        batch_sizes=args.batch_sizes,
        seeds=args.seeds,
        criteria=args.criteria,
        oracle_examples=args.oracle_examples,
        eval_examples=args.eval_examples,
    )


# -- checkpoints ----------------------------------------------------------------------------------
def checkpoints(folder: Path) -> dict[str, Path]:
    """The recipe's baseline training, run once: ``mid`` after its first epoch, ``final`` after
    the second.

    Training is the library's :func:`~taylorprune.train.fit` with ``recipes/
    fashion_mnist_resnet20.yaml``'s data and ``baseline.train`` settings (2 epochs of SGD one-cycle,
    batch 128, augmentation, seed 0). Both states are cached in ``folder``; the final one also goes
    into taylorprune's baseline cache for that recipe when the cache has none, so that ``taylorprune
    run`` and the other studies can start from the same network.
    """
    paths = {"mid": folder / "mid.pt", "final": folder / "final.pt"}
    if all(p.is_file() for p in paths.values()):
        return paths
    common.use_repo_cache()
    recipe = load_recipe(str(common.RECIPE))
    cfg, d = recipe.baseline.train, recipe.data
    assert cfg is not None and cfg.epochs == 2, "mid = after the first of two epochs"
    torch.manual_seed(recipe.seed)
    model = build_model(SPEC)
    data = build_data(
        d.name,
        batch_size=d.batch_size,
        eval_batch_size=d.eval_batch_size,
        seed=recipe.seed,
        augment=d.augment,
    )

    def on_epoch_end(epoch: int, row: dict) -> None:
        if epoch == 0:
            atomic_save(model.state_dict(), paths["mid"])

    log.info("training the recipe's baseline (2 epochs) for the mid and final checkpoints")
    fit(model, data.train, data.val, cfg, progress=False, on_epoch_end=on_epoch_end)
    atomic_save(model.state_dict(), paths["final"])
    cached = cache_path(SPEC, recipe)
    if not cached.is_file():
        store(model, cached)
    return paths


# -- data -----------------------------------------------------------------------------------------
Batches = list[tuple[Tensor, Tensor]]


class Data:
    """Held-out splits of the test set and seeded training minibatches, built once."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._train: dict[tuple[int, int], Any] = {}
        kw = plan.data or {"name": "fashion_mnist"}
        self.kw = {k: v for k, v in kw.items() if k != "name"}
        self.name = kw["name"]
        val = build_data(self.name, batch_size=128, eval_batch_size=1000, augment=False, **self.kw)
        xs, ys = zip(*val.val, strict=True)
        x, y = torch.cat(xs), torch.cat(ys)
        need = plan.oracle_examples + plan.eval_examples
        extra = max(plan.oracle_extension.values(), default=0)  # the same images for every stage
        if need + extra > len(y):
            raise SystemExit(f"oracle + eval examples ({need + extra}) exceed the test set")
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        o, e = perm[: plan.oracle_examples], perm[plan.oracle_examples : need]
        # in halves: the oracle's split-half reliability
        self.oracle_halves = [_split(x[i], y[i], plan.oracle_batch) for i in o.chunk(2)]
        ext = perm[need : need + extra]
        self.oracle_extension = [_split(x[i], y[i], plan.oracle_batch) for i in ext.chunk(2)]
        self.held_out = _split(x[e], y[e], 500)
        self.example = x[:1].clone()
        # BN re-estimation batches: a shuffle of their own, not the first scoring minibatches
        self.calibration = self.train(128, CALIBRATION_SEED, plan.calibration_batches)

    def train(self, batch: int, seed: int, n: int | None = None) -> Batches:
        """The first ``n`` minibatches of the training loader shuffled with ``seed`` (the recipe's
        augmentation for Fashion-MNIST), materialised so that every criterion sees the same."""
        key = (batch, seed)
        if key not in self._train:
            augment = self.name == "fashion_mnist"
            bundle = build_data(
                self.name, batch_size=batch, seed=1000 + seed, augment=augment, **self.kw
            )
            self._train[key] = (iter(bundle.train), [])
        it, cache = self._train[key]
        while n is not None and len(cache) < n:
            cache.append(next(it))
        return cache if n is None else cache[:n]


def _split(x: Tensor, y: Tensor, size: int) -> Batches:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]


# -- measurements ---------------------------------------------------------------------------------
def criterion_of(name: str) -> Criterion:
    return TaylorSO(hessian="hutchinson") if name == HUTCHINSON else build_criterion(name)


def score_windows(
    model: nn.Module,
    groups: list[ChannelGroup],
    batches: Batches,
    criteria: dict[str, Criterion],
    train_mode: bool,
    windows: dict[str, list[int]],
    seed: int,
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """``{window: {criterion: {root: scores}}}`` after each window length in ``windows[name]``.

    A copy of the model is scored (train-mode BN moves running statistics), without weight
    updates, so that scores and oracles describe the same network. Criteria without second
    derivatives share one backward pass per minibatch; the others get a pass each.
    """
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    shared = {n: c for n, c in criteria.items() if "hessian" not in c.requirements}
    passes = ([shared] if shared else []) + [{n: c} for n, c in criteria.items() if n not in shared]
    for part in passes:
        net = copy.deepcopy(model).train(train_mode)
        accs = {n: ImportanceAccumulator(net, groups, c, seed=seed) for n, c in part.items()}
        stops = {n: set(windows[n]) for n in part}
        try:
            for i, (x, y) in enumerate(batches[: max(max(s) for s in stops.values())], 1):
                loss = F.cross_entropy(net(x), y)
                if len(accs) == 1:
                    next(iter(accs.values())).backward(loss)  # double backprop where needed
                else:
                    loss.backward()
                    for acc in accs.values():
                        acc.update()
                net.zero_grad(set_to_none=True)
                for n, acc in accs.items():
                    if i in stops[n]:
                        scores = {r: s.tolist() for r, s in acc.group_scores().items()}
                        out.setdefault(str(i), {})[n] = scores
        finally:
            for acc in accs.values():
                acc.close()
    return out


def static_scores(
    model: nn.Module, groups: list[ChannelGroup], names: list[str], seed: int
) -> dict[str, dict[str, list[float]]]:
    out = {}
    for name in names:
        with ImportanceAccumulator(model, groups, name, seed=seed) as acc:
            out[name] = {r: s.tolist() for r, s in acc.group_scores().items()}
    return out


# -- the study ------------------------------------------------------------------------------------
class Study:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.plan = make_plan(args)
        self.out = Path(args.out)
        self.cache = Path(args.cache) if args.cache else self.out / "cache"
        self.data = Data(self.plan)
        names = [*self.plan.criteria]
        self.static = [n for n in names if n != HUTCHINSON and criterion_of(n).static]
        self.gradient = [n for n in names if n not in self.static]

    # records
    def record(self, key: str, compute: Callable[[], dict]) -> dict:
        path = self.cache / f"{key}.json"
        rec = common.read_json(path)
        if rec is None:
            t0 = time.perf_counter()
            rec = compute()
            rec["seconds"] = time.perf_counter() - t0
            common.write_json(path, rec)
            log.info("%s: %.0f s", key, rec["seconds"])
        return rec

    def model(self, stage: str) -> nn.Module:
        if self.args.smoke:
            torch.manual_seed(0)
            return build_model(SPEC).eval()
        model = build_model(SPEC)
        path = checkpoints(Path(self.args.checkpoints))[stage]
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval()

    def run(self) -> None:
        for stage in self.plan.stages:
            model = self.model(stage)
            classifier = find_classifier(model, self.data.example)
            groups = [
                g for g in ChannelGraph(model, self.data.example).groups() if g.root != classifier
            ]
            ctx = _Stage(self, stage, model, groups)
            for phase in self.args.phases:
                getattr(ctx, phase)()
                self.write()

    def write(self) -> None:
        write_results(self.cache, self.out, self.plan, {"smoke": self.args.smoke})


class _Stage:
    """The measurements of one checkpoint, in the order they are worth having."""

    def __init__(self, study: Study, stage: str, model: nn.Module, groups: list[ChannelGroup]):
        self.s, self.stage, self.model, self.groups = study, stage, model, groups
        self.plan = study.plan

    def _population(self, halves: list[Batches]) -> dict:
        stride = self.plan.oracle_stride[self.stage]
        values = [population_oracle(self.model, self.groups, half, chunk=self.plan.chunk,
                                    channels=self._channels(stride), quiet=self.s.args.smoke)
                  for half in halves]  # fmt: skip
        return {
            "halves": [{r: v.tolist() for r, v in h.items()} for h in values],
            "examples": [sum(len(y) for _, y in h) for h in halves],
            "sizes": {g.root: g.size for g in self.groups},
        }

    def _channels(self, stride: int) -> dict[str, list[int]] | None:
        cap = self.plan.channel_cap
        if stride == 1 and cap is None:
            return None
        return {g.root: list(range(0, g.size, stride))[:cap] for g in self.groups}

    def oracle(self) -> None:
        self.s.record(f"pop-{self.stage}", partial(self._population, self.s.data.oracle_halves))
        if self.plan.oracle_extension.get(self.stage, 0):
            ext = partial(self._population, self.s.data.oracle_extension)
            self.s.record(f"pop-{self.stage}-ext", ext)
        d = self.s.data
        self.s.record(
            f"base-{self.stage}",
            lambda: {
                "as_trained": evaluate(self.model, d.held_out),
                "bn_reestimated": removal_oracle(
                    self.model,
                    d.example,
                    {},
                    0.0,
                    d.calibration,
                    d.held_out,
                    calibration_batches=self.plan.calibration_batches,
                ),
            },
        )

    def _scores(self, seed: int, batch: int) -> None:
        plan = self.plan
        windows = plan.windows(batch, seed, self.stage)
        batches = self.s.data.train(batch, seed, max(windows))
        crits = {n: criterion_of(n) for n in self.s.gradient}
        # double backprop costs about three training steps: recipe batch and window, first seed
        per = {
            n: [w for w in windows if w <= plan.window] if n == HUTCHINSON else windows
            for n in crits
        }
        if seed != plan.seeds[0] or batch != plan.default_batch:
            crits.pop(HUTCHINSON, None)
        for bn, train_mode in BN_MODES.items():
            key = f"scores-{self.stage}-{bn}-b{batch}-s{seed}"
            run = partial(score_windows, self.model, self.groups, batches, crits, train_mode, per)
            self.s.record(key, lambda run=run: {"windows": run(seed)})
        self.s.record(
            f"static-{self.stage}-s{seed}",
            lambda: {"scores": static_scores(self.model, self.groups, self.s.static, seed)},
        )

    def scores(self) -> None:
        for batch in self.plan.batch_sizes:
            self._scores(self.plan.seeds[0], batch)

    def pmo(self) -> None:
        """The per-minibatch oracle on the first minibatches of the first seed's windows."""
        for batch in self.plan.pmo_batch_sizes(self.stage):
            n = self.plan.pmo_batches(batch)
            batches = self.s.data.train(batch, self.plan.seeds[0], n)
            for bn, train_mode in BN_MODES.items():
                key = f"pmo-{self.stage}-{bn}-b{batch}"
                self.s.record(key, partial(self._pmo, batches, train_mode))

    def _pmo(self, batches: Batches, train_mode: bool) -> dict:
        scores = oracle_scores(
            self.model,
            self.groups,
            batches,
            train_mode=train_mode,
            chunk=self.plan.chunk,
            channels=self._channels(self.plan.pmo_stride),
        )
        return {"batches": len(batches), "scores": {r: v.tolist() for r, v in scores.items()}}

    def seeds(self) -> None:
        for seed in self.plan.seeds[1:]:
            for batch in self.plan.seed_batch_sizes(seed):
                self._scores(seed, batch)

    # removal
    def _ranking(self, ranking: str) -> dict[str, Tensor] | None:
        """Group scores of a ranking id ``kind:criterion:bn:batch:window:seed`` (see rankings)."""
        parts = ranking.split(":")
        cache = self.s.cache
        if parts[0] == "oracle":
            recs = {k: common.read_json(cache / f"{k}.json")
                    for k in (f"pop-{self.stage}", f"pop-{self.stage}-ext")}  # fmt: skip
            rec = merged_oracle({k: v for k, v in recs.items() if v is not None}, self.stage)
            if rec is None or self._channels(self.plan.oracle_stride[self.stage]) is not None:
                return None  # a ranking needs every channel
            value = {r: torch.from_numpy(v) for r, v in population(rec).items()}
            return {r: v.abs() if parts[1] == "abs" else v for r, v in value.items()}
        name, bn, batch, window, seed = parts[1:]
        if name in self.s.static:
            rec = common.read_json(cache / f"static-{self.stage}-s{seed}.json")
            scores = None if rec is None else rec["scores"].get(name)
        else:
            rec = common.read_json(cache / f"scores-{self.stage}-{bn}-b{batch}-s{seed}.json")
            scores = None if rec is None else rec["windows"].get(window, {}).get(name)
        return None if scores is None else {r: torch.tensor(v) for r, v in scores.items()}

    def _remove(
        self,
        rankings: list[str],
        norms: list[str],
        cost_aware: bool = False,
        fractions: tuple[float, ...] | None = None,
        unit: str = "channels",
    ) -> None:
        for ranking in rankings:
            scores = self._ranking(ranking)
            if scores is None:
                continue
            for norm in norms:
                for frac in fractions or self.plan.fractions:
                    tag = f"{ranking}:{norm}{':mac' if cost_aware else ''}"
                    tag += f"{':macs' if unit == 'macs' else ''}:{frac}"
                    key = "removal-" + self.stage + "-" + tag.replace(":", "_")
                    self.s.record(
                        key,
                        lambda n=norm, f=frac, r=ranking, sc=scores: {
                            "ranking": r,
                            "normalize": n,
                            "cost_aware": cost_aware,
                            "fraction": f,
                            "unit": unit,
                            **removal_oracle(
                                self.model,
                                self.s.data.example,
                                sc,
                                f,
                                self.s.data.calibration,
                                self.s.data.held_out,
                                calibration_batches=self.plan.calibration_batches,
                                normalize=None if n == "raw" else n,
                                unit=unit,
                                cost_aware=cost_aware,
                            ),
                        },
                    )

    def _crit(self, name: str, bn: str, seed: int, batch: int | None = None, window: int = 0):
        batch = batch or self.plan.default_batch
        return f"crit:{name}:{bn}:{batch}:{window or self.plan.window}:{seed}"

    def removal(self) -> None:
        """Every criterion at the recipe's batch and window, both BN modes, ranked as the pruner
        ranks by default (divided by the group mean), removing a fraction of the channels and, as
        a MACs target does, of the MACs; the oracle as a ranking; raw ranking for the main
        candidates. The mid checkpoint: the larger step by channels only."""
        s0 = self.plan.seeds[0]
        rankings = ["oracle:signed", "oracle:abs"]
        for name in self.s.gradient:
            rankings += [self._crit(name, bn, s0) for bn in BN_MODES]
        rankings += [self._crit(name, "-", s0) for name in self.s.static]
        if self.stage != "final":
            self._remove(rankings, ["mean"], fractions=self.plan.fractions[-1:])
            return
        units = ["channels", "macs"] if self.plan.removal_extras else ["channels"]
        for unit in units:
            self._remove(rankings, ["mean"], unit=unit)
        if self.plan.removal_extras:
            for unit in units:
                self._remove(self._raw_rankings(), ["raw"], unit=unit)

    def _raw_rankings(self) -> list[str]:
        s0 = self.plan.seeds[0]
        raw = [self._crit(n, bn, s0) for n, bn in self._candidates()] + ["oracle:signed"]
        return raw + [self._crit(n, "-", s0) for n in ("l1_norm", "bn_scale") if n in self.s.static]

    def iterative(self) -> None:
        """The paper's regime without fine-tuning: the larger fraction removed in steps, each
        scored afresh on the pruned network (BN statistics re-estimated first) with the next
        window of minibatches. Shows whether one-shot rankings lose to compounding removals.
        By MACs (the product's target) also the weight criteria and every seed."""
        if self.stage != "final" or not self.plan.removal_extras:
            return
        static = [(n, "-") for n in ("bn_scale", "l1_norm") if n in self.s.static]
        jobs = [("channels", n, bn, s) for n, bn in self._candidates() for s in self.plan.seeds[:1]]
        jobs += [
            ("macs", n, bn, s)
            for n, bn in self._candidates() + static
            for s in (self.plan.seeds[:1] if bn == "-" else self.plan.seeds)
        ]
        for unit, name, bn, seed in jobs:
            for norm in ("raw", "mean"):
                key = f"iterative-{self.stage}-{name}-{bn}-{norm}"
                key += ("-macs" if unit == "macs" else "") + (f"-s{seed}" if seed else "")
                self.s.record(key, partial(self._iterate, name, bn, norm, unit, seed))

    def _iterate(self, name: str, bn: str, norm: str, unit: str, seed: int) -> dict:
        plan, d = self.plan, self.s.data
        frac = plan.fractions[-1]
        net = copy.deepcopy(self.model)
        pruner = StructuredPruner(net, d.example, normalize=None if norm == "raw" else norm)
        total = round(frac * pruner.channels())
        per_step = math.ceil(total / plan.iterative_steps)
        stream = d.train(plan.default_batch, seed, plan.window * plan.iterative_steps)
        removed = steps = 0
        while steps < plan.iterative_steps and (unit == "macs" or removed < total):
            recalibrate_bn(net, d.calibration, batches=len(d.calibration))
            window = stream[steps * plan.window : (steps + 1) * plan.window]
            if name in self.s.static:
                got = static_scores(net, pruner.groups(), [name], seed)[name]
            else:
                crit = {name: criterion_of(name)}
                run = score_windows(
                    net, pruner.groups(), window, crit, BN_MODES[bn], {name: [len(window)]}, seed
                )
                got = run[str(len(window))][name]
            scores = {r: torch.tensor(v) for r, v in got.items()}
            if unit == "macs":
                keep = 1.0 - frac * (steps + 1) / plan.iterative_steps
                step = pruner.remove_to_target(scores, Target("macs", keep))
            else:
                step = pruner.remove(scores, min(per_step, total - removed))
            removed, steps = removed + step.channels_removed, steps + 1
        recalibrate_bn(net, d.calibration, batches=len(d.calibration))
        ev = evaluate(net, d.held_out)
        return {
            "ranking": self._crit(name, bn, seed),
            "normalize": norm,
            "cost_aware": False,
            "unit": unit,
            "fraction": frac,
            "steps": steps,
            "top1": ev["top1"],
            "loss": ev["loss"],
            "channels_removed": removed,
            "macs_left": pruner.fraction("macs"),
        }

    def _candidates(self) -> list[tuple[str, str]]:
        """The default and the candidates for a better one (docs/importance.md)."""
        cands = [
            ("taylor_fo_bn", "train"),
            ("taylor_fo_bn", "eval"),
            ("taylor_fo_bn_fg", "eval"),
            ("taylor_so", "eval"),
        ]
        return [(n, bn) for n, bn in cands if n in self.s.gradient]

    def extra(self) -> None:
        """The candidates for a better default, the larger step only, raw and normalised: ranking
        per MAC saved (against plain ranking, both removing 30% of the MACs), more seeds, window
        lengths, batch sizes (the last three removing 30% of the MACs and of the channels)."""
        if self.stage != "final" or not self.plan.removal_extras:
            return
        plan, s0, cands = self.plan, self.plan.seeds[0], self._candidates()
        last, norms = plan.fractions[-1:], ["raw", "mean"]
        self._remove(self._raw_rankings(), norms, cost_aware=True, fractions=last, unit="macs")
        seeds = [self._crit(n, bn, s) for s in plan.seeds[1:] for n, bn in cands]
        self._remove(seeds, norms, cost_aware=True, fractions=last, unit="macs")
        if "random" in self.s.static:
            seeds += [self._crit("random", "-", s) for s in plan.seeds[1:]]
        windows = [*plan.long_windows, plan.longest_window, plan.short_window]
        by_window = [self._crit(n, bn, s0, window=w) for w in windows for n, bn in cands]
        others = [b for b in plan.batch_sizes if b != plan.default_batch]
        by_batch = [self._crit(n, bn, s0, batch=b) for b in others for n, bn in cands]
        for unit in ("macs", "channels"):
            for rankings in (seeds, by_window, by_batch):
                self._remove(rankings, norms, fractions=last, unit=unit)


# -- analysis -------------------------------------------------------------------------------------
def merged_oracle(recs: dict[str, dict], stage: str) -> dict | None:
    """The population-oracle record of ``stage`` with its extension's parts appended."""
    if f"pop-{stage}" not in recs:
        return None
    rec = recs[f"pop-{stage}"]
    ext = recs.get(f"pop-{stage}-ext")
    if ext is None:
        return rec
    return {**rec, "halves": rec["halves"] + ext["halves"],
            "examples": rec["examples"] + ext["examples"]}  # fmt: skip


def _mean_of(parts: list[dict], sizes: list[int]) -> dict[str, np.ndarray]:
    return {r: sum(n * np.asarray(p[r], float) for p, n in zip(parts, sizes, strict=True))
            / sum(sizes) for r in parts[0]}  # fmt: skip


def population(rec: dict) -> dict[str, np.ndarray]:
    """The held-out loss change per channel: every part's values weighted by its size."""
    return _mean_of(rec["halves"], rec["examples"])


def _norm(values: np.ndarray) -> np.ndarray:
    """The pruner's ``normalize="mean"``: a group's scores divided by their mean magnitude."""
    denom = float(np.mean(np.abs(values[np.isfinite(values)]))) if len(values) else 0.0
    return values / denom if denom > 0 else values


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """NaN where either side is constant (the correlation is not defined)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a, b).statistic)


def correlate(scores: dict[str, list[float]], oracle: dict[str, np.ndarray]) -> dict[str, float]:
    """Spearman/Kendall of ``scores`` with ``oracle`` over the measured channels: every channel
    ranked together, raw and with each group divided by its mean (as the pruner ranks), and per
    group (median and mean over groups)."""
    per, c_all, n_all, o_all = [], [], [], []
    for root, o in oracle.items():
        c = np.asarray(scores[root], float)
        keep = np.isfinite(o) & np.isfinite(c)
        c_n = _norm(c)[keep]
        c, o = c[keep], o[keep]
        if len(o) >= 3:
            per.append(_spearman(c, o))
        c_all.append(c), n_all.append(c_n), o_all.append(o)
    c, cn, o = np.concatenate(c_all), np.concatenate(n_all), np.concatenate(o_all)
    return {
        "spearman_all": _spearman(c, o),
        "spearman_all_norm": _spearman(cn, o),
        "kendall_all": float(kendalltau(c, o).statistic) if np.ptp(c) > 0 else math.nan,
        "spearman_layer_median": float(np.nanmedian(per)) if per else math.nan,
        "spearman_layer_mean": float(np.nanmean(per)) if per else math.nan,
        "channels": len(o),
    }


def correlation_rows(recs: dict[str, dict]) -> list[dict]:
    """One row per (checkpoint, BN, batch, window, seed, criterion, oracle)."""
    rows: list[dict] = []
    pops = {s: population(merged_oracle(recs, s)) for s in ("final", "mid") if f"pop-{s}" in recs}
    pmos = {k[4:]: r for k, r in recs.items() if k.startswith("pmo-")}

    def add(scores, oracle_name, oracle, **where):
        for crit, sc in scores.items():
            rows.append(
                {**where, "criterion": crit, "oracle": oracle_name, **correlate(sc, oracle)}
            )

    for key, rec in recs.items():
        kind, stage, *rest = key.split("-")
        if stage not in pops:
            continue
        absolute = {r: np.abs(v) for r, v in pops[stage].items()}
        if kind == "scores":
            bn, batch, seed = rest[0], int(rest[1][1:]), int(rest[2][1:])
            pmo = pmos.get(f"{stage}-{bn}-b{batch}")
            for window, scores in rec["windows"].items():
                where = {
                    "stage": stage,
                    "bn": bn,
                    "batch": batch,
                    "window": int(window),
                    "seed": seed,
                }
                add(scores, "population", absolute, **where)
                add(scores, "population_signed", pops[stage], **where)
                if pmo is not None and seed == 0 and int(window) == pmo["batches"]:
                    oracle = {r: np.asarray(v, float) for r, v in pmo["scores"].items()}
                    add(scores, "per_minibatch", oracle, **where)
        elif kind == "static":
            where = {"stage": stage, "bn": "-", "batch": 0, "window": 0, "seed": int(rest[0][1:])}
            add(rec["scores"], "population", absolute, **where)
            add(rec["scores"], "population_signed", pops[stage], **where)
        elif kind == "pmo":
            where = {
                "stage": stage,
                "bn": rest[0],
                "batch": int(rest[1][1:]),
                "window": rec["batches"],
                "seed": 0,
            }
            add({"per_minibatch_oracle": rec["scores"]}, "population", absolute, **where)
    return rows


def _ms(values: list[float]) -> str:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return "–"
    m, sd = common.mean_std(vals)
    return f"{m:.2f}" if len(vals) == 1 else f"{m:.2f} ± {sd:.2f}"


def _pick(rows: list[dict], **where) -> list[dict]:
    return [r for r in rows if all(r.get(k) == v for k, v in where.items())]


def _criteria_in(rows: list[dict]) -> list[str]:
    seen = {r["criterion"] for r in rows}
    return [c for c in CRITERIA_ORDER if c in seen] + sorted(seen - set(CRITERIA_ORDER))


def headline_table(rows: list[dict], plan: Plan, stage: str) -> list[str]:
    pop = _pick(rows, stage=stage, oracle="population")
    batches = plan.batch_sizes
    head = ["criterion", "BN"] + [f"B={b}" for b in batches]
    head += [f"B={plan.default_batch} normalised", f"B={plan.default_batch} per layer"]
    head += [f"B={plan.default_batch} vs per-minibatch oracle"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for crit in _criteria_in(pop):
        if crit == "per_minibatch_oracle":
            continue
        static = bool(_pick(pop, criterion=crit, bn="-"))
        for bn in ["-"] if static else list(BN_MODES):

            def sel(batch, oracle="population", window=plan.window, crit=crit, bn=bn, st=static):
                if st:
                    return _pick(rows, stage=stage, oracle=oracle, criterion=crit)
                return _pick(
                    rows,
                    stage=stage,
                    oracle=oracle,
                    criterion=crit,
                    bn=bn,
                    batch=batch,
                    window=window,
                )

            cells = [_ms([r["spearman_all"] for r in sel(b)]) for b in batches]
            d = sel(plan.default_batch)
            cells += [
                _ms([r["spearman_all_norm"] for r in d]),
                _ms([r["spearman_layer_median"] for r in d]),
            ]
            pmo = (
                []
                if static
                else sel(plan.default_batch, "per_minibatch", plan.pmo_batches(plan.default_batch))
            )
            cells.append(_ms([r["spearman_all"] for r in pmo]))
            lines.append(f"| `{crit}` | {bn} | " + " | ".join(cells) + " |")
    return lines


def window_table(rows: list[dict], plan: Plan, stage: str) -> list[str]:
    sel = _pick(rows, stage=stage, oracle="population", batch=plan.default_batch)
    windows = sorted({r["window"] for r in sel})
    head = ["criterion", "BN"] + [f"{w} minibatches" for w in windows]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for crit in [c for c in _criteria_in(sel) if c != "per_minibatch_oracle"]:
        for bn in BN_MODES:
            cells = [
                _ms([r["spearman_all"] for r in _pick(sel, criterion=crit, bn=bn, window=w)])
                for w in windows
            ]
            lines.append(f"| `{crit}` | {bn} | " + " | ".join(cells) + " |")
    return lines


def oracle_table(rows: list[dict], recs: dict[str, dict]) -> list[str]:
    lines = [
        "| checkpoint | BN | batch | minibatches | Spearman all | per layer (median) |",
        "|---|---|---|---|---|---|",
    ]
    for r in _pick(rows, criterion="per_minibatch_oracle", oracle="population"):
        lines.append(
            f"| {r['stage']} | {r['bn']} | {r['batch']} | {r['window']} | "
            f"{r['spearman_all']:.2f} | {r['spearman_layer_median']:.2f} |"
        )
    return lines


def reliability(rec: dict) -> dict[str, float]:
    """Split-half Spearman of |ΔL| across all measured channels (even against odd parts), and the
    Spearman–Brown estimate for the whole set. A perfect predictor's correlation with this oracle
    is about the square root of the latter."""
    parts, sizes = rec["halves"], rec["examples"]
    a, b = (np.concatenate([np.abs(v) for v in _mean_of(parts[k::2], sizes[k::2]).values()])
            for k in (0, 1))  # fmt: skip
    keep = np.isfinite(a) & np.isfinite(b)
    r = _spearman(a[keep], b[keep])
    return {"split_half": r, "spearman_brown": 2 * r / (1 + r)}


def subset_table(recs: dict[str, dict], plan: Plan, stage: str) -> list[str]:
    """How much the Spearman of the main criteria depends on which held-out images the oracle
    used: against each part of the oracle set and against all of it (first seed)."""
    rec = merged_oracle(recs, stage)
    if rec is None or len(rec["halves"]) < 4:
        return []
    parts, sizes = rec["halves"], rec["examples"]
    first = {r: np.abs(v) for r, v in _mean_of(parts[:2], sizes[:2]).items()}
    second = {r: np.abs(v) for r, v in _mean_of(parts[2:], sizes[2:]).items()}
    whole = {r: np.abs(v) for r, v in population(rec).items()}
    lines = ["| criterion | BN | images 1–2,048 | images 2,049–4,096 | all |",
             "|---|---|---|---|---|"]  # fmt: skip
    s0 = plan.seeds[0]
    for bn in BN_MODES:
        key = f"scores-{stage}-{bn}-b{plan.default_batch}-s{s0}"
        scores = recs.get(key, {}).get("windows", {}).get(str(plan.window), {})
        for crit in [c for c in CRITERIA_ORDER if c in scores][:4]:
            cells = [correlate(scores[crit], o)["spearman_all"] for o in (first, second, whole)]
            lines.append(f"| `{crit}` | {bn} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    return ["Which held-out images: Spearman (all channels, batch "
            f"{plan.default_batch}, {plan.window} minibatches, first seed) against the oracle "
            "of each half of the set and of all of it.", "", *lines, ""]  # fmt: skip


def removal_rows(recs: dict[str, dict]) -> list[dict]:
    """One row per removal record: what ranked (criterion, BN mode, batch, window, seed, or the
    oracle), how (normalisation, per MAC, steps), what went (unit, fraction) and the result."""
    rows = []
    for key, rec in recs.items():
        if not key.startswith(("removal-", "iterative-")):
            continue
        parts = rec["ranking"].split(":")
        if parts[0] == "crit":
            crit, bn, batch, window, seed = (
                parts[1],
                parts[2],
                int(parts[3]),
                int(parts[4]),
                int(parts[5]),
            )
        else:
            crit, bn, batch, window, seed = rec["ranking"], "-", 0, 0, 0
        if bn == "-":
            batch = window = 0  # weights only (or the oracle): no scoring minibatches
        rows.append(
            {
                "stage": key.split("-")[1],
                "criterion": crit,
                "bn": bn,
                "batch": batch,
                "window": window,
                "seed": seed,
                "normalize": rec["normalize"],
                "per_mac": rec["cost_aware"],
                "steps": rec.get("steps", 1),
                "unit": rec.get("unit", "channels"),
                "fraction": rec["fraction"],
                "top1": rec["top1"],
                "loss": rec["loss"],
                "macs_left": rec["macs_left"],
            }
        )
    return rows


def _pivot(rows: list[dict], cols: dict[str, dict], row_keys: list[tuple[str, str]]) -> list[str]:
    """Markdown: one line per (criterion, BN mode), one column per filter in ``cols``; cells are
    top-1 % mean ± std over seeds."""
    table = {
        key: [
            _ms([r["top1"] for r in _pick(rows, criterion=key[0], bn=key[1], **where)])
            for where in cols.values()
        ]
        for key in row_keys
    }
    table = {k: v for k, v in table.items() if any(c != "–" for c in v)}
    used = [j for j in range(len(cols)) if any(v[j] != "–" for v in table.values())]
    head = ["ranking", "BN", *(list(cols)[j] for j in used)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (crit, bn), cells in table.items():
        lines.append(f"| `{crit}` | {bn} | " + " | ".join(cells[j] for j in used) + " |")
    return lines


def _ranking_keys(rows: list[dict]) -> list[tuple[str, str]]:
    keys = {(r["criterion"], r["bn"]) for r in rows}
    order = {c: i for i, c in enumerate(["oracle:signed", "oracle:abs", *CRITERIA_ORDER])}
    return sorted(keys, key=lambda k: (order.get(k[0], 99), k[1] != "train", k))


def removal_tables(rows: list[dict], recs: dict, plan: Plan, stage: str) -> list[str]:
    """One pruning step at the recipe's scoring setting; the candidates' variants."""
    sel = _pick(rows, stage=stage)
    if not sel:
        return []
    recipe = [
        r for r in sel if r["batch"] in (0, plan.default_batch) and r["window"] in (0, plan.window)
    ]
    one = _pick(recipe, steps=1, per_mac=False)
    cols = {}
    for unit in ("macs", "channels"):
        for norm in ("mean", "raw"):
            for f in plan.fractions:
                label = f"{norm}, −{f:.0%} {'MACs' if unit == 'macs' else 'channels'}"
                cols[label] = {"unit": unit, "normalize": norm, "fraction": f}
    out = [
        "One step, every ranking (scores: batch "
        f"{plan.default_batch}, {plan.window} minibatches, first seed unless ± is shown). "
        "'mean': each group divided by its mean before the global ranking (the pruner's "
        "default); 'raw': ranked as scored.",
        "",
        *_pivot(one, cols, _ranking_keys(one)),
    ]
    last = plan.fractions[-1]
    big = _pick(recipe, unit="macs", fraction=last)
    variants = {}
    for norm in ("raw", "mean"):
        variants[f"one step, {norm}"] = {"normalize": norm, "steps": 1, "per_mac": False}
        variants[f"per MAC, {norm}"] = {"normalize": norm, "steps": 1, "per_mac": True}
        variants[f"{plan.iterative_steps} steps, {norm}"] = {
            "normalize": norm,
            "steps": plan.iterative_steps,
        }
    if not big:
        return out + _baseline_line(recs, stage)
    out += [
        "",
        f"Removing {last:.0%} of the MACs: at once, at once ranked per MAC saved, or in "
        f"{plan.iterative_steps} steps re-scored on the pruned network (no fine-tuning).",
        "",
        *_pivot(big, variants, _ranking_keys(big)),
    ]
    cands = [r for r in _pick(sel, steps=1, per_mac=False, fraction=last) if r["bn"] != "-"]
    settings = {}
    for unit in ("macs",):
        u = "MACs"
        for norm in ("raw", "mean"):
            for w in sorted({r["window"] for r in cands if r["batch"] == plan.default_batch}):
                settings[f"{norm}, {w}×{plan.default_batch}, −{last:.0%} {u}"] = {
                    "unit": unit,
                    "normalize": norm,
                    "window": w,
                    "batch": plan.default_batch,
                }
            for b in sorted({r["batch"] for r in cands} - {plan.default_batch}):
                settings[f"{norm}, {plan.window}×{b}, −{last:.0%} {u}"] = {
                    "unit": unit,
                    "normalize": norm,
                    "window": plan.window,
                    "batch": b,
                }

    def settings_of(k: tuple[str, str]) -> set:
        return {(r["batch"], r["window"]) for r in _pick(cands, criterion=k[0], bn=k[1])}

    keys = [k for k in _ranking_keys(cands) if len(settings_of(k)) > 1]
    if keys:
        out += [
            "",
            "Window (minibatches × batch) and batch size, one step.",
            "",
            *_pivot(cands, settings, keys),
        ]
    return out + _baseline_line(recs, stage)


def _baseline_line(recs: dict, stage: str) -> list[str]:
    base = recs.get(f"base-{stage}")
    if not base:
        return []
    a, b = base["as_trained"], base["bn_reestimated"]
    return [
        "",
        f"No removal: {a['top1']:.2f}% (loss {a['loss']:.3f}); BN statistics "
        f"re-estimated the same way: {b['top1']:.2f}% ({b['loss']:.3f}).",
    ]


def write_results(cache: Path, out: Path, plan: Plan, meta: dict) -> None:
    """Tables, CSVs, plots and the summary JSON from every record in ``cache``."""
    recs = {p.stem: common.read_json(p) for p in sorted(cache.glob("*.json"))}
    recs = {k: v for k, v in recs.items() if v is not None}
    rows = correlation_rows(recs)
    removal = removal_rows(recs)
    stages = [s for s in ("final", "mid") if f"pop-{s}" in recs]
    merged = {s: merged_oracle(recs, s) for s in stages}
    rel = {s: reliability(merged[s]) for s in stages}
    out.mkdir(parents=True, exist_ok=True)
    info = {**common.machine(), **meta, "plan": {k: v for k, v in vars(plan).items()}}
    seconds = {k: round(v["seconds"], 1) for k, v in recs.items()}
    base = {s: recs[f"base-{s}"] for s in stages if f"base-{s}" in recs}
    common.write_json(
        out / "results.json",
        {
            "meta": info,
            "oracle_reliability": rel,
            "baseline": base,
            "seconds": seconds,
            "rows": "correlations.csv and removal.csv",
        },
    )
    common.write_json(
        out / "population_oracle.json",
        {
            s: {
                "examples": merged[s]["examples"],
                **rel[s],
                "delta_loss": {
                    r: [float(f"{x:.6g}") for x in v] for r, v in population(merged[s]).items()
                },
            }
            for s in stages
        },
    )
    _csv(out / "correlations.csv", rows)
    _csv(out / "removal.csv", removal)
    md = [
        f"# Oracle study: ResNet-20 on Fashion-MNIST ({info['date']})",
        "",
        "Spearman of each criterion against the population oracle |L_D(c=0) − L_D| (held-out "
        "test images, eval-mode BN) across every channel, mean ± std over "
        f"{len(plan.seeds)} seeds of the scoring minibatches; window {plan.window} minibatches "
        "unless stated. See docs/importance.md for the reading.",
    ]
    for s in stages:
        md += [
            "",
            f"## Checkpoint `{s}`",
            "",
            f"Oracle: {sum(merged[s]['examples'])} held-out images"
            f"{' (every other channel)' if plan.oracle_stride.get(s, 1) > 1 else ''}; split-half "
            f"Spearman {rel[s]['split_half']:.3f} (whole set, Spearman–Brown: "
            f"{rel[s]['spearman_brown']:.3f}).",
            "",
            *subset_table(recs, plan, s),
            *headline_table(rows, plan, s),
            "",
            f"### Window length (batch {plan.default_batch})",
            "",
            *window_table(rows, plan, s),
            "",
            "### Removal oracle (held-out top-1 % / loss, BN re-estimated, no fine-tuning)",
            "",
            *removal_tables(removal, recs, plan, s),
        ]
    md += ["", "## The two oracles", "", *oracle_table(rows, recs)]
    (out / "results.md").write_text("\n".join(md) + "\n")
    if "final" in stages:
        _plots(rows, removal, plan, out)


def _csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def _plots(rows: list[dict], removal: list[dict], plan: Plan, out: Path) -> None:
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    ax, ax2 = fig.subplots(1, 2, width_ratios=[3, 2])
    pop = _pick(rows, stage="final", oracle="population")
    crits = [c for c in _criteria_in(pop) if c != "per_minibatch_oracle"]
    for i, bn in enumerate([*BN_MODES, "-"]):
        xs, ms, sds = [], [], []
        for j, c in enumerate(crits):
            sel = _pick(pop, criterion=c, bn=bn)
            if bn != "-":
                sel = _pick(sel, batch=plan.default_batch, window=plan.window)
            if sel:
                m, sd = common.mean_std([r["spearman_all"] for r in sel])
                xs.append(j + (i - 0.5) * 0.38 * (bn != "-")), ms.append(m), sds.append(sd)
        label = {"train": "BN train mode", "eval": "BN eval mode", "-": "weights only"}[bn]
        ax.bar(xs, ms, 0.36, yerr=sds, label=label, capsize=2)
    ax.set_xticks(range(len(crits)), crits, rotation=30, ha="right")
    ax.axhline(0.85, color="k", lw=0.8, ls="--")
    ax.set_ylabel("Spearman vs population oracle (all channels)")
    ax.set_title(f"converged, batch {plan.default_batch}, {plan.window} minibatches")
    ax.legend(fontsize=8)
    for c in [c for c in ("taylor_fo_bn", "taylor_fo_bn_fg", "taylor_so") if c in crits]:
        for bn, ls in (("train", "--"), ("eval", "-")):
            sel = _pick(pop, criterion=c, bn=bn, batch=plan.default_batch)
            ws = sorted({r["window"] for r in sel})
            ys = [common.mean_std([r["spearman_all"] for r in _pick(sel, window=w)])[0] for w in ws]
            if ws:
                ax2.plot(ws, ys, ls, marker="o", label=f"{c} ({bn})")
    ax2.set_xscale("log")
    ax2.set_xlabel(f"window (minibatches of {plan.default_batch})")
    ax2.set_ylabel("Spearman vs population oracle")
    if ax2.lines:
        ax2.legend(fontsize=7)
    ax2.axhline(0.85, color="k", lw=0.8, ls="--")
    fig.savefig(out / "spearman.png", dpi=110)

    last = plan.fractions[-1]
    sel = [
        r
        for r in _pick(removal, stage="final", unit="macs", fraction=last)
        if r["batch"] in (0, plan.default_batch) and r["window"] in (0, plan.window)
    ]
    shown = {"oracle:signed", "bn_scale", "l1_norm", "taylor_fo_bn", "taylor_fo_bn_fg", "taylor_so"}
    keys = [k for k in _ranking_keys(sel) if k[0] in shown
            and len({(r["normalize"], r["steps"], r["per_mac"]) for r in
                     _pick(sel, criterion=k[0], bn=k[1])}) > 1]  # fmt: skip
    variants = [
        ("one step, mean", {"normalize": "mean", "steps": 1, "per_mac": False}),
        ("one step, raw", {"normalize": "raw", "steps": 1, "per_mac": False}),
        ("per MAC, raw", {"normalize": "raw", "steps": 1, "per_mac": True}),
        (
            f"{plan.iterative_steps} steps, mean",
            {"normalize": "mean", "steps": plan.iterative_steps},
        ),
        (f"{plan.iterative_steps} steps, raw", {"normalize": "raw", "steps": plan.iterative_steps}),
    ]
    if not keys:
        return
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(variants)
    for i, (label, where) in enumerate(variants):
        ms, sds = [], []
        for crit, bn in keys:
            vals = [r["top1"] for r in _pick(sel, criterion=crit, bn=bn, **where)]
            m, sd = common.mean_std(vals) if vals else (math.nan, 0.0)
            ms.append(m), sds.append(sd)
        xs = np.arange(len(keys)) + (i - (len(variants) - 1) / 2) * width
        ax.bar(xs, ms, width * 0.95, yerr=sds, capsize=2, label=label)
    names = [c if bn == "-" else f"{c} ({bn})" for c, bn in keys]
    ax.set_xticks(range(len(keys)), names, rotation=20, ha="right", fontsize=8)
    shown_means = [p.get_height() for p in ax.patches if math.isfinite(p.get_height())]
    ax.set_ylim(max(0.0, min(shown_means, default=5.0) - 5), 90)
    ax.set_ylabel("held-out top-1 % (BN re-estimated, no fine-tuning)")
    ax.set_title(f"converged ResNet-20, {last:.0%} of the MACs removed")
    ax.legend(fontsize=8, ncols=len(variants), loc="upper center", bbox_to_anchor=(0.5, -0.2))
    fig.savefig(out / "removal.png", dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(common.REPO / "tools" / "results" / "oracle"))
    p.add_argument(
        "--cache",
        default=None,
        help="one JSON record per measurement (default: .cache/oracle_study; "
        "--smoke: OUT/cache)",
    )
    p.add_argument("--checkpoints", default=str(common.CACHE / "oracle"))
    p.add_argument("--stages", nargs="+", default=["final", "mid"], choices=["final", "mid"])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 128])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--criteria",
        nargs="+",
        # criteria that need the pruner's channel graph (torch-pruning's, tp_*) score copies
        # of the model here, which that graph does not describe
        default=[*(n for n in CRITERIA.names() if not CRITERIA.get(n).needs_graph), HUTCHINSON],
        help=f"registered names, plus {HUTCHINSON}",
    )
    p.add_argument("--oracle-examples", type=int, default=2048)
    p.add_argument("--eval-examples", type=int, default=3000)
    p.add_argument(
        "--phases",
        nargs="+",
        default=list(PHASES),
        choices=PHASES,
        help="what to measure, in this order (a second process may take some)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared CPU)")
    p.add_argument("--smoke", action="store_true", help="random init, synthetic data, seconds")
    args = p.parse_args(argv)
    for name in args.criteria:
        if name != HUTCHINSON:
            CRITERIA.get(name)  # an unknown name fails before anything runs
    if args.cache is None and not args.smoke:
        args.cache = str(common.CACHE / "oracle_study")
    common.start(args)
    Study(args).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
