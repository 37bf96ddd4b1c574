"""The baseline model of a run: pretrained or loaded as given, or trained once and cached.

A recipe whose model has no trained weights (a builtin architecture, say) trains its baseline with
``baseline.train``. The result is cached under ``$TAYLORPRUNE_CACHE`` (default
``~/.cache/taylorprune``), keyed by a hash of everything that determines it (model spec, data settings,
training settings, seed), so reruns of a recipe skip straight to pruning.
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
from taylorprune.data import DataBundle
from taylorprune.recipe import Recipe
from taylorprune.train import fit, make_loss

log = logging.getLogger("taylorprune")

_FORMAT = "taylorprune.baseline"


def cache_dir() -> Path:
    root = os.environ.get("TAYLORPRUNE_CACHE") or Path.home() / ".cache" / "taylorprune"
    return Path(root) / "baselines"


def cache_key(spec: dict[str, Any], recipe: Recipe) -> str:
    """A short hash of everything that determines the trained baseline."""
    assert recipe.baseline.train is not None
    payload = {
        "format": 1,
        "model": spec,
        "data": recipe.data.model_dump(mode="json"),
        "train": recipe.baseline.train.model_dump(mode="json"),
        "seed": recipe.seed,
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def load_or_train_baseline(
    model: nn.Module,
    spec: dict[str, Any],
    recipe: Recipe,
    data: DataBundle,
    *,
    device: torch.device,
    progress: bool = True,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """The baseline: ``model`` as built when no training is asked for, else trained (or from cache).

    Returns the model and the metrics rows of its training (empty when it came from the cache).
    """
    train_cfg = recipe.baseline.train
    if train_cfg is None:
        return model, []
    path = cache_dir() / f"{recipe.name}-{cache_key(spec, recipe)}.pt"
    if recipe.baseline.cache and path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if blob.get("format") == _FORMAT:
                model.load_state_dict(blob["state_dict"])
                log.info("baseline: loaded from cache %s", path)
                return model, []
        except Exception as exc:  # a damaged cache entry is retrained, never fatal
            log.warning("baseline cache %s unreadable (%s); training again", path, exc)
    log.info("baseline: training %s for %d epochs", spec["name"], train_cfg.epochs)
    model.to(device)
    rows = fit(
        model,
        data.train,
        data.val,
        train_cfg,
        device=device,
        loss_fn=make_loss(train_cfg),
        progress=progress,
    )
    for row in rows:
        row.setdefault("phase", "baseline")
    model.cpu()
    if recipe.baseline.cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save({"format": _FORMAT, "state_dict": model.state_dict()}, path)
        log.info("baseline: cached at %s", path)
    return model, rows
