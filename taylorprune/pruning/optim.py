"""Keep an optimizer valid across channel removal: carry the state of kept channels.

torch-pruning replaces every pruned parameter by a new, smaller ``nn.Parameter`` (and prunes its
``.grad``), so an optimizer built before a removal still points at the old tensors and their
full-size momentum. :meth:`Lineage.prune_group` removes one torch-pruning group and keeps, for
every replaced parameter, a shallow snapshot of its module as it was and the pruning calls
torch-pruning made on it. :func:`remap_optimizer` later replays those very calls on a copy of the
snapshot whose parameters are the optimizer's state tensors, so whatever torch-pruning did (output
or input channels, grouped or depthwise convolutions) happens identically to the momentum. Nothing
is copied at pruning time; the replay costs about one more removal, and only for state that exists.
The record lives on the pruner that made the removals, not in a global table.

The optimizer is mutated in place (its ``param_groups`` lists and ``state``), so a learning-rate
scheduler holding it stays valid.
"""

from __future__ import annotations

import copy
import logging
import weakref
from dataclasses import dataclass
from typing import Protocol

import torch
import torch_pruning as tp
from torch import nn

logger = logging.getLogger("taylorprune")


_Spec = tuple[torch.Size, torch.dtype, torch.device]


class _HasLineage(Protocol):
    """A pruner: the model it prunes and the record of its removals."""

    model: nn.Module
    lineage: Lineage


