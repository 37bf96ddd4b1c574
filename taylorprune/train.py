"""Training and evaluation loops: one pass over a loader, a whole phase (``fit``), accuracy,
BatchNorm re-estimation and re-initialisation. What they optimise with (optimizer, learning-rate
schedule, loss) is built in :mod:`taylorprune.optimizers`.

:func:`train_epoch` has two hooks: ``after_backward()`` runs once the gradients exist and before
the optimizer uses them (the pruning schedule accumulates channel importance there while it
trains), ``after_step(n)`` after the optimizer and scheduler stepped (a library caller may save
a snapshot, or return ``"stop"`` to end the pass; the runner's pruning phase uses only
``after_backward``).

Loaders yield ``(inputs, targets)`` pairs: inputs of shape (N, C, H, W) (or any shape the model
takes), integer class targets of shape (N,). Accuracies are percentages in [0, 100].
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from tqdm.auto import tqdm

from taylorprune._clean_copy import clean_copy
from taylorprune.distill import Distiller
from taylorprune.errors import UserError
from taylorprune.optimizers import build_optimizer, build_scheduler, make_loss, total_iterations
from taylorprune.recipe import TrainConfig

__all__ = [
    "TrainingDiverged",
    "distiller",
    "evaluate",
    "evaluate_recalibrated",
    "fit",
    "recalibrate_bn",
    "reinitialize",
    "train_epoch",
]

log = logging.getLogger("taylorprune")

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the message names the iteration and the value."""


# ----------------------------------------------------------------------------------------------
# Loops


def _progress_enabled(progress: bool) -> bool:
    return progress and sys.stderr.isatty()


