"""Keep an optimizer valid across channel removal: carry the state of kept channels.

torch-pruning replaces every pruned parameter by a new, smaller ``nn.Parameter`` (and prunes its
``.grad``), so an optimizer built before a removal still points at the old tensors and their
full-size momentum. :func:`prune_group` removes one torch-pruning group and records, for every
replaced parameter, which elements of the old tensor the new one kept: it replays the group's own
pruning calls on a shallow copy of each affected module whose parameters are ``arange`` index
tensors. Whatever torch-pruning does (output or input channels, grouped or depthwise convolutions,
unwrapped parameters), the same selection then applies to any state tensor shaped like the
parameter.

:func:`remap_optimizer` uses that record after the fact and mutates the optimizer in place (its
``param_groups`` lists and ``state``), so a learning-rate scheduler holding it stays valid.
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
class _Lineage:
    old: weakref.ref
    new: nn.Parameter
    flat_idx: torch.Tensor  # positions in old.flatten() of new.flatten()


# id(old parameter) -> what replaced it. Entries die with the old parameter: once no optimizer (or
# anything else) holds it, nobody can ask about it.
_LINEAGE: dict[int, _Lineage] = {}


def prune_group(group: tp.Group, track: bool = True) -> None:
    """Run ``group.prune()``; with ``track`` record how each replaced parameter was cut."""
    if not track:
        group.prune()
        return
    dg = group._DG
    items = [(dep, list(idxs)) for dep, idxs in group]
    owners: dict[tuple[int, str], tuple[nn.Module | None, str, nn.Parameter]] = {}
    for dep, _ in items:
        target = dep.target.module
        if isinstance(target, nn.Parameter):
            owners[(id(target), "")] = (None, dg._param_to_name[target], target)
        else:
            for pname, p in target._parameters.items():
                if p is not None:
                    owners[(id(target), pname)] = (target, pname, p)
    cut = _replay(items)
    group.prune()
    for key, (owner, name, old) in owners.items():
        new = dg.model.get_parameter(name) if owner is None else owner._parameters[name]
        if new is old or key not in cut:
            continue
        idx = cut[key].reshape(-1).long()
        if idx.numel() != new.numel():
            continue
        _record(old, new, idx)


def _record(old: nn.Parameter, new: nn.Parameter, flat_idx: torch.Tensor) -> None:
    key = id(old)

    def forget(_ref: weakref.ref, key: int = key) -> None:
        entry = _LINEAGE.get(key)
        if entry is not None and entry.old is _ref:
            del _LINEAGE[key]

    _LINEAGE[key] = _Lineage(weakref.ref(old, forget), new, flat_idx)


def _replay(items: list) -> dict[tuple[int, str], torch.Tensor]:
    """For every affected parameter, the flat indices its pruned version keeps."""
    shadows: dict[int, nn.Module] = {}
    loose: dict[int, torch.Tensor] = {}
    for dep, idxs in items:
        target = dep.target.module
        handler = dep.handler
        handler.__self__.pruning_dim = dep.target.pruning_dim
        plain = tp._helpers.to_plain_idxs(idxs) if _is_hybrid(idxs) else idxs
        if isinstance(target, nn.Parameter):
            current = loose.get(id(target), _arange_like(target))
            loose[id(target)] = handler(nn.Parameter(current, requires_grad=False), plain).data
            continue
        shadow = shadows.get(id(target))
        if shadow is None:
            shadow = copy.copy(target)
            # Fresh dicts: the handlers' attribute assignments must land on the copy only.
            shadow._parameters = {
                n: None if p is None else nn.Parameter(_arange_like(p), requires_grad=False)
                for n, p in target._parameters.items()
            }
            shadow._buffers = dict(target._buffers)
            shadows[id(target)] = shadow
        handler(shadow, plain)
    out: dict[tuple[int, str], torch.Tensor] = {(mid, ""): t for mid, t in loose.items()}
    for mid, shadow in shadows.items():
        for pname, p in shadow._parameters.items():
            if p is not None:
                out[(mid, pname)] = p.data
    return out


def _arange_like(p: torch.Tensor) -> torch.Tensor:
    # float64 because torch-pruning wraps results in nn.Parameter (which needs a float dtype);
    # it holds integers exactly up to 2**53 elements.
    return torch.arange(p.numel(), dtype=torch.float64, device=p.device).view(p.shape)


def _is_hybrid(idxs: list) -> bool:
    return len(idxs) > 0 and isinstance(idxs[0], tp._helpers._HybridIndex)


def remap_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module | None = None) -> int:
    """Point ``optimizer`` at the pruned parameters and cut its state to the kept channels.

    Call after one or more removals made by :class:`~taylorprune.pruning.StructuredPruner` (which
    records what each removal kept). State tensors shaped like their parameter (SGD
    ``momentum_buffer``, Adam ``exp_avg``/``exp_avg_sq``, ...) keep exactly the kept channels'
    values; other state (e.g. Adam's ``step``) is carried unchanged. Returns the number of
    parameters replaced.
    If ``model`` is given, parameters of the optimizer that are no longer in the model are logged.
    """
    replaced = 0
    for pg in optimizer.param_groups:
        params = list(pg["params"])
        for i, p in enumerate(params):
            new, idx = _follow(p)
            if new is p:
                continue
            state = optimizer.state.pop(p, None)
            params[i] = new
            replaced += 1
            if not state:
                continue
            carried = {}
            for k, v in state.items():
                if torch.is_tensor(v) and v.shape == p.shape:
                    carried[k] = v.reshape(-1)[idx.to(v.device)].view(new.shape).clone()
                else:
                    carried[k] = v
            optimizer.state[new] = carried
        pg["params"] = params
    if model is not None:
        live = {id(q) for q in model.parameters()}
        stale = sum(1 for pg in optimizer.param_groups for q in pg["params"] if id(q) not in live)
        if stale:
            logger.warning("%d optimizer parameters are not parameters of the model", stale)
    return replaced


def _follow(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The newest parameter descended from ``p`` and the flat indices of ``p`` it keeps."""
    idx = None
    while True:
        entry = _LINEAGE.get(id(p))
        if entry is None or entry.old() is not p:
            return p, idx
        idx = entry.flat_idx if idx is None else idx[entry.flat_idx]
        p = entry.new


def reset_momentum(optimizer: torch.optim.Optimizer) -> None:
    """Forget all per-parameter state (momentum, moments), as the paper does when pruning ends."""
    optimizer.state.clear()
