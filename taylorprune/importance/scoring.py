"""The scoring loop and the model state it must leave alone.

Every caller that scores channels (one-shot pruning, :func:`~taylorprune.importance.channel_scores`,
the runner, the studies in ``tools/``) runs :func:`accumulate` inside :func:`preserved_state`, and
chooses the BatchNorm mode while scoring with :func:`frozen_bn`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from taylorprune.importance.accumulator import ImportanceAccumulator

LossFn = Callable[[Tensor, Any], Tensor]

_BN = nn.modules.batchnorm._BatchNorm


@contextlib.contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """On exit, restore what scoring changes: every buffer's values (BatchNorm running
    statistics), each module's train/eval flag, and each parameter's ``.grad`` and
    ``requires_grad``.

    Parameters whose shapes changed inside the block (channels were removed) are skipped: only the
    state of what is still the same tensor is restored. ``.grad`` tensors are restored by
    reference; the scoring loop sets them to None before each backward and never writes into them.
    """
    with torch.no_grad():
        buffers = {n: b.clone() for n, b in model.named_buffers()}
    params = dict(model.named_parameters())
    grads = {n: p.grad for n, p in params.items()}
    requires = {n: p.requires_grad for n, p in params.items()}
    modes = {n: m.training for n, m in model.named_modules()}
    try:
        yield
    finally:
        with torch.no_grad():
            for n, b in model.named_buffers():
                saved = buffers.get(n)
                if saved is not None and saved.shape == b.shape:
                    b.copy_(saved)
        for n, p in model.named_parameters():
            if params.get(n) is p:
                p.grad = grads[n]
                p.requires_grad_(requires[n])
        for n, m in model.named_modules():
            m.training = modes.get(n, m.training)


@contextlib.contextmanager
def frozen_bn(model: nn.Module, enabled: bool = True, *, track: bool = False) -> Iterator[None]:
    """While active (and ``enabled``), every BatchNorm normalises with its running statistics,
    even when the model is in train mode (as each training epoch puts it); the rest of the model,
    and each module's train/eval flag, are left as they are.

    ``track=False``: the running statistics stay unchanged. ``track=True``: a BatchNorm in train
    mode still updates them from each minibatch as train-mode BatchNorm does (same momentum,
    unbiased variance), before normalising with them. Training under the iterative schedule needs
    that: channels removed upstream change the statistics of what every later BatchNorm sees, and
    frozen statistics would go on normalising with the old ones. On exit each BatchNorm's mode is
    what it was on entry.
    """
    if not enabled:
        yield
        return
    saved: dict[nn.Module, bool] = {}

    def pre(module: nn.Module, inputs: tuple[Any, ...]) -> None:
        saved[module] = module.training
        if track and module.training and module.track_running_stats:
            _update_running_stats(module, inputs[0])
        module.training = False  # a pre-hook's return value would replace the inputs

    def post(module: nn.Module, _inputs: Any, _output: Any) -> None:
        module.training = saved.pop(module, module.training)

    norms = [m for m in model.modules() if isinstance(m, _BN)]
    modes = [m.training for m in norms]
    handles = [m.register_forward_pre_hook(pre) for m in norms]
    handles += [m.register_forward_hook(post) for m in norms]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for m, mode in zip(norms, modes, strict=True):
            m.training = mode


@torch.no_grad()
def _update_running_stats(bn: nn.Module, x: Tensor) -> None:
    """What a train-mode BatchNorm's forward does to its running statistics for input ``x``."""
    dims = [d for d in range(x.dim()) if d != 1]
    n = x.numel() // x.shape[1]
    if n < 2:
        return
    var, mean = torch.var_mean(x.detach().float(), dim=dims, correction=1)
    bn.num_batches_tracked.add_(1)
    f = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    bn.running_mean.mul_(1 - f).add_(mean.to(bn.running_mean.dtype), alpha=f)
    bn.running_var.mul_(1 - f).add_(var.to(bn.running_var.dtype), alpha=f)


def accumulate(
    model: nn.Module,
    accumulator: ImportanceAccumulator,
    batches: Iterable[tuple[Any, Any]],
    loss_fn: LossFn,
) -> int:
    """Add every ``(inputs, targets)`` of ``batches`` to ``accumulator``: forward, loss, backward
    (through :meth:`ImportanceAccumulator.backward`, which second-order criteria need). No weight
    changes. Returns the number of minibatches added."""
    n = 0
    for inputs, targets in batches:
        model.zero_grad(set_to_none=True)
        accumulator.backward(loss_fn(model(inputs), targets))
        n += 1
    return n
