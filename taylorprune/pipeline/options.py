"""What a run needs from its recipe, read once: :func:`RunOptions.from_recipe` is the only place
that looks inside a :class:`~taylorprune.recipe.Recipe`; the phases take these typed values.

The pruning target is parsed here into a :class:`~taylorprune.pruning.Target` (``pruning.target``
in the recipe) and travels as ``RunOptions.prune.target`` to
:func:`~taylorprune.pruning.schedule.run_schedule`, which hands it to
:meth:`StructuredPruner.remove_to_target <taylorprune.pruning.StructuredPruner.remove_to_target>`.
A latency target also takes ``RunOptions.prune.latency``: where and how it is timed, from the
recipe's ``measure`` section.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from taylorprune.importance import defaults
from taylorprune.latency import TimingSettings
from taylorprune.latency.setup import LatencySetup
from taylorprune.pruning import Target
from taylorprune.pruning.schedule import Schedule, Scoring
from taylorprune.recipe import Recipe, TrainConfig

Retrain = Literal["finetune", "rewind", "scratch"]


@dataclass(frozen=True)
class PrunerOptions:
    """The constraints and ranking of :class:`~taylorprune.pruning.StructuredPruner`: its keyword
    arguments of the same names."""

    ignored_layers: tuple[str, ...] = ()
    include: tuple[str, ...] | None = None
    round_to: int = 1
    min_channels: int = 1
    max_fraction: float = 0.9
    normalize: str | None = defaults.NORMALIZE
    cost_aware: bool = defaults.COST_AWARE


@dataclass(frozen=True)
class BaselineOptions:
    """``train``: how the baseline is trained (None: used as built); ``cache``: reuse a cached
    one."""

    train: TrainConfig | None
    cache: bool


@dataclass(frozen=True)
class PruneOptions:
    """``train`` is the optimisation while pruning iteratively (the recipe's ``finetune``);
    ``bn_recalibration``: the pruned model and each step are measured on a copy whose BatchNorm
    statistics were re-estimated on ``bn_recalibration_batches`` training minibatches;
    ``well_fit_top1``: the training top-1 at which ``taylor_fo_bn`` gives way to the per-example
    criterion (None: never)."""

    target: Target
    pruner: PrunerOptions
    schedule: Schedule
    scoring: Scoring
    train: TrainConfig
    bn_recalibration: bool
    latency: LatencySetup | None = None  # a latency target's timing and selection
    bn_recalibration_batches: int = 10
    well_fit_top1: float | None = None  # see taylorprune.importance.well_fit


@dataclass(frozen=True)
class FinetuneOptions:
    """``retrain``: fine-tune the pruned weights, rewind kept channels to their initial values, or
    start from a fresh initialisation."""

    train: TrainConfig
    retrain: Retrain


@dataclass(frozen=True)
class MeasureOptions:
    """The report's latency reading of the final model against the baseline (when ``latency``;
    always for a latency target), and where and how every latency of the run is timed:
    ``timing`` (device, batch, threads, dtype, memory format), ``runs`` timed rounds spread over
    ``copies`` fresh copies of the models, each after ``warmup`` untimed passes. ``test``:
    evaluate the baseline and the result on the test split at the end."""

    latency: bool
    timing: TimingSettings
    runs: int
    warmup: int = 2
    copies: int = 3
    test: bool = False


@dataclass(frozen=True)
class RunOptions:
    """Every setting of a run. ``model`` is the recipe's model section (num_classes and in_chans
    None: the dataset's) and ``data`` its data section, both as plain data."""

    name: str
    seed: int
    device: str
    threads: int | None
    model: dict[str, Any]
    data: dict[str, Any]
    baseline: BaselineOptions
    prune: PruneOptions
    finetune: FinetuneOptions
    measure: MeasureOptions

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> RunOptions:
        p, imp = recipe.pruning, recipe.importance
        iterative = p.schedule == "iterative"
        target = p.target  # parsed once, by the recipe's schema
        return cls(
            name=recipe.name,
            seed=recipe.seed,
            device=recipe.device,
            threads=recipe.threads,
            model=recipe.model.model_dump(mode="json"),
            data=recipe.data.model_dump(mode="json"),
            baseline=BaselineOptions(recipe.baseline.train, recipe.baseline.cache),
            prune=PruneOptions(
                target=target,
                pruner=PrunerOptions(
                    ignored_layers=tuple(p.ignored_layers),
                    include=None if p.include is None else tuple(p.include),
                    round_to=p.round_to,
                    min_channels=p.min_channels,
                    max_fraction=p.max_fraction,
                    normalize=p.normalize,
                    cost_aware=p.cost_aware,
                ),
                schedule=Schedule(
                    kind=p.schedule,
                    score_batches=p.score_batches,
                    channels_per_step=p.channels_per_step if iterative else None,
                    max_steps=p.max_steps if iterative else None,
                    clear_momentum=p.clear_momentum,
                    fraction_per_step=p.fraction_per_step if iterative else None,
                ),
                scoring=Scoring(imp.criterion, imp.train_mode, imp.ema, recipe.seed),
                train=recipe.finetune,
                bn_recalibration=p.bn_recalibration,
                latency=latency_setup(recipe) if target.kind == "latency" else None,
                bn_recalibration_batches=p.bn_recalibration_batches,
                well_fit_top1=imp.well_fit_top1,
            ),
            finetune=FinetuneOptions(recipe.finetune, recipe.retrain),
            measure=measure_options(recipe),
        )


