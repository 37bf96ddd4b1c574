"""The pruner: every channel of every prunable group ranked together, the lowest removed
physically, towards a target of MACs, parameters, channels or measured latency.

Construction reads the model once: torch-pruning's dependency graph and its groups
(:mod:`taylorprune.graph`, groups that cannot be pruned safely left whole), each group's effect
on MACs and parameters (:mod:`~taylorprune.pruning.cost`) and, for a latency target, the latency
model and its planner (:mod:`~taylorprune.pruning.latency_target`). Each removal is planned
(:mod:`~taylorprune.pruning.plan`: blocks under the constraints, ranked on raw scores, by default
per MAC saved), applied (:mod:`~taylorprune.pruning.removal`) and checked
(:mod:`~taylorprune.pruning.verify`). For a MACs target the plan comes from the cost model and is
verified with one fvcore count, and refined while the count is above the band.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from taylorprune.errors import UserError
from taylorprune.graph import ChannelGraph, ChannelGroup, LeftWhole, describe_left_whole
from taylorprune.importance import defaults
from taylorprune.latency import LatencyGroup, closest_latency
from taylorprune.latency.setup import LatencySetup, latency_model_for
from taylorprune.measure import module_macs
from taylorprune.pruning import plan
from taylorprune.pruning.cost import CostModel, GroupInfo, probe_groups, widths_of
from taylorprune.pruning.latency_target import LatencyPlanner, TrialModel, latency_groups
from taylorprune.pruning.optim import Lineage
from taylorprune.pruning.removal import (
    PruneStep,
    StopReason,
    group_scores_after,
    merge_steps,
    remove_channels,
)
from taylorprune.pruning.targets import TOLERANCE, Target
from taylorprune.pruning.verify import (
    broken_message,
    check_runs,
    find_classifier,
    first_sample,
)

logger = logging.getLogger("taylorprune")

NORMALIZATIONS = plan.NORMALIZATIONS


class StructuredPruner:
    """Removes the globally lowest-scored channels of ``model`` in place.

    ``example_inputs`` is a batch (its first sample is used for counting). ``ignored_layers`` are
    module names or patterns whose output channels are kept; the classifier (the module producing
    the logits, else the last Linear) is always added unless ``protect_classifier=False``.
    ``include`` restricts pruning to groups whose root matches a pattern. ``round_to``,
    ``min_channels`` and ``max_fraction`` bound each group's width (:class:`Constraints`).
    ``normalize`` (``None`` by default: raw scores; "mean", "l2", "max") divides each group's
    scores by their mean (or norm, or max) before the global ranking; ``cost_aware`` (default)
    ranks by score per MAC saved, which keeps raw Taylor scores from taking whole cheap layers.
    ``verify`` checks after each removal that the model still runs, naming the layers if not;
    ``track_params`` records what each removal kept so that :func:`remap_optimizer` can follow.
    ``latency`` (a :class:`LatencySetup`) makes latency targets possible: the latency table is
    read or measured and the baseline timed now, before anything is removed.

    Groups that cannot be pruned safely (an attention width, a channel shuffle, what torch-pruning
    cannot analyse) are left whole: :attr:`left_whole` names them, one logged warning summarises
    them, and they are neither ranked nor removed. Raises :class:`UserError` for invalid options
    or a model with nothing to prune (naming the groups left whole).
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor | Sequence[torch.Tensor],
        *,
        ignored_layers: Iterable[str] | None = None,
        include: Iterable[str] | None = None,
        round_to: int = 1,
        min_channels: int = 1,
        max_fraction: float = 0.9,
        normalize: str | None = defaults.NORMALIZE,
        cost_aware: bool = defaults.COST_AWARE,
        protect_classifier: bool = True,
        verify: bool = True,
        track_params: bool = True,
        latency: LatencySetup | None = None,
    ) -> None:
        self.constraints = plan.checked_constraints(round_to, min_channels, max_fraction)
        norm = "none" if normalize is None else str(normalize)
        if norm not in NORMALIZATIONS:
            choices = ", ".join(NORMALIZATIONS)
            raise UserError(f"pruning.normalize: unknown {normalize!r}; choices: {choices}")
        self.model = model
        self.example_inputs = first_sample(example_inputs)
        self.normalize = norm
        self.cost_aware = bool(cost_aware)
        self.verify = bool(verify)
        self.track_params = bool(track_params)
        self.lineage = Lineage()  # what remap_optimizer reads; filled only with track_params
        ignored = list(ignored_layers or ())
        self.classifier = (
            find_classifier(model, self.example_inputs) if protect_classifier else None
        )
        if self.classifier is not None and self.classifier not in ignored:
            ignored.append(self.classifier)
        self.graph = ChannelGraph(model, self.example_inputs, ignored, include)
        groups = self.graph.groups()
        if not groups:
            raise UserError(self._nothing_to_prune())
        names = [n for n, m in model.named_modules() if widths_of(m) is not None]
        self.cost = CostModel(model, self.example_inputs, names)
        self.baseline_macs = self.cost.baseline_macs
        self.baseline_params = self.cost.baseline_params
        self._info: dict[str, GroupInfo] = probe_groups(self.graph, self.cost, groups)
        groups = [g for g in groups if g.root in self._info]
        #: Groups kept at full width, each with its layers and why; never ranked nor removed.
        self.left_whole: tuple[LeftWhole, ...] = tuple(self.graph.left_whole)
        if not groups:
            raise UserError(self._nothing_to_prune())
        if self.left_whole:
            logger.warning(
                "left %d group(s) of coupled channels whole, pruning the rest: %s",
                len(self.left_whole),
                describe_left_whole(self.left_whole),
            )
        self._groups: list[ChannelGroup] | None = list(groups)  # nothing removed yet
        self._width0 = {
            m: (g.root, widths_of(model.get_submodule(m))[0])
            for g in groups
            for m in g.members
            if widths_of(model.get_submodule(m)) is not None
        }
        self.baseline_channels = sum(g.size for g in groups)
        self.history: list[PruneStep] = []
        self._macs = self.baseline_macs
        self._macs_counted = True
        self._params = self.baseline_params
        #: A latency target's planner (its trials, the latest measured fraction), when built with
        #: ``latency``.
        self.latency: LatencyPlanner | None = None
        if latency is not None:
            shape = self.example_inputs.shape[1:]  # type: ignore[union-attr]
            self.latency = LatencyPlanner(
                model,
                latency_model_for(model, shape, latency),
                latency,
                self.constraints,
                TrialModel(self.example_inputs, tuple(self.graph.ignored), self.graph.include),
            )

    # -- what the model is now --------------------------------------------------------------------
    def groups(self) -> list[ChannelGroup]:
        """The prunable groups at their current widths.

        Enumerating torch-pruning's groups walks the whole graph, so the result is kept until the
        next removal changes the widths."""
        if self._groups is None:
            self._groups = [g for g in self.graph.groups() if g.root in self._info]
        return list(self._groups)

    @property
    def macs(self) -> int:
        """MACs now (batch 1): a real count, taken if the last step only estimated it."""
        if not self._macs_counted:
            self._count()
        return self._macs

    @property
    def params(self) -> int:
        return self._params

    def channels(self) -> int:
        return sum(g.size for g in self.groups())

    def fraction(self, kind: str) -> float:
        """What is left of the baseline ``kind`` ("macs", "params", "channels", "latency": the
        latest measurement) as a fraction."""
        if kind == "latency":
            return self._latency_planner().fraction
        if kind == "macs":
            return self.macs / self.baseline_macs
        if kind == "params":
            return self.params / self.baseline_params
        return self.channels() / self.baseline_channels

    def target_reached(self, target: Target) -> bool:
        """True when the model is at or below ``target`` (within the 1% tolerance).

        For MACs a real count is taken only near the target; well above it the calibrated estimate
        decides (it matches fvcore far more closely than the margin).
        """
        if target.kind == "macs" and not self._macs_counted and not self._near(target):
            return False
        return target.met_by(self.fraction(target.kind))

    def widths(self) -> dict[str, dict]:
        """Per module whose output channels are pruned: ``{"channels": now, "baseline": at
        construction, "group": root of its group}``."""
        out = {}
        for name, (root, base) in self._width0.items():
            now = widths_of(self.model.get_submodule(name))
            out[name] = {"channels": now[0] if now else base, "baseline": base, "group": root}
        return out

    def unit_scores(self, group_scores: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """Per scored group: one score per *unit* as the ranking sees it (normalised; averaged over
        a grouped convolution's groups, whose channel ``j`` of every group is one unit)."""
        return {
            g.root: self._units(g, group_scores[g.root])
            for g in self.groups()
            if g.root in group_scores
        }

    def channels_per_unit(self, group: ChannelGroup) -> int:
        """Channels one unit of ``group`` holds (its convolution groups, else 1)."""
        info = self._info[group.root]
        return info.ch_groups if group.size % info.ch_groups == 0 else 1

    # -- removing ----------------------------------------------------------------------------------
    def remove(self, group_scores: Mapping[str, torch.Tensor], n_channels: int) -> PruneStep:
        """Remove the ``n_channels`` globally lowest channels allowed by the constraints.

        With ``round_to`` > 1 or grouped convolutions fewer may be removed (whole blocks only).
        Optimizers built before the step follow with :func:`~taylorprune.pruning.remap_optimizer`.
        """
        groups = self.groups()
        blocks, orders = self._blocks(groups, group_scores)
        step = self._apply(groups, plan.greedy(blocks, budget=int(n_channels)), orders)
        self._check(step)
        return step

    def remove_to_target(
        self,
        group_scores: Mapping[str, torch.Tensor],
        target: Target,
        max_channels: int | None = None,
    ) -> PruneStep:
        """Remove the lowest channels until ``target`` is met, or ``max_channels`` this step.

        For a MACs target the result is verified with a real fvcore count and refined while the
        count is above the target band; a latency target is planned and timed by :attr:`latency`.
        ``step.stopped_short`` says why a reachable-looking target was missed (constraints block
        every group, or blocks are too coarse to land within 1%); nothing is logged here, callers
        decide whether the user hears of it (``step.stopped_short.describe(target)``).
        """
        if target.kind == "latency":
            return self._remove_to_latency(group_scores, target, max_channels)
        budget = math.inf if max_channels is None else int(max_channels)
        goal = target.keep * self._baseline(target.kind)
        scores: Mapping[str, torch.Tensor] = group_scores
        total: PruneStep | None = None
        reason: StopReason | None = None
        # Plan with the cost model, verify with a real count, refine while the count is above the
        # band (the model can miss what fvcore counts outside convolutions, linears and norms).
        for _ in range(5):
            groups = self.groups()
            blocks, orders = self._blocks(groups, scores)
            left = budget - (0 if total is None else total.channels_removed)
            seq = plan.greedy(blocks, budget=left)
            t, reason = self._prefix(groups, seq, target, goal, limited=max_channels is not None)
            step = self._apply(groups, seq.take(slice(0, t)), orders)
            single = step
            if total is not None:
                self.history[-2:] = [merge_steps(total, step)]
                step = self.history[-1]
            total = step
            if t == 0 or target.kind != "macs" or not self._near(target):
                break  # far above the target (a capped step): the estimate decides, no count
            self._count(total)
            if target.met_by(self.fraction("macs")) or total.channels_removed >= budget:
                break
            scores = group_scores_after(scores, single)
        assert total is not None
        if not total.counted:
            self._check(total)
        if target.kind == "macs" and not total.counted:
            achieved = self._macs / self.baseline_macs  # above the band by more than the error
        else:
            achieved = self.fraction(target.kind)
        if abs(achieved - target.keep) > TOLERANCE and total.channels_removed < budget:
            if reason is None and achieved > target.keep:
                reason = StopReason(
                    "constraints",
                    f"no channel left that the constraints allow{self._left_whole_note()}",
                )
            elif reason is None:
                reason = StopReason("granularity", "the last block removed overshot the target")
            total.stopped_short = StopReason(reason.code, reason.message, achieved)
        return total

    def remove_units(
        self, remove: Mapping[str, int], unit_scores: Mapping[str, np.ndarray]
    ) -> PruneStep:
        """Remove the ``remove[root]`` lowest-scored units (of ``unit_scores[root]``) of each group,
        constraints not checked: a plan made elsewhere (a latency selection, a replayed step) is
        applied."""
        groups = self.groups()
        picked, orders = [], []
        for gi, g in enumerate(groups):
            n = int(remove.get(g.root, 0))
            orders.append(
                np.argsort(unit_scores[g.root], kind="stable") if g.root in unit_scores else None
            )
            if n > 0:
                picked.append((gi, n, n * self.channels_per_unit(g)))
        idx = np.array(picked, dtype=np.int64).reshape(-1, 3)
        chosen = plan.Blocks(idx[:, 0], np.zeros(len(idx), dtype=np.int64), idx[:, 1], idx[:, 2])
        step = self._apply(groups, chosen, orders)
        self._check(step)
        return step

    def closest_latency(self) -> float:
        """The lowest latency (ms) the constraints allow, as the latency model predicts it."""
        planner = self._latency_planner()
        groups = self._latency_groups(
            {g.root: np.zeros(g.size // self.channels_per_unit(g)) for g in self.groups()}
        )
        return closest_latency(groups, planner.latency, constraints=self.constraints)

    # -- latency -----------------------------------------------------------------------------------
    def _remove_to_latency(
        self, group_scores: Mapping[str, torch.Tensor], target: Target, max_channels: int | None
    ) -> PruneStep:
        planner = self._latency_planner()
        units = self.unit_scores(group_scores)
        groups = self._latency_groups(units)
        decision = planner.plan(self.model, groups, target, max_channels)
        step = self.remove_units(decision.removed_units(groups), units)
        step.stopped_short = planner.judge(self.model, decision, target)
        return step

    def _latency_groups(self, units: Mapping[str, np.ndarray]) -> list[LatencyGroup]:
        """The scored groups as the latency selection sees them (unscored ones stay whole)."""
        groups = [g for g in self.groups() if g.root in units]
        return latency_groups(
            self.graph,
            groups,
            units,
            {g.root: self.channels_per_unit(g) for g in groups},
            {g.root: self._info[g.root].size0 for g in groups},
            self._latency_planner(),
        )

    def _latency_planner(self) -> LatencyPlanner:
        if self.latency is None:
            raise UserError(
                "a latency target needs the pruner built with latency=LatencySetup(...) (see "
                "docs/latency.md); recipes set it up from their measure section"
            )
        return self.latency

    # -- planning ----------------------------------------------------------------------------------
    def _units(self, group: ChannelGroup, scores: torch.Tensor) -> np.ndarray:
        s = np.asarray(torch.as_tensor(scores).detach().double().cpu().reshape(-1))
        if s.shape[0] != group.size:
            raise ValueError(
                f"scores of group {group.root!r}: expected {group.size} values, got {len(s)}"
            )
        return plan.unit_scores(s, self.normalize, self.channels_per_unit(group))

    def _baseline(self, kind: str) -> float:
        return {
            "macs": self.baseline_macs,
            "params": self.baseline_params,
            "channels": self.baseline_channels,
        }[kind]

    def _near(self, target: Target) -> bool:
        """Whether the estimated MACs are within twice the tolerance of ``target`` or below it."""
        return self._macs / self.baseline_macs <= target.keep + 2 * TOLERANCE

    def _blocks(
        self, groups: list[ChannelGroup], group_scores: Mapping[str, torch.Tensor]
    ) -> tuple[plan.Blocks, list[np.ndarray | None]]:
        """Every removable block of every group by priority, and each group's ranking order."""
        scale = None
        if self.cost_aware:
            mpc = self.cost.macs_per_channel(*self._effect_matrices(groups))
            scale = [1.0 / max(float(m), 1e-12) for m in mpc]
        units = [
            self._units(g, group_scores[g.root]) if g.root in group_scores else None for g in groups
        ]
        per = [self.channels_per_unit(g) for g in groups]
        size0 = [self._info[g.root].size0 for g in groups]
        return plan.blocks(units, per, size0, self.constraints, scale)

    def _effect_matrices(self, groups: list[ChannelGroup]) -> tuple[np.ndarray, np.ndarray]:
        a_out = np.stack([self._info[g.root].a_out for g in groups])
        a_in = np.stack([self._info[g.root].a_in for g in groups])
        return a_out, a_in

    def _prefix(
        self,
        groups: list[ChannelGroup],
        seq: plan.Blocks,
        target: Target,
        goal: float,
        limited: bool,
    ) -> tuple[int, StopReason | None]:
        """How many blocks of ``seq`` to take so that the target metric lands nearest ``goal``,
        and why it cannot land within the band, if it cannot."""
        if target.kind == "channels":
            left = float(sum(g.size for g in groups)) - np.concatenate(
                [[0.0], np.cumsum(seq.channels)]
            )

            def metric(t: int) -> float:
                return float(left[t])
        else:
            metric = self.cost.prefix_metric(
                *self._effect_matrices(groups), seq.group, seq.channels, target.kind
            )
        if metric(0) <= goal:
            return 0, None
        t = plan.prefix_to_goal(metric, len(seq), goal)
        if metric(t) > goal and t == len(seq):
            if limited:
                return t, None
            return t, StopReason(
                "constraints",
                f"every prunable group is at its minimum width ({self.constraints.describe()})"
                f"{self._left_whole_note()}",
            )
        base = self._baseline(target.kind)
        if abs(metric(t) - goal) > TOLERANCE * base:
            return t, StopReason(
                "granularity",
                f"removable blocks are too coarse to land within 1% of the target (round_to="
                f"{self.constraints.round_to}); closest is {metric(t) / base:.3f} of baseline",
            )
        return t, None

    # -- applying ----------------------------------------------------------------------------------
    def _apply(
        self, groups: list[ChannelGroup], chosen: plan.Blocks, orders: list[np.ndarray | None]
    ) -> PruneStep:
        """Remove the ``chosen`` blocks (positions in ``orders``, the groups' ranking orders)."""
        channels: dict[str, list[int]] = {}
        for gi, start, n in zip(
            chosen.group.tolist(), chosen.start.tolist(), chosen.units.tolist(), strict=True
        ):
            g, order = groups[gi], orders[gi]
            assert order is not None, g.root
            per = self.channels_per_unit(g)
            channels.setdefault(g.root, []).extend(plan.channel_indices(order, start, n, per))
        lineage = self.lineage if self.track_params else None
        removed, kept = remove_channels(self.graph, groups, channels, lineage)
        if removed:
            self._groups = None  # widths changed: enumerate afresh when next asked
        self.cost.refresh()
        macs, _ = self.cost.now()
        self._params = sum(p.numel() for p in self.model.parameters())
        self.cost.calibrate(params=self._params)
        self._macs, self._macs_counted = int(round(macs)), False
        step = PruneStep(
            channels_removed=sum(len(v) for v in removed.values()),
            removed=removed,
            kept=kept,
            macs=self._macs,
            params=self._params,
        )
        self.history.append(step)
        return step

    def _check(self, step: PruneStep) -> None:
        if self.verify and step.removed:
            check_runs(self.model, self.example_inputs, list(step.removed))

    def _count(self, step: PruneStep | None = None) -> None:
        """A real fvcore count; a failure means the pruned model no longer runs."""
        try:
            total, _ = module_macs(self.model, self.example_inputs)
        except Exception as exc:
            layers = list(step.removed) if step is not None else []
            raise UserError(broken_message(layers, exc)) from exc
        self._macs, self._macs_counted = total, True
        self.cost.calibrate(macs=total)
        if step is not None:
            step.macs, step.counted = total, True

    def _nothing_to_prune(self) -> str:
        ignored = ", ".join(self.graph.ignored) or "none"
        left = f"; left whole: {describe_left_whole(self.graph.left_whole)}"
        return (
            "no prunable channels: every conv/linear output is ignored or cannot be removed "
            f"(ignored: {ignored}){left if self.graph.left_whole else ''}"
        )

    def _left_whole_note(self) -> str:
        """What a stop reason adds when groups are left whole: they bound what is reachable."""
        if not self.left_whole:
            return ""
        return f"; left whole: {describe_left_whole(self.left_whole)}"
