"""Reading weights files safely and loading state_dicts into models with one-line errors.

"Weights file" is any ``torch.save``/safetensors file of tensors (a state_dict, a training script's
checkpoint dict, a saved pruned model); run checkpoints for ``--resume`` are another thing
(:mod:`taylorprune.checkpoint`).
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from taylorprune.errors import UserError

logger = logging.getLogger("taylorprune")

# Keys under which training scripts commonly nest the weights (timm, Lightning-style, DeiT).
_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "module")


def read_weights_file(path: str | os.PathLike[str]) -> Any:
    """The object stored in ``path``, loaded on the CPU with ``weights_only=True`` (no code runs).

    ``.safetensors`` files are read with safetensors. Raises :class:`UserError` naming the file when
    it is missing, truncated or corrupted, or holds objects other than tensors and plain containers.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(
                f"cannot read {path}: truncated or corrupted ({_first_line(exc)})"
            ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses any pickle that would import or call code.
        if "weights_only" in str(exc) or "Unsupported" in str(exc):
            raise UserError(
                f"refusing to load {path}: it holds objects other than tensors and plain "
                "containers (only weights_only files are loaded)"
            ) from None
        raise UserError(f"cannot read {path}: corrupted ({_first_line(exc)})") from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError) as exc:
        raise UserError(
            f"cannot read {path}: truncated or corrupted ({_first_line(exc)})"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def extract_state_dict(obj: Any, path: str) -> dict[str, torch.Tensor]:
    """The tensor mapping in a loaded weights file: the object itself, or one nested under a usual
    key (``state_dict``, ``model``, ...). A ``module.`` prefix on every key (from
    DistributedDataParallel) is removed. Raises :class:`UserError` when no state_dict is found."""
    if isinstance(obj, Mapping) and obj and not _is_tensor_map(obj):
        for key in _NESTED_KEYS:
            if isinstance(obj.get(key), Mapping) and _is_tensor_map(obj[key]):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not _is_tensor_map(obj):
        raise UserError(f"{path}: no state_dict found (expected a mapping of names to tensors)")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _is_tensor_map(obj: Mapping[Any, Any]) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], path: str) -> None:
    """Raise :class:`UserError` naming the first key that is missing, unexpected or of another
    shape."""
    own = model.state_dict()
    for key, tensor in own.items():
        if key not in state:
            n = sum(k not in state for k in own)
            more = f" (and {n - 1} more)" if n > 1 else ""
            raise UserError(f"{path} does not fit the model: key {key!r} is missing{more}")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise UserError(
                f"{path} does not fit the model: {key!r} has shape {tuple(state[key].shape)} in "
                f"the file but {tuple(tensor.shape)} in the model"
            )
    extra = [k for k in state if k not in own]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise UserError(f"{path} does not fit the model: unexpected key {extra[0]!r}{more}")


def load_weights_into(model: nn.Module, obj: Any, path: str) -> None:
    """Load the state_dict in ``obj`` (read from ``path``) into ``model`` strictly."""
    state = extract_state_dict(obj, path)
    check_state_dict(model, state, path)
    model.load_state_dict(state, strict=True)
    logger.info("loaded weights from %s", path)
