"""Pruned models as data: what rebuilds the architecture, per-module attributes, a state_dict.

:func:`save_pruned` writes a file in the format of :mod:`taylorprune._pruned_format`; loading
never unpickles code (``torch.load(weights_only=True)`` accepts only tensors and plain
containers). :func:`load_pruned` rebuilds the model either from the architecture spec stored in
the file (models built by taylorprune, torchvision and timm models) or from an unpruned instance
that the caller passes (any architecture, as torch-pruning's ``state_dict``/``load_state_dict``
pair does): each module gets its saved attributes (widths), each tensor its saved shape, then the
state_dict is loaded strictly.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from taylorprune._io import atomic_save
from taylorprune._pruned_format import payload, read_pruned, rebuild, restore
from taylorprune.errors import UserError
from taylorprune.models import arch_of, build_model

__all__ = ["export_onnx", "load_pruned", "read_pruned", "save_pruned"]

logger = logging.getLogger("taylorprune")


def save_pruned(
    model: nn.Module, path: str | os.PathLike, *, arch: dict | None = None, **meta: Any
) -> Path:
    """Write ``model`` (pruned or not) so that :func:`load_pruned` rebuilds it in a fresh process.

    ``arch`` is the model spec of the *unpruned* architecture (``build_model(arch)`` rebuilds it
    without weights). Without it, the architecture is found by
    :func:`~taylorprune.models.arch_of`: models built by taylorprune and torchvision/timm models
    are recognised; for any other model the file holds no architecture and is loaded with
    ``load_pruned(path, model=<unpruned instance>)``. ``meta`` holds plain data (str, numbers,
    bools, None, lists, dicts, tensors) such as the recipe name or the criterion. The file is
    written atomically. Returns the path. Raises :class:`UserError` if ``meta`` holds other objects
    or the path cannot be written.
    """
    path = Path(path)
    if arch is not None and not isinstance(arch, dict):
        raise UserError(f"save_pruned: arch must be a model spec dict, got {type(arch).__name__}")
    for key, value in meta.items():
        _check_plain(value, f"meta.{key}")
    if arch is None:
        arch = arch_of(model)
        if arch is None:
            logger.info(
                "%s: no known architecture for %s; load it with load_pruned(path, model=...)",
                path,
                type(model).__name__,
            )
    else:
        _check_plain(arch, "arch")
    data = payload(model, arch, meta)
    atomic_save(data, path)  # a failed write is one UserError naming the file
    return path


def load_pruned(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a model saved by :func:`save_pruned`; returned in eval mode.

    With ``model`` (a fresh, unpruned instance of the saved model's architecture, any class) that
    instance is given the saved widths and weights in place and returned; without it the
    architecture stored in the file is built on the CPU. Raises :class:`UserError` naming the file
    for every failure: missing, truncated or corrupted, holding pickled code, saved without an
    architecture and no ``model`` given, or not matching the architecture (a module missing or of
    another type, a key or shape that differs, a module that refuses its saved state).
    """
    saved = read_pruned(path)
    if model is None:
        return rebuild(saved, path, build_model).eval()
    restore(model, saved, path)
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
def _check_plain(value: Any, where: str) -> None:
    """Only what ``torch.load(weights_only=True)`` reads back: built-in types exactly (a str enum
    or a namedtuple is pickled as its class)."""
    if value is None or type(value) in (str, int, float, bool) or torch.is_tensor(value):
        return
    if type(value) in (list, tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if type(value) in (dict, OrderedDict):
        for k, v in value.items():
            if type(k) not in (str, int):
                raise UserError(f"save_pruned: {where} has a key of type {type(k).__name__}")
            _check_plain(v, f"{where}.{k}")
        return
    if isinstance(value, os.PathLike):
        raise UserError(f"save_pruned: {where} is a path object; pass str(path)")
    raise UserError(
        f"save_pruned: {where} is a {type(value).__name__}; only plain data and tensors are saved"
    )
