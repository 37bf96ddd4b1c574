"""``taylorprune run``: a recipe, run end to end. The story of a run, each chapter a phase in
``taylorprune/pipeline/``:

1. the recipe is read once into :class:`~taylorprune.pipeline.options.RunOptions`;
2. the output folder is checked (nothing written yet), then data and model are built and
   everything a later phase needs is checked (``pipeline/preflight.py``);
3. the folder is locked, earlier results retired, ``recipe.yaml`` written
   (``pipeline/outdir.py``); with ``--resume`` the latest run checkpoint is read and must belong
   to this recipe;
4. baseline → prune → finetune (``pipeline/baseline.py``, ``prune.py``, ``finetune.py``), each
   writing run checkpoints; a resumed run enters at the phase its checkpoint records;
5. measure and report (``pipeline/finish.py``).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

import taylorprune.distributed as distributed
from taylorprune.data import DataBundle, build_data
from taylorprune.errors import UserError
from taylorprune.models import build_model, model_spec_for_save
from taylorprune.pipeline import preflight
from taylorprune.pipeline.baseline import baseline_phase
from taylorprune.pipeline.checkpoints import RunCheckpoint, load_baseline, read_run_checkpoint
from taylorprune.pipeline.context import RunContext, model_spec, resolve_device, seed_everything
from taylorprune.pipeline.finetune import finetune_phase
from taylorprune.pipeline.finish import finish_phase
from taylorprune.pipeline.options import RunOptions, resume_conflict
from taylorprune.pipeline.outdir import check_out_dir, locked, prepare_contents
from taylorprune.pipeline.prune import prune_phase
from taylorprune.pipeline.record import RunRecord
from taylorprune.recipe import Recipe

log = logging.getLogger("taylorprune")

T = TypeVar("T")


def run(
    recipe: Recipe,
    out_dir: Path | None = None,
    *,
    progress: bool = True,
    overwrite: bool = False,
    resume: bool = False,
    plots: bool = True,
) -> dict[str, Any]:
    """Run ``recipe`` end to end, writing results to ``out_dir``; return the report dict.

    With ``resume``, continue the run in ``out_dir`` from its latest run checkpoint (values of
    recipe sections no finished work depends on, such as ``measure``, may differ). Raises
    :class:`UserError` for bad input before any work, and for a failure during the run (run
    checkpoints are then kept for ``resume``). ``plots``: draw the report's PNG plots.
    """
    t_start = time.perf_counter()
    options = RunOptions.from_recipe(recipe)
    out = Path(out_dir) if out_dir is not None else default_out_dir(recipe)
    check_out_dir(out, overwrite=overwrite, resume=resume)
    with contextlib.ExitStack() as stack:
        device = stack.enter_context(_session(options))
        with _held_logs():  # bad input is one line: what the checks log shows only once they pass
            data, model, spec, initial = build_inputs(options)
            example = torch.zeros(1, *data.input_shape)
            preflight.check_criterion(options.prune)
            if not resume:
                preflight.check_reachable(model, example, options.prune)
            preflight.check_latency_batch(model, example, options.measure, device)

        def open_folder() -> RunCheckpoint | None:
            stack.enter_context(locked(out))
            ckpt = _checkpoint_to_resume(out, recipe.to_dict()) if resume else None
            prepare_contents(out, recipe.resolved_yaml(), overwrite=overwrite, resume=resume)
            return ckpt

        ckpt = _on_main(open_folder)
        if resume and not distributed.is_main():
            ckpt = _checkpoint_to_resume(out, recipe.to_dict())
        ctx = RunContext(
            options=options,
            recipe=recipe.to_dict(),
            out_dir=out,
            device=device,
            data=data,
            example=example,
            spec=spec,
            arch=model_spec_for_save(spec),
            record=RunRecord() if ckpt is None else RunRecord.from_dict(ckpt.record),
            progress=progress and distributed.is_main(),
            plots=plots,
        )
        return _phases(ctx, model, initial, ckpt, t_start)


def _phases(
    ctx: RunContext,
    model: nn.Module,
    initial: dict[str, Any] | None,
    ckpt: RunCheckpoint | None,
    t_start: float,
) -> dict[str, Any]:
    """baseline → prune → finetune → measure and report, entering at ``ckpt``'s phase."""
    phase = "baseline" if ckpt is None else ckpt.phase
    pruned = None
    if phase == "baseline":
        baseline = baseline_phase(ctx, model, ckpt)
        model, reference = baseline.model, baseline.reference
    else:
        reference = load_baseline(ctx.out_dir)
        model = copy.deepcopy(reference).to(ctx.device).train()
    teacher = _teacher(ctx, reference)
    if phase in ("baseline", "prune"):
        pruned = prune_phase(ctx, model, ckpt if phase == "prune" else None, teacher)
    model = finetune_phase(ctx, pruned, ckpt if phase == "finetune" else None, initial, teacher)
    return finish_phase(ctx, reference, model, t_start)


