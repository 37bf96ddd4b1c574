"""Shared pieces of the benchmark tools (bench_quality, classic_mlp, bench_cost, oracle_study).

Everything here is a thin client of the library: the Fashion-MNIST ResNet-20 baseline comes from
the shipped recipe through the same cache the ``taylorprune run`` command uses (so the recipe run in
``bench_cost`` and the studies share one trained baseline), and results are written one JSON file
per run so that every study can be stopped and resumed.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from taylorprune._io import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "fashion_mnist_resnet20.yaml"
#: The recipe whose baseline the criterion studies (bench_quality, oracle_study) start from: the
#: same network and data trained to convergence (12 epochs instead of 2).
STUDY_RECIPE = REPO / "recipes" / "fashion_mnist_resnet20_converged.yaml"
#: The baseline cache of the studies: inside the checkout (gitignored), shared with bench_cost's
#: run of the recipe, which is pointed at the same folder.
CACHE = REPO / ".cache"
#: Where :func:`recipe_checkpoints` keeps the study baseline's mid and final states.
STUDY_CHECKPOINTS = CACHE / "oracle-converged"
#: The model of the recipe, as a model spec (``build_model``, ``cache_path``).
FASHION_RESNET20: dict[str, Any] = {
    "source": "builtin",
    "name": "resnet20",
    "num_classes": 10,
    "in_chans": 1,
    "pretrained": False,
    "weights": None,
    "checkpoint": None,
    "kwargs": {},
}


def start(args: Any) -> None:
    """What every study does first: log lines with times, the thread count, and in ``--smoke``
    mode at most 2 scoring (and BN re-estimation) minibatches."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    if args.smoke:
        for name in ("score_batches", "recal_batches"):
            if hasattr(args, name):
                setattr(args, name, min(getattr(args, name), 2))


def use_repo_cache() -> None:
    """Point taylorprune's baseline cache at ``<repo>/.cache`` unless the caller chose another."""
    os.environ.setdefault("TAYLORPRUNE_CACHE", str(CACHE))


def machine() -> dict[str, Any]:
    """Where a measurement was taken: device, threads, versions."""
    from importlib.metadata import version

    return {
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torch_pruning": version("torch-pruning"),
        "python": platform.python_version(),
        "date": _dt.date.today().isoformat(),
    }


# -- results on disk -------------------------------------------------------------------------------
def write_json(path: Path, obj: Any) -> None:
    """Write atomically (a crash never leaves half a file that a resume would trust)."""
    atomic_write_text(json.dumps(obj, indent=1, sort_keys=True, default=float) + "\n", path)


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def runs_in(folder: Path) -> list[dict[str, Any]]:
    """Every per-run JSON record in ``folder/runs``."""
    out = []
    for p in sorted((folder / "runs").glob("*.json")):
        r = read_json(p)
        if r is not None:
            out.append(r)
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    vals = [float(v) for v in values]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


# -- data and models -------------------------------------------------------------------------------
def first_batches(loader: Iterable, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` minibatches of ``loader``, materialised so every method scores the same."""
    out = []
    for i, (x, y) in enumerate(loader):
        if i >= n:
            break
        out.append((x, y))
    return out


def _recipe_baseline_path(recipe: Any) -> Path:
    """Where ``taylorprune run`` caches the trained baseline of ``recipe`` (the shipped one)."""
    from taylorprune.baseline_cache import cache_path

    train = recipe.baseline.train
    assert train is not None
    data = recipe.data.model_dump(mode="json")
    return cache_path(FASHION_RESNET20, name=recipe.name, data=data, train=train, seed=recipe.seed)


def recipe_checkpoints(folder: Path, recipe_path: Path = STUDY_RECIPE) -> dict[str, Path]:
    """A recipe's baseline training, run once: ``mid`` after half of its epochs, ``final`` at
    the end.

    Training is the library's :func:`~taylorprune.train.fit` with the recipe's data and
    ``baseline.train`` settings (for :data:`STUDY_RECIPE`: 12 epochs of SGD one-cycle, batch 128,
    augmentation, seed 0). Both states are cached in ``folder``; the final one also goes into
    taylorprune's baseline cache for that recipe when the cache has none, so that ``taylorprune
    run`` of the recipe and the studies start from the same network.
    """
    from taylorprune._io import atomic_save
    from taylorprune.baseline_cache import store
    from taylorprune.data import build_data
    from taylorprune.models import build_model
    from taylorprune.recipe import load_recipe
    from taylorprune.train import fit

    paths = {"mid": folder / "mid.pt", "final": folder / "final.pt"}
    if all(p.is_file() for p in paths.values()):
        return paths
    use_repo_cache()
    recipe = load_recipe(str(recipe_path))
    cfg, d = recipe.baseline.train, recipe.data
    assert cfg is not None and cfg.epochs >= 2, "mid needs a baseline of at least two epochs"
    mid_epoch = cfg.epochs // 2 - 1  # 0-based: the last epoch of the first half
    torch.manual_seed(recipe.seed)
    model = build_model(dict(FASHION_RESNET20))
    data = build_data(
        d.name,
        batch_size=d.batch_size,
        eval_batch_size=d.eval_batch_size,
        seed=recipe.seed,
        augment=d.augment,
    )

    def on_epoch_end(epoch: int, row: dict) -> None:
        logging.getLogger("taylorprune.bench").info("baseline epoch %d: %s", epoch + 1, row)
        if epoch == mid_epoch:
            atomic_save(model.state_dict(), paths["mid"])

    logging.getLogger("taylorprune.bench").info(
        "training %s's baseline (%d epochs) for the mid and final checkpoints",
        recipe_path.name,
        cfg.epochs,
    )
    fit(model, data.train, data.val, cfg, progress=False, on_epoch_end=on_epoch_end)
    atomic_save(model.state_dict(), paths["final"])
    cached = _recipe_baseline_path(recipe)
    if not cached.is_file():
        store(model, cached)
    return paths


def fashion_resnet20_baseline() -> tuple[nn.Module, dict[str, Any], str]:
    """A trained Fashion-MNIST ResNet-20 (``resnet20``, ``in_chans=1``) for the studies.

    :data:`STUDY_RECIPE`'s cached baseline when ``.cache/`` holds one; otherwise the final
    checkpoint of :func:`recipe_checkpoints`, which trains that recipe's baseline (and caches it
    for the recipe) if :data:`STUDY_CHECKPOINTS` lacks it.
    The third value says which one was used. The model is on the CPU in eval mode.
    """
    from taylorprune.baseline_cache import load_cached
    from taylorprune.models import build_model
    from taylorprune.recipe import load_recipe

    use_repo_cache()
    recipe = load_recipe(str(STUDY_RECIPE))
    spec = dict(FASHION_RESNET20)
    model = build_model(spec)
    path = _recipe_baseline_path(recipe)
    if load_cached(model, path):
        return model.eval(), spec, f"recipe cache {path.relative_to(REPO)}"
    final = recipe_checkpoints(STUDY_CHECKPOINTS)["final"]
    model.load_state_dict(torch.load(final, map_location="cpu", weights_only=True))
    return model.eval(), spec, f"recipe_checkpoints(): {final.relative_to(REPO)}"