def _autocast(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager:
    if amp is None:
        return contextlib.nullcontext()
    if amp not in AMP_DTYPES:
        raise UserError(f"amp must be bf16, fp16 or null, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise UserError(f"amp: fp16 needs a CUDA device, got {device} (use bf16)")
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def _to_device(
    batch: Any, device: torch.device, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, targets = batch[0], batch[1]
    inputs = inputs.to(device, non_blocking=True)
    if channels_last and inputs.ndim == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return inputs, targets.to(device, non_blocking=True)


def _limited(loader: Iterable, max_batches: int | None) -> Iterator:
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            return
        yield batch


def _length(loader: Iterable, cap: int | None) -> int | None:
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        return cap
    return n if cap is None else min(n, cap)


def train_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    scheduler: LRScheduler | None = None,
    device: str | torch.device = "cpu",
    amp: str | None = None,
    channels_last: bool = False,
    grad_clip: float | None = None,
    max_iters: int | None = None,
    after_backward: Callable[[], Any] | None = None,
    after_step: Callable[[int], str | None] | None = None,
    score_first: Callable[[Callable[[], torch.Tensor]], Any] | None = None,
    progress: bool = True,
    desc: str = "train",
    scaler: torch.amp.GradScaler | None = None,
    distill: Distiller | None = None,
) -> dict[str, Any]:
    """One pass over ``loader`` (at most ``max_iters`` minibatches) in train mode.

    Per minibatch: forward (under autocast when ``amp`` is ``"bf16"``/``"fp16"``), the loss
    (``loss_fn(outputs, targets)``, or with ``distill`` the distillation loss around it:
    ``distill.loss(outputs, targets, inputs, loss_fn)``, the teacher under the same autocast and
    memory format), backward,
    ``after_backward()``, gradient clipping to ``grad_clip`` (total L2 norm), ``optimizer.step()``,
    ``scheduler.step()``, then ``after_step(n)`` with n = minibatches done in this call (1, 2, ...).
    ``score_first(forward_loss)``, when given, comes first: a scoring pass that may call
    ``forward_loss()`` (the same loss on the same minibatch, in float32 without autocast) and
    back-propagate it; it must leave no gradient behind (the schedule's eval-mode scoring).
    ``after_step`` may replace parameters (the optimizer's own parameter list is what gradients
    are clipped over); returning ``"stop"`` ends the pass early. With fp16 the gradients are
    unscaled before ``after_backward`` (a GradScaler is created unless ``scaler`` is given); hooks
    that read activation gradients during backward still see them multiplied by the loss scale.

    Returns:
        ``{"loss": mean loss per example, "top1": % correct, "iters": minibatches done,
        "lr": learning rate of the first parameter group after the last step, "time_s": seconds}``
        and, with ``distill``, ``"teacher_s"``: seconds of this pass spent in the teacher.

    Raises:
        TrainingDiverged: the loss is NaN or infinite (names the iteration and the value).
        UserError: fp16 without CUDA, an empty loader.
    """
    device = torch.device(device)
    model.train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    autocast = _autocast(device, amp)  # validates amp before any work
    teacher_s0 = 0.0
    if distill is not None:
        distill.prepare(device, channels_last)
        teacher_s0 = distill.teacher_s
    if amp == "fp16" and scaler is None:
        scaler = torch.amp.GradScaler(device.type)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = iters = 0
    t0 = time.perf_counter()
    bar = tqdm(
        _limited(loader, max_iters),
        total=_length(loader, max_iters),
        desc=desc,
        leave=False,
        disable=not _progress_enabled(progress),
    )
    with bar:
        for batch in bar:
            inputs, targets = _to_device(batch, device, channels_last)

            def forward_loss(
                inputs: Any = inputs, targets: Any = targets
            ) -> tuple[torch.Tensor, torch.Tensor]:
                outputs = model(inputs)
                if distill is None:
                    return loss_fn(outputs.float(), targets), outputs
                return distill.loss(outputs.float(), targets, inputs, loss_fn), outputs

            if score_first is not None:
                score_first(lambda: forward_loss()[0])
            with autocast:
                loss, outputs = forward_loss()
            value = loss.item()
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"{desc}: loss is {value} at iteration {iters + 1} "
                    f"(learning rate {optimizer.param_groups[0]['lr']:.3g}); lower the lr or use "
                    "grad_clip"
                )
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if after_backward is not None:
                after_backward()
            if grad_clip is not None:
                # The optimizer's own list: it stays right when parameters are replaced.
                params = [p for g in optimizer.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
            n = targets.shape[0]
            loss_sum += value * n
            correct += (outputs.detach().argmax(dim=1) == targets).sum()
            seen += n
            iters += 1
            if iters % 10 == 0:
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", refresh=False)
            if after_step is not None:
                verdict = after_step(iters)
                if channels_last:
                    # Pruning writes new, contiguous weight tensors; keep the model's layout.
                    model.to(memory_format=torch.channels_last)
                if verdict == "stop":
                    break
    if iters == 0:
        raise UserError(f"{desc}: the training loader yielded no batches")
    out = {
        "loss": float(loss_sum.item() / seen),
        "top1": 100.0 * float(correct.item()) / seen,
        "iters": iters,
        "lr": float(optimizer.param_groups[0]["lr"]),
        "time_s": time.perf_counter() - t0,
    }
    if distill is not None:
        out["teacher_s"] = distill.teacher_s - teacher_s0
    return out


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    *,
    device: str | torch.device = "cpu",
    amp: str | None = None,
    channels_last: bool = False,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    max_batches: int | None = None,
) -> dict[str, Any]:
    """Top-1/top-5 accuracy (%) and mean loss per example over ``loader``, in eval mode.

    In a distributed run every rank must call it: the counts of all ranks' shares are summed.

    ``loss_fn`` defaults to plain cross-entropy and must return the batch mean. ``top5`` is None
    when the model has fewer than 5 outputs. The model's train/eval mode is restored.

    Raises:
        UserError: the loader yields no batches.
    """
    device = torch.device(device)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    was_training = model.training
    model.eval()
    autocast = _autocast(device, amp)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    top1 = torch.zeros((), device=device, dtype=torch.int64)
    top5 = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    num_outputs = 0
    try:
        for batch in _limited(loader, max_batches):
            inputs, targets = _to_device(batch, device, channels_last)
            with autocast:
                outputs = model(inputs).float()
            loss_sum += loss_fn(outputs, targets).double() * targets.shape[0]
            num_outputs = outputs.shape[1]
            k = min(5, num_outputs)
            ranked = outputs.topk(k, dim=1).indices
            hits = ranked == targets[:, None]
            top1 += hits[:, 0].sum()
            top5 += hits.any(dim=1).sum()
            seen += targets.shape[0]
    finally:
        model.train(was_training)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # each rank evaluated its own share of the validation set: add the counts up
        totals = torch.stack([loss_sum, top1.double(), top5.double(), loss_sum.new_tensor(seen)])
        torch.distributed.all_reduce(totals)
        loss_sum, top1, top5, seen = totals[0], totals[1], totals[2], int(totals[3].item())
    if seen == 0:
        raise UserError("evaluation: the validation loader yielded no batches")
    return {
        "top1": 100.0 * float(top1.item()) / seen,
        "top5": 100.0 * float(top5.item()) / seen if num_outputs >= 5 else None,
        "loss": float(loss_sum.item() / seen),
    }


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    loader: Iterable,
    *,
    device: str | torch.device = "cpu",
    batches: int = 50,
) -> None:
    """Reset every BatchNorm's running statistics and re-estimate them on ``batches`` minibatches.

    The estimate is the plain average over the minibatches (cumulative, ``momentum=None``) of the
    batch means and unbiased batch variances. Other layers run in eval mode (no dropout); the
    model's mode and each BN's momentum are restored.
    """
    device = torch.device(device)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    was_training = model.training
    momenta = [bn.momentum for bn in bns]
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    try:
        for batch in _limited(loader, batches):
            inputs, _ = _to_device(batch, device, channels_last=False)
            model(inputs)
    finally:
        for bn, momentum in zip(bns, momenta, strict=True):
            bn.momentum = momentum
        model.train(was_training)


