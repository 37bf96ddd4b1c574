"""Planning a removal: which channels go, as pure functions over arrays.

A group's channels are ranked by score; a grouped convolution (ResNeXt) ties channel ``j`` of
every convolution group into one *unit*, scored by their mean. The ranked units are cut into
*blocks*, runs that keep the remaining width a multiple of ``round_to`` (and of the convolution
groups), never under ``min_channels`` nor under ``1 − max_fraction`` of the original width. Blocks
of one group keep their order; across groups they are merged by priority (the block's mean score,
divided by the MACs one channel saves when ranking per MAC). Nothing here touches a model: the
pruner turns the blocks taken into channel indices with the group orders these functions return.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from taylorprune.errors import UserError
from taylorprune.latency.selection import Constraints

NORMALIZATIONS: tuple[str, ...] = ("none", "l2", "mean", "max")


@dataclass
class Blocks:
    """Removable blocks in ranking order, as parallel arrays.

    Block ``i`` is ``units[i]`` consecutive units, from position ``start[i]``, of group
    ``group[i]``'s units in ranking order; it holds ``channels[i]`` channels.
    """

    group: np.ndarray
    start: np.ndarray
    units: np.ndarray
    channels: np.ndarray

    def __len__(self) -> int:
        return len(self.group)

    def take(self, index: np.ndarray | slice) -> Blocks:
        return Blocks(self.group[index], self.start[index], self.units[index], self.channels[index])

    @classmethod
    def empty(cls) -> Blocks:
        e = np.zeros(0, dtype=np.int64)
        return cls(e, e, e, e)


def checked_constraints(round_to: int, min_channels: int, max_fraction: float) -> Constraints:
    """:class:`Constraints` from user input, or :class:`UserError` naming the recipe key."""
    if not isinstance(round_to, int) or round_to < 1:
        raise UserError(f"pruning.round_to: expected an integer >= 1, got {round_to!r}")
    if not isinstance(min_channels, int) or min_channels < 1:
        raise UserError(f"pruning.min_channels: expected an integer >= 1, got {min_channels!r}")
    if not 0.0 <= float(max_fraction) <= 1.0:
        raise UserError(
            f"pruning.max_fraction: expected a fraction in [0, 1], got {max_fraction!r}"
        )
    return Constraints(round_to, min_channels, float(max_fraction))


def normalize(scores: np.ndarray, how: str) -> np.ndarray:
    """``scores`` divided by their L2 norm, mean absolute value or maximum absolute value
    (``how``: ``"l2"``, ``"mean"``, ``"max"``; ``"none"``: unchanged; a zero divisor: unchanged)."""
    if how == "none":
        return scores
    denom = {
        "l2": lambda: float(np.sqrt(np.sum(scores * scores))),
        "mean": lambda: float(np.mean(np.abs(scores))),
        "max": lambda: float(np.max(np.abs(scores))),
    }[how]()
    return scores / denom if denom > 0 else scores


def unit_scores(scores: np.ndarray, how: str, per_unit: int) -> np.ndarray:
    """One score per unit: channel scores normalised (:func:`normalize`), then averaged over the
    ``per_unit`` convolution groups (channel ``j`` of each group is unit ``j``)."""
    s = normalize(np.asarray(scores, dtype=np.float64).reshape(-1), how)
    return s.reshape(per_unit, len(s) // per_unit).mean(axis=0)


def blocks(
    units: Sequence[np.ndarray | None],
    per_unit: Sequence[int],
    size0: Sequence[int],
    constraints: Constraints,
    scale: Sequence[float] | None = None,
) -> tuple[Blocks, list[np.ndarray | None]]:
    """Every removable block of every group, lowest priority first, and each group's units in
    ranking order (None for a group without scores).

    ``units[i]``: group ``i``'s unit scores (None: not scored, never cut); ``per_unit[i]``: its
    channels per unit; ``size0[i]``: its width at first; ``scale[i]``: what its blocks' mean score
    is multiplied by to give their priority (1 / MACs saved per channel when ranking per MAC).
    """
    parts: list[tuple[np.ndarray, ...]] = []
    orders: list[np.ndarray | None] = []
    for gi, u in enumerate(units):
        if u is None:
            orders.append(None)
            continue
        u = np.asarray(u, dtype=np.float64)
        n = len(u)
        gcount = per_unit[gi]
        order = np.argsort(u, kind="stable")
        orders.append(order)
        step = constraints.unit_step(gcount)
        keep_min = constraints.min_units(size0[gi], gcount)
        if keep_min >= n:
            continue
        first = n % step or step
        starts = np.concatenate([[0], np.arange(first, n - keep_min, step)]).astype(np.int64)
        sizes = np.diff(np.append(starts, n - keep_min))
        sums = np.add.reduceat(u[order][: n - keep_min], starts)
        factor = 1.0 if scale is None else float(scale[gi])
        pri = sums / sizes * factor
        parts.append((np.full(len(starts), gi), starts, sizes, sizes * gcount, pri))
    if not parts:
        return Blocks.empty(), orders
    group, start, size, channels, pri = (np.concatenate(c) for c in zip(*parts, strict=True))
    order = np.lexsort((start, group, pri))
    return Blocks(group[order], start[order], size[order], channels[order]), orders


def greedy(blocks: Blocks, budget: float) -> Blocks:
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


def prefix_to_goal(metric: Callable[[int], float], n: int, goal: float) -> int:
    """How many of ``n`` blocks to take, in order, so that ``metric(t)`` (non-increasing in ``t``,
    e.g. the MACs left) lands nearest ``goal``: the bisection between the last prefix above the goal
    and the first at or below it. 0 when nothing need go; ``n`` when even all do not reach it."""
    if metric(0) <= goal:
        return 0
    if metric(n) > goal:
        return n
    lo, hi = 0, n  # metric(lo) > goal >= metric(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if metric(mid) <= goal:
            hi = mid
        else:
            lo = mid
    return hi if abs(metric(hi) - goal) <= abs(metric(lo) - goal) else lo


def channel_indices(order: np.ndarray, start: int, count: int, per_unit: int) -> list[int]:
    """Channels of ``count`` units from position ``start`` of a group's ranking ``order``: unit
    ``u`` is channel ``u`` of each of the ``per_unit`` convolution groups."""
    width = len(order)
    units = order[start : start + count].tolist()
    return [u + k * width for u in units for k in range(per_unit)]
