"""Accumulating channel importance over minibatches, across pruning steps and processes: one
class holds the accumulation's state (sums, counts, EMA, random draws, hooks) and every operation
on it (update, realign after a removal, all-reduce, state_dict)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from taylorprune.graph import ChannelGraph, ChannelGroup
from taylorprune.importance import tp_criteria  # noqa: F401  (registers the tp_* criteria by name)
from taylorprune.importance._gates import (
    FILTER_TYPES,
    NORM_TYPES,
    GateMultipliers,
    PerExampleHooks,
    gate_hessian_diagonal,
    param_gate_grad,
    supports_param_grad,
    weight_grad_terms,
)
from taylorprune.importance.criteria import (
    DEFAULT_CRITERION,
    Criterion,
    Filter,
    GroupBatch,
    GroupWeights,
    TaylorSO,
    build_criterion,
)

logger = logging.getLogger("taylorprune")


class ImportanceAccumulator:
    """Scores every channel of ``groups`` with ``criterion``, averaged over minibatches.

    Use in a training loop::

        acc = ImportanceAccumulator(model, graph.groups(), "taylor_fo_bn")
        for x, y in loader:
            loss = loss_fn(model(x), y)
            loss.backward()
            acc.update()          # after backward, before optimizer.zero_grad()
            optimizer.step(); optimizer.zero_grad()
        scores = acc.group_scores()   # rank, prune, then acc.realign(...) and acc.reset()

    Criteria needing second derivatives (``TaylorSO(hessian="hutchinson" | "exact")``) need the
    graph: call ``acc.backward(loss)`` in place of ``loss.backward(); acc.update()``.

    The score of a window is the plain mean of the per-minibatch scores since the last
    :meth:`reset`. With ``ema=β`` each :meth:`reset` folds the window mean M into ``E ← β·E +
    (1−β)·M`` (E starts as the first window's M) and scores are ``β·E + (1−β)·M_current`` (E alone
    when the current window is empty). Coupled gates share one gate: their gradients are summed per
    channel before any squaring, with no rescaling (the reference code's division of stage gates by
    the number of blocks is a heuristic we do not copy; ``docs/importance.md``). Weight-only
    criteria (``l1_norm``, ``l2_norm``, ``bn_scale``, ``random``) need no :meth:`update`: they are
    scored from the current weights (``random`` draws from a generator seeded by ``seed``, once per
    window); of those scored from the weights, only ``tp_taylor`` (its window's mean gradient) takes
    the EMA, folded the same way.

    Criteria that rank with torch-pruning's importances (``tp_*``) need ``graph``, the
    :class:`~taylorprune.graph.ChannelGraph` the groups come from; ``tp_taylor`` reads the window's
    mean parameter gradients, summed here by :meth:`update`.

    Hooks are registered only when the criterion needs them; :meth:`close` (or leaving a ``with``
    block) removes them.
    """

    def __init__(
        self,
        model: nn.Module,
        groups: Sequence[ChannelGroup],
        criterion: str | Criterion = DEFAULT_CRITERION,
        *,
        ema: float | None = None,
        seed: int = 0,
        graph: ChannelGraph | None = None,
    ) -> None:
        if ema is not None and not 0.0 <= ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {ema}")
        self.model = model
        self.criterion = build_criterion(criterion)
        self.ema = ema
        self.seed = seed
        self.graph = graph
        self._grad_sums: dict[str, Tensor] = {}
        self._generator = torch.Generator().manual_seed(seed)
        self._hooks: PerExampleHooks | None = None
        self._multipliers: GateMultipliers | None = None
        self._pending_hessian: dict[str, list[Tensor]] = {}
        self._pending_grad: dict[str, list[Tensor]] = {}
        self._sums: dict[str, Tensor] = {}
        self._linear: dict[str, Tensor] = {}  # centred criteria: sums of the signed quantity
        self._counts: dict[str, Tensor] = {}
        self._ema: dict[str, Tensor] = {}
        self._random: dict[str, Tensor] = {}
        self._window_static: dict[str, Tensor] = {}  # the last scores of a gradient-reading
        # criterion scored from the weights (tp_taylor), folded into the EMA by reset()
        self._batches = 0
        self._set_groups(groups)

    # -- the training-loop side
    def update(self) -> None:
        """Add the minibatch whose ``loss.backward()`` just ran (call before ``zero_grad``)."""
        if self.criterion.from_weights:
            if "param_grad" in self.criterion.needs:
                self._add_param_grads()
            self._batches += 1
            return
        needs = self.criterion.requirements
        if "hessian" in needs and not self._pending_grad:
            raise RuntimeError(
                f"{self.criterion!r} needs second derivatives: call acc.backward(loss) instead of "
                "loss.backward(); acc.update()"
            )
        per_example = self._collect_per_example() if self._hooks is not None else {}
        for group in self._groups:
            batch = self._measure(group, needs, per_example)
            score = self.criterion.batch_score(batch).detach().float().cpu()
            self._sums[group.root] += score.double()
            if self.criterion.centred:
                self._linear[group.root] += self.criterion.batch_signed(batch).detach().double()
            self._counts[group.root] += 1
        if self._hooks is not None:
            self._hooks.clear()
        self._pending_grad.clear()
        self._pending_hessian.clear()
        self._batches += 1

    def backward(self, loss: Tensor) -> None:
        """``loss.backward()`` plus what second-order criteria need, then :meth:`update`.

        For criteria without ``hessian`` in their needs this is exactly ``loss.backward();
        update()``.
        """
        if self._multipliers is None:
            loss.backward()
            self.update()
            return
        crit = self.criterion
        assert isinstance(crit, TaylorSO)
        roots = [g.root for g in self._groups]
        gates = [self._multipliers.gates[r] for r in roots]
        grads, hess = gate_hessian_diagonal(loss, gates, crit, self._generator)
        for r, g, h in zip(roots, grads, hess, strict=False):
            self._pending_grad.setdefault(r, []).append(g.detach())
            self._pending_hessian.setdefault(r, []).append(h)
        del grads
        loss.backward()
        self.update()

    # -- scores
    def group_scores(self) -> dict[str, Tensor]:
        """Ranking scores per group root: 1-D float tensors of length ``group.size`` (CPU).

        Raw scores are comparable across groups and meant to be ranked globally (criteria that need
        a per-group normalisation, like ``taylor_act``, apply it here).
        """
        if self.criterion.from_weights:
            with self._mean_param_grads():
                static = {g.root: self._static(g) for g in self._groups}
            if self.ema is None or "param_grad" not in self.criterion.needs:
                return static
            # tp_taylor: the window's scores (of its mean gradient) averaged like the others'
            self._window_static = (
                {} if self._batches == 0 else {r: s.double() for r, s in static.items()}
            )
            return {
                g.root: self._averaged(g.root, self._window_static.get(g.root), g.size).float()
                for g in self._groups
            }
        return {
            g.root: self.criterion.finalize(
                self._averaged(g.root, self._current(g.root), g.size).float()
            )
            for g in self._groups
        }

    def _averaged(self, root: str, current: Tensor | None, size: int) -> Tensor:
        """``β·E + (1−β)·current`` with the EMA E of ``root``; E alone for an empty window,
        ``current`` alone (zeros for an empty window) before the first fold."""
        prev = self._ema.get(root)
        if prev is None:
            return current if current is not None else torch.zeros(size, dtype=torch.float64)
        if current is None:
            return prev
        assert self.ema is not None
        return self.ema * prev + (1.0 - self.ema) * current

    def scores(self) -> dict[str, Tensor]:
        """Ranking scores per gate name (coupled gates share values), in each gate module's own
        channel indexing; channels of a gate outside the group (rare) are NaN."""
        group_scores = self.group_scores()
        out: dict[str, Tensor] = {}
        for g in self._groups:
            s = group_scores[g.root]
            for gate in g.gates:
                if gate.name not in out:
                    out[gate.name] = torch.full((self._channels[gate.name],), float("nan"))
                out[gate.name][list(gate.idxs)] = s[list(gate.root_idxs)]
        return out

    def num_batches(self) -> int:
        """Minibatches added since the last :meth:`reset`."""
        return self._batches

    def reset(self) -> None:
        """Start a new window; with ``ema`` set the finished window is folded into the average."""
        for g in self._groups:
            current = self._current(g.root)
            if current is None:  # scored from the weights (tp_taylor), or an empty window
                current = self._window_static.get(g.root)
            if self.ema is not None and current is not None:
                self._ema[g.root] = self._averaged(g.root, current, g.size)
            self._sums[g.root].zero_()
            self._linear[g.root].zero_()
            self._counts[g.root].zero_()
        self._random.clear()
        self._window_static.clear()
        self._grad_sums.clear()
        self._batches = 0

    # -- pruning, processes, checkpoints
    def realign(self, groups: Sequence[ChannelGroup], kept: dict[str, Tensor]) -> None:
        """Follow a removal: ``groups`` are the graph's groups now, ``kept[root]`` the kept channels
        (indices into the old root indexing) of each group that lost channels.

        Running sums, the EMA and cached random scores of kept channels move to their new positions;
        groups not in ``kept`` are unchanged; groups new to the accumulator start empty.
        """
        for root, idx in kept.items():
            idx = torch.as_tensor(idx, dtype=torch.long)
            for store in (self._sums, self._linear, self._ema, self._random, self._window_static):
                if root in store:
                    store[root] = store[root][idx].clone()
        self._set_groups(groups)

    def all_reduce(self) -> None:
        """Sum running sums and counts over the processes of ``torch.distributed`` (DDP); no-op when
        it is not initialised. Call on every process before :meth:`group_scores`."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        device = torch.device("cpu")
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        for root in sorted(self._sums):
            for store in (self._sums, self._linear, self._counts):
                t = store[root].to(device)
                dist.all_reduce(t)
                store[root] = t.cpu()

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "criterion": self.criterion.name,
            "ema": self.ema,
            "batches": self._batches,
            "sums": {k: v.clone() for k, v in self._sums.items()},
            "linear": {k: v.clone() for k, v in self._linear.items()},
            "counts": {k: v.clone() for k, v in self._counts.items()},
            "ema_scores": {k: v.clone() for k, v in self._ema.items()},
            "random": {k: v.clone() for k, v in self._random.items()},
            "generator": self._generator.get_state(),
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; criterion and group widths must match."""
        if d["criterion"] != self.criterion.name:
            raise ValueError(
                f"state is for criterion {d['criterion']!r}, "
                f"accumulator uses {self.criterion.name!r}"
            )
        for root, s in d["sums"].items():
            if root in self._sizes and s.numel() != self._sizes[root]:
                raise ValueError(
                    f"state for group {root!r} has {s.numel()} channels, model has "
                    f"{self._sizes[root]}"
                )
        self.ema = d["ema"]
        self._batches = int(d["batches"])
        self._sums = {k: v.clone().double() for k, v in d["sums"].items()}
        self._linear = {k: v.clone().double() for k, v in d.get("linear", {}).items()}
        self._counts = {k: v.clone().double() for k, v in d["counts"].items()}
        self._ema = {k: v.clone().double() for k, v in d["ema_scores"].items()}
        self._random = {k: v.clone() for k, v in d["random"].items()}
        self._generator.set_state(d["generator"])
        self._ensure_state()

    def close(self) -> None:
        """Remove every hook this accumulator registered (channels are removed by the pruner)."""
        if self._hooks is not None:
            self._hooks.remove()
            self._hooks = None
        if self._multipliers is not None:
            self._multipliers.remove()
            self._multipliers = None

    def __enter__(self) -> ImportanceAccumulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals
    def _set_groups(self, groups: Sequence[ChannelGroup]) -> None:
        self.close()
        self._groups = list(groups)
        self._sizes = {g.root: g.size for g in self._groups}
        modules = dict(self.model.named_modules())
        self._modules = modules
        gate_names = sorted({s.name for g in self._groups for s in g.gates})
        self._channels = {n: _out_channels(modules[n]) for n in gate_names}
        needs = self.criterion.requirements
        hooked: set[str] = set()
        if "per_example" in needs:
            hooked = set(gate_names)
        elif "grad" in needs and "hessian" not in needs:
            hooked = {n for n in gate_names if not supports_param_grad(modules[n])}
        if hooked:
            self._hooks = PerExampleHooks({n: modules[n] for n in sorted(hooked)})
        if "hessian" in needs:
            layout: dict[str, list] = {n: [] for n in gate_names}
            for g in self._groups:
                for s in g.gates:
                    layout[s.name].append((g.root, list(s.idxs), list(s.root_idxs)))
            self._multipliers = GateMultipliers(
                {n: modules[n] for n in gate_names}, layout, self._sizes
            )
        self._weights = {g.root: self._group_weights(g) for g in self._groups}
        self._ensure_state()

    def _ensure_state(self) -> None:
        for root, size in self._sizes.items():
            if root not in self._sums or self._sums[root].numel() != size:
                self._sums[root] = torch.zeros(size, dtype=torch.float64)
                self._linear[root] = torch.zeros(size, dtype=torch.float64)
                self._counts[root] = torch.zeros((), dtype=torch.float64)
                self._ema.pop(root, None)
                self._random.pop(root, None)
            self._counts.setdefault(root, torch.zeros((), dtype=torch.float64))
            if root not in self._linear or self._linear[root].numel() != size:
                self._linear[root] = torch.zeros(size, dtype=torch.float64)

    def _group_weights(self, group: ChannelGroup) -> GroupWeights:
        gates = {s.name: s for s in group.gates}
        filters, norms = [], []
        for name in group.members:
            module = self._modules[name]
            if isinstance(module, NORM_TYPES) and name in gates:
                s = gates[name]
                norms.append(Filter(module, list(s.idxs), list(s.root_idxs)))
            elif isinstance(module, FILTER_TYPES):
                if name in gates:
                    s = gates[name]
                    filters.append(Filter(module, list(s.idxs), list(s.root_idxs)))
                elif _out_channels(module) == group.size:
                    # A conv feeding a BN gate: its channels are the group's (identity for every
                    # network whose coupled channels are not concatenated).
                    filters.append(Filter(module, list(range(group.size)), list(range(group.size))))
                else:
                    logger.warning(
                        "%s: cannot map the output channels of %s to group %s; its weights are "
                        "left out of weight-based scores",
                        self.criterion.name,
                        name,
                        group.root,
                    )
        tp_group = None
        if self.graph is not None:
            tp_group = partial(self.graph.tp_group, group, range(group.size))
        return GroupWeights(group.size, filters, norms, tp_group)

    def discard(self) -> None:
        """Drop what the hooks captured since the last :meth:`update` (a training pass that is not
        scored: :class:`~taylorprune.pruning.schedule.WindowScorer` in eval mode)."""
        if self._hooks is not None:
            self._hooks.clear()
        self._pending_grad.clear()
        self._pending_hessian.clear()

    def _add_param_grads(self) -> None:
        for name, p in self.model.named_parameters():
            if p.grad is None:
                continue
            g = p.grad.detach()
            if name in self._grad_sums and self._grad_sums[name].shape == g.shape:
                self._grad_sums[name] += g
            else:
                self._grad_sums[name] = g.clone()

    @contextlib.contextmanager
    def _mean_param_grads(self) -> Iterator[None]:
        """While active, each parameter's ``.grad`` is its mean over the window (zeros where no
        gradient was summed); the gradients found are put back on exit."""
        if "param_grad" not in self.criterion.needs:
            yield
            return
        params = dict(self.model.named_parameters())
        saved = {n: p.grad for n, p in params.items()}
        n = max(self._batches, 1)
        try:
            for name, p in params.items():
                s = self._grad_sums.get(name)
                p.grad = s / n if s is not None and s.shape == p.shape else torch.zeros_like(p)
            yield
        finally:
            for name, p in params.items():
                p.grad = saved[name]

    def _collect_per_example(self) -> dict[str, list[Tensor]]:
        assert self._hooks is not None
        return {name: list(v) for name, v in self._hooks.pending.items()}

    def _measure(
        self, group: ChannelGroup, needs: frozenset[str], per_example: dict[str, list[Tensor]]
    ) -> GroupBatch:
        batch = GroupBatch()
        if "per_example" in needs or ("grad" in needs and "hessian" not in needs):
            batch.per_example, batch.batch_sizes = self._group_per_example(group, per_example)
            batch.positions = max(
                [self._hooks.positions.get(s.name, 1) for s in group.gates] if self._hooks else [1]
            )
        if "grad" in needs:
            if "hessian" in needs:
                batch.grad = sum(self._pending_grad.get(group.root, [torch.zeros(group.size)]))
            else:
                batch.grad = self._group_grad(group, per_example)
        if "hessian" in needs:
            batch.hessian = sum(self._pending_hessian.get(group.root, [torch.zeros(group.size)]))
        if "weight_grad" in needs:
            out = torch.zeros(group.size)
            for f in self._weights[group.root].filters:
                terms = weight_grad_terms(f.module).detach().float().cpu()
                _scatter_add(out, f.idxs, f.root_idxs, terms)
            batch.weight_grad = out
        return batch

    def _group_per_example(
        self, group: ChannelGroup, per_example: dict[str, list[Tensor]]
    ) -> tuple[list[Tensor], list[int]]:
        """Per-example gate gradients summed over the group's coupled gates, per backward pass."""
        passes: list[Tensor] = []
        for s in group.gates:
            entries = per_example.get(s.name)
            if not entries:
                continue
            for k, g in enumerate(entries):
                if k == len(passes):
                    passes.append(torch.zeros(g.shape[0], group.size, device=g.device))
                _scatter_add(passes[k], s.idxs, s.root_idxs, g, dim=1)
        return [p.cpu() for p in passes], [p.shape[0] for p in passes]

    def _group_grad(self, group: ChannelGroup, per_example: dict[str, list[Tensor]]) -> Tensor:
        """Batch gate gradient of the shared gate, summed over coupled gates."""
        out = torch.zeros(group.size, dtype=torch.float64)
        for s in group.gates:
            module = self._modules[s.name]
            if self._hooks is not None and s.name in self._hooks.pending:
                entries = per_example.get(s.name, [])
                if not entries:
                    continue
                g = sum(e.sum(0) for e in entries)
            else:
                g = param_gate_grad(module)
            g = g.detach().double().cpu()
            _scatter_add(out, s.idxs, s.root_idxs, g)
        return out

    def _current(self, root: str) -> Tensor | None:
        count = float(self._counts[root])
        if count == 0:
            return None
        mean = self._sums[root] / count
        if self.criterion.centred:
            mean = (mean - (self._linear[root] / count).square()).clamp_min(0.0)
        return mean

    def _static(self, group: ChannelGroup) -> Tensor:
        if self.criterion.per_window:
            if group.root not in self._random:
                self._random[group.root] = self.criterion.static_score(
                    self._weights[group.root], self._generator
                )
            return self._random[group.root].clone()
        return self.criterion.static_score(self._weights[group.root], self._generator)


def _scatter_add(
    out: Tensor, idxs: Sequence[int], root_idxs: Sequence[int], src: Tensor, dim: int = 0
) -> None:
    """``out[..., root_idxs] += src[..., idxs]`` along ``dim``; a plain add when both are 0..C-1
    (every ResNet), which keeps the default criterion's per-step overhead to a few vector ops."""
    n = out.shape[dim]
    if len(idxs) == n == src.shape[dim] and _is_range(idxs) and _is_range(root_idxs):
        out += src.to(out.device, out.dtype)
        return
    src = src.index_select(dim, torch.as_tensor(list(idxs), device=src.device))
    out.index_add_(dim, torch.as_tensor(list(root_idxs), device=out.device), src.to(out.dtype))


def _is_range(idxs: Sequence[int]) -> bool:
    return list(idxs) == list(range(len(idxs)))


def _out_channels(module: nn.Module) -> int:
    if isinstance(module, NORM_TYPES):
        return module.num_features
    if isinstance(module, nn.Linear):
        return module.out_features
    return module.out_channels
