"""Global channel ranking and physical removal over torch-pruning's dependency graph.

All channels of all prunable groups are ranked together on their raw scores (``normalize`` divides
each group's scores by their mean, norm or max first), by default per MAC that removing the channel
saves (``cost_aware``); the lowest are removed with ``ChannelGraph.tp_group(...).prune()``.
Removal works in *blocks*: a group's channels sorted by score are cut into runs so that the
remaining width stays a multiple of ``round_to`` and of the group's convolution groups (ResNeXt),
never goes under ``min_channels`` nor under ``(1 - max_fraction)`` of the original width. Blocks of
one group keep their order; across groups they are merged by score (or by score per MAC saved when
``cost_aware``).

MACs and parameters of a planned removal come from :class:`~taylorprune.pruning.cost.CostModel`
(exact for convolutions, linears and norm layers); a target is verified with one fvcore count and
refined if the count disagrees. A latency target is planned and measured by the
:class:`~taylorprune.pruning.latency_target.LatencyPruning` set as :attr:`StructuredPruner.latency`.

Over 400 lines because planning (blocks under the constraints, their cost), the target loop with
its fvcore verification, removal with optimizer remapping and the unit interface the latency
planner uses all work on one private block structure; what does not need it (the cost model, the
graph, latency planning) lives in its own module.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn

from taylorprune.errors import UserError
from taylorprune.graph import ChannelGraph, ChannelGroup, LeftWhole
from taylorprune.importance import defaults
from taylorprune.measure import module_macs
from taylorprune.pruning.cost import CostModel, widths_of
from taylorprune.pruning.optim import Lineage
from taylorprune.pruning.targets import TOLERANCE, Target

logger = logging.getLogger("taylorprune")


_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_NORM_TYPES = (*_BN_TYPES, nn.GroupNorm)

NORMALIZATIONS: tuple[str, ...] = ("none", "l2", "mean", "max")


ATTENTION_REASON = (
    "it sets the width of attention layers, whose heads would be re-split and attention rescaled"
)


def _heads_split(module: nn.Module, parent: nn.Module | None) -> bool:
    """Whether ``module``'s width is split into attention heads: it is an nn.MultiheadAttention,
    or a direct child (``qkv``, ``proj``, ``out_proj``) of a module with a ``num_heads`` (the
    attention blocks of torchvision, timm and most ViT code)."""
    if isinstance(module, nn.MultiheadAttention):
        return True
    heads = getattr(parent, "num_heads", None)
    return isinstance(heads, int) and not isinstance(heads, bool)


@dataclass(frozen=True)
class StopReason:
    """Why a target was not reached: ``code`` is ``"constraints"`` or ``"granularity"``;
    ``achieved`` is the fraction of the baseline kept when the step ended (None while planning)."""

    code: str
    message: str
    achieved: float | None = None

    def describe(self, target: Target) -> str:
        """One line for the user: where pruning stopped against ``target``, and why."""
        where = "" if self.achieved is None else f" at {self.achieved:.3f} of"
        return (
            f"pruning stopped{where} baseline {target.kind} (target {target.keep:.3f}): "
            f"{self.message}"
        )


@dataclass
class PruneStep:
    """One physical removal.

    ``removed[root]`` lists removed channel indices of the group rooted at ``root`` (indices before
    the step); ``kept[root]`` the kept ones (a long tensor, for every group at the step's start,
    identity for untouched groups), which is what score accumulators need to realign. ``macs`` and
    ``params`` are the model's totals after the step (batch 1); ``counted`` says whether ``macs``
    comes from a real fvcore count rather than the calibrated cost model.
    """

    channels_removed: int
    removed: dict[str, list[int]]
    kept: dict[str, torch.Tensor]
    macs: int
    params: int
    counted: bool = False
    stopped_short: StopReason | None = None


class LatencyPlanner(Protocol):
    """What the pruner asks of :attr:`StructuredPruner.latency` for a latency target
    (:class:`~taylorprune.pruning.latency_target.LatencyPruning`): the latest measured fraction
    of the baseline's latency, and the removals towards a target."""

    fraction: float

    def remove_to_target(
        self,
        group_scores: Mapping[str, torch.Tensor],
        target: Target,
        max_channels: int | None = None,
    ) -> PruneStep: ...


