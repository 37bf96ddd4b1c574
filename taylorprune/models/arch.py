"""Which architecture a model is: the spec that rebuilds it unpruned, without weights.

A saved pruned model stores this spec so that any process can rebuild it
(:mod:`taylorprune.serialization`). A model built by :func:`~taylorprune.models.build_model`
carries the spec that built it. A torchvision or timm model built directly is identified by its
class and its tensors: every builder of the same class is built on the meta device (no memory, no
init cost) with the model's class count and input channels, and the candidate whose state_dict has
the same keys, the same kernel sizes and no dimension smaller than the model's (pruning only
shrinks) wins; of several, the smallest (an unpruned model matches its own builder exactly).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from taylorprune._pruned_format import read_pruned
from taylorprune.errors import UserError
from taylorprune.models._factory import SPEC_ATTRIBUTE, build_model, normalize_spec
from taylorprune.models.sources import torchvision_weights

logger = logging.getLogger("taylorprune")


def model_spec_for_save(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec that rebuilds ``spec``'s architecture without any weights.

    ``pretrained`` False and no ``weights``/``checkpoint``; the class count and input channels are
    kept (the torchvision source needs the class count made explicit: a pretrained model without one
    has the weights' classes). For a saved pruned model (source ``checkpoint``) this is the base
    architecture stored in the file.
    """
    spec = normalize_spec(spec)
    if spec["source"] == "checkpoint":
        arch = read_pruned(spec["checkpoint"])["arch"]
        if arch is None:
            raise UserError(
                f"{spec['checkpoint']}: saved without its architecture; give the architecture as "
                "source/name with 'checkpoint'"
            )
        return model_spec_for_save(arch)
    if spec["num_classes"] is None and spec["source"] == "torchvision" and spec["pretrained"]:
        weights = torchvision_weights(spec["name"], spec["weights"])
        spec["num_classes"] = len(weights.meta["categories"])
    spec.update(pretrained=False, weights=None, checkpoint=None)
    return spec


def arch_of(model: nn.Module) -> dict[str, Any] | None:
    """The spec of ``model``'s unpruned architecture (see the module docstring), or None when the
    model was neither built by taylorprune nor is a torchvision or timm model that can be
    identified."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    built = getattr(model, SPEC_ATTRIBUTE, None)
    if isinstance(built, dict):
        try:
            spec = model_spec_for_save(built)
        except UserError:
            spec = None
        if spec is not None and _fit(_skeleton(spec), model, shapes) is not None:
            return spec
    best: tuple[int, dict[str, Any]] | None = None
    for spec, skeleton in _candidates(model):
        size = _fit(skeleton, model, shapes)
        if size is not None and (best is None or size < best[0]):
            best = (size, spec)
    return None if best is None else normalize_spec(best[1])


# -- identification ------------------------------------------------------------------------------
def _candidates(model: nn.Module) -> Iterator[tuple[dict[str, Any], nn.Module]]:
    """Specs of the builders that may have built ``model``, with its class count and input
    channels, each with its build on the meta device."""
    module = type(model).__module__
    if module.startswith("torchvision.models."):
        from torchvision import models as tvm

        for name in tvm.list_models():
            if tvm.get_model_builder(name).__module__ == module:
                yield from _sized({"source": "torchvision", "name": name}, model)
    elif module.startswith("timm."):
        cfg = getattr(model, "pretrained_cfg", None) or {}
        name = cfg.get("architecture") if isinstance(cfg, dict) else None
        if name:
            yield from _sized({"source": "timm", "name": name}, model)


def _sized(spec: dict[str, Any], model: nn.Module) -> Iterator[tuple[dict[str, Any], nn.Module]]:
    """``spec`` with the class count and input channels of ``model`` (read from the modules that
    hold them in the default build) and its meta build, if the default build is of ``model``'s
    class."""
    default = _skeleton(spec)
    if default is None or type(default) is not type(model):
        return
    own = dict(model.named_modules())
    head = _last(default, (nn.Linear, nn.Conv2d))
    stem = next(
        (n for n, m in default.named_modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3),
        None,
    )
    sized = dict(spec)
    same = True
    if head is not None and head in own and _outputs(own[head]) is not None:
        sized["num_classes"] = _outputs(own[head])
        same = sized["num_classes"] == _outputs(default.get_submodule(head))
    if stem is not None and isinstance(own.get(stem), nn.Conv2d):
        sized["in_chans"] = own[stem].in_channels
        same = same and sized["in_chans"] == 3
    skeleton = default if same else _skeleton(sized)
    if skeleton is not None:
        yield sized, skeleton


def _skeleton(spec: dict[str, Any]) -> nn.Module | None:
    """``spec`` built with every tensor on the meta device (shapes only), or None if it cannot be
    built so."""
    for place in (_meta_default_device, _parameters_on_meta):
        try:
            with place(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return build_model(spec)
        except Exception as exc:  # a builder that cannot run this way is tried the next way
            logger.debug("cannot build %s with %s: %s", spec, place.__name__, exc)
    return None


@contextmanager
def _meta_default_device() -> Iterator[None]:
    with torch.device("meta"):
        yield


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Construct on the CPU, but move each parameter and buffer to the meta device as it is
    registered, before any initialisation runs on it: for builders whose constructors compute with
    tensors (torchvision's RegNet derives its widths with tensor ops, which the meta default device
    cannot read back). nn.Module is patched only while this is active."""
    register_parameter = nn.Module.register_parameter
    register_buffer = nn.Module.register_buffer

    def parameter(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if type(param) is nn.Parameter and param.device.type != "meta":
            param = nn.Parameter(param.data.to("meta"), requires_grad=param.requires_grad)
        register_parameter(self, name, param)

    def buffer(
        self: nn.Module, name: str, tensor: torch.Tensor | None, persistent: bool = True
    ) -> None:
        if tensor is not None:
            tensor = tensor.to("meta")
        register_buffer(self, name, tensor, persistent)

    nn.Module.register_parameter = parameter  # type: ignore[method-assign]
    nn.Module.register_buffer = buffer  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
        nn.Module.register_buffer = register_buffer  # type: ignore[method-assign]


def _fit(
    skeleton: nn.Module | None, model: nn.Module, shapes: dict[str, tuple[int, ...]]
) -> int | None:
    """Number of elements of ``skeleton``'s state_dict if ``model`` could be it after pruning:
    same keys, same kernel sizes, no dimension larger than the unpruned one; else None."""
    if skeleton is None or type(skeleton) is not type(model):
        return None
    full = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    if full.keys() != shapes.keys():
        return None
    kernels = {
        f"{n}.weight" for n, m in skeleton.named_modules() if isinstance(m, nn.modules.conv._ConvNd)
    }
    for key, shape in shapes.items():
        whole = full[key]
        if len(shape) != len(whole) or any(a > b for a, b in zip(shape, whole, strict=True)):
            return None
        if key in kernels and shape[2:] != whole[2:]:
            return None
    return sum(_numel(s) for s in full.values())


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _last(model: nn.Module, kinds: tuple[type[nn.Module], ...]) -> str | None:
    found = None
    for name, module in model.named_modules():
        if isinstance(module, kinds):
            found = name
    return found


def _outputs(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    return None
