"""Shared pieces of the benchmark tools (bench_quality, classic_mlp, bench_cost, oracle_study).

Everything here is a thin client of the library: the Fashion-MNIST ResNet-20 baseline is the
shipped recipe's, trained by the pipeline's own baseline phase into the tools' cache (never the
product's), and results are written one JSON file per run so that every study can be stopped and
resumed. Every result file a tool writes goes through the library's atomic writer
(:func:`write_json`, :func:`write_file`, :func:`save_png`; ``tests/test_tools_static.py`` checks).
"""

from __future__ import annotations

import dataclasses
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

from taylorprune._io import atomic_save, atomic_write, atomic_write_text

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "fashion_mnist_resnet20.yaml"
#: The recipe whose baseline the criterion studies (bench_quality, oracle_study) start from: the
#: same network and data trained to convergence (12 epochs instead of 2).
STUDY_RECIPE = REPO / "recipes" / "fashion_mnist_resnet20_converged.yaml"
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
    """What every study does first: log lines with times, the tools' cache, the thread count, and
    in ``--smoke`` mode at most 2 scoring (and BN re-estimation) minibatches."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    use_tools_cache()
    torch.set_num_threads(args.threads)
    if args.smoke:
        for name in ("score_batches", "recal_batches"):
            if hasattr(args, name):
                setattr(args, name, min(getattr(args, name), 2))


def cache_dir() -> Path:
    """The tools' own cache (study baselines, latency tables, per-measurement records):
    ``$TAYLORPRUNE_STUDY_CACHE``, else ``<repo>/.cache/studies`` (gitignored); never the product's
    ``$TAYLORPRUNE_CACHE``, whose baselines must be what ``taylorprune run`` trains."""
    return Path(os.environ.get("TAYLORPRUNE_STUDY_CACHE") or REPO / ".cache" / "studies")


def use_tools_cache() -> None:
    """Point what the library caches in this process (latency tables, baselines) at
    :func:`cache_dir`: every tool calls this first."""
    os.environ["TAYLORPRUNE_CACHE"] = str(cache_dir())


def tools_env() -> dict[str, str]:
    """The environment for a ``taylorprune`` command a tool runs: its caches in
    :func:`cache_dir`."""
    return {**os.environ, "TAYLORPRUNE_CACHE": str(cache_dir())}


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


def write_file(path: Path, text: str) -> None:
    """Write a table or report atomically (UTF-8)."""
    atomic_write_text(text, path)


def save_png(fig: Any, path: Path, dpi: int) -> None:
    """Save a matplotlib figure as a PNG atomically: a killed run leaves the previous plot."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))


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


def markdown_table(
    head: Sequence[str], rows: Iterable[Sequence[str]], align: str | Sequence[str] = "---"
) -> list[str]:
    """The lines of a markdown table: ``head``, the separator (``align``: ``"---"`` or ``"---:"``
    for right-aligned, one for all columns or one per column) and a line per row of cells."""
    aligns = [align] * len(head) if isinstance(align, str) else list(align)
    return [
        "| " + " | ".join(head) + " |",
        "|" + "".join(f"{a}|" for a in aligns),
        *("| " + " | ".join(cells) + " |" for cells in rows),
    ]


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