@dataclass
class _Blocks:
    """Removable blocks in ranking order, as parallel arrays.

    Block ``i`` is ``units[i]`` consecutive units, from position ``start[i]``, of group
    ``group[i]``'s units sorted by score; it holds ``channels[i]`` channels.
    """

    group: np.ndarray
    start: np.ndarray
    units: np.ndarray
    channels: np.ndarray

    def __len__(self) -> int:
        return len(self.group)

    def take(self, index: np.ndarray | slice) -> _Blocks:
        return _Blocks(
            self.group[index], self.start[index], self.units[index], self.channels[index]
        )


@dataclass
class _GroupInfo:
    size0: int  # width at construction
    ch_groups: int  # channels tied across convolution groups (ResNeXt), else 1
    a_out: np.ndarray = field(repr=False)
    a_in: np.ndarray = field(repr=False)
    heads: tuple[str, ...] = ()  # layers whose width is split into attention heads


class StructuredPruner:
    """Removes the globally lowest-scored channels of ``model`` in place.

    ``example_inputs`` is a batch (its first sample is used for counting). ``ignored_layers`` are
    module names or patterns whose output channels are kept; the classifier (the module producing
    the logits, else the last Linear) is always added unless ``protect_classifier=False``.
    ``include`` restricts pruning to groups whose root matches a pattern. ``normalize`` (``None`` by
    default: raw scores; "mean", "l2", "max") divides each group's scores by their mean (or norm,
    or max) before the global ranking; ``cost_aware`` (default) ranks by score per MAC saved, which
    keeps raw Taylor scores from taking whole cheap layers (docs/benchmarks.md measures both).
    ``verify`` runs one forward pass after each :meth:`remove` so a model that no longer runs fails
    at once, naming the layers; ``track_params`` records what each
    removal kept so that :func:`remap_optimizer` can follow. Groups that cannot be pruned safely
    (an attention width, a channel shuffle, what torch-pruning cannot analyse) are left whole:
    :attr:`left_whole` names them, one logged warning summarises them, and they are neither ranked
    nor removed. Raises :class:`UserError` for invalid options or a model with nothing to prune
    (naming the groups left whole).
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
    ) -> None:
        if not isinstance(round_to, int) or round_to < 1:
            raise UserError(f"pruning.round_to: expected an integer >= 1, got {round_to!r}")
        if not isinstance(min_channels, int) or min_channels < 1:
            raise UserError(f"pruning.min_channels: expected an integer >= 1, got {min_channels!r}")
        if not 0.0 <= float(max_fraction) <= 1.0:
            raise UserError(
                f"pruning.max_fraction: expected a fraction in [0, 1], got {max_fraction!r}"
            )
        norm = "none" if normalize is None else str(normalize)
        if norm not in NORMALIZATIONS:
            raise UserError(
                f"pruning.normalize: unknown {normalize!r}; choices: {', '.join(NORMALIZATIONS)}"
            )
        self.model = model
        self.example_inputs = _first_sample(example_inputs)
        self.round_to = round_to
        self.min_channels = min_channels
        self.max_fraction = float(max_fraction)
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
        self._info = {g.root: self._probe(g) for g in groups}
        for g in groups:
            # What is left of an attention width would be re-split evenly into the heads (see
            # _heads_split), moving channels between heads and changing the attention scale: the
            # result is not the model minus some channels, and no fix-up afterwards makes it so.
            if self._info[g.root].heads:
                self.graph.leave_whole(g, ATTENTION_REASON)
                del self._info[g.root]
        groups = [g for g in groups if g.root in self._info]
        # Groups kept at full width, each with its layers and why (torch-pruning cannot analyse
        # it safely, or it sets an attention width); excluded from ranking and removal.
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
        self._order: dict[str, np.ndarray] = {}  # sorted units per group, from the last ranking
        self._macs = self.baseline_macs
        self._macs_counted = True
        self._params = self.baseline_params
        # What plans and measures a latency target (taylorprune.pruning.latency_target).
        self.latency: LatencyPlanner | None = None

    # -- public API --------------------------------------------------------------------------------
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
            return self._latency().fraction
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

    def _near(self, target: Target) -> bool:
        """Whether the estimated MACs are within twice the tolerance of ``target`` or below it."""
        return self._macs / self.baseline_macs <= target.keep + 2 * TOLERANCE

    def stopped_short_reason(self, target: Target) -> dict | None:
        """``{"code", "message"}`` when ``target`` is not met, else None."""
        if self.target_reached(target):
            return None
        last = self.history[-1].stopped_short if self.history else None
        if last is None:
            return {"code": "not_finished", "message": "pruning ended before the target"}
        return {"code": last.code, "message": last.message}

    def widths(self) -> dict[str, dict]:
        """Per module whose output channels are pruned: ``{"channels": now, "baseline": at
        construction, "group": root of its group}``."""
        out = {}
        for name, (root, base) in self._width0.items():
            now = widths_of(self.model.get_submodule(name))
            out[name] = {"channels": now[0] if now else base, "baseline": base, "group": root}
        return out

    def remove(
        self,
        group_scores: Mapping[str, torch.Tensor],
        n_channels: int,
    ) -> PruneStep:
        """Remove the ``n_channels`` globally lowest channels allowed by the constraints.

        With ``round_to`` > 1 or grouped convolutions fewer may be removed (whole blocks only).
        Optimizers built before the step follow with :func:`~taylorprune.pruning.remap_optimizer`.
        """
        groups = self.groups()
        blocks = self._blocks(groups, group_scores)
        chosen = _greedy(blocks, budget=int(n_channels))
        step = self._apply(groups, chosen)
        if self.verify:
            self._check_forward(step)
        return step

    def remove_to_target(
        self,
        group_scores: Mapping[str, torch.Tensor],
        target: Target,
        max_channels: int | None = None,
    ) -> PruneStep:
        """Remove the lowest channels until ``target`` is met, or ``max_channels`` this step.

        For a MACs target the result is verified with a real fvcore count and refined while the
        count is above the target band. ``step.stopped_short`` says why a reachable-looking target
        was missed (constraints block every group, or blocks are too coarse to land within 1%);
        nothing is logged here, callers decide whether the user hears of it
        (``step.stopped_short.describe(target)``).
        """
        if target.kind == "latency":
            return self._latency().remove_to_target(group_scores, target, max_channels)
        budget = math.inf if max_channels is None else int(max_channels)
        goal = target.keep * self._baseline(target.kind)
        scores: Mapping[str, torch.Tensor] = group_scores
        total: PruneStep | None = None
        reason: StopReason | None = None
        # Plan with the cost model, verify with a real count, refine while the count is above the
        # band (the model can miss what fvcore counts outside convolutions, linears and norms).
        for _ in range(5):
            groups = self.groups()
            blocks = self._blocks(groups, scores)
            left = budget - (0 if total is None else total.channels_removed)
            seq = _greedy(blocks, budget=left)
            t, reason = self._plan(groups, seq, target, goal, limited=max_channels is not None)
            step = self._apply(groups, seq.take(slice(0, t)))
            single = step
            if total is not None:
                self.history.pop()
                self.history.pop()
                step = _merge(total, step)
                self.history.append(step)
            total = step
            if t == 0 or target.kind != "macs" or not self._near(target):
                break  # far above the target (a capped step): the estimate decides, no count
            self._count(total)
            if target.met_by(self.fraction("macs")) or total.channels_removed >= budget:
                break
            scores = group_scores_after(scores, single)
        assert total is not None
        if self.verify and not total.counted:
            self._check_forward(total)
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

    def unit_scores(self, group_scores: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """Per scored group: one score per *unit* as the ranking sees it (normalised; averaged over
        a grouped convolution's groups, whose channel ``j`` of every group is one unit)."""
        out = {}
        for g in self.groups():
            if g.root in group_scores:
                out[g.root] = self._units(g, group_scores[g.root])[0]
        return out

    def channels_per_unit(self, group: ChannelGroup) -> int:
        """Channels one unit of ``group`` holds (its convolution groups, else 1)."""
        info = self._info[group.root]
        return info.ch_groups if group.size % info.ch_groups == 0 else 1

    def remove_units(
        self, remove: Mapping[str, int], unit_scores: Mapping[str, np.ndarray]
    ) -> PruneStep:
        """Remove the ``remove[root]`` lowest-scored units (of ``unit_scores[root]``) of each group,
        constraints not checked: a plan made elsewhere (the latency selection) is applied."""
        groups = self.groups()
        picked = []
        for gi, g in enumerate(groups):
            n = int(remove.get(g.root, 0))
            if n <= 0:
                continue
            self._order[g.root] = np.argsort(unit_scores[g.root], kind="stable")
            picked.append((gi, n, n * self.channels_per_unit(g)))
        idx = np.array(picked, dtype=np.int64).reshape(-1, 3)
        blocks = _Blocks(idx[:, 0], np.zeros(len(idx), dtype=np.int64), idx[:, 1], idx[:, 2])
        step = self._apply(groups, blocks)
        if self.verify:
            self._check_forward(step)
        return step

    def _latency(self) -> LatencyPlanner:
        if self.latency is None:
            raise UserError(
                "a latency target needs a latency model on the pruner (pruner.latency = "
                "LatencyPruning(...), see docs/latency.md); recipes set it up themselves"
            )
        return self.latency

    # -- planning ----------------------------------------------------------------------------------
    def _units(self, group: ChannelGroup, scores: torch.Tensor) -> tuple[np.ndarray, int]:
        """``group``'s unit scores (see :meth:`unit_scores`) and channels per unit."""
        s = np.asarray(torch.as_tensor(scores).detach().double().cpu().reshape(-1))
        if s.shape[0] != group.size:
            raise ValueError(
                f"scores of group {group.root!r}: expected {group.size} values, got {len(s)}"
            )
        s = _normalize(s, self.normalize)
        gcount = self.channels_per_unit(group)
        return s.reshape(gcount, group.size // gcount).mean(axis=0), gcount

    def _baseline(self, kind: str) -> float:
        return {
            "macs": self.baseline_macs,
            "params": self.baseline_params,
            "channels": self.baseline_channels,
        }[kind]

    def _blocks(
        self, groups: list[ChannelGroup], group_scores: Mapping[str, torch.Tensor]
    ) -> _Blocks:
        """Every removable block of every group, sorted by priority (lowest first)."""
        parts: list[tuple[np.ndarray, ...]] = []
        mpc = None
        if self.cost_aware:
            a_out = np.stack([self._info[g.root].a_out for g in groups])
            a_in = np.stack([self._info[g.root].a_in for g in groups])
            mpc = self.cost.macs_per_channel(a_out, a_in)
        for gi, g in enumerate(groups):
            if g.root not in group_scores:
                continue
            info = self._info[g.root]
            unit_scores, gcount = self._units(g, group_scores[g.root])
            units = g.size // gcount
            order = np.argsort(unit_scores, kind="stable")
            self._order[g.root] = order
            step = self.round_to // math.gcd(self.round_to, gcount)
            floor = max(self.min_channels, math.ceil(info.size0 * (1.0 - self.max_fraction) - 1e-9))
            keep_min = math.ceil(max(floor / gcount, 1.0) / step) * step
            if keep_min >= units:
                continue
            first = units % step or step
            starts = np.concatenate([[0], np.arange(first, units - keep_min, step)]).astype(
                np.int64
            )
            sizes = np.diff(np.append(starts, units - keep_min))
            sums = np.add.reduceat(unit_scores[order][: units - keep_min], starts)
            scale = 1.0 if mpc is None else 1.0 / max(float(mpc[gi]), 1e-12)
            pri = sums / sizes * scale
            parts.append((np.full(len(starts), gi), starts, sizes, sizes * gcount, pri))
        if not parts:
            empty = np.zeros(0, dtype=np.int64)
            return _Blocks(empty, empty, empty, empty)
        group, start, size, channels, pri = (np.concatenate(c) for c in zip(*parts, strict=True))
        order = np.lexsort((start, group, pri))
        return _Blocks(group[order], start[order], size[order], channels[order])

    def _plan(
        self,
        groups: list[ChannelGroup],
        seq: _Blocks,
        target: Target,
        goal: float,
        limited: bool,
    ) -> tuple[int, StopReason | None]:
        """How many blocks of ``seq`` to take so that the target metric lands nearest ``goal``."""
        if target.kind == "channels":
            now = float(sum(g.size for g in groups))
            values = now - np.concatenate([[0.0], np.cumsum(seq.channels)])

            def metric(t: int) -> float:
                return float(values[t])
        else:
            a_out = np.stack([self._info[g.root].a_out for g in groups])
            a_in = np.stack([self._info[g.root].a_in for g in groups])
            gidx = seq.group
            ch = seq.channels.astype(np.float64)
            pick = 0 if target.kind == "macs" else 1

            def metric(t: int) -> float:
                k = np.bincount(gidx[:t], weights=ch[:t], minlength=len(groups))
                return self.cost.predict(k @ a_out, k @ a_in)[pick]

        if metric(0) <= goal:
            return 0, None
        if metric(len(seq)) > goal:
            if limited:
                return len(seq), None
            return len(seq), StopReason(
                "constraints",
                "every prunable group is at its minimum width "
                f"(min_channels={self.min_channels}, max_fraction={self.max_fraction}, "
                f"round_to={self.round_to}){self._left_whole_note()}",
            )
        lo, hi = 0, len(seq)  # metric(lo) > goal >= metric(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if metric(mid) <= goal:
                hi = mid
            else:
                lo = mid
        base = self._baseline(target.kind)
        t = hi if abs(metric(hi) - goal) <= abs(metric(lo) - goal) else lo
        if abs(metric(t) - goal) > TOLERANCE * base:
            return t, StopReason(
                "granularity",
                f"removable blocks are too coarse to land within 1% of the target (round_to="
                f"{self.round_to}); closest is {metric(t) / base:.3f} of baseline",
            )
        return t, None

    # -- applying ----------------------------------------------------------------------------------
    def _apply(
        self,
        groups: list[ChannelGroup],
        chosen: _Blocks,
    ) -> PruneStep:
        by_group: dict[int, list[int]] = {}
        for gi, start, n in zip(
            chosen.group.tolist(), chosen.start.tolist(), chosen.units.tolist(), strict=True
        ):
            g = groups[gi]
            info = self._info[g.root]
            gcount = info.ch_groups if g.size % info.ch_groups == 0 else 1
            units = g.size // gcount
            idx = by_group.setdefault(gi, [])
            for u in self._order[g.root][start : start + n].tolist():
                idx.extend(u + k * units for k in range(gcount))
        removed: dict[str, list[int]] = {}
        kept: dict[str, torch.Tensor] = {}
        for gi, g in enumerate(groups):
            idxs = sorted(by_group.get(gi, []))
            mask = torch.ones(g.size, dtype=torch.bool)
            mask[idxs] = False
            kept[g.root] = mask.nonzero().flatten()
            if not idxs:
                continue
            removed[g.root] = idxs
            self._groups = None  # widths change: enumerate afresh when next asked
            tp_group = self.graph.tp_group(g, idxs)
            if self.track_params:
                self.lineage.prune_group(tp_group)
            else:
                tp_group.prune()
            now = widths_of(self.model.get_submodule(g.root))
            if now is None or now[0] != g.size - len(idxs):
                raise UserError(
                    f"layer {g.root!r}: torch-pruning did not remove the requested channels "
                    f"(width {g.size} -> {now and now[0]}, expected {g.size - len(idxs)})"
                )
        self.cost.refresh()
        macs, _ = self.cost.predict(np.zeros_like(self.cost.out), np.zeros_like(self.cost.out))
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

    def _count(self, step: PruneStep | None = None) -> None:
        """A real fvcore count; a failure means the pruned model no longer runs."""
        try:
            total, _ = module_macs(self.model, self.example_inputs)
        except Exception as exc:
            raise UserError(_broken_message(step, exc)) from exc
        self._macs, self._macs_counted = total, True
        self.cost.calibrate(macs=total)
        if step is not None:
            step.macs, step.counted = total, True

    def _check_forward(self, step: PruneStep) -> None:
        """Fail now, naming the layers, if the pruned model no longer runs.

        Shapes are propagated on the meta device (no arithmetic); only if that fails (data-dependent
        ops, tensors kept outside parameters and buffers) does a real forward pass decide.
        """
        if not step.removed:
            return
        try:
            _meta_forward(self.model, self.example_inputs)
            return
        except Exception:
            logger.debug("meta-device check failed; checking with a real forward pass")
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                inputs = self.example_inputs
                self.model(*((inputs,) if isinstance(inputs, torch.Tensor) else inputs))
        except Exception as exc:
            raise UserError(_broken_message(step, exc)) from exc
        finally:
            self.model.train(was_training)

    def _probe(self, group: ChannelGroup) -> _GroupInfo:
        """Per-channel effect of ``group`` on every modelled module, from a one-channel tp group."""
        dg = self.graph.dg
        tpg = self.graph.tp_group(group, [0])
        m = len(self.cost.names)
        a_out, a_in = np.zeros(m), np.zeros(m)
        ch_groups = 1
        heads: list[str] = []
        for dep, idxs in tpg:
            module = dep.target.module
            if isinstance(module, nn.Parameter):
                continue
            name = self.graph.names.get(module)
            if name is not None and name not in heads:
                parent = self.model.get_submodule(name.rpartition(".")[0]) if name else None
                if _heads_split(module, parent):
                    heads.append(name)
            is_out = dg.is_out_channel_pruning_fn(dep.handler)
            pruner = dg.get_pruner_of_module(module)
            depthwise = isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d) and (
                module.groups == module.out_channels and module.groups > 1
            )
            if pruner is not None and not depthwise:
                try:
                    cg = (
                        pruner.get_out_channel_groups(module)
                        if is_out
                        else pruner.get_in_channel_groups(module)
                    )
                    ch_groups = max(ch_groups, int(cg or 1))
                except (AttributeError, TypeError):
                    pass
            i = self.cost.index.get(name) if name is not None else None
            if i is None:
                continue
            mult = float(len(idxs))
            if is_out or depthwise or isinstance(module, _NORM_TYPES):
                a_out[i] = max(a_out[i], mult)
            else:
                groups = getattr(module, "groups", 1)
                a_in[i] = max(a_in[i], mult / groups)
        return _GroupInfo(group.size, ch_groups, a_out, a_in, tuple(heads))

    def _nothing_to_prune(self) -> str:
        ignored = ", ".join(self.graph.ignored) or "none"
        left = self.graph.left_whole
        why = f"; left whole: {describe_left_whole(left)}" if left else ""
        return (
            "no prunable channels: every conv/linear output is ignored or cannot be removed "
            f"(ignored: {ignored}){why}"
        )

    def _left_whole_note(self) -> str:
        """What a stop reason adds when groups are left whole: they bound what is reachable."""
        if not self.left_whole:
            return ""
        return f"; left whole: {describe_left_whole(self.left_whole)}"


def describe_left_whole(left: Sequence[LeftWhole], most: int = 6) -> str:
    """One line naming the groups left whole by their first layer, grouped by reason: at most
    ``most`` names per reason, then how many more."""
    by_reason: dict[str, list[str]] = {}
    for lw in left:
        by_reason.setdefault(lw.reason, []).append(lw.layers[0])
    parts = []
    for reason, firsts in by_reason.items():
        names = ", ".join(repr(n) for n in firsts[:most])
        more = f" and {len(firsts) - most} more" if len(firsts) > most else ""
        parts.append(f"{names}{more} ({reason})")
    return "; ".join(parts)


def _meta_forward(
    model: nn.Module, example_inputs: torch.Tensor | tuple[torch.Tensor, ...]
) -> None:
    """One eval-mode forward pass with every parameter, buffer and input on the meta device."""
    tensors = {
        n: torch.empty_like(t, device="meta")
        for n, t in [*model.named_parameters(), *model.named_buffers()]
    }
    inputs = (example_inputs,) if torch.is_tensor(example_inputs) else tuple(example_inputs)
    # BatchNorm has no C++ meta kernel: its Python decomposition costs more than the rest of the
    # pass together, so on the meta device its widths are checked directly.
    norms = [m for m in model.modules() if type(m) in _BN_TYPES]
    for bn in norms:
        bn.forward = functools.partial(_bn_widths_only, bn)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            torch.func.functional_call(
                model, tensors, tuple(t.to("meta") for t in inputs), strict=False
            )
    finally:
        model.train(was_training)
        for bn in norms:
            bn.__dict__.pop("forward", None)


def _bn_widths_only(bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What BatchNorm checks about shapes, without computing anything."""
    widths = [bn.num_features]
    widths += [t.shape[0] for t in (bn.weight, bn.bias, bn.running_mean) if t is not None]
    if x.dim() < 2 or any(w != x.shape[1] for w in widths):
        raise RuntimeError(f"BatchNorm expects {widths} channels, input has shape {tuple(x.shape)}")
    return x


def group_scores_after(
    group_scores: Mapping[str, torch.Tensor], step: PruneStep
) -> dict[str, torch.Tensor]:
    """Scores re-indexed to the groups' widths after ``step`` (kept channels only)."""
    out = {}
    for root, s in group_scores.items():
        kept = step.kept.get(root)
        out[root] = s if kept is None else torch.as_tensor(s)[kept]
    return out


def find_classifier(
    model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor]
) -> str | None:
    """Name of the conv/linear module whose output is the model's output, else the last Linear."""
    outputs: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):

            def hook(mod, inp, out, name=name):
                if torch.is_tensor(out):
                    outputs[name] = out.untyped_storage().data_ptr()

            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            inputs = (example_inputs,) if torch.is_tensor(example_inputs) else tuple(example_inputs)
            result = model(*inputs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if torch.is_tensor(result):
        ptr = result.untyped_storage().data_ptr()
        hits = [n for n, p in outputs.items() if p == ptr]
        if hits:
            return hits[-1]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def _greedy(blocks: _Blocks, budget: float) -> _Blocks:
    """Blocks in ranking order that fit ``budget`` channels. A group whose next block does not fit
    takes no further block (a group's blocks must be taken in order)."""
    csum = np.cumsum(blocks.channels)
    if len(csum) == 0 or csum[-1] <= budget:
        return blocks
    taken, total, blocked = [], 0, set()
    for i, (g, n) in enumerate(zip(blocks.group.tolist(), blocks.channels.tolist(), strict=True)):
        if g in blocked:
            continue
        if total + n > budget:
            blocked.add(g)
            continue
        taken.append(i)
        total += n
        if total >= budget:
            break
    return blocks.take(np.array(taken, dtype=np.int64))


def _merge(first: PruneStep, second: PruneStep) -> PruneStep:
    """One step equivalent to ``first`` then ``second`` (indices as before ``first``)."""
    removed = {k: list(v) for k, v in first.removed.items()}
    kept = {}
    for root, k1 in first.kept.items():
        k2 = second.kept.get(root)
        k = k1 if k2 is None else k1[k2]
        kept[root] = k
        gone = sorted(set(k1.tolist()) - set(k.tolist()))
        if gone:
            removed[root] = sorted(set(removed.get(root, [])) | set(gone))
    return PruneStep(
        channels_removed=first.channels_removed + second.channels_removed,
        removed=removed,
        kept=kept,
        macs=second.macs,
        params=second.params,
        counted=second.counted,
        stopped_short=second.stopped_short,
    )


def _normalize(s: np.ndarray, how: str) -> np.ndarray:
    if how == "none":
        return s
    denom = {
        "l2": lambda: float(np.sqrt(np.sum(s * s))),
        "mean": lambda: float(np.mean(np.abs(s))),
        "max": lambda: float(np.max(np.abs(s))),
    }[how]()
    return s / denom if denom > 0 else s


def _first_sample(
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    if torch.is_tensor(example_inputs):
        return example_inputs[:1]
    return tuple(t[:1] for t in example_inputs)


def _broken_message(step: PruneStep | None, exc: Exception) -> str:
    layers = ", ".join(sorted(step.removed)) if step is not None and step.removed else "unknown"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return (
        f"the model no longer runs after removing channels of layer(s) {layers}: "
        f"{type(exc).__name__}: {text} (the forward pass hard-codes a width torch-pruning cannot "
        "see; add the layer to ignored_layers)"
    )