def _teacher(ctx: RunContext, reference: nn.Module) -> nn.Module | None:
    """With ``finetune.distill``, the baseline as the teacher: a copy on the run's device (the
    reference stays on the CPU for the final measurements); after ``--resume`` the baseline is the
    one the run saved (``checkpoints/baseline.model.pt``)."""
    if ctx.options.finetune.train.distill is None:
        return None
    return copy.deepcopy(reference).to(ctx.device).eval()


def default_out_dir(recipe: Recipe) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / recipe.name / stamp


@contextlib.contextmanager
def _session(options: RunOptions) -> Iterator[torch.device]:
    """Seeds, threads and the process group of a run."""
    seed_everything(options.seed)
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    launched = distributed.launched()
    device = distributed.setup(options.device) if launched else resolve_device(options.device)
    try:
        yield device
    finally:
        distributed.teardown()


@contextlib.contextmanager
def _held_logs() -> Iterator[None]:
    """Hold back what the package logs inside the block; pass it on when the block ends normally,
    drop it when it raises (the error is then the only line the user sees)."""
    held: list[logging.LogRecord] = []

    class Hold(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            held.append(record)

    handlers = log.handlers[:]
    log.handlers[:] = [Hold()]
    propagate, log.propagate = log.propagate, False
    try:
        yield
    finally:
        log.handlers[:] = handlers
        log.propagate = propagate
    for record in held:
        log.handle(record)


def build_inputs(
    options: RunOptions,
) -> tuple[DataBundle, nn.Module, dict[str, Any], dict[str, Any] | None]:
    """A run's data, model (random init or loaded, on the CPU), the model's spec, and its initial
    state_dict when ``retrain: rewind`` will need it."""
    d = options.data
    data = build_data(
        d["name"],
        root=d["root"],
        batch_size=d["batch_size"],
        eval_batch_size=d["eval_batch_size"],
        workers=d["workers"],
        seed=options.seed,
        input_size=d["input_size"],
        train_subset=d["train_subset"],
        val_subset=d["val_subset"],
        augment=d["augment"],
        download=d["download"],
        distributed=distributed.active(),
        holdout=d["holdout"],
        holdout_seed=d["holdout_seed"],
        **dict(d["kwargs"]),
    )
    spec = model_spec(options.model, data)
    model = build_model(spec)
    rewind = options.finetune.retrain == "rewind"
    initial = copy.deepcopy(model.state_dict()) if rewind else None
    return data, model, spec, initial


def _checkpoint_to_resume(out: Path, recipe: dict[str, Any]) -> RunCheckpoint | None:
    """The latest run checkpoint in ``out``, checked to belong to ``recipe``."""
    ckpt = read_run_checkpoint(out)
    if ckpt is None:
        log.info("--resume: no checkpoint in %s yet; starting from the beginning", out)
        return None
    conflict = resume_conflict(ckpt.recipe, recipe, ckpt.phase)
    if conflict is not None:
        key, then, now = conflict
        raise UserError(
            f"--resume: the recipe differs from the one {out} was started with: {key} was "
            f"{then!r}, now {now!r}, and the run's {ckpt.phase} phase depends on it; resume with "
            "the same recipe and --set values, or start again with --overwrite"
        )
    log.info("resuming from checkpoint %r", ckpt.tag)
    return ckpt


def _on_main(fn: Callable[[], T]) -> T | None:
    """``fn()`` on rank 0 only; a :class:`UserError` it raises is raised on every rank."""
    if not distributed.active():
        return fn()
    result, error = None, None
    if distributed.is_main():
        try:
            result = fn()
        except UserError as exc:
            error = str(exc)
    first = distributed.gather(error)[0]
    if first is not None:
        raise UserError(first)
    return result
