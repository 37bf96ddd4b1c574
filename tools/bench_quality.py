"""The pre-registered quality study: pruning methods compared at equal budget on two networks,
every choice made on validation, the test set read once for the final configurations.

The protocol is docs/benchmarks.md#protocol; this tool runs it. In short:

* **data**: Fashion-MNIST's 60,000 training images split once (``data.holdout: 5000``, seed 0)
  into 55,000 for training and 5,000 for validation; the 10,000 test images are evaluated only in
  the ``final`` phase;
* **networks**: the converged baselines of ``recipes/fashion_mnist_resnet20_converged.yaml`` and
  ``recipes/fashion_mnist_vgg_converged.yaml`` (no skips), trained by the pipeline's baseline phase
  once and kept beside the runs (``<out>/<network>/baseline.pt``, its sha256 in ``baseline.json``);
* **one trajectory per (network, method, seed)** through the library's one schedule loop
  (``run_schedule``) as ``taylorprune run`` drives it: train on windows of ``score_batches``
  minibatches while scoring, each step removing 5% of the baseline MACs (``fraction_per_step``),
  so every method reaches -50 / -70 / -85% after 10 / 14 / 17 steps, i.e. the same training;
  a snapshot at each level, measured on validation as it is and with BatchNorm re-estimated;
* **fine-tuning**: every snapshot the same (the recipe's ``finetune`` capped at
  ``--ft-iters`` minibatches), optionally distilling from the baseline;
* **same data per seed**: every trajectory reseeds its loaders from its seed, phase by phase
  (``reseed_phase``), so a seed means the same minibatches and augmentation for every method;
* **phases**: ``select`` runs every variant of every family (:data:`FAMILIES`) on the selection
  seeds and picks each family's best on validation; ``kd-select`` picks the distillation setting
  for the chosen default; ``final`` runs the chosen variants (and each with the chosen
  distillation) on fresh seeds and reads validation and test; ``report`` writes the tables,
  paired differences with 95% intervals, and plots, from the files on disk alone.

Each job writes ``<out>/<network>/runs/<variant>_s<seed>.json``; a rerun skips what is on disk,
so the study resumes. Processes side by side share the jobs: ``--shard i/n`` starts with every
n-th job from the i-th, then takes the others' not yet started (a job is held by one process at a
time, see :func:`claim`); ``--phase all`` runs the phases in order, each once the one before it is
complete.

    python tools/bench_quality.py --phase all --shard 0/2 & \\
        python tools/bench_quality.py --phase all --shard 1/2
    python tools/bench_quality.py --report-only       # every table and plot, from the runs
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import fcntl
import io
import itertools
import logging
import shutil
import statistics
import sys
import textwrap
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as common
import _cli as cli

from taylorprune import StructuredPruner, Target
from taylorprune.data import DataBundle, calibration_loader
from taylorprune.measure import count
from taylorprune.optimizers import build_optimizer, make_loss
from taylorprune.pipeline.context import reseed_phase
from taylorprune.pipeline.options import RunOptions
from taylorprune.pruning.schedule import Schedule, ScheduleHooks, Scoring, run_schedule
from taylorprune.recipe import DistillConfig, Recipe, load_recipe
from taylorprune.runner import build_inputs
from taylorprune.train import distiller, evaluate, evaluate_recalibrated, fit, train_epoch

log = logging.getLogger("taylorprune.bench")

NETWORKS: dict[str, Path] = {
    "resnet20": common.REPO / "recipes" / "fashion_mnist_resnet20_converged.yaml",
    "vgg": common.REPO / "recipes" / "fashion_mnist_vgg_converged.yaml",
}
LEVELS: tuple[float, ...] = (0.5, 0.3, 0.15)
FRACTION_PER_STEP = 0.05
SELECTION_SEEDS: tuple[int, ...] = (0, 1)
#: Fresh seeds for the final runs (never used to choose anything), by family.
FINAL_SEEDS: dict[str, tuple[int, ...]] = {
    "taylor_fo_bn": (10, 11, 12, 13, 14),
    "tp_magnitude": (10, 11, 12, 13, 14),
    "tp_taylor": (10, 11, 12, 13, 14),
    "l1_norm": (10, 11, 12),
    "bn_scale": (10, 11, 12),
    "random": (10, 11, 12),
}
#: The final seed whose runs also record the pruning curve (validation after every removal, as it
#: is and re-estimated): the curve is a picture and enters no verdict, and it costs about three
#: times a run, so one seed per method draws it (docs/benchmarks.md, "Protocol").
CURVE_SEED = 10
DEFAULT_FAMILY = "taylor_fo_bn"
KD_FAMILIES = ("taylor_fo_bn", "tp_magnitude", "tp_taylor")
#: (weight, temperature, while_pruning): the distillation settings kd-select compares.
KD_GRID: tuple[tuple[float, float, bool], ...] = (
    (0.5, 4.0, False),
    (0.5, 4.0, True),
    (0.9, 4.0, False),
    (0.9, 4.0, True),
)
RECAL_BATCHES = 5  # minibatches of 128 training images (640) for BatchNorm re-estimation
#: The bar the study holds the default to: MACs kept, and the least lead on the test set.
BAR_KEEP, BAR_POINTS = 0.3, 1.0


@dataclass(frozen=True)
class Variant:
    """A criterion with the product's options: BatchNorm mode while scoring (None: the criterion
    reads weights only), EMA across removals, ranking (``normalize``, ``cost_aware``), and the
    distillation setting (None: plain fine-tuning)."""

    criterion: str
    bn: str | None = "train"
    ema: float | None = None
    normalize: str | None = None
    cost_aware: bool = False
    distill: tuple[float, float, bool] | None = None

    @property
    def name(self) -> str:
        parts = [self.criterion]
        if self.bn is not None:
            parts.append(f"bn-{self.bn}")
        parts.append("ema" if self.ema is not None else "noema")
        parts.append(
            ("mean" if self.normalize == "mean" else "raw") + ("-mac" if self.cost_aware else "")
        )
        if self.distill is not None:
            w, t, windows = self.distill
            parts.append(f"kd{w:g}-t{t:g}" + ("-windows" if windows else ""))
        return "_".join(parts)

    def with_distill(self, kd: tuple[float, float, bool] | None) -> Variant:
        return dataclasses.replace(self, distill=kd)


RANKINGS = ((None, False), (None, True), ("mean", False), ("mean", True))


def _grid(criteria: Iterable[str], bns: Iterable[str | None], emas: Iterable[float | None],
          rankings: Iterable[tuple[str | None, bool]]) -> tuple[Variant, ...]:  # fmt: skip
    return tuple(
        Variant(c, b, e, n, a)
        for c, b, e, (n, a) in itertools.product(criteria, bns, emas, rankings)
    )


#: Every family's variants, the same options for all (docs/benchmarks.md#protocol).
FAMILIES: dict[str, tuple[Variant, ...]] = {
    "taylor_fo_bn": _grid(
        ("taylor_fo_bn", "taylor_fo_bn_var"), ("train", "eval"), (None, 0.5), RANKINGS[:2]
    ),
    "tp_taylor": _grid(("tp_taylor",), ("train", "eval"), (None, 0.5), RANKINGS),
    "tp_magnitude": _grid(("tp_magnitude",), (None,), (None,), RANKINGS),
    "l1_norm": _grid(("l1_norm",), (None,), (None,), RANKINGS),
    "bn_scale": _grid(("bn_scale",), (None,), (None,), RANKINGS),
    "random": _grid(("random",), (None,), (None,), RANKINGS[:2]),
}


# -- one trajectory ------------------------------------------------------------------------------
class _Hooks(ScheduleHooks):
    """Trains each window as the pipeline's prune phase does (distilling when asked); after each
    removal, a snapshot when a level is reached and, with ``curve``, validation as it is and with
    BatchNorm re-estimated."""

    def __init__(
        self,
        data: DataBundle,
        pruner: StructuredPruner,
        teacher: Any,
        curve: bool,
        levels: tuple[float, ...] = LEVELS,
    ) -> None:
        self.data, self.pruner, self.teacher, self.curve = data, pruner, teacher, curve
        self.targets = levels
        self.points: list[dict[str, Any]] = []
        self.levels: list[dict[str, Any]] = []
        self.t0 = time.perf_counter()

    def train(self, model, batches, optimizer, loss_fn, scorer) -> None:  # type: ignore[override]
        train_epoch(
            model, batches, optimizer, loss_fn, after_backward=scorer.update,
            score_first=scorer.score_first, progress=False, distill=self.teacher,
        )  # fmt: skip

    def after_step(self, step: Any, state: Any) -> None:
        model, pruner = self.pruner.model, self.pruner
        fraction = pruner.fraction("macs")
        pending = [k for k in self.targets[len(self.levels) :] if fraction <= k + 0.01]
        if self.curve or pending:
            measured = _val_pruned(model, self.data)
            if self.curve:
                self.points.append({"step": state.steps, "macs_fraction": fraction, **measured})
        for keep in pending:  # normally one: each step lands on its 5% share
            snapshot = copy.deepcopy(model).eval()
            macs, params = count(snapshot, torch.zeros(1, *self.data.input_shape))
            self.levels.append(
                {
                    "keep": keep,
                    "steps": state.steps,
                    "trained": state.trained,
                    "macs_fraction": fraction,
                    "macs": macs,
                    "params": params,
                    **measured,
                    "prune_s": time.perf_counter() - self.t0,
                    "_snapshot": snapshot,
                }
            )
        model.train()


def _val_pruned(model: nn.Module, data: DataBundle) -> dict[str, float]:
    """Validation top-1 right after a removal: with the running statistics as they trail the
    removals, and with BatchNorm re-estimated on 640 training images (a copy; the model keeps its
    own)."""
    stale = evaluate(model, data.val)["top1"]
    cal = calibration_loader(data, RECAL_BATCHES)
    recal = evaluate_recalibrated(model, data.val, cal, batches=RECAL_BATCHES)["top1"]
    return {"val_stale": stale, "val_recal": recal}


def run_job(
    recipe: Recipe,
    baseline: nn.Module,
    variant: Variant,
    seed: int,
    *,
    final: bool,
    args: Any,
    fraction_per_step: float = FRACTION_PER_STEP,
    levels: tuple[float, ...] = LEVELS,
    partial: bool = False,
) -> dict[str, Any]:
    """Prune a copy of ``baseline`` with ``variant`` down to the last of ``levels`` (MACs kept; a
    snapshot at each), fine-tune a copy of each snapshot alike, and measure (the test set only when
    ``final``, the pruning curve only then and on :data:`CURVE_SEED`). A trajectory that stops
    before the last level raises, or with ``partial`` keeps the levels it reached (``stop`` says
    why it ended)."""
    options = RunOptions.from_recipe(recipe.model_copy(update={"seed": seed}))
    data, _, _, _ = build_inputs(options)
    model = copy.deepcopy(baseline).train()
    # a variant's distillation is its own, not the recipe's default
    ft_cfg = recipe.finetune.model_copy(update={"max_iters": args.ft_iters, "distill": None})
    window_teacher = None
    if variant.distill is not None:
        w, t, windows = variant.distill
        kd = DistillConfig(weight=w, temperature=t, while_pruning=windows)
        ft_cfg = ft_cfg.model_copy(update={"distill": kd})
        window_teacher = distiller(ft_cfg, baseline) if windows else None
    example = torch.zeros(1, *data.input_shape)
    pruner = StructuredPruner(
        model, example, normalize=variant.normalize, cost_aware=variant.cost_aware
    )
    optimizer = build_optimizer(model, recipe.finetune)  # the prune phase's: constant lr
    scoring = Scoring(
        variant.criterion, train_mode=variant.bn != "eval", ema=variant.ema, seed=seed
    )
    hooks = _Hooks(data, pruner, window_teacher, curve=_draws_curve(final, seed), levels=levels)
    schedule = Schedule(
        "iterative", recipe.pruning.score_batches, fraction_per_step=fraction_per_step
    )
    reseed_phase(data, seed, "prune", 0)
    result = run_schedule(
        pruner, _endless(data.train), make_loss(recipe.finetune), Target("macs", levels[-1]),
        schedule, scoring, optimizer=optimizer, hooks=hooks,
    )  # fmt: skip
    if len(hooks.levels) != len(levels) and not partial:
        raise RuntimeError(
            f"{variant.name}: stopped at {pruner.fraction('macs'):.3f} ({result.stop})"
        )
    for lv in hooks.levels:
        snapshot = lv.pop("_snapshot")
        t1 = time.perf_counter()
        reseed_phase(data, seed, "finetune", 0)
        teacher = baseline if ft_cfg.distill is not None else None
        fit(snapshot, data.train, None, ft_cfg, progress=False, teacher=teacher)
        lv["val"] = evaluate(snapshot, data.val)["top1"]
        if final:
            assert data.test is not None
            lv["test"] = evaluate(snapshot, data.test)["top1"]
        lv["finetune_s"] = time.perf_counter() - t1
    out = {
        "levels": hooks.levels,
        "curve": hooks.points,
        "total_s": time.perf_counter() - hooks.t0,
    }
    if partial:
        out.update(stop=result.stop, macs_fraction=pruner.fraction("macs"))
    return out


def _endless(loader: Iterable) -> Iterator:
    for _ in itertools.count():
        yield from loader


# -- phases ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """What a study runs: the networks' recipes, every family's variants, the seeds and the
    distillation settings; :func:`plan` gives the protocol's, or a smoke run's (tiny twins, one
    variant a family, one seed)."""

    recipes: dict[str, Path]
    families: dict[str, tuple[Variant, ...]]
    selection_seeds: tuple[int, ...]
    final_seeds: dict[str, tuple[int, ...]]
    kd_grid: tuple[tuple[float, float, bool], ...]
    overrides: tuple[str, ...] = ()
    fraction_per_step: float = FRACTION_PER_STEP


def plan(smoke: bool) -> Plan:
    if not smoke:
        return Plan(NETWORKS, FAMILIES, SELECTION_SEEDS, FINAL_SEEDS, KD_GRID)
    tiny = {net: p.parent / "tiny" / p.name for net, p in NETWORKS.items()}
    return Plan(
        tiny,
        {f: vs[:1] for f, vs in FAMILIES.items()},
        (0,),
        {f: (10,) for f in FINAL_SEEDS},
        KD_GRID[:2],
        ("baseline.train.epochs=2",),
        0.3,  # steps to 0.7, 0.4 and 0.15: a snapshot at each level is the plumbing under test
    )


def _score(runs: list[dict[str, Any]]) -> float:
    """The selection score: mean validation top-1 after fine-tuning over levels and seeds."""
    return statistics.fmean(lv["val"] for r in runs for lv in r["levels"])


def _runs(out: Path, network: str, variant: Variant, seeds: Iterable[int]) -> list[dict] | None:
    """The runs of ``variant`` on ``seeds``, or None while any is missing."""
    found = [common.read_json(out / network / "runs" / f"{variant.name}_s{s}.json") for s in seeds]
    return None if any(r is None for r in found) else found  # type: ignore[return-value]


def _family_scores(
    out: Path, networks: list[str], p: Plan, family: str
) -> dict[Variant, list[float]]:
    """Each variant of ``family``: its selection score per network (raises while a run lacks)."""
    scores: dict[Variant, list[float]] = {}
    for v in p.families[family]:
        for net in networks:
            runs = _runs(out, net, v, p.selection_seeds)
            if runs is None:
                raise SystemExit(f"{net}: {v.name} lacks selection runs; run --phase select")
            scores.setdefault(v, []).append(_score(runs))
    return scores


def choose_default(out: Path, networks: list[str], p: Plan) -> Variant:
    """The library family's variant with the best selection score averaged over the networks:
    the product default (it needs that family's selection runs only)."""
    scores = _family_scores(out, networks, p, DEFAULT_FAMILY)
    return max(p.families[DEFAULT_FAMILY], key=lambda v: statistics.fmean(scores[v]))


def choose(out: Path, networks: list[str], p: Plan) -> dict[str, dict[str, Variant]]:
    """Each family's variant per network, by the selection score on the selection seeds: the
    default family's one variant for all networks (the product has one default), each peer's best
    on each network (the comparison most favourable to the peers)."""
    chosen: dict[str, dict[str, Variant]] = {}
    for family, variants in p.families.items():
        if family == DEFAULT_FAMILY:
            best = choose_default(out, networks, p)
            chosen[family] = {net: best for net in networks}
            continue
        scores = _family_scores(out, networks, p, family)
        chosen[family] = {
            net: max(variants, key=lambda v, i=i: scores[v][i]) for i, net in enumerate(networks)
        }
    return chosen


def choose_kd(
    out: Path, networks: list[str], default: Variant, p: Plan
) -> tuple[float, float, bool] | None:
    """The distillation setting with the best selection score over every network, or None when
    none beats plain fine-tuning of the default (then distillation stays off by default)."""

    def mean_score(v: Variant) -> float:
        per = [_runs(out, net, v, p.selection_seeds) for net in networks]
        if any(r is None for r in per):
            raise SystemExit(f"{v.name} lacks selection runs; run --phase kd-select")
        return statistics.fmean(_score(r) for r in per)  # type: ignore[arg-type]

    plain = mean_score(default)
    best = max(p.kd_grid, key=lambda kd: mean_score(default.with_distill(kd)))
    return best if mean_score(default.with_distill(best)) > plain else None


def jobs(
    phase: str, out: Path, networks: list[str], p: Plan
) -> list[tuple[str, Variant, int, bool]]:
    """(network, variant, seed, final) of a phase, in a fixed order."""
    if phase == "select":
        return [
            (net, v, s, False)
            for s in p.selection_seeds
            for net in networks
            for variants in p.families.values()
            for v in variants
        ]
    chosen = choose(out, networks, p)
    default = chosen[DEFAULT_FAMILY][networks[0]]
    if phase == "kd-select":
        return [
            (net, default.with_distill(kd), s, False)
            for s in p.selection_seeds
            for net in networks
            for kd in p.kd_grid
        ]
    # distillation in the final runs: the chosen setting, or the first when none beat plain
    # fine-tuning (the comparison with and without it is reported either way)
    kd = choose_kd(out, networks, default, p) or p.kd_grid[0]
    out_jobs = []
    for family, per_net in chosen.items():
        for net in networks:
            for s in p.final_seeds[family]:
                out_jobs.append((net, per_net[net], s, True))
                if family in KD_FAMILIES:
                    out_jobs.append((net, per_net[net].with_distill(kd), s, True))
    return out_jobs


PHASES: tuple[str, ...] = ("select", "kd-select", "final")
#: Seconds a chained worker waits between looks at runs other processes hold.
POLL_S = 30.0


@contextlib.contextmanager
def claim(path: Path) -> Iterator[bool]:
    """Hold the job whose result is ``path`` for this process; yields False when another process
    holds it. The hold is an ``flock`` on ``.<name>.lock`` beside it, so a process that dies (a
    kill, the machine going down) releases it; a lock file left behind is simply taken again."""
    lock = _lock(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            lock.unlink(missing_ok=True)  # the result is on disk first: a late taker skips it


def _lock(path: Path) -> Path:
    """The lock file of the job whose result is ``path``."""
    return path.with_name(f".{path.name}.lock")


def _held(path: Path) -> bool:
    """Whether a process holds the job whose result is ``path`` now (looked at, not taken)."""
    try:
        handle = open(_lock(path))  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def run_phase(args: argparse.Namespace, p: Plan, phase: str) -> int:
    """Run the phase's jobs not on disk and not held by another process: this shard's share
    (``--shard i/n``) first, then the others' from the far end, so processes side by side finish
    together. Returns how many of the phase's runs are not on disk after the pass (held by other
    processes, or given up by one that died since)."""
    todo = jobs(phase, args.out, args.networks, p)
    i, n = args.shard
    order = todo[i::n] + [job for k, job in enumerate(todo) if k % n != i][::-1]
    baselines: dict[str, tuple[Recipe, nn.Module]] = {}
    for net, variant, seed, final in order:
        name = f"{variant.name}_s{seed}"
        path = args.out / net / "runs" / f"{name}.json"
        if path.exists():
            continue
        with claim(path) as mine:
            if not mine:
                continue
            if path.exists():  # finished by another process between the two looks
                continue
            if net not in baselines:
                baselines = {net: _baseline(net, args, p)}  # one network in memory at a time
            recipe, baseline = baselines[net]
            rec = run_job(
                recipe, baseline, variant, seed, final=final, args=args,
                fraction_per_step=p.fraction_per_step,
            )  # fmt: skip
            rec.update(
                network=net, variant=variant.name, spec=dataclasses.asdict(variant), seed=seed,
                final=final, family=_family(variant), ft_iters=args.ft_iters,
            )  # fmt: skip
            common.write_json(path, rec)
        log.info(
            "%s %s seed %d (%.0f s): %s", net, variant.name, seed, rec["total_s"],
            ", ".join(f"{lv['macs_fraction']:.2f} MACs {lv['val_recal']:.1f} -> {lv['val']:.2f}"
                      for lv in rec["levels"]),
        )  # fmt: skip
    return sum(
        not (args.out / net / "runs" / f"{v.name}_s{s}.json").exists() for net, v, s, _ in todo
    )


def run_phases(args: argparse.Namespace, p: Plan) -> None:
    """``--phase all``: every phase in order, each started once the one before it is complete on
    disk (a worker waits for the runs other processes hold), so workers started side by side run
    the whole study; a run another worker gave up (it died) is taken on the next look. A single
    phase runs what it can and says what other processes hold."""
    chained = args.phase == "all"
    for phase in PHASES if chained else (args.phase,):
        while missing := run_phase(args, p, phase):
            if not chained:
                log.info("%s: %d runs held by other processes, left to them", phase, missing)
                break
            log.info("%s: waiting for %d runs held by other processes", phase, missing)
            time.sleep(POLL_S)


def status(out: Path, networks: list[str], p: Plan) -> list[str]:
    """One line per phase: the runs on disk of the jobs it has, those a process holds now, and the
    CPU time the missing ones will take. A missing run is costed at the mean of the runs of its
    kind done so far (drawing the pruning curve or not: a curve run takes several times longer),
    from this phase or, for a kind it has not run yet, the phases before it. A phase whose jobs
    depend on choices not yet made says what it waits for."""
    lines, cost = [], {}  # seconds per run, by whether it draws the curve
    for phase in PHASES:
        try:
            todo = jobs(phase, out, networks, p)
        except SystemExit:
            lines.append(f"{phase}: waits for the phases before it")
            continue
        paths = [out / net / "runs" / f"{v.name}_s{s}.json" for net, v, s, _ in todo]
        found = [common.read_json(path) for path in paths]
        done = [r for r in found if r is not None]
        for curve in (False, True):
            kind = [r["total_s"] for r in done if _draws_curve(r["final"], r["seed"]) == curve]
            if kind:
                cost[curve] = statistics.fmean(kind)
        missing = [
            _draws_curve(final, s)
            for (_, _, s, final), r in zip(todo, found, strict=True)
            if r is None
        ]
        running = sum(_held(path) for path in paths)
        line = f"{phase}: {len(done)} of {len(todo)} runs"
        if running:
            line += f", {running} running"
        if missing and cost:
            seconds = sum(cost.get(curve, cost.get(not curve, 0.0)) for curve in missing)
            line += f", about {seconds / 3600:.1f} h of one core left"
        lines.append(line)
    return lines


def _draws_curve(final: bool, seed: int) -> bool:
    return final and seed == CURVE_SEED


def _family(variant: Variant) -> str:
    plain = variant.with_distill(None)
    return next(f for f, vs in FAMILIES.items() if plain in vs)


def _baseline(net: str, args: argparse.Namespace, p: Plan) -> tuple[Recipe, nn.Module]:
    """The network's recipe and its baseline: the one kept beside the runs
    (``<out>/<network>/baseline.pt``, committed with them, so a resumed study prunes the very
    network its earlier runs pruned), else trained once by the pipeline's baseline phase and kept
    there. A kept baseline trained for other settings, or whose bytes changed, stops the study."""
    import hashlib

    overrides = list(p.overrides)
    recipe = load_recipe(p.recipes[net], overrides)
    data, model, _, _ = build_inputs(RunOptions.from_recipe(recipe))
    folder = args.out / net
    kept, info = folder / "baseline.pt", folder / "baseline.json"
    key = common.baseline_key(recipe)
    base = common.read_json(info)
    if kept.is_file():
        blob = kept.read_bytes()
        if base is None or base.get("key") != key:
            raise SystemExit(f"{kept}: trained for other settings than {key}; move it away to "
                             "train this recipe's baseline")  # fmt: skip
        if hashlib.sha256(blob).hexdigest() != base.get("sha256"):
            raise SystemExit(f"{kept}: its bytes do not match the sha256 in {info.name}")
        model.load_state_dict(torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True))
        return recipe, model.eval()
    trained = common.study_baseline(p.recipes[net], overrides=overrides)["final"]
    model.load_state_dict(torch.load(trained, map_location="cpu", weights_only=True))
    val = evaluate(model, data.val)["top1"]
    if base is not None and base["val"] != val:  # runs on disk, but not their baseline's file
        raise SystemExit(f"{net}: the baseline trained here reads {val:.2f}% on validation, "
                         f"{info} says {base['val']:.2f}%: not the network the runs on disk "
                         "pruned")  # fmt: skip
    macs, params = count(model, torch.zeros(1, *data.input_shape))
    folder.mkdir(parents=True, exist_ok=True)
    part = kept.with_name(".baseline.pt.part")
    shutil.copyfile(trained, part)
    digest = hashlib.sha256(part.read_bytes()).hexdigest()
    base = {"machine": common.machine(), **(base or {})}
    base |= {"network": net, "recipe": p.recipes[net].name, "key": key, "sha256": digest}
    common.write_json(info, base | {"macs": macs, "params": params, "val": val})
    part.replace(kept)
    return recipe, model.eval()


# -- report ----------------------------------------------------------------------------------------
def paired(a: dict[int, float], b: dict[int, float]) -> dict[str, Any] | None:
    """Mean of the paired differences ``a[s] - b[s]`` over common seeds with its 95% t-interval,
    and the verdict: ``win`` / ``loss`` when the interval excludes 0, else ``level``."""
    from scipy.stats import t as student

    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    d = [a[s] - b[s] for s in seeds]
    mean, sd = statistics.fmean(d), statistics.stdev(d)
    half = float(student.ppf(0.975, len(d) - 1)) * sd / len(d) ** 0.5
    verdict = "win" if mean - half > 0 else "loss" if mean + half < 0 else "level"
    return {"n": len(d), "mean": mean, "low": mean - half, "high": mean + half, "verdict": verdict}


def _by_seed(runs: list[dict], keep: float, key: str) -> dict[int, float]:
    return {r["seed"]: lv[key] for r in runs for lv in r["levels"] if abs(lv["keep"] - keep) < 1e-9}


def summarize(out: Path, networks: list[str], p: Plan) -> dict[str, Any]:
    """Every table of the study from the runs on disk: selection, distillation, finals, paired
    differences, the BatchNorm re-estimation question; written with the plots."""
    summary: dict[str, Any] = {"levels": list(LEVELS), "networks": {}}
    try:
        chosen = choose(out, networks, p)
    except SystemExit:
        chosen = None
    kd = None
    if chosen is not None:
        default = chosen[DEFAULT_FAMILY][networks[0]]
        try:
            kd = choose_kd(out, networks, default, p)
            summary["distillation"] = {"chosen": kd, "becomes_default": kd is not None}
        except SystemExit:
            pass
    default_label = DEFAULT_FAMILY + (" + KD" if kd is not None else "")
    every_run = []
    for net in networks:
        runs = common.runs_in(out / net)
        every_run += runs
        base = common.read_json(out / net / "baseline.json")
        s: dict[str, Any] = {"baseline": base, "selection": _selection_table(runs, p)}
        if chosen is not None:
            s["chosen"] = {f: v[net].name for f, v in chosen.items()}
            s["final"], s["comparisons"] = _finals(runs, chosen, net, kd or p.kd_grid[0])
            s["bar"] = _bar(s["comparisons"], default_label, _peer_labels())
            s["bn_recalibration"] = _recalibration(runs)
        summary["networks"][net] = s
    rec = _recalibration(every_run)
    if rec is not None:  # the protocol's rule, over the final snapshots of every network
        rec["default"] = rec["spearman_val_recal"] > rec["spearman_val_stale"]
    summary["bn_recalibration"] = rec
    summary["complete"] = _finals_left(out, networks, p) == 0
    common.write_json(out / "summary.json", summary)
    common.write_file(out / "table.md", markdown(summary))
    if summary["complete"]:  # the verdicts users read (the README quotes this file)
        common.write_file(out / "verdicts.md", verdicts_markdown(summary, default_label))
    for net in networks:
        finals = [r for r in common.runs_in(out / net) if r["final"]]
        if finals:
            _plot_finetuned(finals, summary["networks"][net], out / f"finetuned_vs_macs_{net}.png")
            _plot_curve(finals, summary["networks"][net], out / f"pruning_curve_{net}.png")
    return summary


def _selection_table(runs: list[dict], p: Plan) -> list[dict[str, Any]]:
    rows = []
    for family, variants in p.families.items():
        for v in [*variants, *(w.with_distill(kd) for w in variants for kd in p.kd_grid)]:
            rs = [r for r in runs if r["variant"] == v.name and not r["final"]]
            if not rs:
                continue
            rows.append(
                {
                    "family": family,
                    "variant": v.name,
                    "seeds": sorted(r["seed"] for r in rs),
                    "score": _score(rs),
                    "val": {
                        f"{k:g}": statistics.fmean(_by_seed(rs, k, "val").values()) for k in LEVELS
                    },
                }
            )
    return rows


def _finals(
    runs: list[dict], chosen: dict[str, dict[str, Variant]], net: str, kd: tuple
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    finals = [r for r in runs if r["final"]]
    rows, cells = [], {}
    for family, per_net in chosen.items():
        for v in (per_net[net], per_net[net].with_distill(kd)):
            rs = [r for r in finals if r["variant"] == v.name]
            if not rs:
                continue
            label = family + (" + KD" if v.distill else "")
            cells[label] = rs
            row = {"method": label, "variant": v.name, "seeds": sorted(r["seed"] for r in rs)}
            for k in LEVELS:
                for key in ("val", "test", "val_recal", "macs_fraction"):
                    vals = list(_by_seed(rs, k, key).values())
                    row[f"{key}_{k:g}"] = (
                        statistics.fmean(vals),
                        statistics.stdev(vals) if len(vals) > 1 else 0.0,
                    )
            rows.append(row)
    comparisons = []
    d, dk = DEFAULT_FAMILY, DEFAULT_FAMILY + " + KD"
    pairs = [(d, f) for f in chosen if f != d]
    pairs += [(dk, f + " + KD") for f in KD_FAMILIES if f != d]
    pairs += [(d, f + " + KD") for f in KD_FAMILIES if f != d]
    pairs += [(dk, f) for f in chosen if f != d]
    pairs.append((dk, d))
    for a, b in pairs:
        if a not in cells or b not in cells:
            continue
        for k in LEVELS:
            for key in ("test", "val"):
                c = paired(_by_seed(cells[a], k, key), _by_seed(cells[b], k, key))
                if c is not None:
                    comparisons.append({"a": a, "b": b, "keep": k, "split": key, **c})
    return rows, comparisons


def _recalibration(runs: list[dict]) -> dict[str, Any] | None:
    """Which reading of a just-pruned network tells the accuracy it ends with: Spearman, over
    every final run and level, of validation top-1 as it is and re-estimated against after
    fine-tuning; and how much each swings from one removal to the next along the curves."""
    from scipy.stats import spearmanr

    levels = [lv for r in runs if r["final"] for lv in r["levels"]]
    if len(levels) < 3:
        return None
    out: dict[str, Any] = {"points": len(levels)}
    for key in ("val_stale", "val_recal"):
        out[f"spearman_{key}"] = float(
            spearmanr([lv[key] for lv in levels], [lv["val"] for lv in levels]).statistic
        )
        swings = [
            abs(b[key] - a[key])
            for r in runs
            if r["final"]
            for a, b in itertools.pairwise(r["curve"])
        ]
        out[f"swing_{key}"] = statistics.fmean(swings) if swings else None
    return out


def _peer_labels() -> list[str]:
    """Every peer row of the final runs: each peer family plain, and with distillation where it
    was offered."""
    peers = [f for f in FAMILIES if f != DEFAULT_FAMILY]
    return peers + [f + " + KD" for f in KD_FAMILIES if f != DEFAULT_FAMILY]


def _bar(comparisons: list[dict], default_label: str, peers: list[str]) -> dict[str, Any]:
    """The protocol's bar on one network: the default (with distillation when it became the
    default recovery) against every peer row, at ``BAR_KEEP`` of the MACs on the test set. Met
    where every difference is at least ``BAR_POINTS`` with its interval above 0, so the default
    is ahead of the best peer whichever way "best" is read; None while a peer lacks its runs."""
    cs = {
        c["b"]: c for c in comparisons
        if c["a"] == default_label and abs(c["keep"] - BAR_KEEP) < 1e-9 and c["split"] == "test"
    }  # fmt: skip
    missing = [b for b in peers if b not in cs]
    if missing:
        return {"met": None, "missing": missing}
    weakest = min(cs.values(), key=lambda c: c["mean"])
    met = all(c["mean"] >= BAR_POINTS and c["low"] > 0 for c in cs.values())
    return {"met": met, "weakest": weakest}


def _finals_left(out: Path, networks: list[str], p: Plan) -> int | None:
    """How many final runs are not on disk; None while the phases before them are not done."""
    try:
        todo = jobs("final", out, networks, p)
    except SystemExit:
        return None
    return sum(not (out / net / "runs" / f"{v.name}_s{s}.json").exists() for net, v, s, _ in todo)


#: What the README quotes (between ``<!-- quality-verdicts -->`` and ``<!-- /quality-verdicts -->``)
#: while the study has no ``verdicts.md``.
NO_VERDICT = "No verdict yet: the study's final runs are not complete.\n"


def readme_verdicts(readme: str) -> str:
    """The verdict block the README quotes, unindented: it must be ``verdicts.md`` whole."""
    start, end = "<!-- quality-verdicts -->\n", "<!-- /quality-verdicts -->"
    block = readme[readme.index(start) + len(start) :]
    return textwrap.dedent(block[: block.index(end)].rstrip(" "))


def _cell(c: dict[str, Any]) -> str:
    return f"{c['mean']:+.2f} [{c['low']:+.2f}, {c['high']:+.2f}] {c['verdict']}"


def verdicts_markdown(summary: dict[str, Any], default_label: str) -> str:
    """The study's verdicts as users read them: the default minus every peer on the test set at
    each level and network, the bar, and the BatchNorm re-estimation rule's outcome."""
    nets = summary["networks"]
    first = next(iter(nets.values()))
    variant = next(r["variant"] for r in first["final"] if r["method"] == default_label)
    lines = [
        f"Test top-1 after the same fine-tuning, the default ({default_label}: `{variant}`) "
        "minus each peer's variant chosen on validation, paired over their common fresh seeds: "
        "mean [95% interval] and verdict.",
        "",
    ]
    head = ["peer"] + [f"{net} −{round(100 * (1 - k))}%" for net in nets for k in LEVELS]
    kd, plain = DEFAULT_FAMILY + " + KD", DEFAULT_FAMILY
    pairs = [(peer, default_label, peer) for peer in _peer_labels()]
    pairs.append((f"(distillation: {kd} − {plain})", kd, plain))
    rows = []
    for label, a, b in pairs:
        cells = []
        for s in nets.values():
            for k in LEVELS:
                c = next(
                    (c for c in s["comparisons"] if c["a"] == a and c["b"] == b
                     and abs(c["keep"] - k) < 1e-9 and c["split"] == "test"),
                    None,
                )  # fmt: skip
                cells.append(_cell(c) if c else "–")
        rows.append([label, *cells])
    lines += [*common.markdown_table(head, rows), ""]
    for net, s in nets.items():
        bar, weakest = s["bar"], s["bar"].get("weakest")
        outcome = {True: "met", False: "not met", None: "not judged"}[bar["met"]]
        detail = f" (closest peer: {weakest['b']}, {_cell(weakest)})" if weakest else ""
        lines.append(
            f"- {net}: the bar (at least +{BAR_POINTS:g} point at −{round(100 * (1 - BAR_KEEP))}% "
            f"of the MACs against every peer, interval above 0) is {outcome}{detail}."
        )
    rec = summary.get("bn_recalibration")
    if rec:
        lines.append(
            f"- `pruning.bn_recalibration` is {'on' if rec['default'] else 'off'} by default: "
            f"over {rec['points']} final snapshots, validation top-1 after re-estimating "
            f"BatchNorm ranks the fine-tuned top-1 with Spearman {rec['spearman_val_recal']:.3f}, "
            f"as it is {rec['spearman_val_stale']:.3f}."
        )
    return "\n".join(lines) + "\n"


def _pm(cell: tuple[float, float]) -> str:
    return f"{cell[0]:.2f} ± {cell[1]:.2f}"


def markdown(summary: dict[str, Any]) -> str:
    lines = ["# Quality study (docs/benchmarks.md#protocol)", ""]
    dist = summary.get("distillation")
    if dist is not None:
        kd = dist["chosen"]
        lines += [
            "Distillation chosen on validation: "
            + (f"weight {kd[0]:g}, temperature {kd[1]:g}, "
               f"{'in the pruning windows too' if kd[2] else 'fine-tuning only'}" if kd else
               "none beat plain fine-tuning (the finals use the first setting of the grid)"),
            "",
        ]  # fmt: skip
    rec = summary.get("bn_recalibration")
    if rec:
        lines += [
            f"BatchNorm re-estimation over the final snapshots of every network ({rec['points']}): "
            f"Spearman with the fine-tuned validation top-1 {rec['spearman_val_stale']:.3f} as it "
            f"is, {rec['spearman_val_recal']:.3f} re-estimated, so `pruning.bn_recalibration` "
            f"defaults to {'on' if rec['default'] else 'off'} (the protocol's rule).",
            "",
        ]
    for net, s in summary["networks"].items():
        base = s.get("baseline") or {}
        lines += [f"## {net}", ""]
        if base:
            lines += [
                f"Baseline: {base['val']:.2f}% validation top-1, {base['macs'] / 1e6:.2f} M MACs, "
                f"{base['params'] / 1e6:.3f} M parameters.",
                "",
            ]
        if s.get("final"):
            lines += [
                "### Final runs (fresh seeds): top-1 % after the same fine-tuning, mean ± sd",
                "",
            ]
            head = ["method", "variant", "seeds"] + [
                f"{split} −{round(100 * (1 - k))}%" for k in LEVELS for split in ("test", "val")
            ]
            rows = [
                [r["method"], f"`{r['variant']}`", str(len(r["seeds"]))]
                + [_pm(r[f"{split}_{k:g}"]) for k in LEVELS for split in ("test", "val")]
                for r in s["final"]
            ]
            lines += [*common.markdown_table(head, rows), ""]
            lines += ["### Paired differences (a − b, 95% interval over common seeds)", ""]
            rows = [
                [c["a"], c["b"], f"−{round(100 * (1 - c['keep']))}%", c["split"], str(c["n"]),
                 f"{c['mean']:+.2f} [{c['low']:+.2f}, {c['high']:+.2f}]", c["verdict"]]
                for c in s["comparisons"]
            ]  # fmt: skip
            head = ["a", "b", "MACs", "split", "n", "difference [95% interval]", "verdict"]
            lines += [*common.markdown_table(head, rows), ""]
        rec = s.get("bn_recalibration")
        if rec:
            lines += [
                f"BatchNorm re-estimation (over {rec['points']} final snapshots): Spearman with "
                f"the fine-tuned validation top-1 {rec['spearman_val_stale']:.3f} as it is, "
                f"{rec['spearman_val_recal']:.3f} re-estimated"
                + (
                    f"; mean change from one removal to the next {rec['swing_val_stale']:.2f} vs "
                    f"{rec['swing_val_recal']:.2f} points."
                    if rec["swing_val_stale"] is not None
                    else " (no pruning curve yet)."
                ),
                "",
            ]
        if s.get("selection"):
            chosen = set((s.get("chosen") or {}).values())
            lines += ["### Selection (validation only, selection seeds)", ""]
            rows = [
                [
                    r["family"],
                    f"`{r['variant']}`" + (" **chosen**" if r["variant"] in chosen else ""),
                    ", ".join(map(str, r["seeds"])),
                    f"{r['score']:.2f}",
                    *(f"{r['val'][f'{k:g}']:.2f}" for k in LEVELS),
                ]
                for r in s["selection"]
            ]
            head = ["family", "variant", "seeds", "score"]
            head += [f"val −{round(100 * (1 - k))}%" for k in LEVELS]
            lines += [*common.markdown_table(head, rows), ""]
    return "\n".join(lines) + "\n"


def _plot_finetuned(finals: list[dict], s: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for i, row in enumerate(s["final"]):
        xs = [100 * row[f"macs_fraction_{k:g}"][0] for k in LEVELS]
        ys = [row[f"test_{k:g}"][0] for k in LEVELS]
        err = [row[f"test_{k:g}"][1] for k in LEVELS]
        thick = row["method"].startswith(DEFAULT_FAMILY)
        ax.errorbar(xs, ys, yerr=err, fmt="o-" if "KD" not in row["method"] else "s--",
                    color=f"C{i % 10}", capsize=3, lw=2.5 if thick else 1,
                    label=f"{row['method']} (n={len(row['seeds'])})")  # fmt: skip
    ax.invert_xaxis()
    ax.set_xlabel("MACs kept (% of the baseline)")
    ax.set_ylabel("test top-1 (%) after the same fine-tuning")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    common.save_png(fig, path, dpi=100)


def _plot_curve(finals: list[dict], s: dict[str, Any], path: Path) -> None:
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    base = (s.get("baseline") or {}).get("val", float("nan"))
    for i, row in enumerate(r for r in s["final"] if "KD" not in r["method"]):
        rs = [r for r in finals if r["variant"] == row["variant"] and r["curve"]]
        if not rs:
            continue
        for key, style in (("val_recal", "-"), ("val_stale", ":")):
            steps = max(len(r["curve"]) for r in rs)
            ys = np.array([[p[key] for p in r["curve"]] for r in rs if len(r["curve"]) == steps])
            xs = 100 * np.array([p["macs_fraction"] for p in rs[0]["curve"]])
            how = " (re-estimated BN)" if key == "val_recal" else " (as it is)"
            lw = 2 if row["method"] == DEFAULT_FAMILY else 1
            ax.plot(np.r_[100, xs], np.r_[base, ys.mean(0)], style, color=f"C{i % 10}", lw=lw,
                    label=row["method"] + how)  # fmt: skip
    ax.invert_xaxis()
    ax.set_xlabel("MACs kept (% of the baseline), along the schedule")
    ax.set_ylabel("validation top-1 (%), before fine-tuning")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    common.save_png(fig, path, dpi=100)


# -- main ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_out(ap, "quality")
    ap.add_argument(
        "--phase", choices=[*PHASES, "all"], default="select",
        help="all: every phase in order, waiting for the runs other workers hold",
    )  # fmt: skip
    ap.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=list(NETWORKS))
    ap.add_argument(
        "--ft-iters", type=int, default=100, help="fine-tuning minibatches per snapshot"
    )
    cli.add_jobs(ap)
    cli.add_threads(ap, 1)
    ap.add_argument(
        "--status", action="store_true",
        help="print each phase's progress and the time its missing runs will take; run nothing",
    )  # fmt: skip
    cli.add_smoke(ap, "the recipes' tiny twins, one variant a family, one seed, in seconds")
    args = ap.parse_args(argv)
    common.start(args)
    p = plan(args.smoke)
    if args.status:
        print("\n".join(status(args.out, args.networks, p)))
        return 0
    if args.smoke:
        args.ft_iters = min(args.ft_iters, 2)
    if not args.report_only:
        run_phases(args, p)
    summarize(args.out, args.networks, p)
    print((args.out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    cli.run(main)
