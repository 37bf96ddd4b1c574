"""Pruning to a latency target: most saliency kept under a measured latency budget.

``Target("latency", 0.6)`` keeps 60% of the baseline's latency *as measured* on the recipe's
``measure`` settings (device, batch, threads, dtype, memory format). A
:class:`~taylorprune.pruning.StructuredPruner` built with ``latency=LatencySetup(...)`` owns a
:class:`LatencyPlanner`; for each removal towards such a target the pruner hands the planner its
scored groups and the model, the planner chooses what to remove, the pruner removes it, and the
planner judges the model as removed. Each removal is planned and checked in four moves:

1. **Budget.** The latency goal is ``keep`` times the baseline's latency. An uncapped step
   (one-shot, or the iterative schedule's last) aims at the goal; a step capped at
   ``channels_per_step`` aims at the lowest budget whose selection removes at most that many
   channels (a bisection on the budget), so the iterative schedule spreads the latency budget
   over its steps as it spreads MACs.
2. **Selection.** HALP's knapsack (or the greedy) over the groups, with the pruner's unit scores
   and constraints, on the latency model's prediction (:func:`taylorprune.latency.select`).
3. **Trial.** A copy of the model with that selection removed (by the same removal code as the
   real one, :func:`~taylorprune.pruning.removal.pruned_copy`) is timed side by side with the
   baseline; the latency model is recalibrated on it.
4. **Decision.** A capped step takes its selection unless it measures below the band (then it
   goes on uncapped). An uncapped one reads a trial within 5% of the target a second time and
   judges both readings pooled, taking it in the inner half of the band; otherwise it selects
   again at the budget the measurements so far interpolate to (up to ``attempts``) and takes the
   best trial. The model as removed is timed once more on its own, and the step's fraction pools
   every reading of that selection. Nothing is removed from the real model until then.

Every trial is kept (:attr:`LatencyPlanner.checks`) for the report and its plot.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from taylorprune._clean_copy import clean_copy
from taylorprune.graph import ChannelGraph, ChannelGroup
from taylorprune.latency import (
    Constraints,
    LatencyGroup,
    LatencyModel,
    Selection,
    closest_latency,
    layer_effects,
    select,
)
from taylorprune.latency.setup import LatencySetup
from taylorprune.latency.timing import ratio_stats, side_by_side
from taylorprune.pruning.removal import StopReason, pruned_copy
from taylorprune.pruning.targets import Target

logger = logging.getLogger("taylorprune")

#: Bisection steps on the budget of a capped step (the budget interval shrinks 256-fold).
_BISECTIONS = 8


@dataclass
class Decision:
    """What a latency step chose: the selection and its trial record, whether the channel cap
    bound it (``capped``), the closest latency the constraints allow and the goal (ms), and how
    many selections were tried."""

    selection: Selection
    record: dict[str, Any]
    capped: bool
    closest: float
    goal: float
    tries: int

    def removed_units(self, groups: Sequence[LatencyGroup]) -> dict[str, int]:
        """Units to remove per group."""
        return {g.name: g.units - self.selection.keep[g.name] for g in groups}


@dataclass(frozen=True)
class TrialModel:
    """What builds a trial copy of the pruner's model: the same example inputs and the same
    ignored and included layers as the pruner's graph."""

    example_inputs: torch.Tensor | tuple[torch.Tensor, ...]
    ignored: tuple[str, ...]
    include: tuple[str, ...] | None


