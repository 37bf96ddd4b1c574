"""Keep an optimizer valid across channel removal: carry the state of kept channels.

torch-pruning replaces every pruned parameter by a new, smaller ``nn.Parameter`` (and prunes its
``.grad``), so an optimizer built before a removal still points at the old tensors and their
full-size momentum. :func:`prune_group` removes one torch-pruning group and keeps, for every
replaced parameter, a shallow snapshot of its module as it was and the pruning calls torch-pruning
made on it. :func:`remap_optimizer` later replays those very calls on a copy of the snapshot whose
parameters are the optimizer's state tensors, so whatever torch-pruning did (output or input
channels, grouped or depthwise convolutions) happens identically to the momentum. Nothing is copied
at pruning time; the replay costs about one more removal, and only for state that exists.

The optimizer is mutated in place (its ``param_groups`` lists and ``state``), so a learning-rate
scheduler holding it stays valid.
"""

from __future__ import annotations

import copy
import logging
import weakref
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

logger = logging.getLogger("taylorprune")


@dataclass
class _Calls:
    """A module as it was before one group removal, and the pruning calls made on it."""

    snapshot: nn.Module
    calls: list[tuple[object, object, list[int]]]  # (handler, pruning_dim, idxs)

    def replay(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``tensors`` (by parameter name, shaped like the old parameters) cut like the parameters.

        Parameters not given are stand-ins that cost no memory (expanded zeros)."""
        shadow = copy.copy(self.snapshot)
        params = {}
        for name, p in self.snapshot._parameters.items():
            if p is None:
                params[name] = None
                continue
            t = tensors.get(name)
            if t is None:
                t = torch.zeros((), dtype=p.dtype, device=p.device).expand(p.shape)
            params[name] = nn.Parameter(t, requires_grad=False)
        shadow._parameters = params
        shadow._buffers = dict(self.snapshot._buffers)
        for handler, dim, idxs in self.calls:
            handler.__self__.pruning_dim = dim
            handler(shadow, idxs)
        return {n: shadow._parameters[n].data for n in tensors}


@dataclass
class _Lineage:
    old: weakref.ref
    new: nn.Parameter
    calls: _Calls
    name: str


# id(old parameter) -> what replaced it and how. Entries die with the old parameter: once no
# optimizer (or anything else) holds it, nobody can ask about it.
_LINEAGE: dict[int, _Lineage] = {}


def prune_group(group: tp.Group, track: bool = True) -> None:
    """Run ``group.prune()``; with ``track`` remember how each replaced parameter was cut."""
    if not track:
        group.prune()
        return
    per_module: dict[int, _Calls] = {}
    modules: dict[int, nn.Module] = {}
    for dep, idxs in group:
        target = dep.target.module
        # Unwrapped parameters and modules with children (their handlers may reach into the
        # children) are not replayed; their optimizer state is dropped with a log line.
        if isinstance(target, nn.Parameter) or len(target._modules) > 0:
            continue
        calls = per_module.get(id(target))
        if calls is None:
            snap = copy.copy(target)
            snap._parameters = dict(target._parameters)
            snap._buffers = dict(target._buffers)
            calls = per_module[id(target)] = _Calls(snap, [])
            modules[id(target)] = target
        plain = tp._helpers.to_plain_idxs(idxs) if _is_hybrid(idxs) else list(idxs)
        calls.calls.append((dep.handler, dep.target.pruning_dim, plain))
    group.prune()
    for mid, calls in per_module.items():
        module = modules[mid]
        for name, old in calls.snapshot._parameters.items():
            new = module._parameters.get(name)
            if old is None or new is None or new is old:
                continue
            _record(old, new, calls, name)


def _record(old: nn.Parameter, new: nn.Parameter, calls: _Calls, name: str) -> None:
    key = id(old)

    def forget(ref: weakref.ref, key: int = key) -> None:
        entry = _LINEAGE.get(key)
        if entry is not None and entry.old is ref:
            del _LINEAGE[key]

    _LINEAGE[key] = _Lineage(weakref.ref(old, forget), new, calls, name)


def _is_hybrid(idxs: list) -> bool:
    return len(idxs) > 0 and isinstance(idxs[0], tp._helpers._HybridIndex)


def remap_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module | None = None) -> int:
    """Point ``optimizer`` at the pruned parameters and cut its state to the kept channels.

    Call after one or more removals made by :class:`~taylorprune.pruning.StructuredPruner` (which
    records what each removal did). State tensors shaped like their parameter (SGD
    ``momentum_buffer``, Adam ``exp_avg``/``exp_avg_sq``, ...) keep exactly the kept channels'
    values; other state (e.g. Adam's ``step``) is carried unchanged. Returns the number of
    parameters replaced. If ``model`` is given, optimizer parameters that are not parameters of the
    model afterwards are logged as a warning.
    """
    replaced = 0
    for pg in optimizer.param_groups:
        params = list(pg["params"])
        for i, p in enumerate(params):
            new, state = _follow(p, optimizer.state.get(p))
            if new is p:
                continue
            optimizer.state.pop(p, None)
            params[i] = new
            replaced += 1
            if state:
                optimizer.state[new] = state
        pg["params"] = params
    if model is not None:
        live = {id(q) for q in model.parameters()}
        stale = sum(1 for pg in optimizer.param_groups for q in pg["params"] if id(q) not in live)
        if stale:
            logger.warning("%d optimizer parameters are not parameters of the model", stale)
    return replaced


def _follow(p: torch.Tensor, state: dict | None) -> tuple[torch.Tensor, dict | None]:
    """The newest parameter descended from ``p``, and ``state`` cut along the way."""
    state = dict(state) if state else None
    while True:
        entry = _LINEAGE.get(id(p))
        if entry is None or entry.old() is not p:
            return p, state
        if state:
            shaped = {k: v for k, v in state.items() if torch.is_tensor(v) and v.shape == p.shape}
            for key, value in shaped.items():
                cut = entry.calls.replay({entry.name: value.detach()})[entry.name]
                if cut.shape != entry.new.shape:
                    logger.warning("dropping optimizer state %r: cannot follow its pruning", key)
                    del state[key]
                else:
                    state[key] = cut.to(value.dtype).clone()
        p = entry.new


def reset_momentum(optimizer: torch.optim.Optimizer) -> None:
    """Forget all per-parameter state (momentum, moments), as the paper does when pruning ends."""
    optimizer.state.clear()
