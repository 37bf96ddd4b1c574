"""A copy of a model to measure, free of whatever is attached to the original while it is pruned
or scored (forward hooks of the scoring, ``frozen_bn``'s hooks, gradients)."""

from __future__ import annotations

import copy

from torch import nn


def clean_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode without its hooks or gradients: scoring hooks must
    not run (nor be copied) when a copy is timed or measured. The original is left as it was."""
    saved = {}
    for m in model.modules():
        hooks = {k: v for k, v in vars(m).items() if k.endswith("_hooks") and isinstance(v, dict)}
        saved[m] = hooks
        for k, v in hooks.items():
            setattr(m, k, type(v)())
    grads = {p: p.grad for p in model.parameters()}
    for p in grads:
        p.grad = None
    try:
        out = copy.deepcopy(model)
    finally:
        for m, hooks in saved.items():
            for k, v in hooks.items():
                setattr(m, k, v)
        for p, g in grads.items():
            p.grad = g
    return out.eval()
