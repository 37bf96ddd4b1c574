"""Pruning to a latency target: most saliency kept under a measured latency budget.

``Target("latency", 0.6)`` keeps 60% of the baseline's latency *as measured* on the recipe's
``measure`` settings (device, batch, threads, dtype, memory format). A pruner with
:attr:`~taylorprune.pruning.StructuredPruner.latency` set to a :class:`LatencyPruning` hands such a
target here; each removal is planned and checked in four moves:

1. **Budget.** The latency goal is ``keep`` times the baseline's latency. An uncapped step
   (one-shot, or the iterative schedule's last) aims at the goal; a step capped at
   ``channels_per_step`` aims at the lowest budget whose selection removes at most that many
   channels (a bisection on the budget), so the iterative schedule spreads the latency budget
   over its steps as it spreads MACs: as many channels per step, chosen by latency.
2. **Selection.** HALP's knapsack (or the greedy) over the pruner's groups, with the pruner's unit
   scores, constraints (``round_to``, ``min_channels``, ``max_fraction``) and coupled groups
   (:func:`taylorprune.latency.select`), on the latency model's prediction.
3. **Trial.** A copy of the model with that selection removed is timed side by side with the
   baseline (interleaved rounds; the measured fraction is the median of the per-round ratios, which
   a change of machine load leaves nearly untouched). The latency model is recalibrated on it.
4. **Decision.** A capped step takes its selection, unless it measures below the band (the cap
   did not bind: it goes on as an uncapped step). An uncapped one reads a trial that lands
   within 5% of the target (``Target.within``) a second time, on fresh copies, and judges it on
   both readings' rounds pooled (one reading can sit several percent off). It takes the selection
   when that lies in the inner half of the band; otherwise it selects again, up to ``attempts``
   times, at the budget where the measurements so far (the model now and every trial) put the
   goal, by linear interpolation between the nearest on either side (a selection already timed
   is read once more instead of timed anew); then it takes the best
   trial: within the band, else the slowest one under it, else the fastest. The model as applied
   is then timed once more on its own (a reading that took no part in choosing it) and the step's
   fraction pools the rounds of every reading of that selection. Nothing is removed from the real
   model until then, so a prediction that was too pessimistic costs a trial, not channels.

Every trial is kept (:attr:`LatencyPruning.checks`: predicted and measured latency, the budget, the
step) for the report and its predicted-vs-measured plot.

Over 400 lines because the setup (table read or built, checked against the run's device and
settings) and the four moves share the trial records; the table, the model and the solvers are in
:mod:`taylorprune.latency`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from taylorprune._clean_copy import clean_copy
from taylorprune.errors import UserError
from taylorprune.graph import ChannelGraph, ChannelGroup
from taylorprune.latency import (
    SELECTORS,
    Constraints,
    LatencyGroup,
    LatencyModel,
    LatencyTable,
    Selection,
    TimingSettings,
    build_table,
    check_budget,
    closest_latency,
    device_info,
    layer_effects,
    select,
)
from taylorprune.latency.layers import find_layers
from taylorprune.latency.timing import ratio_stats, side_by_side
from taylorprune.pruning.pruner import PruneStep, StopReason, StructuredPruner
from taylorprune.pruning.targets import Target

logger = logging.getLogger("taylorprune")

#: Bisection steps on the budget of a capped step (the budget interval shrinks 256-fold).
_BISECTIONS = 8


@dataclass(frozen=True)
class LatencySetup:
    """How a latency target is measured and planned.

    ``settings``: device, batch, threads, dtype, memory format of every timing. ``table``: a table
    file written by ``taylorprune latency-table --output`` (None: measure one here, cached).
    ``method``: a key of :data:`~taylorprune.latency.SELECTORS`. ``runs``/``warmup``: timed and
    untimed rounds of each side-by-side measurement, whose rounds are spread over ``copies`` fresh
    copies of the two models (see :func:`~taylorprune.latency.timing.interleaved_times`).
    ``attempts``: selections an uncapped step may try before it takes the best.
    """

    settings: TimingSettings
    table: str | None = None
    method: str = "knapsack"
    runs: int = 10
    warmup: int = 2
    attempts: int = 4
    copies: int = 3

    def __post_init__(self) -> None:
        SELECTORS.get(self.method)  # an unknown method fails here, naming the choices
        if self.runs < 1 or self.warmup < 0 or self.attempts < 1 or self.copies < 1:
            raise UserError(
                f"latency setup: need runs >= 1, warmup >= 0, attempts >= 1 and copies >= 1, got "
                f"{self.runs}, {self.warmup}, {self.attempts}, {self.copies}"
            )


def latency_model_for(
    model: nn.Module,
    input_shape: Sequence[int],
    setup: LatencySetup,
    *,
    runs: int | None = None,
    progress: bool = False,
) -> LatencyModel:
    """The latency model of ``model`` (unpruned, one sample of ``input_shape``) under ``setup``.

    The table is read from ``setup.table`` and must have been measured on this device with these
    settings, for this model and input; otherwise it is built here (points cached on disk). The
    baseline is measured now (``runs``, default ``setup.runs``). Raises :class:`UserError` for a
    device that does not exist here, a table from another device, other settings or another model.
    """
    info = device_info(setup.settings)
    model = clean_copy(model).cpu()
    if setup.table is None:
        table = build_table(model, input_shape, setup.settings, progress=progress)
    else:
        where = f"measure.latency_table {str(Path(setup.table))!r}"
        table = LatencyTable.load(setup.table)
        table.check(info, setup.settings, where=where)
        _check_same_model(table, model, input_shape, where)
    return LatencyModel.measure(table, model, runs=runs or setup.runs, warmup=setup.warmup)


def _check_same_model(
    table: LatencyTable, model: nn.Module, input_shape: Sequence[int], where: str
) -> None:
    if tuple(table.input_shape) != tuple(input_shape):
        raise UserError(
            f"{where} was measured for input {'x'.join(map(str, table.input_shape))}, but this "
            f"run's input is {'x'.join(map(str, input_shape))}"
        )
    mine = {layer.name: (layer.cin, layer.cout) for layer in find_layers(model, input_shape)}
    if mine != table.full_widths():
        other = sorted(set(mine.items()) ^ set(table.full_widths().items()))
        raise UserError(
            f"{where} was measured for another model (first difference: layer {other[0][0]!r}); "
            "build one for this model with `taylorprune latency-table`"
        )


def check_reachable(
    pruner: StructuredPruner, latency: LatencyModel, target: Target, method: str = "knapsack"
) -> None:
    """Raise :class:`UserError` (one line) when no selection the pruner's constraints allow is
    predicted to reach ``target``."""
    groups = [
        LatencyGroup(
            g.root,
            np.zeros(g.size // pruner.channels_per_unit(g)),
            *_effects(pruner, g, latency.table),
            unit_channels=pruner.channels_per_unit(g),
        )
        for g in pruner.groups()
    ]
    constraints = _constraints(pruner)
    closest = closest_latency(groups, latency, constraints=constraints)
    try:
        check_budget(target.keep * latency.baseline_ms, closest, latency.baseline_ms, constraints)
    except UserError as exc:
        raise UserError(f"pruning.target: {exc}") from None


class LatencyPruning:
    """Plans, measures and applies the removals of a latency target for ``pruner``.

    Build it on a pruner that has removed nothing yet (its model is the baseline: a copy is kept
    and timed beside every candidate) with the baseline's ``latency`` model
    (:func:`latency_model_for`); then set ``pruner.latency`` to it.
    """

    def __init__(
        self, pruner: StructuredPruner, latency: LatencyModel, setup: LatencySetup
    ) -> None:
        self.pruner = pruner
        self.latency = latency
        self.setup = setup
        self.reference = clean_copy(pruner.model).cpu()
        self.constraints = _constraints(pruner)
        self._units0 = {g.root: g.size // pruner.channels_per_unit(g) for g in pruner.groups()}
        self._effects: dict[str, tuple[dict[str, int], dict[str, int]]] = {}
        #: The latest measured latency as a fraction of the baseline's (1 before any).
        self.fraction = 1.0
        #: Every trial: step, attempt, budget, predicted and measured latency, whether applied.
        self.checks: list[dict[str, Any]] = []
        #: The trial applied by the latest step.
        self.last: dict[str, Any] | None = None
        self._steps = 0

    # -- one removal -------------------------------------------------------------------------------
    def remove_to_target(
        self,
        group_scores: Mapping[str, torch.Tensor],
        target: Target,
        max_channels: int | None = None,
    ) -> PruneStep:
        """Remove channels towards ``target`` (a latency target), at most ``max_channels`` this
        step (see the module docstring). ``step.stopped_short`` says why an uncapped step missed
        the target: the constraints, or selections that measured outside the 5% band."""
        pruner, lat = self.pruner, self.latency
        self._steps += 1
        goal = target.keep * lat.baseline_ms
        units = pruner.unit_scores(group_scores)
        groups = self._groups(units)
        widths = lat.widths(pruner.model)
        tried: list[tuple[Selection, dict[str, Any]]] = []
        capped = False
        closest = goal
        now = (lat.raw(widths), self.fraction * lat.baseline_ms)
        for attempt in range(1, self.setup.attempts + 1):
            closest = closest_latency(groups, lat, constraints=self.constraints, widths=widths)
            budget = max(goal, closest)
            if attempt > 1:
                # (raw prediction, measured ms) of the model now and of every trial so far
                points = [now, *((r["raw_ms"], r["measured_ms"]) for _, r in tried)]
                budget = max(closest, lat.corrected(_raw_for(points, goal)))
            sel = self._select(groups, budget, widths, max_channels)
            capped = sel.budget_ms > budget * (1 + 1e-9)
            same = next(((t, r) for t, r in tried if t.keep == sel.keep), None)
            if same is None:
                record, model = self._trial(groups, units, sel, attempt)
                tried.append((sel, record))
            else:
                # A selection already timed: one more reading of it says more than a new trial.
                sel, record = same
                model = self._build(groups, units, sel)
                self._read_again(record, model)
            if capped and record["fraction"] < target.keep - target.tolerance:
                # Predicted above the goal, measured below the band: the cap did not bind, and
                # the step goes on as an uncapped one rather than overshoot the target.
                capped = False
            if not capped and len(record["readings"]) == 1 and target.within(record["fraction"]):
                # One reading can sit several percent off; a candidate in the band is read again
                # on fresh copies and judged on both readings' rounds together.
                self._read_again(record, model)
            del model
            if capped or _centred(target, record["fraction"]) or closest > goal:
                break
        if not capped:
            sel, record = _best(tried, target)
        record["applied"] = True
        removed = {g.name: g.units - sel.keep[g.name] for g in groups}
        step = pruner.remove_units(removed, units)
        if lat.widths(pruner.model) != record["widths"]:
            raise RuntimeError("the model as pruned differs from the trial that was timed")
        fraction = record["fraction"]
        if not capped:
            # The model as applied is timed once more, on its own: a reading that took no part
            # in choosing it (the trial's readings did, which biases them towards the band). The
            # step's fraction pools the rounds of every reading of this selection.
            m = self._measure(pruner.model)
            record["confirmed_fraction"] = m["fraction"]
            record["confirmed_p10"], record["confirmed_p90"] = m["fraction_p10"], m["fraction_p90"]
            pooled = _pool(record, m)
            record["pooled_fraction"] = fraction = pooled["median"]
            record["pooled_p10"], record["pooled_p90"] = pooled["p10"], pooled["p90"]
        # The trial's widths are the model's now; recalibrate on the applied one.
        self.latency.calibrate(record["widths"], fraction * lat.baseline_ms)
        self.fraction = fraction
        for r in self.checks:
            r.pop("widths", None)
            r.pop("_ratios", None)
        self.last = dict(record)
        if not capped and not target.within(self.fraction):
            step.stopped_short = self._shortfall(target, closest, goal, len(tried))
        return step

    def _shortfall(self, target: Target, closest: float, goal: float, tries: int) -> StopReason:
        if closest > goal and self.fraction > target.keep:
            return StopReason(
                "constraints",
                f"every prunable group is at its minimum width ({self.constraints.describe()})",
                self.fraction,
            )
        side = "above" if self.fraction > target.keep else "below"
        return StopReason(
            "granularity",
            f"after {tries} selection(s) the measured latency is {self.fraction:.3f} of the "
            f"baseline, {side} the 5% band around the target (timings too noisy, or blocks too "
            f"coarse: round_to={self.constraints.round_to})",
            self.fraction,
        )

    def restore(self, checks: Sequence[Mapping[str, Any]]) -> None:
        """Continue after the trials ``checks`` (a resumed run's, from :meth:`summary`): they
        stay in :attr:`checks`, and the next step is numbered after the last of them."""
        self.checks = [dict(r) for r in checks]
        self._steps = max((int(r["step"]) for r in self.checks), default=0)
        applied = [r for r in self.checks if r.get("applied")]
        self.last = dict(applied[-1]) if applied else None

    def measure_now(self) -> dict[str, float]:
        """Measure the pruner's model as it is against the baseline and recalibrate on it (a
        resumed run, whose removals were replayed, starts from here)."""
        m = self._measure(self.pruner.model)
        self.latency.calibrate(self.pruner.model, m["fraction"] * self.latency.baseline_ms)
        self.fraction = m["fraction"]
        return m

    # -- parts -------------------------------------------------------------------------------------
    def _groups(self, units: Mapping[str, np.ndarray]) -> list[LatencyGroup]:
        """The pruner's scored groups as the selection sees them (unscored ones stay whole)."""
        out = []
        for g in self.pruner.groups():
            if g.root not in units:
                continue
            per = self.pruner.channels_per_unit(g)
            if g.root not in self._effects:
                self._effects[g.root] = _effects(self.pruner, g, self.latency.table)
            o, i = self._effects[g.root]
            out.append(
                LatencyGroup(
                    g.root,
                    np.asarray(units[g.root], dtype=np.float64),
                    o,
                    i,
                    baseline_units=self._units0.get(g.root),
                    unit_channels=per,
                )
            )
        return out

    def _select(
        self,
        groups: list[LatencyGroup],
        budget: float,
        widths: Mapping[str, tuple[int, int]],
        cap: int | None,
    ) -> Selection:
        """The selection at ``budget``; with ``cap``, at the lowest budget above it whose
        selection removes at most ``cap`` channels."""

        def at(ms: float) -> Selection:
            return select(
                groups,
                self.latency,
                ms,
                constraints=self.constraints,
                widths=widths,
                method=self.setup.method,
            )

        sel = at(budget)
        if cap is None or _channels_removed(groups, sel) <= cap:
            return sel
        lo, hi = budget, self.latency.predict(widths)
        best = at(hi)  # removes nothing
        for _ in range(_BISECTIONS):
            mid = 0.5 * (lo + hi)
            s = at(mid)
            if _channels_removed(groups, s) <= cap:
                best, hi = s, mid
            else:
                lo = mid
        return best

    def _build(
        self, groups: list[LatencyGroup], units: Mapping[str, np.ndarray], sel: Selection
    ) -> nn.Module:
        """A copy of the pruner's model with ``sel`` removed (what the step would apply)."""
        pruner = self.pruner
        trial = clean_copy(pruner.model)
        graph = ChannelGraph(
            trial, pruner.example_inputs, list(pruner.graph.ignored), pruner.graph.include
        )
        by_root = {g.name: g for g in groups}
        for cg in graph.groups():
            g = by_root.get(cg.root)
            n = 0 if g is None else g.units - sel.keep[g.name]
            if n > 0:
                graph.tp_group(cg, _channel_indices(units[cg.root], n, g.unit_channels)).prune()
        return trial

    def _trial(
        self,
        groups: list[LatencyGroup],
        units: Mapping[str, np.ndarray],
        sel: Selection,
        attempt: int,
    ) -> tuple[dict[str, Any], nn.Module]:
        """Time a copy of the model with ``sel`` removed beside the baseline; recalibrate. The
        trial's record and the copy."""
        lat = self.latency
        trial = self._build(groups, units, sel)
        widths = lat.widths(trial)
        m = self._measure(trial)
        cal = lat.calibrate(widths, m["fraction"] * lat.baseline_ms)
        record = {
            "step": self._steps,
            "attempt": attempt,
            "budget_ms": sel.budget_ms,
            "predicted_ms": sel.predicted_ms,
            "raw_ms": cal.raw_ms,
            "measured_ms": m["fraction"] * lat.baseline_ms,
            "fraction": m["fraction"],
            "fraction_p10": m["fraction_p10"],
            "fraction_p90": m["fraction_p90"],
            "error": sel.predicted_ms / (m["fraction"] * lat.baseline_ms) - 1.0,
            "saliency_kept": sel.saliency_kept / max(sel.saliency_total, 1e-30),
            "channels_removed": _channels_removed(groups, sel),
            "readings": [m["fraction"]],
            "applied": False,
            "widths": widths,
            "_ratios": list(m["ratios"]),
        }
        self.checks.append(record)
        logger.info(
            "latency step %d try %d: predicted %.4g ms, measured %.4g ms (%.3f of the baseline)",
            record["step"],
            attempt,
            record["predicted_ms"],
            record["measured_ms"],
            record["fraction"],
        )
        return record, trial

    def _read_again(self, record: dict[str, Any], model: nn.Module) -> None:
        """Time the trial ``model`` beside the baseline once more and pool the rounds of its
        readings into ``record`` (fraction, p10/p90, measured ms, error); recalibrate on it."""
        m = self._measure(model)
        pooled = _pool(record, m)
        ms = pooled["median"] * self.latency.baseline_ms
        record.update(
            fraction=pooled["median"],
            fraction_p10=pooled["p10"],
            fraction_p90=pooled["p90"],
            measured_ms=ms,
            error=record["predicted_ms"] / ms - 1.0,
        )
        self.latency.calibrate(record["widths"], ms)
        logger.info(
            "latency step %d try %d read again: %.3f, both readings %.3f of the baseline",
            record["step"],
            record["attempt"],
            m["fraction"],
            record["fraction"],
        )

    def _measure(self, model: nn.Module) -> dict[str, Any]:
        """``model`` against the baseline, side by side
        (:func:`~taylorprune.latency.timing.side_by_side`)."""
        s = self.setup
        return side_by_side(
            self.reference, model, self.latency.table.input_shape, s.settings, runs=s.runs,
            warmup=s.warmup, copies=s.copies,
        )  # fmt: skip

    def summary(self) -> dict[str, Any]:
        """What the report shows of the latency target (plain data)."""
        table = self.latency.table
        return {
            "settings": table.settings.as_dict(),
            "device": table.device.as_dict(),
            "table": self.setup.table,
            "table_stats": dict(table.stats),
            "method": self.setup.method,
            "baseline_ms": self.latency.baseline_ms,
            "residual_ms": self.latency.residual_ms,
            "checks": [dict(r) for r in self.checks],
        }


