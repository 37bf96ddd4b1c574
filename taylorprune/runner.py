"""The pipeline of ``taylorprune run``: recipe → model → data → baseline → scoring → removal →
fine-tuning → measurement → report.

This is the one module that knows the whole pipeline; every stage is a call into the library. Inputs
are checked (recipe, model, data, checkpoint) before the output folder is created, so a bad input
never leaves a half-written folder behind.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import hashlib
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from taylorprune import distributed
from taylorprune._io import atomic_write_text
from taylorprune._version import __version__
from taylorprune.baseline_cache import cache_path, load_cached, store
from taylorprune.checkpoint import read_checkpoint, write_checkpoint
from taylorprune.data import DataBundle, build_data
from taylorprune.errors import UserError
from taylorprune.importance import CRITERIA, ImportanceAccumulator
from taylorprune.measure import CONVENTION, compare_latency, count, layer_table, per_layer
from taylorprune.models import build_model, model_spec_for_save
from taylorprune.pruning import StructuredPruner, Target, remap_optimizer
from taylorprune.recipe import Recipe
from taylorprune.report import write_report
from taylorprune.serialization import load_pruned, save_pruned
from taylorprune.train import (
    build_optimizer,
    build_scheduler,
    evaluate,
    fit,
    make_loss,
    recalibrate_bn,
    reinitialize,
    train_epoch,
)

log = logging.getLogger("taylorprune")


# Validation sets up to this size are evaluated after every pruning step (report ``steps[].top1``);
# larger ones only at the stages, so that evaluation never dominates the pruning phase.
STEP_EVAL_MAX_EXAMPLES = 5000


@dataclass
class RunState:
    """What the pipeline has learnt so far; becomes ``report.json``."""

    recipe: Recipe
    report: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device: {name!r} requested but no CUDA device is available")
    return device


def prepare_out_dir(out_dir: Path, *, overwrite: bool, create: bool = True) -> None:
    """Refuse to write into a non-empty folder unless ``overwrite`` (earlier results are never lost
    silently); then create it if ``create``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output path {out_dir} exists and is not a folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise UserError(
            f"output folder {out_dir} already holds results; choose another -o, or pass --overwrite"
        )
    if create:
        out_dir.mkdir(parents=True, exist_ok=True)


def default_out_dir(recipe: Recipe) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / recipe.name / stamp


def _model_spec(recipe: Recipe, data: DataBundle) -> dict[str, Any]:
    m = recipe.model
    return {
        "source": m.source,
        "name": m.name,
        "num_classes": m.num_classes if m.num_classes is not None else data.num_classes,
        "in_chans": m.in_chans if m.in_chans is not None else data.input_shape[0],
        "pretrained": m.pretrained,
        "weights": m.weights,
        "checkpoint": m.checkpoint,
        "kwargs": dict(m.kwargs),
    }