class LatencyPlanner:
    """Plans and judges the removals of a latency target (see the module docstring).

    Build it on the baseline (a copy is kept and timed beside every candidate) with its latency
    model (:func:`latency_model_for`) and the pruner's ``constraints``. It holds no pruner: each
    step gets the model and the scored groups (:meth:`plan`), and the model as removed
    (:meth:`judge`).
    """

    def __init__(
        self,
        baseline: nn.Module,
        latency: LatencyModel,
        setup: LatencySetup,
        constraints: Constraints,
        trial: TrialModel,
    ) -> None:
        self.latency = latency
        self.setup = setup
        self.constraints = constraints
        self.trial = trial
        self.reference = clean_copy(baseline).cpu()
        #: The latest measured latency as a fraction of the baseline's (1 before any).
        self.fraction = 1.0
        #: Every trial: step, attempt, budget, predicted and measured latency, whether applied.
        self.checks: list[dict[str, Any]] = []
        #: The trial applied by the latest step.
        self.last: dict[str, Any] | None = None
        #: Per group root: the table layers one unit removes output and input channels of.
        self.effects: dict[str, tuple[dict[str, int], dict[str, int]]] = {}
        self._steps = 0

    @property
    def baseline_ms(self) -> float:
        """The baseline's latency (ms) as measured when the planner was built."""
        return self.latency.baseline_ms

    # -- one removal -------------------------------------------------------------------------------
    def plan(
        self,
        model: nn.Module,
        groups: list[LatencyGroup],
        target: Target,
        max_channels: int | None = None,
    ) -> Decision:
        """Choose what a step towards ``target`` removes from ``model`` (at most
        ``max_channels`` channels): moves 1 to 4 of the module docstring, trials timed on copies."""
        lat = self.latency
        self._steps += 1
        goal = target.keep * lat.baseline_ms
        widths = lat.widths(model)
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
                record, trial = self._trial(model, groups, sel, attempt)
                tried.append((sel, record))
            else:
                # A selection already timed: one more reading of it says more than a new trial.
                sel, record = same
                trial = self._build(model, groups, sel)
                self._read_again(record, trial)
            if capped and record["fraction"] < target.keep - target.tolerance:
                # Predicted above the goal, measured below the band: the cap did not bind, and
                # the step goes on as an uncapped one rather than overshoot the target.
                capped = False
            if not capped and len(record["readings"]) == 1 and target.within(record["fraction"]):
                # One reading can sit several percent off; a candidate in the band is read again
                # on fresh copies and judged on both readings' rounds together.
                self._read_again(record, trial)
            del trial
            if capped or _centred(target, record["fraction"]) or closest > goal:
                break
        if not capped:
            sel, record = _best(tried, target)
        record["applied"] = True
        return Decision(sel, record, capped, closest, goal, len(tried))

    def judge(self, model: nn.Module, decision: Decision, target: Target) -> StopReason | None:
        """After the pruner removed ``decision``'s selection from ``model``: an uncapped step's
        model is timed once more on its own (a reading that took no part in choosing it) and the
        step's fraction pools every reading of the selection; the latency model is recalibrated.
        Returns why an uncapped step missed the target, if it did."""
        lat, record = self.latency, decision.record
        if lat.widths(model) != record["widths"]:
            raise RuntimeError("the model as pruned differs from the trial that was timed")
        fraction = record["fraction"]
        if not decision.capped:
            m = self._measure(model)
            record["confirmed_fraction"] = m["fraction"]
            record["confirmed_p10"], record["confirmed_p90"] = m["fraction_p10"], m["fraction_p90"]
            pooled = _pool(record, m)
            record["pooled_fraction"] = fraction = pooled["median"]
            record["pooled_p10"], record["pooled_p90"] = pooled["p10"], pooled["p90"]
        self.latency.calibrate(record["widths"], fraction * lat.baseline_ms)
        self.fraction = fraction
        for r in self.checks:
            r.pop("widths", None)
            r.pop("_ratios", None)
        self.last = dict(record)
        if decision.capped or target.within(self.fraction):
            return None
        return self._shortfall(target, decision.closest, decision.goal, decision.tries)

    def _shortfall(self, target: Target, closest: float, goal: float, tries: int) -> StopReason:
        if closest > goal and self.fraction > target.keep:
            baseline = self.latency.baseline_ms
            return StopReason(
                "constraints",
                f"the latency model predicts {closest / baseline:.3f} of the baseline with every "
                f"prunable group at its minimum width ({self.constraints.describe()})",
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

    def measure_now(self, model: nn.Module) -> dict[str, float]:
        """Measure ``model`` as it is against the baseline and recalibrate on it (a resumed run,
        whose removals were replayed, starts from here)."""
        m = self._measure(model)
        self.latency.calibrate(model, m["fraction"] * self.latency.baseline_ms)
        self.fraction = m["fraction"]
        return m

    # -- parts -------------------------------------------------------------------------------------
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

    def _build(self, model: nn.Module, groups: list[LatencyGroup], sel: Selection) -> nn.Module:
        """A copy of ``model`` with ``sel`` removed, as the step would remove it."""
        channels = {
            g.name: _channel_indices(g.scores, g.units - sel.keep[g.name], g.unit_channels)
            for g in groups
        }
        t = self.trial
        return pruned_copy(model, t.example_inputs, channels, ignored=t.ignored, include=t.include)

    def _trial(
        self, model: nn.Module, groups: list[LatencyGroup], sel: Selection, attempt: int
    ) -> tuple[dict[str, Any], nn.Module]:
        """Time a copy of ``model`` with ``sel`` removed beside the baseline; recalibrate. The
        trial's record and the copy."""
        lat = self.latency
        trial = self._build(model, groups, sel)
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


def latency_groups(
    graph: ChannelGraph,
    groups: Sequence[ChannelGroup],
    units: Mapping[str, np.ndarray],
    per_unit: Mapping[str, int],
    size0: Mapping[str, int],
    planner: LatencyPlanner,
) -> list[LatencyGroup]:
    """``groups`` with their unit scores as the latency selection sees them: the table layers one
    unit removes channels of (read once per group and kept by ``planner``), the units a group had
    at first."""
    out = []
    for g in groups:
        per = per_unit[g.root]
        if g.root not in planner.effects:
            o, i = layer_effects(graph, g, planner.latency.table)
            planner.effects[g.root] = ({k: v * per for k, v in o.items()},
                                       {k: v * per for k, v in i.items()})  # fmt: skip
        o, i = planner.effects[g.root]
        scores = np.asarray(units[g.root], dtype=np.float64)
        base = size0[g.root] // per
        out.append(LatencyGroup(g.root, scores, o, i, baseline_units=base, unit_channels=per))
    return out


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
