"""Forward checks around a removal: the model still runs, which module gives the logits, which
layers split their width into attention heads.

A removal that leaves a width torch-pruning cannot see (a hard-coded reshape, a tensor kept outside
parameters and buffers) must fail at once, naming the layers, not hours later: :func:`check_runs`
propagates shapes on the meta device and falls back on a real forward pass only when that cannot
decide.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import torch
from torch import nn

from taylorprune.errors import UserError

logger = logging.getLogger("taylorprune")

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

Inputs = torch.Tensor | tuple[torch.Tensor, ...]

#: Why a group whose channels set an attention width is left whole.
ATTENTION_REASON = (
    "it sets the width of attention layers, whose heads would be re-split and attention rescaled"
)


def heads_split(module: nn.Module, parent: nn.Module | None) -> bool:
    """Whether ``module``'s width is split into attention heads: it is an ``nn.MultiheadAttention``,
    or a child of a module with an integer ``num_heads`` (the attention blocks of torchvision,
    timm and most ViT code)."""
    if isinstance(module, nn.MultiheadAttention):
        return True
    heads = getattr(parent, "num_heads", None)
    return isinstance(heads, int) and not isinstance(heads, bool)


def check_runs(model: nn.Module, inputs: Inputs, layers: Sequence[str]) -> None:
    """Raise :class:`UserError` naming ``layers`` (the ones just cut) if ``model`` no longer runs.

    Shapes are propagated on the meta device (no arithmetic); only if that fails (data-dependent
    ops, tensors kept outside parameters and buffers) does a real eval-mode forward pass decide.
    """
    try:
        meta_forward(model, inputs)
        return
    except Exception:
        logger.debug("meta-device check failed; checking with a real forward pass")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*((inputs,) if isinstance(inputs, torch.Tensor) else inputs))
    except Exception as exc:
        raise UserError(broken_message(layers, exc)) from exc
    finally:
        model.train(was_training)


def meta_forward(model: nn.Module, example_inputs: Inputs) -> None:
    """One eval-mode forward pass with every parameter, buffer and input on the meta device."""
    tensors = {
        n: torch.empty_like(t, device="meta")
        for n, t in [*model.named_parameters(), *model.named_buffers()]
    }
    inputs = (example_inputs,) if torch.is_tensor(example_inputs) else tuple(example_inputs)
    # BatchNorm has no C++ meta kernel: its Python decomposition costs more than the rest of the
    # pass together, so on the meta device its widths are checked directly.
    norms = [m for m in model.modules() if type(m) in _BN_TYPES]
    for bn in norms:
        bn.forward = functools.partial(_bn_widths_only, bn)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            torch.func.functional_call(
                model, tensors, tuple(t.to("meta") for t in inputs), strict=False
            )
    finally:
        model.train(was_training)
        for bn in norms:
            bn.__dict__.pop("forward", None)


def _bn_widths_only(bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What BatchNorm checks about shapes, without computing anything."""
    widths = [bn.num_features]
    widths += [t.shape[0] for t in (bn.weight, bn.bias, bn.running_mean) if t is not None]
    if x.dim() < 2 or any(w != x.shape[1] for w in widths):
        raise RuntimeError(f"BatchNorm expects {widths} channels, input has shape {tuple(x.shape)}")
    return x


def broken_message(layers: Sequence[str], exc: Exception) -> str:
    """The one line for a model that no longer runs after ``layers`` were cut."""
    names = ", ".join(sorted(layers)) or "unknown"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return (
        f"the model no longer runs after removing channels of layer(s) {names}: "
        f"{type(exc).__name__}: {text} (the forward pass hard-codes a width torch-pruning cannot "
        "see; add the layer to ignored_layers)"
    )


def find_classifier(
    model: nn.Module, example_inputs: Inputs | Sequence[torch.Tensor]
) -> str | None:
    """Name of the conv/linear module whose output channels are the model's outputs (whose
    removal would delete classes), else the last Linear; None when there is neither.

    The module whose output tensor is the model's output is it. Otherwise (a conv followed by
    pooling and flattening, as in SqueezeNet) it is the last module run with as many output
    channels as the model has outputs whose channel 0, raised, changes output 0 and leaves every
    other output exactly as it was."""
    convs = nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d
    outputs: dict[str, int] = {}
    ran: list[str] = []
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, convs):

            def hook(mod, inp, out, name=name):
                if torch.is_tensor(out):
                    outputs[name] = out.untyped_storage().data_ptr()
                    ran.append(name)

            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    inputs = (example_inputs,) if torch.is_tensor(example_inputs) else tuple(example_inputs)
    try:
        with torch.no_grad():
            result = model(*inputs)
        for h in hooks:
            h.remove()
        hooks = []
        if torch.is_tensor(result):
            ptr = result.untyped_storage().data_ptr()
            hits = [n for n, p in outputs.items() if p == ptr]
            if hits:
                return hits[-1]
            if result.dim() >= 2 and result.shape[1] > 1:
                modules = dict(model.named_modules())
                for name in dict.fromkeys(reversed(ran)):  # the last run first, each once
                    if _out_width(modules[name]) == result.shape[1] and _aligned(
                        model, modules[name], inputs, result
                    ):
                        return name
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def _out_width(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _aligned(model: nn.Module, module: nn.Module, inputs: tuple, result: torch.Tensor) -> bool:
    """Whether raising ``module``'s output channel 0 (past any ReLU's threshold) changes the
    model's output 0 alone."""

    def raise_first(mod, inp, out):
        out = out.clone()
        out[:, 0] += 1.0 + out.abs().max()
        return out

    handle = module.register_forward_hook(raise_first)
    try:
        with torch.no_grad():
            changed = model(*inputs)
    finally:
        handle.remove()
    if not torch.is_tensor(changed) or changed.shape != result.shape:
        return False
    return torch.equal(changed[:, 1:], result[:, 1:]) and not torch.equal(changed, result)


def first_sample(example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> Inputs:
    """The first example of a batch (or of each tensor of a tuple of batches)."""
    if torch.is_tensor(example_inputs):
        return example_inputs[:1]
    return tuple(t[:1] for t in example_inputs)