def _pool(record: dict[str, Any], reading: Mapping[str, Any]) -> dict[str, float]:
    """Add ``reading`` (a :func:`side_by_side` result) to a trial ``record``'s readings; the
    rounds of all its readings pooled (:func:`~taylorprune.latency.timing.ratio_stats`)."""
    record["readings"].append(reading["fraction"])
    record["_ratios"] += reading["ratios"]
    return ratio_stats(record["_ratios"])


def _centred(target: Target, fraction: float) -> bool:
    """Within the inner half of the target's band: a step stops searching there, so that a later
    reading with its own noise of a few percent still lands in the band."""
    return abs(fraction - target.keep) <= 0.5 * target.tolerance


def _constraints(pruner: StructuredPruner) -> Constraints:
    return Constraints(pruner.round_to, pruner.min_channels, pruner.max_fraction)


def _effects(
    pruner: StructuredPruner, group: ChannelGroup, table: LatencyTable
) -> tuple[dict[str, int], dict[str, int]]:
    """Table layers (out, in) one *unit* of ``group`` removes channels of, with how many."""
    per = pruner.channels_per_unit(group)
    out, inp = layer_effects(pruner.graph, group, table)
    return {k: v * per for k, v in out.items()}, {k: v * per for k, v in inp.items()}


def _channels_removed(groups: Sequence[LatencyGroup], sel: Selection) -> int:
    return sum((g.units - sel.keep[g.name]) * g.unit_channels for g in groups)


