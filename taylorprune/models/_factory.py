"""Model specs: validation, building, parsing from strings, and the architecture-only form to save.

A *model spec* is a plain dict (it travels through recipes, the CLI and saved pruned models)::

    {"source": "builtin" | "torchvision" | "timm" | "checkpoint",
     "name": str, "num_classes": int | None, "in_chans": int, "pretrained": bool,
     "weights": str | None, "checkpoint": str | None, "kwargs": dict}

Each source is a function ``spec -> nn.Module`` registered in :data:`MODELS`; builtin architectures
are registered by name in :data:`BUILTIN`. ``checkpoint`` (a local state_dict for exactly the built
architecture) is applied by :func:`build_model` after the source built the model, whatever the
source.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from typing import Any

from torch import nn

from taylorprune._registry import Registry
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

    The model is returned in training mode on the CPU. Raises :class:`UserError` for an unknown
    source or model name (with the nearest name), bad kwargs, weights that cannot be found offline,
    and a checkpoint that is missing, truncated, unsafe or for another architecture.
    """
    from taylorprune.models._state import load_checkpoint_into, read_checkpoint

    spec = normalize_spec(spec)
    source = MODELS.get(spec["source"])
    if spec["source"] != "checkpoint" and spec["checkpoint"]:
        # A saved pruned model named as a checkpoint of a base architecture: it carries its own
        # widths.
        obj = read_checkpoint(spec["checkpoint"])
        if _is_pruned(obj):
            return MODELS.get("checkpoint")(spec)
        model = source(spec)
        load_checkpoint_into(model, obj, spec["checkpoint"])
    else:
        model = source(spec)
    return model.train()


def _is_pruned(obj: object) -> bool:
    return isinstance(obj, dict) and obj.get("format") == "taylorprune.pruned"


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


def model_spec_for_save(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec that rebuilds ``spec``'s architecture without any weights.

    ``pretrained`` False and no ``weights``/``checkpoint``; the class count and input channels are
    kept (the torchvision source needs the class count made explicit: a pretrained model without one
    has the weights' classes). For a saved pruned model (source ``checkpoint``) this is the base
    architecture stored in the file.
    """
    spec = normalize_spec(spec)
    if spec["source"] == "checkpoint":
        from taylorprune.models._state import read_checkpoint

        obj = read_checkpoint(spec["checkpoint"])
        if not _is_pruned(obj) or not isinstance(obj.get("arch"), dict):
            raise UserError(
                f"{spec['checkpoint']}: not a saved pruned model (no 'arch'); "
                "give its architecture as source/name with 'checkpoint'"
            )
        return model_spec_for_save(obj["arch"])
    if spec["num_classes"] is None and spec["source"] == "torchvision" and spec["pretrained"]:
        from taylorprune.models.sources import torchvision_weights

        weights = torchvision_weights(spec["name"], spec["weights"])
        spec["num_classes"] = len(weights.meta["categories"])
    spec.update(pretrained=False, weights=None, checkpoint=None)
    return spec