def evaluate_recalibrated(
    model: nn.Module,
    loader: Iterable,
    calibration: Iterable,
    *,
    batches: int,
    device: str | torch.device = "cpu",
    amp: str | None = None,
    channels_last: bool = False,
) -> dict[str, Any]:
    """:func:`evaluate` of a copy of ``model`` whose BatchNorm statistics were re-estimated
    (:func:`recalibrate_bn`) on ``batches`` minibatches of ``calibration``: what a network just
    pruned measures once its statistics follow the removals. ``model`` itself, its running
    statistics, hooks and gradients included, is left as it was; hooks attached to it (scoring,
    ``frozen_bn``) do not run on the copy."""
    measured = clean_copy(model)
    recalibrate_bn(measured, calibration, device=device, batches=batches)
    return evaluate(measured, loader, device=device, amp=amp, channels_last=channels_last)


def _init_conv(module: nn.Module) -> None:
    # He initialisation for ReLU networks, as torchvision's and timm's ResNets use.
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def _init_norm(module: nn.Module) -> None:
    module.reset_parameters()  # γ = 1, β = 0 and, for BN, fresh running statistics


def _init_default(module: nn.Module) -> None:
    module.reset_parameters()


# Per-layer-type initialisation; any other module with reset_parameters() uses its own.
_INITIALIZERS: dict[type, Callable[[nn.Module], None]] = {
    nn.Conv1d: _init_conv,
    nn.Conv2d: _init_conv,
    nn.Conv3d: _init_conv,
    nn.modules.batchnorm._NormBase: _init_norm,
    nn.GroupNorm: _init_norm,
    nn.LayerNorm: _init_norm,
    nn.Linear: _init_default,
}


@torch.no_grad()
def reinitialize(model: nn.Module) -> None:
    """A fresh random initialisation of every parameter, keeping the (possibly pruned) shapes.

    Convolutions get He-normal weights (fan-out) and zero bias, norm layers γ = 1, β = 0 and reset
    running statistics, other layers their own ``reset_parameters()``. Parameters that no rule
    covers keep their values and are named in a logged warning. Draws from torch's global RNG.
    """
    covered: set[int] = set()
    for module in model.modules():
        init = next((f for t, f in _INITIALIZERS.items() if isinstance(module, t)), None)
        if init is None and hasattr(module, "reset_parameters"):
            init = _init_default
        if init is None:
            continue
        init(module)
        covered.update(id(p) for p in module.parameters(recurse=False))
    left = [n for n, p in model.named_parameters() if id(p) not in covered]
    if left:
        log.warning("reinitialize: no initialiser for %d parameters: %s", len(left), left[:5])