def measure_options(recipe: Recipe) -> MeasureOptions:
    """The ``measure`` section: its device falls back on the recipe's (``auto``: CUDA when there
    is one), its threads on the recipe's."""
    m = recipe.measure
    device = m.device or recipe.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    timing = TimingSettings(
        device=device,
        batch_size=m.latency_batch_size,
        threads=m.threads or recipe.threads,
        dtype=m.dtype,
        channels_last=m.channels_last,
    )
    return MeasureOptions(m.latency, timing, m.latency_runs, test=m.test)


def latency_setup(recipe: Recipe) -> LatencySetup:
    """Where and how a latency target is timed and planned: the ``measure`` section's timing."""
    m = measure_options(recipe)
    return LatencySetup(
        m.timing,
        table=recipe.measure.latency_table,
        method=recipe.measure.latency_method,
        runs=m.runs,
        warmup=m.warmup,
        copies=m.copies,
    )


# Recipe keys each phase reads. A resumed run may change a key only if no phase up to the one it
# resumes in reads it (``name`` changes no finished work, nor does ``measure`` unless the target
# is a latency, whose every step is chosen on the ``measure`` section's timings).
PHASE_KEYS: dict[str, tuple[str, ...]] = {
    "baseline": ("seed", "device", "threads", "model", "data", "baseline"),
    "prune": ("importance", "pruning", "finetune"),
    "finetune": ("retrain",),
}
LATENCY_PRUNE_KEYS: tuple[str, ...] = ("measure",)


def resume_conflict(
    saved: dict[str, Any], now: dict[str, Any], phase: str
) -> tuple[str, Any, Any] | None:
    """The first recipe key (dotted path, value then, value now) whose change would alter work a
    run resumed in ``phase`` has done or is doing; None when the recipes agree on all of them."""
    order = list(PHASE_KEYS)
    keys = [k for p in order[: order.index(phase) + 1] for k in PHASE_KEYS[p]]
    if phase != "baseline" and _latency_target(saved):
        keys += LATENCY_PRUNE_KEYS
    for key in keys:
        diff = _first_difference(saved.get(key), now.get(key), key)
        if diff is not None:
            return diff
    return None


def _latency_target(recipe: dict[str, Any]) -> bool:
    target = (recipe.get("pruning") or {}).get("target")
    return isinstance(target, dict) and target.get("latency") is not None


def _first_difference(a: Any, b: Any, path: str) -> tuple[str, Any, Any] | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in [*b, *(k for k in a if k not in b)]:
            diff = _first_difference(a.get(k), b.get(k), f"{path}.{k}")
            if diff is not None:
                return diff
        return None
    return None if a == b else (path, a, b)
