"""The layers a latency table covers: which modules, their signatures and their widths.

A *table layer* is a convolution or Linear module together with the BatchNorm that reads its
output (they are timed as one, as they run in the network), or a normalisation layer that follows
no such module. Everything else (activations, additions, pooling, reshapes) is left to the
network's residual term (:mod:`taylorprune.latency.model`).

A layer's *signature* is everything its latency depends on apart from its input and output widths:
the module type and its hyper-parameters (kernel, stride, padding, dilation, convolution groups,
bias, the merged norm), the input's spatial size, and the timing settings (batch, dtype, memory
format). Layers with equal signatures share measurements. Per layer kind, a small record says how
to recognise the module, read its widths, describe it and build a fresh one at other widths.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class LayerKind:
    """How one kind of table layer is recognised, measured and rebuilt.

    ``tied`` kinds have one width (input = output channels: depthwise convolutions, norms).
    ``channel_dim`` is where the channels sit in the layer's input (1 for NC..., -1 for Linear).
    """

    name: str
    matches: Callable[[nn.Module], bool]
    widths: Callable[[nn.Module], tuple[int, int]]
    describe: Callable[[nn.Module], dict[str, Any]]
    build: Callable[[dict[str, Any], int, int], nn.Module]
    tied: bool = False
    channel_dim: int = 1


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, _CONVS) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def _conv_fields(m: nn.Module) -> dict[str, Any]:
    return {
        "op": type(m).__name__,
        "kernel": list(m.kernel_size),
        "stride": list(m.stride),
        "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
        "dilation": list(m.dilation),
        "groups": 0 if _is_depthwise(m) else m.groups,  # 0: one group per channel
        "bias": m.bias is not None,
        "padding_mode": m.padding_mode,
    }


def _conv(sig: dict[str, Any], cin: int, cout: int) -> nn.Module:
    return getattr(nn, sig["op"])(
        cin,
        cout,
        tuple(sig["kernel"]),
        stride=tuple(sig["stride"]),
        padding=sig["padding"] if isinstance(sig["padding"], str) else tuple(sig["padding"]),
        dilation=tuple(sig["dilation"]),
        groups=cin if sig["groups"] == 0 else sig["groups"],
        bias=sig["bias"],
        padding_mode=sig["padding_mode"],
    )


def _norm_fields(m: nn.Module) -> dict[str, Any]:
    groups = m.num_groups if isinstance(m, nn.GroupNorm) else None
    return {"op": type(m).__name__, "groups": groups, "affine": bool(m.affine)}


def _norm(sig: dict[str, Any], cin: int, cout: int) -> nn.Module:
    if sig["op"] == "GroupNorm":
        return nn.GroupNorm(sig["groups"], cout, affine=sig["affine"])
    return getattr(nn, sig["op"])(cout, affine=sig["affine"])


def _norm_width(m: nn.Module) -> tuple[int, int]:
    c = m.num_channels if isinstance(m, nn.GroupNorm) else m.num_features
    return c, c


#: Checked in order; the first kind whose ``matches`` accepts a module wins.
KINDS: tuple[LayerKind, ...] = (
    LayerKind(
        "depthwise",
        _is_depthwise,
        lambda m: (m.out_channels, m.out_channels),
        _conv_fields,
        _conv,
        tied=True,
    ),
    LayerKind(
        "conv",
        lambda m: isinstance(m, _CONVS),
        lambda m: (m.in_channels, m.out_channels),
        _conv_fields,
        _conv,
    ),
    LayerKind(
        "linear",
        lambda m: isinstance(m, nn.Linear),
        lambda m: (m.in_features, m.out_features),
        lambda m: {"op": "Linear", "bias": m.bias is not None},
        lambda sig, cin, cout: nn.Linear(cin, cout, bias=sig["bias"]),
        channel_dim=-1,
    ),
    LayerKind(
        "norm",
        lambda m: isinstance(m, (*_BN, nn.GroupNorm)),
        _norm_width,
        _norm_fields,
        _norm,
        tied=True,
    ),
)
_BY_NAME = {k.name: k for k in KINDS}


def kind_of(module: nn.Module) -> LayerKind | None:
    """The :class:`LayerKind` of ``module``, or None when the table does not cover it."""
    return next((k for k in KINDS if k.matches(module)), None)


@dataclass(frozen=True)
class TableLayer:
    """One layer of the model as the latency table sees it.

    ``cin``/``cout`` are its input and output channels (features for a Linear) in the model it was
    found in; ``signature`` holds the kind's fields plus ``kind``, ``input`` (the input's size
    except batch and channels) and ``norm`` (the BatchNorm type timed with it, or None), but not
    the timing settings. ``out_elements`` is the number of output elements per output channel and
    sample (the residual term scales with them). ``fixed_in`` marks a layer that reads the model's
    input, whose input channels never change. ``calls`` counts forward calls per model pass.
    """

    name: str
    kind: str
    signature: dict[str, Any]
    cin: int
    cout: int
    out_elements: int
    fixed_in: bool = False
    norm_name: str | None = None
    calls: int = 1

    @property
    def tied(self) -> bool:
        return _BY_NAME[self.kind].tied

    def key(self) -> str:
        """The signature as canonical JSON (equal signatures share measurements)."""
        return json.dumps(self.signature, sort_keys=True, separators=(",", ":"))


def find_layers(model: nn.Module, input_shape: Sequence[int]) -> list[TableLayer]:
    """Every table layer of ``model`` in forward order, from one eval-mode pass at batch 1.

    ``input_shape`` is one sample's shape (no batch). A BatchNorm whose input is exactly the output
    of a convolution or Linear is merged into it; other norm layers are layers of their own.
    """
    x = torch.randn(1, *input_shape)
    seen: dict[str, dict[str, Any]] = {}
    producers: dict[int, tuple[weakref.ref, str]] = {}  # id(output tensor) -> (ref, producer)
    merged: dict[str, str] = {}  # norm name -> producer name

    def hook(module: nn.Module, inputs: tuple, output: Any, name: str) -> None:
        if name in seen:
            seen[name]["calls"] += 1
            return
        inp = inputs[0] if inputs else None
        if not (torch.is_tensor(inp) and torch.is_tensor(output)):
            return
        seen[name] = {
            "module": module,
            "input": tuple(inp.shape),
            "output": tuple(output.shape),
            "fixed_in": inp is x,
            "calls": 1,
        }
        if isinstance(module, _BN):
            ref, producer = producers.get(id(inp), (None, None))
            if ref is not None and ref() is inp and producer not in merged.values():
                merged[name] = producer
        elif not isinstance(module, nn.GroupNorm):
            producers[id(output)] = (weakref.ref(output), name)

    handles = [
        m.register_forward_hook(lambda mod, i, o, name=n: hook(mod, i, o, name))
        for n, m in model.named_modules()
        if kind_of(m) is not None
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    norm_of = {producer: norm for norm, producer in merged.items()}
    out = []
    for name, rec in seen.items():
        if name in merged:
            continue
        module = rec["module"]
        kind = kind_of(module)
        assert kind is not None
        cin, cout = kind.widths(module)
        shape_in, shape_out = rec["input"], rec["output"]
        if kind.channel_dim == 1:
            spatial, out_elements = list(shape_in[2:]), _prod(shape_out[2:])
        else:
            spatial, out_elements = list(shape_in[1:-1]), _prod(shape_out[1:-1])
        norm = norm_of.get(name)
        signature = {
            "kind": kind.name,
            **kind.describe(module),
            "input": spatial,
            "norm": None if norm is None else type(model.get_submodule(norm)).__name__,
        }
        out.append(
            TableLayer(
                name=name,
                kind=kind.name,
                signature=signature,
                cin=cin,
                cout=cout,
                out_elements=out_elements,
                fixed_in=bool(rec["fixed_in"]),
                norm_name=norm,
                calls=int(rec["calls"]),
            )
        )
    return out


def build_layer(signature: dict[str, Any], cin: int, cout: int) -> nn.Module:
    """A freshly initialised module of ``signature`` at widths ``cin`` -> ``cout`` (+ its norm)."""
    kind = _BY_NAME[signature["kind"]]
    layer = kind.build(signature, cin, cout)
    if signature.get("norm"):
        layer = nn.Sequential(layer, getattr(nn, signature["norm"])(cout))
    return layer.eval()


def layer_input(signature: dict[str, Any], cin: int, batch: int) -> torch.Tensor:
    """A random input of ``batch`` samples with ``cin`` channels for a layer of ``signature``."""
    kind = _BY_NAME[signature["kind"]]
    spatial = list(signature["input"])
    shape = [batch, cin, *spatial] if kind.channel_dim == 1 else [batch, *spatial, cin]
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def module_widths(model: nn.Module, names: Sequence[str]) -> dict[str, tuple[int, int]]:
    """``(cin, cout)`` of each named table layer of ``model`` as it is now."""
    out = {}
    for name in names:
        module = model.get_submodule(name)
        kind = kind_of(module)
        if kind is None:
            raise ValueError(f"{name!r} is not a layer the latency table covers")
        out[name] = kind.widths(module)
    return out


def _prod(dims: Sequence[int]) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n