@dataclass
class _Calls:
    """A module as it was before one group removal, and the pruning calls made on it.

    The snapshot keeps the module's attributes (widths, groups) but no tensor: holding the old
    parameters would keep them alive for ever. Their shapes stand in at replay time.
    """

    snapshot: nn.Module
    params: dict[str, _Spec | None]
    buffers: dict[str, _Spec | None]
    calls: list[tuple[object, object, list[int]]]  # (handler, pruning_dim, idxs)

    def replay(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``tensors`` (by parameter name, shaped like the old parameters) cut like the parameters.

        Other parameters and buffers are stand-ins that cost no memory (expanded zeros)."""
        shadow = copy.copy(self.snapshot)
        shadow._parameters = {
            n: None if spec is None else nn.Parameter(_stand_in(spec, tensors.get(n)), False)
            for n, spec in self.params.items()
        }
        shadow._buffers = {
            n: None if spec is None else _stand_in(spec, None) for n, spec in self.buffers.items()
        }
        for handler, dim, idxs in self.calls:
            handler.__self__.pruning_dim = dim
            handler(shadow, idxs)
        return {n: shadow._parameters[n].data for n in tensors}


def _spec(t: torch.Tensor | None) -> _Spec | None:
    return None if t is None else (t.shape, t.dtype, t.device)


def _stand_in(spec: _Spec, value: torch.Tensor | None) -> torch.Tensor:
    if value is not None:
        return value
    shape, dtype, device = spec
    return torch.zeros((), dtype=dtype, device=device).expand(shape)


@dataclass
class _Entry:
    old: weakref.ref
    new: nn.Parameter
    calls: _Calls
    name: str


class Lineage:
    """What replaced each pruned parameter, and how: what an optimizer needs to follow removals.

    A :class:`~taylorprune.pruning.StructuredPruner` owns one and records every removal in it.
    Entries are keyed by the old parameter and die with it: once no optimizer (or anything else)
    holds the old parameter, nobody can ask about it.
    """

    def __init__(self) -> None:
        self._entries: dict[int, _Entry] = {}

    def prune_group(self, group: tp.Group) -> None:
        """Run ``group.prune()`` and remember how each replaced parameter was cut."""
        per_module: dict[int, _Calls] = {}
        modules: dict[int, nn.Module] = {}
        olds: dict[int, dict[str, nn.Parameter | None]] = {}
        for dep, idxs in group:
            target = dep.target.module
            # Unwrapped parameters and modules with children (their handlers may reach into the
            # children) are not replayed; their optimizer state is dropped with a log line.
            if isinstance(target, nn.Parameter) or len(target._modules) > 0:
                continue
            calls = per_module.get(id(target))
            if calls is None:
                snap = copy.copy(target)
                snap._parameters, snap._buffers = {}, {}
                params = {n: _spec(p) for n, p in target._parameters.items()}
                buffers = {n: _spec(b) for n, b in target._buffers.items()}
                calls = per_module[id(target)] = _Calls(snap, params, buffers, [])
                modules[id(target)] = target
                olds[id(target)] = dict(target._parameters)
            plain = tp._helpers.to_plain_idxs(idxs) if _is_hybrid(idxs) else list(idxs)
            calls.calls.append((dep.handler, dep.target.pruning_dim, plain))
        group.prune()
        for mid, calls in per_module.items():
            module = modules[mid]
            for name, old in olds[mid].items():
                new = module._parameters.get(name)
                if old is None or new is None or new is old:
                    continue
                self._record(old, new, calls, name)

    def follow(self, p: torch.Tensor, state: dict | None) -> tuple[torch.Tensor, dict | None]:
        """The newest parameter descended from ``p``, and ``state`` cut along the way."""
        state = dict(state) if state else None
        while True:
            entry = self._entries.get(id(p))
            if entry is None or entry.old() is not p:
                return p, state
            if state:
                shaped = {
                    k: v for k, v in state.items() if torch.is_tensor(v) and v.shape == p.shape
                }
                for key, value in shaped.items():
                    cut = entry.calls.replay({entry.name: value.detach()})[entry.name]
                    if cut.shape != entry.new.shape:
                        logger.warning(
                            "dropping optimizer state %r: cannot follow its pruning", key
                        )
                        del state[key]
                    else:
                        state[key] = cut.to(value.dtype).clone()
            p = entry.new

    def _record(self, old: nn.Parameter, new: nn.Parameter, calls: _Calls, name: str) -> None:
        key = id(old)
        entries = self._entries

        def forget(ref: weakref.ref, key: int = key) -> None:
            entry = entries.get(key)
            if entry is not None and entry.old is ref:
                del entries[key]

        entries[key] = _Entry(weakref.ref(old, forget), new, calls, name)


def _is_hybrid(idxs: list) -> bool:
    return len(idxs) > 0 and isinstance(idxs[0], tp._helpers._HybridIndex)


def remap_optimizer(optimizer: torch.optim.Optimizer, pruner: _HasLineage) -> int:
    """Point ``optimizer`` at the pruned parameters and cut its state to the kept channels.

    Call after one or more removals made by ``pruner`` (a
    :class:`~taylorprune.pruning.StructuredPruner`, whose :class:`Lineage` records what each removal
    did). State tensors shaped like their parameter (SGD ``momentum_buffer``, Adam
    ``exp_avg``/``exp_avg_sq``, ...) keep exactly the kept channels' values; other state (e.g.
    Adam's ``step``) is carried unchanged. Returns the number of parameters replaced. Optimizer
    parameters that are not parameters of ``pruner.model`` afterwards are logged as a warning.
    """
    replaced = 0
    for pg in optimizer.param_groups:
        params = list(pg["params"])
        for i, p in enumerate(params):
            new, state = pruner.lineage.follow(p, optimizer.state.get(p))
            if new is p:
                continue
            optimizer.state.pop(p, None)
            params[i] = new
            replaced += 1
            if state:
                optimizer.state[new] = state
        pg["params"] = params
    live = {id(q) for q in pruner.model.parameters()}
    stale = sum(1 for pg in optimizer.param_groups for q in pg["params"] if id(q) not in live)
    if stale:
        logger.warning("%d optimizer parameters are not parameters of the model", stale)
    return replaced


def reset_momentum(optimizer: torch.optim.Optimizer) -> None:
    """Forget all per-parameter state (momentum, moments), as the paper does when pruning ends."""
    optimizer.state.clear()
