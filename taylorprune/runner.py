"""The pipeline of ``taylorprune run``: recipe → model → data → baseline → scoring → removal → fine-tuning
→ measurement → report.

This is the one module that knows the whole pipeline; every stage is a call into the library. Inputs are
checked (recipe, model, data, checkpoint) before the output folder is created, so a bad input never leaves
a half-written folder behind.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
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

from taylorprune import __version__
from taylorprune.baseline_cache import load_or_train_baseline
from taylorprune.data import DataBundle, build_data
from taylorprune.errors import UserError
from taylorprune.importance import ImportanceAccumulator
from taylorprune.measure import compare_latency, count, layer_table, per_layer
from taylorprune.models import build_model, model_spec_for_save
from taylorprune.pruning import StructuredPruner, Target, remap_optimizer
from taylorprune.recipe import Recipe
from taylorprune.report import write_report
from taylorprune.serialization import save_pruned
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

CONVENTION = (
    "MACs counted by fvcore in eval mode on one example (one fused multiply-add = one MAC; "
    "BatchNorm included); params = all parameters of the model."
)


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


def prepare_out_dir(out_dir: Path, *, overwrite: bool) -> None:
    """Refuse to write into a non-empty folder unless ``overwrite`` (earlier results are never lost
    silently)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output path {out_dir} exists and is not a folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise UserError(
            f"output folder {out_dir} already holds results; choose another -o, or pass --overwrite"
        )
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
    handles = [
        m.register_forward_pre_hook(lambda mod, _inp: mod.train(False))
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
    """One pruning run. ``run()`` executes every stage and returns the report dict."""

    def __init__(
        self, recipe: Recipe, out_dir: Path, *, progress: bool = True, overwrite: bool = False
    ) -> None:
        self.recipe = recipe
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.overwrite = overwrite
        self.state = RunState(recipe)

    # -- stages ---------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        r = self.recipe
        t_start = time.perf_counter()
        seed_everything(r.seed)
        device = resolve_device(r.device)

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
            **dict(d.kwargs),
        )
        spec = _model_spec(r, data)
        model = build_model(spec)
        init_state = copy.deepcopy(model.state_dict())  # for retrain: rewind
        example = torch.zeros(1, *data.input_shape)
        prepare_out_dir(self.out_dir, overwrite=self.overwrite)
        (self.out_dir / "recipe.yaml").write_text(r.resolved_yaml())
        loss_fn = make_loss(r.finetune)

        # Baseline.
        t0 = time.perf_counter()
        model, baseline_rows = load_or_train_baseline(
            model, spec, r, data, device=device, progress=self.progress
        )
        self.state.metrics.extend(baseline_rows)
        model.to(device)
        self.state.timings["baseline_s"] = time.perf_counter() - t0
        base_eval = _eval_row(model, data, device, r)
        macs0, params0 = count(model.cpu(), example)
        layers0 = per_layer(model, example)
        baseline_model = copy.deepcopy(model).cpu()
        model.to(device)
        self.state.report["baseline"] = _stage(macs0, params0, base_eval)
        log.info(
            "baseline: %.2f M MACs, %.3f M params, top-1 %.2f%%",
            macs0 / 1e6,
            params0 / 1e6,
            base_eval["top1"],
        )

        # Scoring and removal.
        p = r.pruning
        target = Target.parse(p.target)
        pruner = StructuredPruner(
            model,
            example.to(device),
            ignored_layers=list(p.ignored_layers),
            include=None if p.include is None else list(p.include),
            round_to=p.round_to,
            min_channels=p.min_channels,
            max_fraction=p.max_fraction,
            normalize=p.normalize,
            cost_aware=p.cost_aware,
        )
        acc = ImportanceAccumulator(
            model, pruner.groups(), r.importance.criterion, ema=r.importance.ema, seed=r.seed
        )
        t0 = time.perf_counter()
        try:
            if p.schedule == "oneshot":
                self._prune_oneshot(model, pruner, acc, data, loss_fn, target, device)
            else:
                self._prune_iterative(model, pruner, acc, data, loss_fn, target, device)
        finally:
            acc.remove()
        self.state.timings["pruning_s"] = time.perf_counter() - t0
        if p.bn_recalibration:
            recalibrate_bn(model, data.train, device=device)
        pruned_eval = _eval_row(model, data, device, r)
        macs1, params1 = count(model.cpu(), example)
        model.to(device)
        self.state.report["pruned"] = _stage(macs1, params1, pruned_eval)
        log.info(
            "pruned: %.2f M MACs (%.1f%% removed), top-1 %.2f%%",
            macs1 / 1e6,
            100 * (1 - macs1 / macs0),
            pruned_eval["top1"],
        )

        # Retraining variant, then fine-tuning.
        if r.retrain == "rewind":
            model = self._rewound(spec, init_state, pruner, example).to(device)
        elif r.retrain == "scratch":
            reinitialize(model)
        t0 = time.perf_counter()
        rows = fit(
            model,
            data.train,
            data.val,
            r.finetune,
            device=device,
            loss_fn=loss_fn,
            progress=self.progress,
        )
        for row in rows:
            row.setdefault("phase", "finetune")
        self.state.metrics.extend(rows)
        self.state.timings["finetune_s"] = time.perf_counter() - t0
        ft_eval = _eval_row(model, data, device, r)
        model.cpu()
        macs2, params2 = count(model, example)
        self.state.report["finetuned"] = _stage(macs2, params2, ft_eval)

        # Measurement and outputs.
        layers2 = per_layer(model, example)
        rep = self.state.report
        rep["layers"] = layer_table(layers0, layers2)
        rep["latency"] = None
        if r.measure.latency:
            rep["latency"] = compare_latency(
                baseline_model,
                model,
                torch.randn(r.measure.latency_batch_size, *data.input_shape),
                runs=r.measure.latency_runs,
                threads=r.measure.threads,
                channels_last=r.measure.channels_last,
            )
        save_pruned(
            model,
            self.out_dir / "model.pt",
            arch=model_spec_for_save(spec),
            recipe=r.name,
            criterion=r.importance.criterion,
            input_shape=list(data.input_shape),
        )
        self.state.timings["total_s"] = time.perf_counter() - t_start
        report = self._assemble(data, target, pruner, device)
        write_report(self.out_dir, report)
        return report

    def _prune_oneshot(self, model, pruner, acc, data, loss_fn, target, device) -> None:
        """Score ``score_batches`` minibatches, then remove channels until the target in one step."""
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
        step = pruner.remove_to_target(acc.group_scores(), target)
        self._record_step(model, step, iteration=0, data=data, device=device)

    def _prune_iterative(self, model, pruner, acc, data, loss_fn, target, device) -> None:
        """The paper's schedule: fine-tune; every ``score_batches`` minibatches remove
        ``channels_per_step`` channels on the scores accumulated since the last removal, until the target."""
        r, p = self.recipe, self.recipe.pruning
        ft = r.finetune
        optimizer = build_optimizer(model, ft)
        iteration = 0
        done = pruner.target_reached(target)

        def after_step(_it: int) -> str | None:
            nonlocal iteration, done
            iteration += 1
            if iteration % p.score_batches:
                return None
            step = pruner.remove_to_target(
                acc.group_scores(), target, max_channels=p.channels_per_step
            )
            remap_optimizer(optimizer, model)
            acc.realign(pruner.groups(), step.kept)
            acc.reset()
            self._record_step(model, step, iteration=iteration, data=data, device=device)
            reached = pruner.target_reached(target)
            capped = p.max_steps is not None and len(pruner.history) >= p.max_steps
            if reached or capped or step.channels_removed == 0:
                done = True
                return "stop"
            return None

        epoch = 0
        with frozen_bn(model, not r.importance.train_mode):
            while not done:
                row = train_epoch(
                    model,
                    data.train,
                    optimizer,
                    loss_fn,
                    device=device,
                    amp=ft.amp,
                    channels_last=ft.channels_last,
                    grad_clip=ft.grad_clip,
                    after_backward=acc.update,
                    after_step=after_step,
                    progress=self.progress,
                    desc=f"prune (epoch {epoch})",
                )
                row.update(phase="prune", epoch=epoch)
                self.state.metrics.append(row)
                epoch += 1
        if p.clear_momentum:
            optimizer.state.clear()

    def _record_step(self, model, step, *, iteration: int, data, device) -> None:
        top1 = None
        if len(data.val.dataset) <= 20000:  # cheap enough to evaluate after every removal
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

    def _assemble(self, data, target, pruner, device) -> dict[str, Any]:
        rep = self.state.report
        b, pr, ft = rep["baseline"], rep["pruned"], rep["finetuned"]
        reached = pruner.target_reached(target)
        return {
            "taylorprune_version": __version__,
            "recipe": self.recipe.name,
            "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "convention": CONVENTION,
            "input_shape": list(data.input_shape),
            "device": str(device),
            "criterion": self.recipe.importance.criterion,
            "baseline": b,
            "pruned": pr,
            "finetuned": ft,
            "reduction": {
                "macs": 1 - ft["macs"] / b["macs"],
                "params": 1 - ft["params"] / b["params"],
                "top1_drop": b["top1"] - ft["top1"],
            },
            "target": {
                "kind": target.kind,
                "keep": target.keep,
                "achieved_keep": ft["macs"] / b["macs"]
                if target.kind == "macs"
                else ft["params"] / b["params"],
                "stopped_short": None if reached else pruner.stopped_short_reason(target),
            },
            "steps": rep.get("steps", []),
            "layers": rep["layers"],
            "latency": rep["latency"],
            "metrics": self.state.metrics,
            "timings": self.state.timings,
        }


def run(
    recipe: Recipe, out_dir: Path | None = None, *, progress: bool = True, overwrite: bool = False
) -> dict[str, Any]:
    """Run ``recipe`` end to end, writing results to ``out_dir``; return the report dict."""
    pipeline = Pipeline(
        recipe, out_dir or default_out_dir(recipe), progress=progress, overwrite=overwrite
    )
    return pipeline.run()
