"""How many channels each group keeps: most saliency kept under a latency budget.

The problem (HALP, Shen et al., NeurIPS 2022): every prunable group ``g`` keeps its ``k_g``
highest-scored units; the objective is the total kept saliency ``sum_g S_g(k_g)`` (``S_g(k)``: sum
of the ``k`` highest scores of ``g``), the constraint that the predicted latency of the network at
the resulting widths stays within the budget. A group drives the output width of some table layers
and the input width of others (a ResNet stage's residual stream: every block's last convolution
and the downsample, and the inputs of the next blocks), so the latency of a layer depends on two
groups and the problem does not separate.

Two solvers with the same objective (:data:`SELECTORS`):

- ``knapsack`` (HALP): each group's latency as a function of its own width, with every other group
  fixed at the current solution (the first time at the current widths, as in HALP); a
  multiple-choice knapsack over the groups' allowed widths solved exactly by dynamic programming on
  a discretised latency axis; then fixed again at the new solution and solved again, until it
  repeats. The best solution that meets the budget under the full (non-linearised) prediction is
  kept; if none does, the greedy below removes further blocks from the last one.
- ``greedy``: from the current widths, repeatedly remove the block (the next ``round_to`` units of a
  group) with the least saliency per predicted millisecond saved, re-evaluating the saving of every
  group that shares a layer with the one just cut, until the budget is met.

Both end with the same *fill*: while a removed block fits back under the budget, the one with the
most saliency per millisecond goes back. Allowed widths follow the pruner's rules (``round_to``,
``min_channels``, ``max_fraction`` of the width at construction); a group always may stay whole.

The knapsack is the default: where latency moves in steps of width (GPU tiles, a noisy measured
table) the greedy, which looks one block ahead, sees no saving inside a step and cuts elsewhere,
while the knapsack weighs every width of a group at once (docs/latency.md compares them). The two
solvers and the fill share one private problem object (:class:`_Problem`: the groups' allowed
widths, their saliency curves and the layer latencies they drive).
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from taylorprune._registry import Registry
from taylorprune.errors import UserError
from taylorprune.latency.model import LatencyModel


@dataclass(frozen=True)
class LatencyGroup:
    """One prunable group as the selection sees it.

    ``scores`` has one saliency per *unit* (a channel, or channel ``j`` of every convolution group
    of a grouped convolution: ``unit_channels`` channels), in the group's current channel order.
    ``out_layers``/``in_layers`` map table layer names to how many of that layer's output/input
    channels one removed unit removes (1 for a plain layer; ``H*W`` for a Linear reading a
    flattened map). Tied layers (depthwise convolutions, norms) belong in ``out_layers``.
    ``baseline_units`` is the width in units when pruning began (``max_fraction`` refers to it;
    ``None``: the current width).
    """

    name: str
    scores: np.ndarray
    out_layers: Mapping[str, int]
    in_layers: Mapping[str, int] = field(default_factory=dict)
    baseline_units: int | None = None
    unit_channels: int = 1

    @property
    def units(self) -> int:
        return int(len(self.scores))


@dataclass(frozen=True)
class Constraints:
    """The pruner's per-group limits, in channels: a kept width is a multiple of ``round_to`` (or
    the whole group), at least ``min_channels`` and at least ``1 − max_fraction`` of the width at
    construction."""

    round_to: int = 1
    min_channels: int = 1
    max_fraction: float = 0.9

    def describe(self) -> str:
        return (
            f"round_to={self.round_to}, min_channels={self.min_channels}, "
            f"max_fraction={self.max_fraction}"
        )

    def unit_step(self, per_unit: int) -> int:
        """Units a group keeps or loses at a time (``round_to`` in units of ``per_unit``
        channels)."""
        return self.round_to // math.gcd(self.round_to, per_unit)

    def min_units(self, size0: int, per_unit: int) -> int:
        """The fewest units a group of ``size0`` channels at first may keep (a multiple of
        :meth:`unit_step`)."""
        floor = max(self.min_channels, math.ceil(size0 * (1.0 - self.max_fraction) - 1e-9))
        step = self.unit_step(per_unit)
        return math.ceil(max(floor / per_unit, 1.0) / step) * step


def allowed_keep(group: LatencyGroup, constraints: Constraints) -> np.ndarray:
    """Ascending unit counts ``group`` may keep (always including all of them)."""
    units, per = group.units, group.unit_channels
    step = constraints.unit_step(per)
    keep_min = constraints.min_units((group.baseline_units or units) * per, per)
    if keep_min >= units:
        return np.array([units], dtype=np.int64)
    return np.append(np.arange(keep_min, units, step, dtype=np.int64), units)


@dataclass
class Selection:
    """Units kept per group (``keep[group name]``) and what the prediction says of them.

    ``predicted_ms`` is the corrected prediction of the selected widths, ``raw_ms`` the raw one;
    ``saliency_kept``/``saliency_total`` sum the groups' scores kept / now.
    """

    keep: dict[str, int]
    predicted_ms: float
    raw_ms: float
    budget_ms: float
    saliency_kept: float
    saliency_total: float
    method: str
    seconds: float
    widths: dict[str, tuple[int, int]] = field(repr=False, default_factory=dict)

    def removed(self, group: LatencyGroup) -> np.ndarray:
        """Unit indices of ``group`` to remove: its lowest-scored, ascending by score."""
        n = group.units - self.keep[group.name]
        return np.argsort(np.asarray(group.scores, dtype=np.float64), kind="stable")[:n]


# -- the problem -----------------------------------------------------------------------------------
class _Problem:
    """Latency and saliency of any choice of kept units, from the latency model's layer costs."""

    def __init__(
        self,
        groups: Sequence[LatencyGroup],
        model: LatencyModel,
        widths: Mapping[str, tuple[int, int]],
        constraints: Constraints,
    ) -> None:
        self.model = model
        names = sorted({n for g in groups for n in (*g.out_layers, *g.in_layers)})
        unknown = [n for n in names if n not in model.table.entries]
        if unknown:
            raise ValueError(f"layers not in the latency table: {', '.join(unknown[:5])}")
        self.layers = names
        index = {n: i for i, n in enumerate(names)}
        now = {n: tuple(widths.get(n, model.full[n])) for n in model.names}
        self.cin0 = np.array([now[n][0] for n in names], dtype=np.float64)
        self.cout0 = np.array([now[n][1] for n in names], dtype=np.float64)
        self.out = np.zeros((len(groups), len(names)))
        self.inp = np.zeros((len(groups), len(names)))
        for gi, g in enumerate(groups):
            for n, mult in g.out_layers.items():
                self.out[gi, index[n]] = mult
            for n, mult in g.in_layers.items():
                self.inp[gi, index[n]] = mult
        self.touch = [np.flatnonzero(self.out[gi] + self.inp[gi]) for gi in range(len(groups))]
        shared = (self.out + self.inp) > 0
        self.neighbours = [
            np.flatnonzero(shared[:, shared[gi]].any(axis=1)) for gi in range(len(groups))
        ]
        self.const = model.constant_ms + sum(
            float(model.layer_cost(n, *now[n])) for n in model.names if n not in index
        )
        self.units = np.array([g.units for g in groups], dtype=np.int64)
        self.allowed = [allowed_keep(g, constraints) for g in groups]
        self.prefix = []  # prefix[g][k]: the k highest scores of g summed
        for g in groups:
            s = np.sort(np.asarray(g.scores, dtype=np.float64))[::-1]
            self.prefix.append(np.concatenate([[0.0], np.cumsum(s)]))

    def widths(self, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        removed = (self.units - keep).astype(np.float64)
        return self.cin0 - removed @ self.inp, self.cout0 - removed @ self.out

    def latency(self, keep: np.ndarray) -> float:
        """Raw predicted latency (ms) with ``keep[g]`` units kept per group."""
        cin, cout = self.widths(keep)
        cost = self.model.layer_cost_at
        return self.const + sum(
            cost(n, a, b) for n, a, b in zip(self.layers, cin.tolist(), cout.tolist(), strict=True)
        )

    def saliency(self, keep: np.ndarray) -> float:
        return float(sum(p[k] for p, k in zip(self.prefix, keep.tolist(), strict=True)))

    def group_cost(self, gi: int, options: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """Latency (ms) of the layers group ``gi`` touches, for each of its ``options``, with every
        other group at ``keep``."""
        cin, cout = self.widths(keep)
        delta = (options - keep[gi]).astype(np.float64)  # units added back (negative: removed)
        total = np.zeros(len(options))
        for li in self.touch[gi]:
            ci = cin[li] + delta * self.inp[gi, li]
            co = cout[li] + delta * self.out[gi, li]
            total += self.model.layer_cost(self.layers[li], ci, co)
        return total

    def move_cost(self, gi: int, new: int, keep: np.ndarray) -> float:
        """Latency change (ms) when group ``gi`` goes from ``keep[gi]`` to ``new`` units kept."""
        cin, cout = self.widths(keep)
        delta = float(new - keep[gi])
        total = 0.0
        for li in self.touch[gi].tolist():
            ci, co, name = float(cin[li]), float(cout[li]), self.layers[li]
            after = self.model.layer_cost_at(
                name, ci + delta * self.inp[gi, li], co + delta * self.out[gi, li]
            )
            total += after - self.model.layer_cost_at(name, ci, co)
        return total

    def minimum(self) -> np.ndarray:
        return np.array([a[0] for a in self.allowed], dtype=np.int64)


# -- solvers ---------------------------------------------------------------------------------------
SELECTORS: Registry[Callable[[_Problem, float], np.ndarray]] = Registry("selection method")


@SELECTORS.register("greedy")
def _greedy(problem: _Problem, budget: float) -> np.ndarray:
    """Least saliency per millisecond saved first, from the current widths."""
    keep = problem.units.copy()
    return _fill(problem, _remove_until(problem, keep, budget), budget)


@SELECTORS.register("knapsack")
def _knapsack(
    problem: _Problem, budget: float, resolution: int = 4096, iterations: int = 8
) -> np.ndarray:
    """HALP's multiple-choice knapsack, re-linearised at each solution (see the module text)."""
    point = problem.units.copy()
    best, best_value = None, -math.inf
    values = [problem.prefix[gi][a] for gi, a in enumerate(problem.allowed)]
    for _ in range(iterations):
        costs = [problem.group_cost(gi, a, point) for gi, a in enumerate(problem.allowed)]
        here = [
            float(c[np.searchsorted(a, point[gi])])
            for gi, (c, a) in enumerate(zip(costs, problem.allowed, strict=True))
        ]
        # What the groups' layers may cost together, with the other layers as they are at point.
        slack = budget - problem.latency(point) + sum(here)
        choice = _mckp(costs, values, slack, resolution)
        if choice is None:
            break
        sol = np.array([a[c] for a, c in zip(problem.allowed, choice, strict=True)], dtype=np.int64)
        if problem.latency(sol) <= budget and problem.saliency(sol) > best_value:
            best, best_value = sol, problem.saliency(sol)
        if np.array_equal(sol, point):
            break
        point = sol
    if best is None:
        best = _remove_until(problem, point, budget)
    return _fill(problem, best, budget)


def _mckp(
    costs: Sequence[np.ndarray], values: Sequence[np.ndarray], capacity: float, resolution: int
) -> list[int] | None:
    """Pick one option per group maximising total value with total cost <= ``capacity``.

    Dynamic programming over ``resolution`` bins of the capacity above every group's cheapest
    option. Costs are rounded to the nearest bin: over dozens of groups the errors mostly cancel,
    where rounding up would give away up to a bin per group; so the pick may exceed ``capacity``
    by a few bins, and the caller checks it. None when even the cheapest options exceed it.
    """
    floor = [float(c.min()) for c in costs]
    room = capacity - sum(floor)
    if room < 0:
        return None
    nb = resolution
    width = room / nb if room > 0 else 1.0
    dp = np.zeros(nb + 1)
    args = []
    for c, v, f in zip(costs, values, floor, strict=True):
        w = np.round((c - f) / width).astype(np.int64) if room > 0 else np.where(c > f, nb + 1, 0)
        new = np.full(nb + 1, -np.inf)
        arg = np.full(nb + 1, -1, dtype=np.int32)
        for j in np.argsort(-v, kind="stable"):  # equal values: the first (larger) option wins
            wj = int(w[j])
            if wj > nb:
                continue
            cand = dp[: nb + 1 - wj] + v[j]
            better = cand > new[wj:]
            new[wj:][better] = cand[better]
            arg[wj:][better] = j
        dp = new
        args.append(arg)
    b = nb
    out = []
    for arg, c, f in zip(reversed(args), reversed(costs), reversed(floor), strict=True):
        j = int(arg[b])
        out.append(j)
        b -= int(np.round((c[j] - f) / width)) if room > 0 else 0
    return out[::-1]


def _remove_until(problem: _Problem, keep: np.ndarray, budget: float) -> np.ndarray:
    """Remove blocks, least saliency per millisecond saved first, until the budget is met."""
    keep = keep.copy()
    latency = problem.latency(keep)
    version = np.zeros(len(keep), dtype=np.int64)
    heap: list[tuple[float, int, int, float]] = []

    def push(gi: int) -> None:
        a = problem.allowed[gi]
        pos = int(np.searchsorted(a, keep[gi]))
        if pos == 0:
            return
        nxt = a[pos - 1]
        saved = -problem.move_cost(gi, int(nxt), keep)
        lost = float(problem.prefix[gi][keep[gi]] - problem.prefix[gi][nxt])
        # A block that saves nothing (a flat or noisy stretch of the table) goes last.
        ratio = lost / saved if saved > 1e-12 else math.inf
        heapq.heappush(heap, (ratio, int(version[gi]), gi, saved))

    for gi in range(len(keep)):
        push(gi)
    while latency > budget and heap:
        _, ver, gi, saved = heapq.heappop(heap)
        if ver != version[gi]:
            continue
        a = problem.allowed[gi]
        keep[gi] = a[int(np.searchsorted(a, keep[gi])) - 1]
        latency -= saved
        for nb in problem.neighbours[gi]:
            version[nb] += 1
            push(int(nb))
        if len(heap) > 64 * len(keep):  # drop stale entries now and then
            heap = [h for h in heap if h[1] == version[h[2]]]
            heapq.heapify(heap)
    return keep


def _fill(problem: _Problem, keep: np.ndarray, budget: float) -> np.ndarray:
    """Put back removed blocks, most saliency per millisecond first, while the budget holds."""
    keep = keep.copy()
    latency = problem.latency(keep)
    while True:
        best, best_ratio = None, -math.inf
        for gi, a in enumerate(problem.allowed):
            pos = int(np.searchsorted(a, keep[gi]))
            if pos + 1 >= len(a) or a[pos] != keep[gi]:
                continue
            nxt = a[pos + 1]
            extra = problem.move_cost(gi, int(nxt), keep)
            if latency + extra > budget:
                continue
            gain = float(problem.prefix[gi][nxt] - problem.prefix[gi][keep[gi]])
            ratio = gain / extra if extra > 1e-12 else math.inf
            if ratio > best_ratio:
                best, best_ratio = (gi, nxt, extra), ratio
        if best is None:
            return keep
        gi, nxt, extra = best
        keep[gi] = nxt
        latency += extra


# -- entry points ----------------------------------------------------------------------------------
def closest_latency(
    groups: Sequence[LatencyGroup],
    model: LatencyModel,
    *,
    constraints: Constraints | None = None,
    widths: Mapping[str, tuple[int, int]] | None = None,
) -> float:
    """Predicted latency (ms) with every group at its minimum allowed width: the lowest budget
    :func:`select` can meet (scores play no part; a run checks its target with it up front)."""
    problem = _Problem(groups, model, widths or {}, constraints or Constraints())
    return model.corrected(problem.latency(problem.minimum()))


def check_budget(
    budget_ms: float, closest_ms: float, baseline_ms: float, constraints: Constraints
) -> None:
    """Raise :class:`UserError` (one line, naming the closest achievable latency) when
    ``budget_ms`` is below ``closest_ms``."""
    if closest_ms > budget_ms:
        raise UserError(
            f"latency budget {budget_ms:.4g} ms ({budget_ms / baseline_ms:.3f} of the baseline "
            f"{baseline_ms:.4g} ms) cannot be reached with {constraints.describe()}: the closest "
            f"achievable is {closest_ms:.4g} ms ({closest_ms / baseline_ms:.3f} of the baseline)"
        )


def select(
    groups: Sequence[LatencyGroup],
    model: LatencyModel,
    budget_ms: float,
    *,
    constraints: Constraints | None = None,
    widths: Mapping[str, tuple[int, int]] | None = None,
    method: str = "knapsack",
) -> Selection:
    """Units to keep per group so that the predicted latency is at most ``budget_ms``.

    ``widths`` are the table layers' current ``(cin, cout)`` (default: the table's full widths);
    the groups' scores and widths must describe the model at those widths. ``method`` is a key of
    :data:`SELECTORS`. A budget above the current prediction keeps everything. Raises
    :class:`UserError` when the budget is below the prediction with every group at its minimum
    width, naming that closest achievable latency.
    """
    start = time.perf_counter()
    constraints = constraints or Constraints()
    solver = SELECTORS.get(method)
    problem = _Problem(groups, model, widths or {}, constraints)
    raw_budget = model.raw_budget(budget_ms)
    keep = problem.units.copy()
    if problem.latency(keep) > raw_budget:
        closest = model.corrected(problem.latency(problem.minimum()))
        check_budget(budget_ms, closest, model.baseline_ms, constraints)
        keep = solver(problem, raw_budget)
    raw = problem.latency(keep)
    cin, cout = problem.widths(keep)
    return Selection(
        keep={g.name: int(k) for g, k in zip(groups, keep.tolist(), strict=True)},
        predicted_ms=model.corrected(raw),
        raw_ms=raw,
        budget_ms=float(budget_ms),
        saliency_kept=problem.saliency(keep),
        saliency_total=problem.saliency(problem.units),
        method=method,
        seconds=time.perf_counter() - start,
        widths={
            n: (int(round(a)), int(round(b)))
            for n, a, b in zip(problem.layers, cin, cout, strict=True)
        },
    )
