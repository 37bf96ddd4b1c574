"""Does a model agree with itself? Width attributes of layers against their own tensors.

A model built by code always agrees with itself. One rebuilt from a saved pruned model (a table of
widths plus a state_dict) agrees only if the file does: a corrupted or edited table can rebuild
into layers that say one width and hold tensors of another, or widths of zero or below, and every
count made on such a model is nonsense. These checks refuse it with one line naming the layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from taylorprune.errors import UserError


# Each checks one layer type's width attributes against its own tensors; returns the problem.
def _conv_problem(m: nn.Module) -> str | None:
    sizes = (m.in_channels, m.out_channels, m.groups)
    if min(sizes) < 1 or m.in_channels % m.groups or m.out_channels % m.groups:
        return f"in_channels {m.in_channels}, out_channels {m.out_channels}, groups {m.groups}"
    if m.transposed:  # weight is (in, out / groups, ...)
        expected = (m.in_channels, m.out_channels // m.groups)
    else:
        expected = (m.out_channels, m.in_channels // m.groups)
    if tuple(m.weight.shape[:2]) != expected:
        return f"says {expected[0]}x{expected[1]} channels, weight is {tuple(m.weight.shape)}"
    return None


def _linear_problem(m: nn.Module) -> str | None:
    if min(m.in_features, m.out_features) < 1:
        return f"in_features {m.in_features}, out_features {m.out_features}"
    if tuple(m.weight.shape) != (m.out_features, m.in_features):
        return f"says {m.out_features}x{m.in_features} features, weight is {tuple(m.weight.shape)}"
    return None


def _batchnorm_problem(m: nn.Module) -> str | None:
    if m.num_features < 1:
        return f"num_features {m.num_features}"
    for name in ("weight", "bias", "running_mean", "running_var"):
        t = getattr(m, name, None)
        if t is not None and tuple(t.shape) != (m.num_features,):
            return f"num_features {m.num_features}, {name} is {tuple(t.shape)}"
    return None


def _groupnorm_problem(m: nn.Module) -> str | None:
    if min(m.num_groups, m.num_channels) < 1 or m.num_channels % m.num_groups:
        return f"num_groups {m.num_groups}, num_channels {m.num_channels}"
    if m.weight is not None and tuple(m.weight.shape) != (m.num_channels,):
        return f"num_channels {m.num_channels}, weight is {tuple(m.weight.shape)}"
    return None


def _layernorm_problem(m: nn.Module) -> str | None:
    shape = tuple(m.normalized_shape)
    if not shape or min(shape) < 1:
        return f"normalized_shape {shape}"
    if m.weight is not None and tuple(m.weight.shape) != shape:
        return f"normalized_shape {shape}, weight is {tuple(m.weight.shape)}"
    return None


_CHECKS: dict[tuple[type[nn.Module], ...], Callable[[Any], str | None]] = {
    (nn.modules.conv._ConvNd,): _conv_problem,
    (nn.Linear,): _linear_problem,
    (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d): _batchnorm_problem,
    (nn.GroupNorm,): _groupnorm_problem,
    (nn.LayerNorm,): _layernorm_problem,
}


def check_layer_widths(model: nn.Module, source: str) -> None:
    """Refuse a model whose layers contradict their own tensors or have non-positive widths.

    A model built by code always agrees with itself; a saved pruned model whose width table was
    corrupted or edited can rebuild into layers that say one width and hold tensors of another,
    which would make every count after it nonsense. Also refuses empty parameter tensors.

    Raises:
        UserError: ``<source>: layer <name> (<type>): <what disagrees>``.
    """
    for name, module in model.named_modules():
        check = next((f for types, f in _CHECKS.items() if isinstance(module, types)), None)
        problem = check(module) if check is not None else None
        if problem is None:
            empty = [n for n, p in module.named_parameters(recurse=False) if p.numel() == 0]
            problem = f"{empty[0]} is empty" if empty else None
        if problem is not None:
            raise UserError(
                f"{source}: layer {name or '(model)'} ({type(module).__name__}) is inconsistent: "
                f"{problem}"
            )


#: Attributes of a layer that are widths: positive integers (``normalized_shape``: a list of them).
WIDTH_ATTRIBUTES = frozenset(
    {"in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
     "num_channels", "num_groups", "normalized_shape"}
)  # fmt: skip


def check_width_table(widths: dict[str, Any], source: str) -> None:
    """Refuse saved layer attributes (module name -> {attribute: value}) whose widths
    (:data:`WIDTH_ATTRIBUTES`) are anything but positive integers; other attributes are not
    widths and are left to the module.

    Raises:
        UserError: ``<source>: layer <name> has <attribute> <value>; ...``.
    """
    for module, attrs in widths.items():
        if not isinstance(attrs, dict):
            raise UserError(
                f"{source}: widths of layer {module} are {_short(attrs)}, not a mapping"
            )
        for attr, value in attrs.items():
            if attr not in WIDTH_ATTRIBUTES:
                continue
            values = list(value) if isinstance(value, list | tuple) else [value]
            if not values or not all(map(_positive_int, values)):
                raise UserError(
                    f"{source}: layer {module} has {attr} {_short(value)}; widths are positive "
                    "integers (the file is corrupted or was edited)"
                )


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
