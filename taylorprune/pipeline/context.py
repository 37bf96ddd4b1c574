"""What the phases of one run share: settings, device, data, the output folder, the record."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import taylorprune.distributed as distributed
from taylorprune.data import DataBundle
from taylorprune.errors import UserError
from taylorprune.optimizers import make_loss
from taylorprune.pipeline.checkpoints import Phase, RunCheckpoint, write_run_checkpoint
from taylorprune.pipeline.options import RunOptions
from taylorprune.pipeline.record import RunRecord
from taylorprune.recipe import TrainConfig
from taylorprune.train import evaluate, fit


@dataclass
class RunContext:
    """``recipe`` is the resolved recipe as plain data (what checkpoints prove they belong to);
    ``example`` one all-zero input on the CPU (what MACs are counted on); ``spec`` the model spec
    with the dataset's classes and channels filled in, ``arch`` the same as a saved model
    records it; ``progress``: show progress bars; ``plots``: draw the report's plots."""

    options: RunOptions
    recipe: dict[str, Any]
    out_dir: Path
    device: torch.device
    data: DataBundle
    example: torch.Tensor
    spec: dict[str, Any]
    arch: dict[str, Any]
    record: RunRecord
    progress: bool
    plots: bool = True

    def evaluate(self, model: nn.Module, loader: Any = None) -> dict[str, Any]:
        """Top-1/top-5/loss on the validation set, or on ``loader`` (the test split) when given
        (every rank takes part when distributed)."""
        ft = self.options.finetune.train
        return evaluate(
            model,
            self.data.val if loader is None else loader,
            device=self.device,
            amp=ft.amp,
            channels_last=ft.channels_last,
        )

    def checkpoint(
        self,
        phase: Phase,
        done: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Save a run checkpoint (rank 0 only): ``done`` epochs or steps of ``phase`` finished."""
        if not distributed.is_main():
            return
        ckpt = RunCheckpoint(
            phase=phase,
            done=done,
            model=model,
            recipe=self.recipe,
            record=self.record.as_dict(),
            optimizer=None if optimizer is None else optimizer.state_dict(),
            scheduler=None if scheduler is None else scheduler.state_dict(),
            extra=extra,
        )
        write_run_checkpoint(self.out_dir, ckpt, self.arch)

    def fit(
        self,
        phase: Phase,
        model: nn.Module,
        cfg: TrainConfig,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        start_epoch: int,
        on_epoch_end: Callable[[int, dict[str, Any]], None],
        teacher: nn.Module | None = None,
    ) -> None:
        """Train ``model`` for a phase as every training phase of a run does: under DDP, the
        generators reseeded from (seed, phase, epoch) before every epoch, ``on_epoch_end(epoch,
        row)`` (the phase's record and checkpoint) after each, from ``start_epoch``."""

        def after(epoch: int, row: dict[str, Any]) -> None:
            on_epoch_end(epoch, row)
            self.reseed(phase, epoch + 1)

        self.reseed(phase, start_epoch)
        fit(
            distributed.wrap(model, self.device),
            self.data.train,
            self.data.val,
            cfg,
            device=self.device,
            loss_fn=make_loss(cfg),
            progress=self.progress,
            on_epoch_end=after,
            optimizer=optimizer,
            scheduler=scheduler,
            start_epoch=start_epoch,
            teacher=teacher,
        )

    def reseed(self, phase: str, epoch: int) -> None:
        reseed_phase(self.data, self.options.seed, phase, epoch)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """The run's device, with its index (``cuda`` is the current CUDA device, ``cuda:0``)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device: {name!r} requested but no CUDA device is available")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


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


def model_spec(model: dict[str, Any], data: DataBundle) -> dict[str, Any]:
    """The recipe's model section as a spec for ``build_model``, the dataset filling in classes
    and input channels left unset."""
    return {
        "source": model["source"],
        "name": model["name"],
        "num_classes": data.num_classes if model["num_classes"] is None else model["num_classes"],
        "in_chans": data.input_shape[0] if model["in_chans"] is None else model["in_chans"],
        "pretrained": model["pretrained"],
        "weights": model["weights"],
        "checkpoint": model["checkpoint"],
        "kwargs": dict(model["kwargs"]),
    }
