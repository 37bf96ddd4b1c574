"""The cache of trained baselines.

A recipe whose model has no trained weights (a builtin architecture, say) trains its baseline with
``baseline.train``. The result is cached under ``$TAYLORPRUNE_CACHE`` (default
``~/.cache/taylorprune``), keyed by a hash of everything that determines it (model spec, data
settings, training settings, seed), so reruns of a recipe skip straight to pruning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from taylorprune._io import atomic_save
from taylorprune.recipe import TrainConfig

log = logging.getLogger("taylorprune")

_FORMAT = "taylorprune.baseline"


def cache_path(
    spec: dict[str, Any], *, name: str, data: dict[str, Any], train: TrainConfig, seed: int
) -> Path:
    """Where the baseline of model ``spec`` trained with ``train`` on ``data`` (a recipe's data
    section as plain data) from ``seed`` is cached; ``name`` (the recipe's) prefixes the file."""
    payload = {
        "format": 1,
        "model": spec,
        "data": _key_data(data),
        "train": _key_train(train),
        "seed": seed,
    }
    key = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    root = os.environ.get("TAYLORPRUNE_CACHE") or Path.home() / ".cache" / "taylorprune"
    return Path(root) / "baselines" / f"{name}-{key[:16]}.pt"


def _key_data(data: dict[str, Any]) -> dict[str, Any]:
    """The data section as the key hashes it: ``holdout`` and its seed (added after the key's
    format was fixed) only when a holdout is set, so that baselines cached before they existed
    stay valid."""
    if data.get("holdout") is not None:
        return data
    return {k: v for k, v in data.items() if k not in ("holdout", "holdout_seed")}


def _key_train(train: TrainConfig) -> dict[str, Any]:
    """The training settings as the key hashes them: ``distill`` (added later) only when set."""
    out = train.model_dump(mode="json")
    if out.get("distill") is None:
        out.pop("distill", None)
    return out


def load_cached(model: nn.Module, path: Path) -> bool:
    """Load the cached baseline at ``path`` into ``model``; False when there is none usable."""
    if not path.is_file():
        return False
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("format") != _FORMAT:
            raise ValueError("not a baseline cache entry")
        model.load_state_dict(blob["state_dict"])
    except Exception as exc:  # a damaged cache entry is retrained, never fatal
        log.warning("baseline cache %s unreadable (%s); training again", path, exc)
        return False
    log.info("baseline: loaded from cache %s", path)
    return True


def store(model: nn.Module, path: Path) -> None:
    """Cache the trained baseline ``model`` at ``path`` (atomically)."""
    atomic_save({"format": _FORMAT, "state_dict": model.state_dict()}, path)
    log.info("baseline: cached at %s", path)
