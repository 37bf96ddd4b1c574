"""Run checkpoints: what ``taylorprune run --resume`` continues from.

A checkpoint is two files in ``OUT/checkpoints/``: the model, saved as data with
:func:`~taylorprune.serialization.save_pruned` (so a pruned architecture is rebuilt without
unpickling code), and the training state (optimizer, scheduler, partial report).
``OUT/checkpoints/latest.json`` names the pair and is replaced atomically after both are written,
so a run killed at any moment leaves the previous good checkpoint in place. Older pairs are deleted
once the pointer has moved on.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from taylorprune._io import atomic_save, atomic_write_text
from taylorprune.errors import UserError
from taylorprune.serialization import load_pruned, save_pruned

FORMAT = "taylorprune.checkpoint"


def _dir(out_dir: Path) -> Path:
    return Path(out_dir) / "checkpoints"


def write_checkpoint(
    out_dir: Path, tag: str, model: nn.Module, arch: dict[str, Any], state: dict[str, Any]
) -> None:
    """Save ``model`` and ``state`` (plain data, tensors) as the latest checkpoint ``tag``."""
    folder = _dir(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    model_file, state_file = f"{tag}.model.pt", f"{tag}.state.pt"
    save_pruned(model, folder / model_file, arch=arch)
    atomic_save({"format": FORMAT, **state}, folder / state_file)
    pointer = folder / "latest.json"
    previous = _read_pointer(pointer) if pointer.is_file() else None
    atomic_write_text(
        json.dumps({"tag": tag, "model": model_file, "state": state_file}, indent=1), pointer
    )
    if previous and previous.get("tag") != tag:
        for key in ("model", "state"):
            (folder / previous[key]).unlink(missing_ok=True)


def read_checkpoint(out_dir: Path) -> tuple[str, nn.Module, dict[str, Any]] | None:
    """The latest checkpoint of a run as (tag, model on CPU, state), or None if it has none."""
    pointer = _dir(out_dir) / "latest.json"
    if not pointer.is_file():
        return None
    ref = _read_pointer(pointer)
    folder = _dir(out_dir)
    model = load_pruned(folder / ref["model"])
    path = folder / ref["state"]
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{path}: checkpoint unreadable: {first[:200]}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not a taylorprune checkpoint")
    return ref["tag"], model, state


def _read_pointer(pointer: Path) -> dict[str, Any]:
    try:
        ref = json.loads(pointer.read_text())
        if not all(isinstance(ref.get(k), str) for k in ("tag", "model", "state")):
            raise ValueError("missing fields")
        return ref
    except (ValueError, OSError) as exc:
        raise UserError(f"{pointer}: damaged checkpoint pointer ({exc})") from None
