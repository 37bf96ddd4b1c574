"""Which criterion predicts what removing a channel does? ResNet-20 on Fashion-MNIST.

Checkpoints: the recipe ``recipes/fashion_mnist_resnet20_converged.yaml``'s baseline training (12
epochs), after half of its epochs (``mid``) and at the end (``final``, converged), trained once by
the pipeline's baseline phase into the tools' cache (``_bench_common.study_baseline``).
For each checkpoint:

* the **population oracle**: the change of the mean held-out loss (``--oracle-examples`` test
  images, BN in eval mode) when each channel is zeroed, coupled channels together
  (:func:`studies.oracle.population_oracle`), measured on two halves of the set so
  that its own reliability (split-half Spearman) is known;
* every registered criterion (plus ``taylor_so`` with Hutchinson probes), scored with BN in train
  and in eval mode on minibatches of 16, 32 and 128 from the training loader, averaged over windows
  of 10 and 30 minibatches (the recipe default is 30 of 32) and, at batch 32, 100 and 300; seeds
  change the scoring minibatches;
* the **per-minibatch oracle** |L − L_{c=0}| on the first minibatches of each window (seed 0);
* the **removal oracle**: held-out top-1 and loss after removing the lowest 10% / 30% of the
  channels at once by a ranking (raw or divided by the group mean, optionally per MAC saved), BN
  statistics re-estimated on training data, no fine-tuning
  (:func:`studies.oracle.removal_oracle`), on test images the oracle did not see.

Every measurement is one JSON record in ``--cache`` (a rerun skips what is there, so the study can
be stopped and resumed); ``--out`` gets ``results.json``, ``results.md``, ``correlations.csv``,
``removal.csv``, ``population_oracle.json`` and two plots, rewritten after every phase.

Scoring runs all hook- and gradient-based criteria off one backward pass per minibatch
(``studies.scoring.accumulate_shared``: several accumulators on one model), which is 5x cheaper
than one ``channel_scores`` call per criterion; criteria that need double backprop get a pass of
their own.

Examples::

    nice -n 10 python tools/oracle_study.py --threads 1        # the committed results
    python tools/oracle_study.py --smoke --out /tmp/oracle --threads 1   # seconds
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import _bench_common as common
import _cli as cli
import torch
import torch.nn.functional as F
from _oracle_report import BN_MODES, HUTCHINSON, merged_oracle, population, write_results
from studies.no_training import prune_without_training
from studies.oracle import oracle_scores, population_oracle, removal_oracle
from studies.scoring import accumulate_shared
from torch import Tensor, nn

from taylorprune.data import build_data
from taylorprune.graph import ChannelGraph, ChannelGroup
from taylorprune.importance import CRITERIA, ImportanceAccumulator, TaylorSO
from taylorprune.importance.criteria import Criterion, build_criterion
from taylorprune.importance.scoring import frozen_bn, preserved_state
from taylorprune.models import build_model
from taylorprune.pruning import StructuredPruner, find_classifier
from taylorprune.train import evaluate, recalibrate_bn

log = logging.getLogger("taylorprune.bench")

SPEC = common.FASHION_RESNET20
CALIBRATION_SEED = 99
#: the measurements of one checkpoint (methods of ``_Stage``), in the order they are worth having
PHASES = ("oracle", "scores", "pmo", "removal", "seeds", "extra", "iterative")


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
    graph: ChannelGraph,
    groups: list[ChannelGroup],
    batches: Batches,
    criteria: dict[str, Criterion],
    train_mode: bool,
    windows: dict[str, list[int]],
    seed: int,
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """``{window: {criterion: {root: scores}}}`` after each window length in ``windows[name]``.

    The library's scoring, several criteria a pass (:func:`studies.scoring.accumulate_shared`
    inside ``preserved_state`` and ``frozen_bn``, as the one-shot schedule scores): no weight
    updates, and the model's BN statistics are as before, so that scores and oracles describe the
    same network. Criteria without second derivatives share one backward pass per minibatch; the
    others get a pass each.
    """
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    shared = {n: c for n, c in criteria.items() if "hessian" not in c.requirements}
    passes = ([shared] if shared else []) + [{n: c} for n, c in criteria.items() if n not in shared]
    for part in passes:
        with frozen_bn(model, not train_mode), preserved_state(model):
            model.train()
            accs = {
                n: ImportanceAccumulator(model, groups, c, seed=seed, graph=graph)
                for n, c in part.items()
            }
            try:
                done = 0
                for stop in sorted({w for n in part for w in windows[n]}):
                    accumulate_shared(
                        model, list(accs.values()), batches[done:stop], F.cross_entropy
                    )
                    done = stop
                    for n, acc in accs.items():
                        if stop in windows[n]:
                            scores = {r: s.tolist() for r, s in acc.group_scores().items()}
                            out.setdefault(str(stop), {})[n] = scores
            finally:
                for acc in accs.values():
                    acc.close()
    return out


def static_scores(
    model: nn.Module, graph: ChannelGraph, groups: list[ChannelGroup], names: list[str], seed: int
) -> dict[str, dict[str, list[float]]]:
    """Scores of the weight-only criteria ``names``, from the model as it is."""
    out = {}
    for name in names:
        with ImportanceAccumulator(model, groups, name, seed=seed, graph=graph) as acc:
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
        self.measured = False  # whether the current phase computed a record

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
            self.measured = True
        return rec

    def model(self, stage: str) -> nn.Module:
        if self.args.smoke:
            torch.manual_seed(0)
            return build_model(SPEC).eval()
        model = build_model(SPEC)
        path = common.study_baseline(Path(self.args.recipe), mid=True)[stage]
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval()

    def run(self) -> None:
        """Every phase of every stage; the tables are rewritten after each phase that measured
        something (what an interrupted study has measured stays readable), and everything once
        more, plots included, at the end."""
        last = (self.plan.stages[-1], self.args.phases[-1])
        for stage in self.plan.stages:
            model = self.model(stage)
            classifier = find_classifier(model, self.data.example)
            graph = ChannelGraph(model, self.data.example)
            groups = [g for g in graph.groups() if g.root != classifier]
            ctx = _Stage(self, stage, model, graph, groups)
            for phase in self.args.phases:
                self.measured = False
                getattr(ctx, phase)()
                if self.measured or (stage, phase) == last:
                    self.write(plots=(stage, phase) == last)

    def write(self, plots: bool) -> None:
        write_results(self.cache, self.out, self.plan, {"smoke": self.args.smoke}, plots=plots)


class _Stage:
    """The measurements of one checkpoint, in the order they are worth having."""

    def __init__(
        self,
        study: Study,
        stage: str,
        model: nn.Module,
        graph: ChannelGraph,
        groups: list[ChannelGroup],
    ):
        self.s, self.stage, self.model, self.graph, self.groups = study, stage, model, graph, groups
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
            run = partial(
                score_windows, self.model, self.graph, self.groups, batches, crits, train_mode, per
            )
            self.s.record(key, lambda run=run: {"windows": run(seed)})
        self.s.record(
            f"static-{self.stage}-s{seed}",
            lambda: {
                "scores": static_scores(self.model, self.graph, self.groups, self.s.static, seed)
            },
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
        By MACs (the product's target) also the weight criteria and every seed: the library's
        iterative schedule with a hook that trains nothing (``studies.no_training``)."""
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
        net = copy.deepcopy(self.model)
        pruner = StructuredPruner(net, d.example, normalize=None if norm == "raw" else norm)
        result = prune_without_training(
            pruner,
            d.train(plan.default_batch, seed, plan.window * plan.iterative_steps),
            d.calibration,
            criterion=criterion_of(name),
            train_mode=BN_MODES.get(bn, True),
            fraction=plan.fractions[-1],
            steps=plan.iterative_steps,
            window=plan.window,
            unit=unit,
            seed=seed,
        )
        recalibrate_bn(net, d.calibration, batches=len(d.calibration))
        ev = evaluate(net, d.held_out)
        return {
            "ranking": self._crit(name, bn, seed),
            "normalize": norm,
            "cost_aware": False,
            "unit": unit,
            "fraction": plan.fractions[-1],
            "steps": len(result.steps),
            "top1": ev["top1"],
            "loss": ev["loss"],
            "channels_removed": sum(step.channels_removed for step in result.steps),
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


def default_criteria() -> list[str]:
    """Every registered criterion but those that need the pruner's channel graph (torch-pruning's,
    ``tp_*``): the study scores copies of the model, which that graph does not describe. Plus
    the Hutchinson estimate."""
    return [*(n for n in CRITERIA.names() if not CRITERIA.get(n).needs_graph), HUTCHINSON]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_out(p, "oracle")
    p.add_argument(
        "--cache",
        default=None,
        help="one JSON record per measurement (default: the tools' cache, oracle_study-<baseline "
        "folder name>, so that another baseline never reads these; --smoke: OUT/cache)",
    )
    cli.add_recipe(p, common.STUDY_RECIPE, "whose baseline to study")
    p.add_argument("--stages", nargs="+", default=["final", "mid"], choices=["final", "mid"])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 128])
    cli.add_seeds(p, [0, 1, 2])
    p.add_argument(
        "--criteria",
        nargs="+",
        default=default_criteria(),
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
    cli.add_threads(p, 1)
    cli.add_smoke(p, "random init, synthetic data, seconds")
    args = p.parse_args(argv)
    for name in args.criteria:
        if name != HUTCHINSON:
            CRITERIA.get(name)  # an unknown name fails before anything runs
    if args.cache is None and not args.smoke:
        baseline = common.study_baseline(Path(args.recipe), mid=True)["final"].parent
        args.cache = str(common.cache_dir() / f"oracle_study-{baseline.name}")
    common.start(args)
    Study(args).run()
    return 0


if __name__ == "__main__":
    cli.run(main)
