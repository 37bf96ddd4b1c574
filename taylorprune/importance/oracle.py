"""Oracle importance: the loss change when a channel is removed, measured by zeroing its gate.

Used to validate criteria (``tools/oracle_study.py``, ``docs/importance.md``), not for pruning: it
costs one forward pass per channel and minibatch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from taylorprune.graph import ChannelGroup
from taylorprune.importance._gates import NORM_TYPES, channel_dim


def oracle_scores(
    model: nn.Module,
    groups: list[ChannelGroup],
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    train_mode: bool = True,
    chunk: int = 8,
    quiet: bool = True,
) -> dict[str, Tensor]:
    """``mean over batches of |L − L_{c=0}|`` for every channel c of every group, keyed by root.

    L is the mean cross-entropy of a minibatch; ``L_{c=0}`` the same with channel c's gate set to
    zero, i.e. the channel zeroed at every coupled gate module's output (the BatchNorm output for
    a conv→BN pair). ``train_mode=True`` normalises with each forward pass's own batch statistics,
    as training does (zeroing a channel changes the statistics of later layers, not of its own
    BN); ``False`` uses the running statistics. ``chunk`` channel removals are evaluated in one
    pass: the minibatch is repeated ``chunk`` times and every BatchNorm computes statistics per
    copy, which is exactly ``chunk`` separate forward passes; layers that run before the zeroed
    gate reuse the outputs of the unmodified pass. The model (a deep copy is used) is left
    unchanged.
    """
    net = copy.deepcopy(model)
    net.train(train_mode)
    state = _Copies()
    for m in net.modules():
        if isinstance(m, NORM_TYPES):
            _patch_norm(m, state)
    for m in net.modules():
        if not list(m.children()):
            _patch_leaf(m, state)
    masks: dict[str, Tensor | None] = {}
    modules = dict(net.named_modules())
    for g in groups:
        for s in g.gates:
            masks.setdefault(s.name, None)
    handles = [
        modules[name].register_forward_hook(_mask_hook(name, masks)) for name in sorted(masks)
    ]
    sums = {g.root: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    count = 0
    try:
        with torch.no_grad():
            for inputs, targets in tqdm(list(batches), desc="oracle", disable=quiet, leave=False):
                n = inputs.shape[0]
                state.start(k=1, record=True)
                base = F.cross_entropy(net(inputs), targets).item()
                first_call = {
                    name: calls[0] for name, calls in state.calls_of(modules).items() if calls
                }
                for g in groups:
                    # every leaf call before the group's first gate gives the base pass's output
                    reuse = min(first_call.get(s.name, 0) for s in g.gates)
                    for start in range(0, g.size, chunk):
                        chans = list(range(start, min(start + chunk, g.size)))
                        k = len(chans)
                        state.start(k=k, reuse=reuse)
                        _set_masks(masks, modules, g, chans, n)
                        out = net(inputs.repeat(k, *[1] * (inputs.dim() - 1)))
                        losses = F.cross_entropy(out, targets.repeat(k), reduction="none")
                        zeroed = losses.view(k, n).mean(1).double()
                        sums[g.root][chans] += (zeroed - base).abs()
                        for name in masks:
                            masks[name] = None
                count += 1
    finally:
        for h in handles:
            h.remove()
        state.cache.clear()
    return {root: (s / max(count, 1)).float() for root, s in sums.items()}


class _Copies:
    """Shared state of the patched modules for one forward pass: ``k`` stacked copies of the batch;
    leaf calls numbered in execution order, outputs of the first ``reuse`` calls taken from the
    recorded base pass."""

    def __init__(self) -> None:
        self.k = 1
        self.call = 0
        self.reuse = 0
        self.record = False
        self.cache: list[Tensor] = []
        self.order: list[nn.Module] = []

    def start(self, k: int, reuse: int = 0, record: bool = False) -> None:
        self.k, self.reuse, self.record, self.call = k, reuse, record, 0
        if record:
            self.cache, self.order = [], []

    def calls_of(self, modules: dict[str, nn.Module]) -> dict[str, list[int]]:
        ids = {id(m): name for name, m in modules.items()}
        out: dict[str, list[int]] = {}
        for i, m in enumerate(self.order):
            out.setdefault(ids[id(m)], []).append(i)
        return out


def _patch_leaf(module: nn.Module, state: _Copies) -> None:
    inner = module.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        i = state.call
        state.call += 1
        if state.record:
            out = inner(*args, **kwargs)
            state.order.append(module)
            state.cache.append(out.clone())  # clone: an in-place op later must not change it
            return out
        if i < state.reuse:
            cached = state.cache[i]
            return cached.repeat(state.k, *[1] * (cached.dim() - 1))
        return inner(*args, **kwargs)

    module.forward = forward


def _patch_norm(bn: nn.Module, state: _Copies) -> None:
    """Make ``bn`` normalise each of ``state.k`` stacked copies of the batch with its own statistics
    (train mode), or with the running statistics (eval mode); running statistics are not updated."""

    def forward(x: Tensor) -> Tensor:
        if not bn.training and bn.running_mean is not None:
            # eval mode normalises each example on its own: the copies need nothing special
            return F.batch_norm(
                x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
            )
        k = state.k
        n, c, rest = x.shape[0] // k, x.shape[1], x.shape[2:]
        # copies side by side as k·C channels, so one fused batch_norm gives per-copy statistics
        wide = x.view(k, n, c, *rest).transpose(0, 1).reshape(n, k * c, *rest)
        weight = None if bn.weight is None else bn.weight.repeat(k)
        bias = None if bn.bias is None else bn.bias.repeat(k)
        y = F.batch_norm(wide, None, None, weight, bias, True, 0.0, bn.eps)
        return y.view(n, k, c, *rest).transpose(0, 1).reshape(x.shape)

    bn.forward = forward


def _mask_hook(name: str, masks: dict[str, Tensor | None]) -> Callable:
    def hook(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor | None:
        mask = masks[name]
        if mask is None:
            return None
        shape = [mask.shape[0]] + [1] * (output.dim() - 1)
        shape[channel_dim(module)] = mask.shape[1]
        return output * mask.view(shape)

    return hook


def _set_masks(
    masks: dict[str, Tensor | None],
    modules: dict[str, nn.Module],
    group: ChannelGroup,
    chans: list[int],
    n: int,
) -> None:
    """Copy j of the batch has group channel ``chans[j]`` zeroed at every gate of the group."""
    for s in group.gates:
        width = _width(modules[s.name])
        mask = torch.ones(len(chans), n, width)
        pos = {r: i for r, i in zip(s.root_idxs, s.idxs, strict=True)}
        for j, c in enumerate(chans):
            if c in pos:
                mask[j, :, pos[c]] = 0.0
        masks[s.name] = mask.view(len(chans) * n, width)


def _width(module: nn.Module) -> int:
    if isinstance(module, NORM_TYPES):
        return module.num_features
    if isinstance(module, nn.Linear):
        return module.out_features
    return module.out_channels
