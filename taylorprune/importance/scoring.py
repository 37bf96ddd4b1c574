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
def frozen_bn(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """While active (and ``enabled``), every BatchNorm normalises with its running statistics and
    leaves them unchanged, even when the model is in train mode (as each training epoch puts it);
    the rest of the model, and each module's train/eval flag, are left as they are. On exit each
    BatchNorm's mode is what it was on entry. Training under it diverges at fine-tuning learning
    rates: the iterative schedule scores eval-mode passes of their own
    (:class:`~taylorprune.pruning.schedule.WindowScorer`).
    """
    if not enabled:
        yield
        return
    saved: dict[nn.Module, bool] = {}

    def pre(module: nn.Module, inputs: tuple[Any, ...]) -> None:
        saved[module] = module.training
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
