"""Run checkpoints: what ``taylorprune run --resume`` continues from (not to be confused with a
weights file, which a recipe may load as its model).

A run checkpoint records the phase it was taken in as a value (``baseline``, ``prune``,
``finetune``) with the work done in it (epochs, or pruning steps), the resolved recipe it belongs
to, the run's record so far and what the phase needs to continue (optimizer, scheduler, schedule
state). It is two files in ``OUT/checkpoints/``: the model, saved as data with
:func:`~taylorprune.serialization.save_pruned` (a pruned architecture is rebuilt without unpickling
code), and the state. ``latest.json`` names the pair and is replaced atomically after both are
written, so a run killed at any moment leaves the previous good checkpoint in place; the previous
pair is deleted once the pointer has moved on. ``baseline.model.pt`` beside them is the trained
baseline the later phases compare against.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from taylorprune._io import atomic_save, atomic_write_text
from taylorprune.errors import UserError
from taylorprune.serialization import load_pruned, save_pruned

FORMAT = "taylorprune.run_checkpoint"
VERSION = 2

Phase = Literal["baseline", "prune", "finetune"]
PHASES: tuple[Phase, ...] = ("baseline", "prune", "finetune")

FOLDER = "checkpoints"
POINTER = "latest.json"
BASELINE_FILE = "baseline.model.pt"


@dataclass
class RunCheckpoint:
    """``done`` counts what the phase finished: epochs (baseline, finetune) or pruning steps.

    ``recipe`` is the resolved recipe (plain data) of the run that wrote it; ``record`` the run's
    :class:`~taylorprune.pipeline.record.RunRecord` as plain data; ``optimizer``/``scheduler``
    their ``state_dict`` (None when the phase has none); ``extra`` what the phase adds (the
    prune phase: schedule state and the channels removed by each step). ``model`` is on the CPU.
    """

    phase: Phase
    done: int
    model: nn.Module
    recipe: dict[str, Any]
    record: dict[str, Any]
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    extra: dict[str, Any] | None = None

    @property
    def tag(self) -> str:
        return f"{self.phase}-{self.done:03d}"


def folder(out_dir: Path) -> Path:
    return Path(out_dir) / FOLDER


def write_run_checkpoint(out_dir: Path, ckpt: RunCheckpoint, arch: dict[str, Any]) -> None:
    """Save ``ckpt`` as the latest run checkpoint of ``out_dir`` (``arch``: the model's spec).

    Raises :class:`UserError` when a file cannot be written (a full disk): the previous
    checkpoint stays the latest and no partial file of this one is left behind.
    """
    where = folder(out_dir)
    model_file, state_file = f"{ckpt.tag}.model.pt", f"{ckpt.tag}.state.pt"
    pointer = where / POINTER
    previous = _read_pointer(pointer) if pointer.is_file() else None
    state = as_plain(
        {
            "format": FORMAT,
            "version": VERSION,
            "phase": ckpt.phase,
            "done": ckpt.done,
            "recipe": ckpt.recipe,
            "record": ckpt.record,
            "optimizer": ckpt.optimizer,
            "scheduler": ckpt.scheduler,
            "extra": ckpt.extra,
        }
    )
    written: list[Path] = []
    try:
        written.append(save_pruned(ckpt.model, where / model_file, arch=arch))
        written.append(atomic_save(state, where / state_file))
        atomic_write_text(
            json.dumps({"tag": ckpt.tag, "model": model_file, "state": state_file}, indent=1),
            pointer,
        )
    except BaseException:
        if previous is None or previous["tag"] != ckpt.tag:
            for path in written:
                path.unlink(missing_ok=True)
        raise
    if previous and previous["tag"] != ckpt.tag:
        for key in ("model", "state"):
            (where / previous[key]).unlink(missing_ok=True)


def as_plain(value: Any, where: str = "state") -> Any:
    """``value`` with only what ``torch.load(weights_only=True)`` reads back: tensors, ``None``,
    exact ``bool``/``int``/``float``/``str`` and lists, tuples and dicts of them. A subclass of a
    built-in (torch's ``TorchVersion``, a str enum) becomes the built-in, a numpy scalar or array
    a Python number or a tensor. Anything else raises ``TypeError`` naming its key path
    (``where``): a checkpoint that could not be read back must fail when written, not on resume.
    """
    if value is None or type(value) in (bool, int, float, str) or torch.is_tensor(value):
        return value
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, dict):
        return {as_plain(k, where): as_plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        items = [as_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise TypeError(f"run checkpoint: {where} holds a {type(value).__qualname__}, not plain data")


def read_run_checkpoint(out_dir: Path) -> RunCheckpoint | None:
    """The latest run checkpoint of ``out_dir``, or None if it has none.

    Raises :class:`UserError` for a damaged or foreign checkpoint, or one written by a taylorprune
    whose checkpoints this one cannot continue."""
    where = folder(out_dir)
    pointer = where / POINTER
    if not pointer.is_file():
        return None
    ref = _read_pointer(pointer)
    model = load_pruned(where / ref["model"])
    path = where / ref["state"]
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{path}: run checkpoint unreadable: {first[:200]}") from None
    if not isinstance(state, dict) or state.get("format") not in (FORMAT, "taylorprune.checkpoint"):
        raise UserError(f"{path}: not a taylorprune run checkpoint")
    if state.get("version") != VERSION or state.get("phase") not in PHASES:
        raise UserError(
            f"{path}: a run checkpoint of an older taylorprune, which this one cannot continue; "
            "start the run again with --overwrite"
        )
    return RunCheckpoint(
        phase=state["phase"],
        done=int(state["done"]),
        model=model,
        recipe=state["recipe"],
        record=state["record"],
        optimizer=state["optimizer"],
        scheduler=state["scheduler"],
        extra=state["extra"],
    )


def save_baseline(out_dir: Path, model: nn.Module, arch: dict[str, Any]) -> None:
    """Keep the trained baseline for later phases (and for resumed runs)."""
    save_pruned(model, folder(out_dir) / BASELINE_FILE, arch=arch)


def load_baseline(out_dir: Path) -> nn.Module:
    return load_pruned(folder(out_dir) / BASELINE_FILE)


def retire_run_checkpoints(out_dir: Path) -> None:
    """Delete every run checkpoint of ``out_dir``, the pointer first: a run killed meanwhile has
    nothing left that ``--resume`` could mistake for its own."""
    where = folder(out_dir)
    with contextlib.suppress(FileNotFoundError):
        (where / POINTER).unlink()
    shutil.rmtree(where, ignore_errors=True)


def _read_pointer(pointer: Path) -> dict[str, Any]:
    try:
        ref = json.loads(pointer.read_text())
        if not all(isinstance(ref.get(k), str) for k in ("tag", "model", "state")):
            raise ValueError("missing fields")
        return ref
    except (ValueError, OSError) as exc:
        raise UserError(f"{pointer}: damaged checkpoint pointer ({exc})") from None
