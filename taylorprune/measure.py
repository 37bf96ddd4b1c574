"""MACs and parameter counts with fvcore, per model and per layer; latency."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn


def _as_tuple(example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    return tuple(example_inputs)


def count(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[int, int]:
    """(MACs, params) of ``model`` on ``example_inputs``, counted by fvcore in eval mode.

    fvcore counts one fused multiply-add as one "flop", i.e. these are MACs. The model's mode is restored.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import FlopCountAnalysis

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            analysis = FlopCountAnalysis(model, _as_tuple(example_inputs))
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            macs = int(analysis.total())
    finally:
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return macs, int(params)
