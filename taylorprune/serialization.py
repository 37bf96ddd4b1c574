"""Pruned models as data: base architecture spec + per-module widths + a plain state_dict.

A saved file is a dict ``{"format": "taylorprune.pruned", "version": 1, "arch": <model spec>,
"widths": {module name: {attribute: value}}, "state_dict": {...}, "meta": {...}}`` written with
``torch.save``. Loading never unpickles code: ``torch.load(weights_only=True)`` accepts only tensors
and plain containers, the architecture is rebuilt with :func:`taylorprune.models.build_model`, each
listed module is resized to its saved widths, and the state_dict is loaded strictly.
"""

from __future__ import annotations

import logging
import os
import pickle
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from taylorprune._io import atomic_save
from taylorprune.errors import UserError

logger = logging.getLogger("taylorprune")

FORMAT = "taylorprune.pruned"
VERSION = 1

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def module_widths(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Width attributes of every conv, linear and norm module (what pruning changes)."""
    out: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        if isinstance(m, _CONVS):
            w = {"in_channels": m.in_channels, "out_channels": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.Linear):
            w = {"in_features": m.in_features, "out_features": m.out_features}
        elif isinstance(m, _BNS):
            w = {"num_features": m.num_features}
        elif isinstance(m, nn.GroupNorm):
            w = {"num_groups": m.num_groups, "num_channels": m.num_channels}
        elif isinstance(m, nn.LayerNorm):
            w = {"normalized_shape": list(m.normalized_shape)}
        else:
            continue
        out[name] = w
    return out


def save_pruned(model: nn.Module, path: str | os.PathLike, *, arch: dict, **meta: Any) -> Path:
    """Write ``model`` (pruned or not) so that :func:`load_pruned` rebuilds it in a fresh process.

    ``arch`` is the model spec of the *unpruned* architecture (``build_model(arch)`` must rebuild
    it, without weights). ``meta`` holds plain data (str, numbers, bools, None, lists, dicts,
    tensors) such as the recipe name or the criterion. The file is written atomically. Returns the
    path. Raises :class:`UserError` if ``meta`` holds other objects or the path cannot be written.
    """
    path = Path(path)
    if not isinstance(arch, dict):
        raise UserError(f"save_pruned: arch must be a model spec dict, got {type(arch).__name__}")
    for key, value in meta.items():
        _check_plain(value, f"meta.{key}")
    _check_plain(arch, "arch")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "arch": dict(arch),
        "widths": module_widths(model),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "meta": dict(meta),
    }
    return atomic_save(payload, path)


def read_pruned(path: str | os.PathLike) -> dict[str, Any]:
    """The validated payload of a saved pruned model (``arch``, ``widths``, ``state_dict``,
    ``meta``), loaded with ``weights_only=True``. Raises :class:`UserError` for a missing,
    truncated, unsafe or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{path}: refused to load: the file holds Python objects, not only tensors and plain "
            f"data, and unpickling them could run code ({first[:160]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{path}: not a readable PyTorch file (truncated or corrupted?): {first}"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise UserError(f"{path}: not a saved pruned model (format is not {FORMAT!r})")
    if obj.get("version") != VERSION:
        raise UserError(
            f"{path}: pruned-model format version {obj.get('version')!r}; this taylorprune reads "
            f"version {VERSION}"
        )
    for key, kind in (("arch", dict), ("widths", dict), ("state_dict", dict), ("meta", dict)):
        if not isinstance(obj.get(key), kind):
            raise UserError(f"{path}: malformed pruned model: {key!r} missing or not a mapping")
    return obj


def load_pruned(path: str | os.PathLike) -> nn.Module:
    """Rebuild a model saved by :func:`save_pruned`; returned on the CPU in eval mode.

    Raises :class:`UserError` when the file is missing, truncated or corrupted, holds pickled code,
    or does not match its architecture (a module missing or of another type, a key or shape that
    differs).
    """
    from taylorprune.models import build_model

    obj = read_pruned(path)
    model = build_model(obj["arch"])
    name = obj["arch"].get("name") or obj["arch"].get("source")
    for module_name, widths in obj["widths"].items():
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            raise UserError(
                f"{path}: does not match architecture {name!r}: no module {module_name!r}"
            ) from None
        _resize(module, widths, f"{path}: module {module_name!r}")
    _fit_tensors(model, obj["state_dict"], f"{path}: does not match architecture {name!r}")
    try:
        model.load_state_dict(obj["state_dict"], strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise UserError(f"{path}: does not match architecture {name!r}: {detail}") from None
    return model.eval()


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    opset: int = 17,
) -> Path:
    """Export ``model`` in eval mode to ONNX with a dynamic batch dimension; returns the path.

    Uses the TorchScript-based exporter (no ``onnxscript`` dependency). The model's mode is
    restored. Raises :class:`UserError` if the model cannot be exported.
    """
    path = Path(path)
    inputs = (example_inputs,) if torch.is_tensor(example_inputs) else tuple(example_inputs)
    names = [f"input{i}" if i else "input" for i in range(len(inputs))]
    axes = {n: {0: "batch"} for n in names}
    axes["output"] = {0: "batch"}
    was_training = model.training
    model.eval()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # The TorchScript exporter announces its own deprecation; we pick it on purpose.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(
                model,
                inputs,
                str(path),
                input_names=names,
                output_names=["output"],
                dynamic_axes=axes,
                opset_version=opset,
                dynamo=False,
            )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: ONNX export failed: {type(exc).__name__}: {first}") from exc
    finally:
        model.train(was_training)
    return path


# -- internals ------------------------------------------------------------------------------------
_ATTRS: dict[tuple[type[nn.Module], ...], tuple[str, ...]] = {
    _CONVS: ("in_channels", "out_channels", "groups"),
    (nn.Linear,): ("in_features", "out_features"),
    _BNS: ("num_features",),
    (nn.GroupNorm,): ("num_groups", "num_channels"),
    (nn.LayerNorm,): ("normalized_shape",),
}


def _resize(module: nn.Module, widths: dict[str, Any], where: str) -> None:
    """Set ``module``'s width attributes; its tensors are resized later from the state_dict."""
    attrs = next((a for types, a in _ATTRS.items() if isinstance(module, types)), None)
    if attrs is None:
        raise UserError(f"{where} is a {type(module).__name__}, which saved widths cannot describe")
    if not isinstance(widths, dict) or set(widths) != set(attrs):
        raise UserError(f"{where} is a {type(module).__name__}; saved widths {sorted(widths)}")
    for attr in attrs:
        value = widths[attr]
        setattr(module, attr, tuple(value) if attr == "normalized_shape" else int(value))


def _fit_tensors(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
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


def _check_plain(value: Any, where: str) -> None:
    """Only what ``torch.load(weights_only=True)`` reads back."""
    if value is None or isinstance(value, str | int | float | bool) or torch.is_tensor(value):
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str | int):
                raise UserError(f"save_pruned: {where} has a key of type {type(k).__name__}")
            _check_plain(v, f"{where}.{k}")
        return
    if isinstance(value, os.PathLike):
        raise UserError(f"save_pruned: {where} is a path object; pass str(path)")
    raise UserError(
        f"save_pruned: {where} is a {type(value).__name__}; only plain data and tensors are saved"
    )