# ----------------------------------------------------------------------------------------------
# A whole phase


def fit(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable | None,
    cfg: TrainConfig,
    *,
    device: str | torch.device = "cpu",
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[int, dict[str, Any]], str | None] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: LRScheduler | None = None,
    start_epoch: int = 0,
    teacher: nn.Module | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` for ``cfg.epochs`` epochs (at most ``cfg.max_iters`` minibatches in total).

    Builds the optimizer and per-iteration schedule from ``cfg`` unless given (pass both, with
    their state loaded, and ``start_epoch`` to resume). Evaluates on ``val_loader`` every
    ``cfg.eval_every`` epochs and after the last. ``on_epoch_end(epoch, row)`` is called after each
    epoch (epoch counted from 0) and may return ``"stop"``. With ``cfg.distill`` the model learns
    from ``teacher`` too (:mod:`taylorprune.distill`; the teacher is put on ``device`` in eval
    mode and never trained).

    Returns:
        One row per epoch: ``epoch`` (1-based), ``train_loss``, ``train_top1``, ``lr``, ``iters``,
        ``time_s``, with a teacher ``teacher_s`` (seconds in its forward passes) and, when
        evaluated, ``val_top1``, ``val_top5``, ``val_loss``.

    Raises:
        UserError: ``cfg.distill`` without a ``teacher``, or a ``teacher`` without ``cfg.distill``.
    """
    device = torch.device(device)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    distill = distiller(cfg, teacher)
    loss_fn = loss_fn or make_loss(cfg)
    steps = _length(train_loader, None) or 1
    if optimizer is None:
        optimizer = build_optimizer(model, cfg)
    if scheduler is None:
        scheduler = build_scheduler(optimizer, cfg, steps)
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
    budget = total_iterations(cfg, steps) - start_epoch * steps
    rows: list[dict[str, Any]] = []
    for epoch in range(start_epoch, cfg.epochs):
        if budget <= 0:
            break
        stats = train_epoch(
            model, train_loader, optimizer, loss_fn, scheduler=scheduler, device=device,
            amp=cfg.amp, channels_last=cfg.channels_last, grad_clip=cfg.grad_clip,
            max_iters=budget, progress=progress, desc=f"epoch {epoch + 1}/{cfg.epochs}",
            scaler=scaler, distill=distill,
        )  # fmt: skip
        budget -= stats["iters"]
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": stats["loss"],
            "train_top1": stats["top1"],
            "lr": stats["lr"],
            "iters": stats["iters"],
            "time_s": stats["time_s"],
        }
        if distill is not None:
            row["teacher_s"] = stats["teacher_s"]
        last = epoch + 1 == cfg.epochs or budget <= 0
        if val_loader is not None and ((epoch + 1) % cfg.eval_every == 0 or last):
            ev = evaluate(
                model, val_loader, device=device, amp=cfg.amp, channels_last=cfg.channels_last
            )
            row.update(val_top1=ev["top1"], val_top5=ev["top5"], val_loss=ev["loss"])
        log.info(
            "epoch %d/%d: train loss %.4f top-1 %.2f%%%s",
            epoch + 1,
            cfg.epochs,
            row["train_loss"],
            row["train_top1"],
            f", val top-1 {row['val_top1']:.2f}%" if "val_top1" in row else "",
        )
        rows.append(row)
        if on_epoch_end is not None and on_epoch_end(epoch, row) == "stop":
            break
    return rows


def distiller(cfg: TrainConfig, teacher: nn.Module | None) -> Distiller | None:
    """The :class:`~taylorprune.distill.Distiller` a phase trained with ``cfg`` uses: ``teacher``
    with ``cfg.distill``'s weight and temperature, or None when ``cfg.distill`` is None.

    Raises:
        UserError: one of ``cfg.distill`` and ``teacher`` is given without the other.
    """
    if cfg.distill is None:
        if teacher is not None:
            raise UserError("a teacher was given but cfg.distill is null (set weight, temperature)")
        return None
    if teacher is None:
        raise UserError("cfg.distill is set: pass the teacher (the unpruned model) to learn from")
    return Distiller(teacher, weight=cfg.distill.weight, temperature=cfg.distill.temperature)