@contextlib.contextmanager
def frozen_bn(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Keep every BatchNorm in eval mode (running statistics) while the rest of the model trains."""
    if not enabled:
        yield
        return

    def to_eval(module: nn.Module, _inputs: Any) -> None:
        module.training = False  # a pre-hook's return value would replace the inputs

    handles = [
        m.register_forward_pre_hook(to_eval)
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def preserved_buffers(model: nn.Module) -> Iterator[None]:
    """Restore every buffer (BN running statistics) on exit: scoring must not move them."""
    saved = {n: b.detach().clone() for n, b in model.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for n, b in model.named_buffers():
                if n in saved and saved[n].shape == b.shape:
                    b.copy_(saved[n])


def reseed_phase(data: DataBundle, seed: int, phase: str, epoch: int) -> None:
    """Seed every generator a phase draws from (global RNGs, shuffling, augmentation) from
    (seed, phase, epoch), so that each epoch sees the same data whether or not the run was resumed,
    and whether the baseline was trained here or loaded from the cache."""
    s = int.from_bytes(hashlib.sha256(f"{seed}/{phase}/{epoch}".encode()).digest()[:4], "big")
    seed_everything(s)
    loader = data.train
    for obj in (loader, getattr(loader, "dataset", None)):
        while obj is not None:
            gen = getattr(obj, "generator", None)
            if isinstance(gen, torch.Generator):
                gen.manual_seed(s)
            obj = getattr(obj, "dataset", None) if obj is not loader else None
    if data.train_sampler is not None and hasattr(data.train_sampler, "set_epoch"):
        data.train_sampler.set_epoch(epoch)


class _Window:
    """The next ``n`` batches of a shared iterator, as a loader of length ``n``."""

    def __init__(self, batches: Iterator[Any], n: int) -> None:
        self.batches, self.n = batches, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[Any]:
        for _ in range(self.n):
            yield next(self.batches)


def _cycle(loader: Any) -> Iterator[Any]:
    epoch = 0
    while True:
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _eval_row(
    model: nn.Module, data: DataBundle, device: torch.device, recipe: Recipe
) -> dict[str, Any]:
    ft = recipe.finetune
    return evaluate(model, data.val, device=device, amp=ft.amp, channels_last=ft.channels_last)


def _stage(macs: int, params: int, ev: dict[str, Any]) -> dict[str, Any]:
    return {
        "macs": int(macs),
        "params": int(params),
        "top1": float(ev["top1"]),
        "top5": None if ev.get("top5") is None else float(ev["top5"]),
        "loss": float(ev["loss"]),
    }


class Pipeline:
    """One pruning run. ``run()`` executes every stage and returns the report dict.

    Checkpoints are written after every baseline epoch, every pruning step (its removals are
    replayed on the baseline when resuming), once pruning is done and after every fine-tuning
    epoch; with ``resume`` the run continues from the latest one. Each phase and epoch
    reseeds the random generators from the recipe's seed, so a resumed run sees the same data order
    as an uninterrupted one and removes the same channels.
    """

    def __init__(
        self,
        recipe: Recipe,
        out_dir: Path,
        *,
        progress: bool = True,
        overwrite: bool = False,
        resume: bool = False,
    ) -> None:
        self.recipe = recipe
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.overwrite = overwrite
        self.resume = resume
        self.state = RunState(recipe)

    # -- stages ------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        r = self.recipe
        t_start = time.perf_counter()
        seed_everything(r.seed)
        if r.threads is not None:
            torch.set_num_threads(r.threads)
        device = distributed.setup(r.device) if distributed.launched() else resolve_device(r.device)
        if not distributed.is_main():
            self.progress = False
            log.setLevel(logging.WARNING)

        # Inputs first: nothing is written until the recipe, data and model are known to be good.
        d = r.data
        data = build_data(
            d.name,
            root=d.root,
            batch_size=d.batch_size,
            eval_batch_size=d.eval_batch_size,
            workers=d.workers,
            seed=r.seed,
            input_size=d.input_size,
            train_subset=d.train_subset,
            val_subset=d.val_subset,
            augment=d.augment,
            download=d.download,
            distributed=distributed.active(),
            **dict(d.kwargs),
        )
        spec = _model_spec(r, data)
        model = build_model(spec)
        self.arch = model_spec_for_save(spec)
        init_state = copy.deepcopy(model.state_dict())  # for retrain: rewind
        example = torch.zeros(1, *data.input_shape)
        CRITERIA.get(r.importance.criterion)  # a typo fails now, not after the baseline
        if not self.resume:
            self._check_reachable(model, example)
        ckpt = self._open_out_dir()
        loss_fn = make_loss(r.finetune)

        ft_optimizer: torch.optim.Optimizer | None = None
        start_epoch = 0
        resume_prune = ckpt if ckpt is not None and ckpt[0].startswith("prune-step") else None
        if ckpt is not None and ckpt[0].startswith(("pruned", "finetune")):
            tag, model, saved = ckpt
            log.info("resuming from checkpoint %r", tag)
            self.state.report = saved["report"]
            self.state.metrics = saved["metrics"]
            self.state.timings = saved["timings"]
            start_epoch = int(saved["epoch"])
            model.to(device).train()
            ft_optimizer = build_optimizer(model, r.finetune)
            ft_optimizer.load_state_dict(saved["optimizer"])
            ft_scheduler = build_scheduler(ft_optimizer, r.finetune, len(data.train))
            ft_scheduler.load_state_dict(saved["scheduler"])
            baseline_model = load_pruned(self.out_dir / "checkpoints" / "baseline.model.pt")
            layers0 = per_layer(baseline_model, example)
            target = Target.parse(r.pruning.target)
        elif resume_prune is not None:  # killed between two pruning steps
            log.info("resuming from checkpoint %r", resume_prune[0])
            saved = resume_prune[2]
            self.state.report = saved["report"]
            self.state.metrics = saved["metrics"]
            self.state.timings = saved["timings"]
            baseline_model = load_pruned(self.out_dir / "checkpoints" / "baseline.model.pt")
            layers0 = per_layer(baseline_model, example)
            model = copy.deepcopy(baseline_model).to(device).train()
        else:
            model = self._baseline(model, spec, data, loss_fn, device, ckpt)
            base_eval = _eval_row(model, data, device, r)
            macs0, params0 = count(model.cpu(), example)
            layers0 = per_layer(model, example)
            baseline_model = copy.deepcopy(model).cpu()
            if distributed.is_main():
                save_pruned(
                    baseline_model,
                    self.out_dir / "checkpoints" / "baseline.model.pt",
                    arch=self.arch,
                )
            model.to(device)
            self.state.report["baseline"] = _stage(macs0, params0, base_eval)
            log.info(
                "baseline: %.2f M MACs, %.3f M params, top-1 %.2f%%",
                macs0 / 1e6,
                params0 / 1e6,
                base_eval["top1"],
            )
        if not (ckpt is not None and ckpt[0].startswith(("pruned", "finetune"))):
            target = self._prune(model, data, loss_fn, example, device, resume_prune)
            if r.retrain == "rewind":
                model = self._rewound(spec, init_state, self.pruner, example).to(device)
            elif r.retrain == "scratch":
                reinitialize(model)
            self.state.report["target_status"] = {
                "reached": self.pruner.target_reached(target),
                "stopped_short": self.pruner.stopped_short_reason(target),
            }
            ft_optimizer = build_optimizer(model, r.finetune)
            if self.prune_optimizer is not None and r.retrain == "finetune":
                # momentum of the pruning phase carries on unless clear_momentum emptied it
                ft_optimizer.load_state_dict(self.prune_optimizer.state_dict())
            ft_scheduler = build_scheduler(ft_optimizer, r.finetune, len(data.train))
            self._checkpoint("pruned", model, ft_optimizer, ft_scheduler, epoch=0)

        # Fine-tuning, one checkpoint per epoch.
        t0 = time.perf_counter()

        def on_epoch_end(epoch: int, row: dict[str, Any]) -> None:
            row["phase"] = "finetune"
            self.state.metrics.append(row)
            self.state.timings["finetune_s"] = self.state.timings.get("finetune_s", 0.0) + (
                time.perf_counter() - t0_epoch[0]
            )
            self._checkpoint(
                f"finetune-ep{epoch + 1:03d}", model, ft_optimizer, ft_scheduler, epoch + 1
            )
            reseed_phase(data, r.seed, "finetune", epoch + 1)
            t0_epoch[0] = time.perf_counter()

        t0_epoch = [t0]
        reseed_phase(data, r.seed, "finetune", start_epoch)
        fit(
            distributed.wrap(model, device),
            data.train,
            data.val,
            r.finetune,
            device=device,
            loss_fn=loss_fn,
            progress=self.progress,
            on_epoch_end=on_epoch_end,
            optimizer=ft_optimizer,
            scheduler=ft_scheduler,
            start_epoch=start_epoch,
        )
        ft_eval = _eval_row(model, data, device, r)
        model.cpu()
        macs2, params2 = count(model, example)
        self.state.report["finetuned"] = _stage(macs2, params2, ft_eval)

        # Measurement and outputs.
        layers2 = per_layer(model, example)
        rep = self.state.report
        rep["layers"] = layer_table(layers0, layers2)
        rep["latency"] = rep["latency_cuda"] = None
        rep["distributed"] = self._consistency(model)
        if not distributed.is_main():
            return {}
        if r.measure.latency:
            timing_input = torch.randn(r.measure.latency_batch_size, *data.input_shape)
            for key, dev in (("latency", "cpu"), ("latency_cuda", "cuda")):
                if dev == "cuda" and device.type != "cuda":
                    continue  # CPU always; CUDA too when the run has a GPU
                rep[key] = compare_latency(
                    baseline_model,
                    model,
                    timing_input,
                    runs=r.measure.latency_runs,
                    threads=r.measure.threads,
                    channels_last=r.measure.channels_last,
                    device=dev,
                )
        save_pruned(
            model,
            self.out_dir / "model.pt",
            arch=self.arch,
            recipe=r.name,
            criterion=r.importance.criterion,
            input_shape=list(data.input_shape),
        )
        self.state.timings["total_s"] = self.state.timings.get("total_s", 0.0) + (
            time.perf_counter() - t_start
        )
        report = self._assemble(data, target)
        write_report(self.out_dir, report)
        return report

    def _consistency(self, model: nn.Module) -> dict[str, Any] | None:
        """Per-rank digests of the final model: equal on every rank, or the run says so."""
        if not distributed.active():
            return None
        digests = distributed.gather(distributed.digest(model))
        if len(set(digests)) != 1:
            log.warning("ranks ended with different models: %s", digests)
        return {
            "world_size": distributed.world_size(),
            "backend": str(torch.distributed.get_backend()),
            "model_digests": digests,
            "ranks_agree": len(set(digests)) == 1,
        }

    def _check_reachable(self, model: nn.Module, example: torch.Tensor) -> None:
        """Refuse a target that the pruning constraints cannot reach, before anything is trained.

        MACs and params depend on the architecture only, so removing every channel the constraints
        allow from a copy of the untrained model gives the smallest model the run can reach."""
        p = self.recipe.pruning
        target = Target.parse(p.target)
        trial = copy.deepcopy(model).cpu()
        pruner = self._make_pruner(trial, example, verify=False)
        ones = {g.root: torch.ones(g.size) for g in pruner.groups()}
        pruner.remove_to_target(ones, target)
        if not pruner.target_reached(target):
            reason = pruner.stopped_short_reason(target) or {}
            if reason.get("code") == "constraints":
                raise UserError(
                    f"pruning.target: keeping {target.keep:g} of the {target.kind} is unreachable: "
                    f"the constraints (min_channels {p.min_channels}, max_fraction "
                    f"{p.max_fraction:g}, round_to {p.round_to}, ignored layers) stop at "
                    f"{pruner.fraction(target.kind):.3f}"
                )

    def _make_pruner(self, model, example, **extra) -> StructuredPruner:
        p = self.recipe.pruning
        return StructuredPruner(
            model,
            example,
            ignored_layers=list(p.ignored_layers),
            include=None if p.include is None else list(p.include),
            round_to=p.round_to,
            min_channels=p.min_channels,
            max_fraction=p.max_fraction,
            normalize=p.normalize,
            cost_aware=p.cost_aware,
            **extra,
        )

    # -- output folder and checkpoints -------------------------------------------------------------
    def _open_out_dir(self) -> tuple[str, nn.Module, dict[str, Any]] | None:
        """Prepare the output folder; with ``resume``, return its latest checkpoint (or None).

        Every rank checks; only rank 0 writes, after all ranks have checked."""
        recipe_file = self.out_dir / "recipe.yaml"
        resolved = self.recipe.resolved_yaml()
        if not self.resume:
            prepare_out_dir(self.out_dir, overwrite=self.overwrite, create=False)
            distributed.barrier()
            if distributed.is_main():
                prepare_out_dir(self.out_dir, overwrite=True, create=True)
                atomic_write_text(resolved, recipe_file)
            distributed.barrier()
            return None
        if not recipe_file.is_file():
            raise UserError(f"--resume: {self.out_dir} holds no run to resume (no recipe.yaml)")
        if recipe_file.read_text() != resolved:
            raise UserError(
                f"--resume: the recipe differs from the one {self.out_dir} was started with "
                f"({recipe_file}); resume with the same recipe and --set values"
            )
        ckpt = read_checkpoint(self.out_dir)
        if ckpt is None:
            log.info("--resume: no checkpoint in %s yet; starting from the beginning", self.out_dir)
        return ckpt

    def _checkpoint(self, tag, model, optimizer, scheduler, epoch: int, **extra: Any) -> None:
        if not distributed.is_main():
            return
        state = {
            "epoch": epoch,
            "optimizer": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "report": self.state.report,
            "metrics": self.state.metrics,
            "timings": self.state.timings,
            **extra,
        }
        write_checkpoint(self.out_dir, tag, model, self.arch, state)

    def _baseline(self, model, spec, data, loss_fn, device, ckpt) -> nn.Module:
        """The trained baseline: as built, from the cache, or trained here (resumable per epoch)."""
        r = self.recipe
        cfg = r.baseline.train
        t0 = time.perf_counter()
        if cfg is None:
            return model.to(device)
        path = cache_path(spec, r)
        if r.baseline.cache and ckpt is None and load_cached(model, path):
            return model.to(device)
        start_epoch, optimizer, scheduler = 0, None, None
        if ckpt is not None:  # resuming an interrupted baseline training
            _tag, model, saved = ckpt
            start_epoch = int(saved["epoch"])
            self.state.metrics = saved["metrics"]
        model.to(device).train()
        optimizer = build_optimizer(model, cfg)
        scheduler = build_scheduler(optimizer, cfg, len(data.train))
        if ckpt is not None:
            optimizer.load_state_dict(ckpt[2]["optimizer"])
            scheduler.load_state_dict(ckpt[2]["scheduler"])
        log.info("baseline: training %s for %d epochs", spec["name"], cfg.epochs)

        def on_epoch_end(epoch: int, row: dict[str, Any]) -> None:
            row["phase"] = "baseline"
            self.state.metrics.append(row)
            self._checkpoint(f"baseline-ep{epoch + 1:03d}", model, optimizer, scheduler, epoch + 1)
            reseed_phase(data, r.seed, "baseline", epoch + 1)

        reseed_phase(data, r.seed, "baseline", start_epoch)
        fit(
            distributed.wrap(model, device),
            data.train,
            data.val,
            cfg,
            device=device,
            loss_fn=make_loss(cfg),
            progress=self.progress,
            on_epoch_end=on_epoch_end,
            optimizer=optimizer,
            scheduler=scheduler,
            start_epoch=start_epoch,
        )
        if r.baseline.cache and distributed.is_main():
            store(model.cpu(), path)
        self.state.timings["baseline_s"] = time.perf_counter() - t0
        return model.to(device)

    def _prune(self, model, data, loss_fn, example, device, resume=None) -> Target:
        """Score and remove channels until the target; records steps and the pruned stage.

        ``resume`` is a ``prune-step`` checkpoint (tag, model, state): ``model`` is then the
        baseline, the recorded removals are replayed on it, and the checkpoint's weights loaded."""
        r, p = self.recipe, self.recipe.pruning
        target = Target.parse(p.target)
        self.pruner = self._make_pruner(model, example.to(device))
        self.removals: list[dict[str, Any]] = []
        if resume is not None:
            for removal in resume[2]["removals"]:
                self._replay(removal)
            model.load_state_dict(resume[1].state_dict())
        acc = ImportanceAccumulator(
            model, self.pruner.groups(), r.importance.criterion, ema=r.importance.ema, seed=r.seed
        )
        t0 = time.perf_counter()
        reseed_phase(data, r.seed, "prune", 0)
        try:
            self.prune_optimizer = None
            if p.schedule == "oneshot":
                self._prune_oneshot(model, self.pruner, acc, data, loss_fn, target, device)
            else:
                self.prune_optimizer = self._prune_iterative(
                    model, self.pruner, acc, data, loss_fn, target, device, resume
                )
        finally:
            acc.remove()
        self.state.timings["pruning_s"] = time.perf_counter() - t0
        if p.bn_recalibration:
            recalibrate_bn(model, data.train, device=device)
        pruned_eval = _eval_row(model, data, device, r)
        macs1, params1 = count(model.cpu(), example)
        model.to(device)
        self.state.report["pruned"] = _stage(macs1, params1, pruned_eval)
        base = self.state.report["baseline"]
        log.info(
            "pruned: %.2f M MACs (%.1f%% removed), top-1 %.2f%%",
            macs1 / 1e6,
            100 * (1 - macs1 / base["macs"]),
            pruned_eval["top1"],
        )
        return target

    def _prune_oneshot(self, model, pruner, acc, data, loss_fn, target, device) -> None:
        """Score ``score_batches`` minibatches, then remove channels to the target in one step."""
        r = self.recipe
        model.train()
        with preserved_buffers(model), frozen_bn(model, not r.importance.train_mode):
            batches = _cycle(data.train)
            for _ in range(r.pruning.score_batches):
                x, y = next(batches)
                x, y = x.to(device), y.to(device)
                model.zero_grad(set_to_none=True)
                loss_fn(model(x), y).backward()
                acc.update()
        model.zero_grad(set_to_none=True)
        acc.all_reduce()  # every rank ranks the same sums, so every rank removes the same channels
        step = pruner.remove_to_target(acc.group_scores(), target)
        if step.stopped_short is not None:
            log.warning(step.stopped_short.describe(target))
        self._record_step(model, step, iteration=0, data=data, device=device)

    def _replay(self, removal: dict[str, Any]) -> None:
        """Remove exactly the channels of one recorded step: they score 0, every other 1."""
        scores = {g.root: torch.ones(g.size) for g in self.pruner.groups()}
        for root, idxs in removal["removed"].items():
            scores[root][idxs] = 0.0
        step = self.pruner.remove(scores, removal["n"])
        if step.removed != removal["removed"]:
            raise UserError("--resume: replaying the recorded pruning steps removed other channels")
        self.removals.append(removal)

    def _prune_iterative(self, model, pruner, acc, data, loss_fn, target, device, resume=None):
        """The paper's schedule: fine-tune; every ``score_batches`` minibatches remove
        ``channels_per_step`` channels on the scores accumulated since the last removal, until the
        target. Returns the optimizer; fine-tuning keeps its momentum unless ``clear_momentum``."""
        r, p = self.recipe, self.recipe.pruning
        ft = r.finetune
        optimizer = build_optimizer(model, ft)
        batches = _cycle(data.train)  # one pass over the data continues across removals
        iteration = 0
        if resume is not None:  # continue after the last recorded step, on the same batches
            optimizer.load_state_dict(resume[2]["optimizer"])
            acc.load_state_dict(resume[2]["accumulator"])
            iteration = int(resume[2]["iteration"])
            for _ in range(iteration):
                next(batches)
        with frozen_bn(model, not r.importance.train_mode):
            while not pruner.target_reached(target):
                # DDP registers parameters when it is built: wrap anew after each removal
                row = train_epoch(
                    distributed.wrap(model, device),
                    _Window(batches, p.score_batches),
                    optimizer,
                    loss_fn,
                    device=device,
                    amp=ft.amp,
                    channels_last=ft.channels_last,
                    grad_clip=ft.grad_clip,
                    after_backward=acc.update,
                    progress=self.progress,
                    desc=f"prune step {len(pruner.history) + 1}",
                )
                iteration += row["iters"]
                acc.all_reduce()
                step = pruner.remove_to_target(
                    acc.group_scores(), target, max_channels=p.channels_per_step
                )
                if step.stopped_short is not None:
                    log.warning(step.stopped_short.describe(target))
                remap_optimizer(optimizer, model)
                acc.realign(pruner.groups(), step.kept)
                acc.reset()
                row.update(phase="prune", step=len(pruner.history))
                self.state.metrics.append(row)
                self._record_step(model, step, iteration=iteration, data=data, device=device)
                self.removals.append({"removed": step.removed, "n": step.channels_removed})
                self._checkpoint(
                    f"prune-step{len(pruner.history):03d}",
                    model,
                    optimizer,
                    None,
                    epoch=0,
                    iteration=iteration,
                    removals=self.removals,
                    accumulator=acc.state_dict(),  # an EMA carries across steps
                )
                capped = p.max_steps is not None and len(pruner.history) >= p.max_steps
                if capped or step.channels_removed == 0:
                    break
        if p.clear_momentum:
            optimizer.state.clear()
        return optimizer

    def _record_step(self, model, step, *, iteration: int, data, device) -> None:
        top1 = None
        if len(data.val.dataset) <= STEP_EVAL_MAX_EXAMPLES:  # cheap enough after every removal
            top1 = float(_eval_row(model, data, device, self.recipe)["top1"])
            model.train()
        entry = {
            "step": len(self.state.report.setdefault("steps", [])) + 1,
            "iteration": iteration,
            "macs": int(step.macs),
            "params": int(step.params),
            "channels_removed": int(step.channels_removed),
            "top1": top1,
        }
        self.state.report["steps"].append(entry)
        self.state.metrics.append(
            {"phase": "prune", "step": entry["step"], "macs": entry["macs"], "val_top1": top1}
        )
        log.info(
            "pruning step %d: removed %d channels, %.2f M MACs",
            entry["step"],
            entry["channels_removed"],
            entry["macs"] / 1e6,
        )

    def _rewound(self, spec, init_state, pruner, example) -> nn.Module:
        """The pruned architecture with the kept channels' initial (pre-training) weights."""
        fresh = build_model({**spec, "pretrained": False, "checkpoint": None})
        fresh.load_state_dict(init_state)
        replay = StructuredPruner(fresh, example, ignored_layers=[])
        replay.graph.dg.load_pruning_history(pruner.graph.dg.pruning_history())
        return fresh

    def _assemble(self, data, target) -> dict[str, Any]:
        rep = self.state.report
        b, ft = rep["baseline"], rep["finetuned"]
        status = rep.get("target_status", {})
        achieved = {
            "macs": ft["macs"] / b["macs"],
            "params": ft["params"] / b["params"],
        }.get(target.kind)
        return {
            "taylorprune_version": __version__,
            "recipe": self.recipe.name,
            "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "convention": CONVENTION,
            "input_shape": list(data.input_shape),
            "device": str(resolve_device(self.recipe.device)),
            "criterion": self.recipe.importance.criterion,
            "baseline": b,
            "pruned": rep["pruned"],
            "finetuned": ft,
            "reduction": {
                "macs": 1 - ft["macs"] / b["macs"],
                "params": 1 - ft["params"] / b["params"],
                "top1_drop": b["top1"] - ft["top1"],
            },
            "target": {
                "kind": target.kind,
                "keep": target.keep,
                "achieved_keep": achieved,
                "stopped_short": None
                if status.get("reached", True)
                else status.get("stopped_short"),
            },
            "steps": rep.get("steps", []),
            "layers": rep["layers"],
            "latency": rep["latency"],
            "latency_cuda": rep["latency_cuda"],
            "distributed": rep["distributed"],
            "metrics": self.state.metrics,
            "timings": self.state.timings,
        }


def run(
    recipe: Recipe,
    out_dir: Path | None = None,
    *,
    progress: bool = True,
    overwrite: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Run ``recipe`` end to end, writing results to ``out_dir``; return the report dict.

    With ``resume``, continue the run in ``out_dir`` from its latest checkpoint.
    """
    pipeline = Pipeline(
        recipe,
        out_dir or default_out_dir(recipe),
        progress=progress,
        overwrite=overwrite,
        resume=resume,
    )
    try:
        return pipeline.run()
    finally:
        distributed.teardown()