def random_batches(
    shape: Sequence[int], classes: int, n: int, batch: int = 8
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` minibatches of ``batch`` Gaussian inputs of ``shape`` with uniform labels, the same at
    every call (a generator seeded 1): what the latency benchmarks score random-init models on."""
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(batch, *shape, generator=g), torch.randint(0, classes, (batch,), generator=g))
        for _ in range(n)
    ]


def baseline_key(recipe: Any) -> str:
    """The recipe's name and a digest of everything its baseline phase depends on: two recipes
    with the same key train the same baseline."""
    import hashlib

    from taylorprune.pipeline.options import PHASE_KEYS

    plain = recipe.to_dict()
    key = json.dumps({k: plain.get(k) for k in PHASE_KEYS["baseline"]}, sort_keys=True)
    return f"{recipe.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def study_baseline(
    recipe_path: Path = STUDY_RECIPE,
    *,
    mid: bool = False,
    overrides: Sequence[str] | None = None,
) -> dict[str, Path]:
    """A recipe's baseline exactly as ``taylorprune run`` trains it (the pipeline's own baseline
    phase: same data, settings and per-epoch reseeding), trained once into the tools' cache
    (:func:`cache_dir`): ``final`` (the trained state_dict) and, with ``mid``, ``mid`` (after
    half of its epochs, for the oracle study's earlier stage). ``overrides`` are ``--set`` values
    applied to the recipe (a smoke run's shorter training).

    The product's baseline cache is never read or written: the recipe's ``baseline.cache`` is
    off, and anything else the phase caches goes to :func:`cache_dir`.
    """
    from taylorprune.pipeline.baseline import baseline_phase
    from taylorprune.pipeline.checkpoints import read_run_checkpoint
    from taylorprune.pipeline.context import RunContext, resolve_device, seed_everything
    from taylorprune.pipeline.options import RunOptions
    from taylorprune.pipeline.record import RunRecord
    from taylorprune.recipe import load_recipe
    from taylorprune.runner import build_inputs

    recipe = load_recipe(str(recipe_path), list(overrides or ()))
    cfg = recipe.baseline.train
    assert cfg is not None and cfg.epochs >= 2, f"{recipe_path.name} trains no baseline to split"
    plain = recipe.to_dict()
    folder = cache_dir() / "baselines" / baseline_key(recipe)
    paths = {"final": folder / "final.pt", **({"mid": folder / "mid.pt"} if mid else {})}
    if all(p.is_file() for p in paths.values()):
        return paths
    mid_epochs = cfg.epochs // 2
    options = RunOptions.from_recipe(recipe)
    options = dataclasses.replace(
        options, baseline=dataclasses.replace(options.baseline, cache=False)
    )
    use_tools_cache()
    seed_everything(options.seed)
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    data, model, spec, _ = build_inputs(options)

    class _KeepMid(RunContext):
        def checkpoint(self, phase, done, model, *args, **kwargs) -> None:
            super().checkpoint(phase, done, model, *args, **kwargs)
            if mid and phase == "baseline" and done == mid_epochs:
                atomic_save(model.state_dict(), paths["mid"])

    from taylorprune.models import model_spec_for_save

    ctx = _KeepMid(
        options=options,
        recipe=plain,
        out_dir=folder / "run",
        device=resolve_device(options.device),
        data=data,
        example=torch.zeros(1, *data.input_shape),
        spec=spec,
        arch=model_spec_for_save(spec),
        record=RunRecord(),
        progress=False,
    )
    logging.getLogger("taylorprune.bench").info(
        "training %s's baseline (%d epochs) through the pipeline into %s",
        recipe_path.name,
        cfg.epochs,
        folder,
    )
    # an interrupted training continues from its last epoch (bitwise as in an uninterrupted one:
    # every epoch reseeds), unless the mid-training state it should have kept is missing
    resume = read_run_checkpoint(ctx.out_dir)
    if resume is not None and (
        resume.phase != "baseline"
        or (mid and resume.done > mid_epochs and not paths["mid"].is_file())
    ):
        resume = None
    trained = baseline_phase(ctx, model, resume)
    atomic_save(trained.reference.state_dict(), paths["final"])
    return paths


def fashion_resnet20_baseline() -> tuple[nn.Module, dict[str, Any], str]:
    """A trained Fashion-MNIST ResNet-20 (``resnet20``, ``in_chans=1``) for the studies: the
    final state of :func:`study_baseline` for :data:`STUDY_RECIPE`. The third value says where it
    came from. The model is on the CPU in eval mode."""
    from taylorprune.models import build_model

    spec = dict(FASHION_RESNET20)
    model = build_model(spec)
    final = study_baseline(STUDY_RECIPE)["final"]
    model.load_state_dict(torch.load(final, map_location="cpu", weights_only=True))
    return model.eval(), spec, f"study_baseline(): {final.relative_to(REPO)}"
