"""The file format of a saved pruned model, and putting a model back into the saved shape.

A saved file is a dict written with ``torch.save`` and read with ``torch.load(weights_only=True)``
(tensors and plain containers only, so no code runs)::

    {"format": "taylorprune.pruned", "version": 2,
     "arch": <model spec of the unpruned architecture> or None,
     "model_class": "package.module.ClassName",
     "modules": {module name: {"type": class name, "attributes": {name: plain value}}},
     "state_dict": the model's state_dict (an OrderedDict keeping its per-module versions),
     "meta": {...}}

``attributes`` are every public attribute of a module that holds plain data (widths such as
``out_channels`` or a ViT's ``hidden_dim``, strides, flags), as torch-pruning's own
``state_dict``/``load_state_dict`` pair keeps them: a pruned model of any architecture is
rebuilt from an unpruned instance by setting these attributes, giving every tensor its saved shape
and loading the state_dict. Version 1 files kept only the widths of convolution, linear and norm
layers under ``"widths"``; they are read the same way.

This module knows nothing of how architectures are built (``taylorprune.models`` does), so both
the model sources and :mod:`taylorprune.serialization` can use it.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from taylorprune._consistency import check_layer_widths, check_width_table
from taylorprune._weights import read_weights_file
from taylorprune.errors import UserError

FORMAT = "taylorprune.pruned"
VERSION = 2
_READABLE = (1, 2)

# Instance attributes that describe a run, not an architecture.
_SKIPPED_ATTRIBUTES = frozenset({"training"})


def is_pruned(obj: object) -> bool:
    """Whether a loaded object is a saved pruned model (any version)."""
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def payload(model: nn.Module, arch: dict[str, Any] | None, meta: dict[str, Any]) -> dict[str, Any]:
    """What :func:`taylorprune.serialization.save_pruned` writes for ``model`` (tensors copied to
    the CPU; the state_dict keeps its ``_metadata``, which some modules' loaders need)."""
    state = model.state_dict()
    saved: OrderedDict[str, torch.Tensor] = OrderedDict(
        (k, v.detach().cpu().clone()) for k, v in state.items()
    )
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        saved._metadata = OrderedDict((k, dict(v)) for k, v in metadata.items())  # type: ignore[attr-defined]
    cls = type(model)
    return {
        "format": FORMAT,
        "version": VERSION,
        "arch": None if arch is None else dict(arch),
        "model_class": f"{cls.__module__}.{cls.__qualname__}",
        "modules": {
            name: {"type": type(m).__name__, "attributes": _plain_attributes(m)}
            for name, m in model.named_modules()
        },
        "state_dict": saved,
        "meta": dict(meta),
    }


def read_pruned(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated payload of a saved pruned model (version 1 files converted to the version 2
    layout). Raises :class:`UserError` for a missing, truncated, unsafe or foreign file."""
    obj = read_weights_file(path)
    if not is_pruned(obj):
        raise UserError(
            f"{path}: not a saved pruned model (a plain state_dict needs its architecture: give "
            "the model's source and name together with the file)"
        )
    version = obj.get("version")
    if version not in _READABLE:
        raise UserError(
            f"{path}: pruned-model format version {version!r}; this taylorprune reads versions "
            f"{', '.join(map(str, _READABLE))}"
        )
    if version == 1 and isinstance(obj.get("widths"), dict):
        obj["modules"] = {
            name: {"type": None, "attributes": widths} for name, widths in obj["widths"].items()
        }
        obj.setdefault("model_class", None)
    for key in ("modules", "state_dict", "meta"):
        if not isinstance(obj.get(key), dict):
            raise UserError(f"{path}: malformed pruned model: {key!r} missing or not a mapping")
    if obj.get("arch") is not None and not isinstance(obj["arch"], dict):
        raise UserError(f"{path}: malformed pruned model: 'arch' is not a mapping")
    return obj


def restore(
    model: nn.Module,
    saved: Mapping[str, Any],
    path: str | os.PathLike[str],
    described: str | None = None,
) -> None:
    """Give ``model`` (an instance of the saved model's unpruned architecture) the saved module
    attributes, tensor shapes and values, in place. ``described`` names the model in messages
    (default: its class).

    Raises :class:`UserError` naming ``path`` when the model does not match the file (a module
    missing or of another type, a key or shape that differs) and for any other failure of the load.
    """
    where = f"{path}: does not match {described or 'the model ' + type(model).__name__}"
    try:
        _restore(model, saved, path, where)
    except UserError:
        raise
    except Exception as exc:  # a module's own loader may raise anything; the file is to blame
        detail = " ".join(str(exc).split())[:300]
        raise UserError(f"{where}: {type(exc).__name__}: {detail}") from None


def rebuild(
    saved: Mapping[str, Any],
    path: str | os.PathLike[str],
    build: Callable[[dict[str, Any]], nn.Module],
) -> nn.Module:
    """The saved model on the CPU: its unpruned architecture built with ``build`` (the model
    factory, passed in because the factory imports this module) from the spec in the file, then
    given the saved widths and weights by :func:`restore`. Raises :class:`UserError` naming
    ``path`` when the file holds no architecture (a model of a user-defined class, which only
    ``load_pruned(path, model=...)`` can rebuild) and for every failure of :func:`restore`."""
    arch = saved["arch"]
    if arch is None:
        cls = saved.get("model_class") or "model"
        raise UserError(
            f"{path}: saved without its architecture (a {cls}); in Python, load it with "
            f"load_pruned(path, model=<an unpruned {cls.rpartition('.')[2]}>)"
        )
    model = build(arch)
    restore(model, saved, path, f"architecture {arch.get('name') or arch.get('source')!r}")
    return model


def _restore(
    model: nn.Module, saved: Mapping[str, Any], path: str | os.PathLike[str], where: str
) -> None:
    modules = dict(model.named_modules())
    for name, entry in saved["modules"].items():
        module = modules.get(name)
        if module is None:
            raise UserError(f"{where}: it has no module {name!r}")
        if not isinstance(entry, dict) or not isinstance(entry.get("attributes"), dict):
            raise UserError(f"{path}: malformed pruned model: module {name!r}")
    check_width_table({n: e["attributes"] for n, e in saved["modules"].items()}, str(path))
    for name, entry in saved["modules"].items():
        module = modules[name]
        kind = entry.get("type")
        if kind is not None and kind != type(module).__name__:
            raise UserError(f"{where}: {name!r} is a {kind} in the file, a {type(module).__name__}")
        _set_attributes(module, entry["attributes"])
    state = saved["state_dict"]
    _fit_tensors(model, state, where)
    model.load_state_dict(state, strict=True)
    check_layer_widths(model, str(path))


# -- internals ------------------------------------------------------------------------------------
def _is_plain(value: Any) -> bool:
    """Exact built-in types only: a subclass (an enum deriving from str, a namedtuple) is pickled
    as its class, which ``weights_only`` refuses to load."""
    if value is None or type(value) in (bool, int, float, str):
        return True
    if type(value) in (list, tuple):
        return all(_is_plain(v) for v in value)
    return False


def _plain_attributes(module: nn.Module) -> dict[str, Any]:
    """Public instance attributes holding plain data (what ``weights_only`` reads back)."""
    return {
        k: v
        for k, v in vars(module).items()
        if not k.startswith("_") and k not in _SKIPPED_ATTRIBUTES and _is_plain(v)
    }


def _set_attributes(module: nn.Module, attributes: Mapping[str, Any]) -> None:
    """Set the saved plain attributes that ``module`` has; others (an attribute another torch
    version added or dropped) are left alone."""
    own = vars(module)
    for key, value in attributes.items():
        if key.startswith("_") or key in _SKIPPED_ATTRIBUTES or key not in own:
            continue
        if not _is_plain(value) or not _is_plain(own[key]):
            continue
        if isinstance(own[key], tuple) and isinstance(value, list):
            value = tuple(value)
        setattr(module, key, value)


def _fit_tensors(model: nn.Module, state: Mapping[str, Any], where: str) -> None:
    """Give every parameter and buffer the shape it has in ``state`` (values come with the load)."""
    for full, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        saved = state.get(full)
        if saved is None or not torch.is_tensor(saved) or saved.shape == tensor.shape:
            continue
        if saved.dim() != tensor.dim():
            raise UserError(
                f"{where}: {full} has {saved.dim()} dimensions in the file, {tensor.dim()} in the "
                "model"
            )
        owner_name, _, attr = full.rpartition(".")
        owner = model.get_submodule(owner_name)
        fresh = torch.empty(saved.shape, dtype=tensor.dtype, device=tensor.device)
        if attr in owner._parameters:
            owner._parameters[attr] = nn.Parameter(fresh, requires_grad=tensor.requires_grad)
        else:
            owner._buffers[attr] = fresh
