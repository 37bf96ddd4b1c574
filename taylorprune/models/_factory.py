"""Model specs: validation, building and parsing from strings.

A *model spec* is a plain dict (it travels through recipes, the CLI and saved pruned models)::

    {"source": "builtin" | "torchvision" | "timm" | "checkpoint",
     "name": str, "num_classes": int | None, "in_chans": int, "pretrained": bool,
     "weights": str | None, "checkpoint": str | None, "kwargs": dict}

Each source is a function ``spec -> nn.Module`` registered in :data:`MODELS`; builtin architectures
are registered by name in :data:`BUILTIN`. ``checkpoint`` (a local state_dict for exactly the built
architecture) is applied by :func:`build_model` after the source built the model, whatever the
source. A built model carries the spec that built it (:data:`SPEC_ATTRIBUTE`), which
:func:`taylorprune.models.arch.arch_of` reads when the model is saved.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from typing import Any

from torch import nn

from taylorprune._pruned_format import is_pruned
from taylorprune._registry import Registry
from taylorprune._weights import load_weights_into, read_weights_file
from taylorprune.errors import UserError

ModelSource = Callable[[dict[str, Any]], nn.Module]

MODELS: Registry[ModelSource] = Registry("model source")
BUILTIN: Registry[Callable[..., nn.Module]] = Registry("builtin model")

_DEFAULTS: dict[str, Any] = {
    "source": "builtin",
    "name": None,
    "num_classes": None,
    "in_chans": 3,
    "pretrained": False,
    "weights": None,
    "checkpoint": None,
    "kwargs": None,
}
# The attribute on a built model holding the spec that built it (a plain dict; survives deepcopy).
SPEC_ATTRIBUTE = "_taylorprune_spec"
# Suffixes that make a CLI model string a file even when the file does not exist yet (better error).
_FILE_SUFFIXES = (".pt", ".pth", ".pth.tar", ".ckpt", ".bin", ".safetensors")


def normalize_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A complete, validated copy of ``spec`` with every key present (defaults filled in).

    Raises :class:`UserError` for an unknown key, a wrong type or a missing name.
    """
    if not isinstance(spec, dict):
        raise UserError(f"model spec must be a mapping, got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(_DEFAULTS))
    if unknown:
        raise UserError(
            f"model spec: unknown key {unknown[0]!r}; known keys: {', '.join(_DEFAULTS)}"
        )
    out = {**_DEFAULTS, **copy.deepcopy(spec)}
    out["kwargs"] = dict(out["kwargs"] or {})
    if out["in_chans"] is None:
        out["in_chans"] = 3
    for key in ("num_classes", "in_chans"):
        value = out[key]
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise UserError(f"model.{key} must be a positive integer, got {value!r}")
    if not isinstance(out["pretrained"], bool):
        raise UserError(f"model.pretrained must be true or false, got {out['pretrained']!r}")
    for key in ("source", "name", "weights", "checkpoint"):
        if out[key] is not None and not isinstance(out[key], str | os.PathLike):
            raise UserError(f"model.{key} must be a string, got {out[key]!r}")
    for key in ("weights", "checkpoint"):
        if out[key] is not None:
            out[key] = os.fspath(out[key])
    if out["source"] != "checkpoint" and not out["name"]:
        raise UserError(f"model spec: 'name' is required for source {out['source']!r}")
    if out["source"] == "checkpoint" and not out["checkpoint"]:
        raise UserError("model spec: source 'checkpoint' needs 'checkpoint: <path to file>'")
    return out


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Build the model that ``spec`` describes (random init, pretrained weights and/or a
    checkpoint).

    The model is returned in training mode on the CPU (or on the default device set by a
    ``torch.device`` context), carrying ``spec`` in :data:`SPEC_ATTRIBUTE` unless its source set a
    more precise one. Raises :class:`UserError` for an unknown source or model name (with the
    nearest name), bad kwargs, weights that cannot be found offline, and a checkpoint that is
    missing, truncated, unsafe or for another architecture.
    """
    spec = normalize_spec(spec)
    source = MODELS.get(spec["source"])
    if spec["source"] != "checkpoint" and spec["checkpoint"]:
        obj = read_weights_file(spec["checkpoint"])
        if is_pruned(obj):
            # A saved pruned model named as a checkpoint of a base architecture: it carries its
            # own widths.
            model = MODELS.get("checkpoint")(spec)
        else:
            model = source(spec)
            load_weights_into(model, obj, spec["checkpoint"])
    else:
        model = source(spec)
    if not hasattr(model, SPEC_ATTRIBUTE):
        setattr(model, SPEC_ATTRIBUTE, spec)
    return model.train()


def parse_model_string(s: str) -> dict[str, Any]:
    """Model spec from a CLI string.

    ``torchvision:resnet50``, ``timm:resnet50d``, ``builtin:resnet20`` or a bare builtin name
    (``resnet20``) name an architecture; an existing file, or a string ending in a checkpoint suffix
    (``.pt``, ``.pth``, ...), is a saved model (source ``checkpoint``). Raises :class:`UserError`
    for an empty string or an unknown source prefix.
    """
    s = s.strip()
    if not s:
        raise UserError("empty model string; expected e.g. 'resnet20' or 'torchvision:resnet50'")
    if os.path.isfile(s) or s.lower().endswith(_FILE_SUFFIXES):
        return {"source": "checkpoint", "checkpoint": s}
    source, sep, name = s.partition(":")
    if not sep:
        return {"source": "builtin", "name": s}
    MODELS.get(source)  # unknown prefix: UserError with the nearest source
    if source == "checkpoint":
        return {"source": "checkpoint", "checkpoint": name}
    if not name:
        raise UserError(f"model string {s!r} has no model name after '{source}:'")
    return {"source": source, "name": name}