def _channel_indices(unit_scores: np.ndarray, n: int, per: int) -> list[int]:
    """Channels of the ``n`` lowest-scored units (what :meth:`StructuredPruner.remove_units`
    removes): unit ``u`` is channel ``u`` of each of the ``per`` convolution groups."""
    units = len(unit_scores)
    order = np.argsort(unit_scores, kind="stable")[:n]
    return sorted(int(u) + k * units for u in order for k in range(per))


def _raw_for(points: Sequence[tuple[float, float]], goal: float) -> float:
    """The raw prediction at which the measured latency should be ``goal`` (ms): linear between
    the measured points nearest to it on either side; from the nearest one in proportion when
    all lie on one side. A single recalibrated correction oscillates where measured latency is
    not proportional to the raw prediction; this converges like a bisection."""
    below = [p for p in points if p[1] <= goal]
    above = [p for p in points if p[1] > goal]
    if below and above:
        r0, m0 = max(below, key=lambda p: p[1])
        r1, m1 = min(above, key=lambda p: p[1])
        if m1 > m0:
            return r0 + (goal - m0) * (r1 - r0) / (m1 - m0)
    r, m = min(points, key=lambda p: abs(p[1] - goal))
    return r * goal / m


def _best(
    tried: Sequence[tuple[Selection, dict[str, Any]]], target: Target
) -> tuple[Selection, dict[str, Any]]:
    """Within the band (the one nearest the target); else the slowest under it; else the
    fastest."""
    inside = [t for t in tried if target.within(t[1]["fraction"])]
    if inside:
        return min(inside, key=lambda t: abs(t[1]["fraction"] - target.keep))
    under = [t for t in tried if t[1]["fraction"] <= target.keep]
    if under:
        return max(under, key=lambda t: t[1]["fraction"])
    return min(tried, key=lambda t: t[1]["fraction"])
