"""Multi-process runs on PyTorch's own distributed engine (``torchrun``), and nothing home-made.

``torchrun --nproc_per_node=N -m taylorprune run RECIPE`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and a rendezvous in the environment; :func:`setup` joins the process
group (NCCL on GPU, gloo on CPU). Fine-tuning runs under ``DistributedDataParallel``, so gradients
are averaged across ranks; importance accumulators are summed across ranks before every pruning
decision, so every rank removes exactly the same channels. Only rank 0 writes files and logs.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def launched() -> bool:
    """True when started by torchrun (or another launcher that sets ``WORLD_SIZE``)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def setup(device_name: str = "auto") -> torch.device:
    """Join the process group if launched by torchrun; return this process's device.

    ``device_name`` is the recipe's ``device``: ``auto`` picks ``cuda:LOCAL_RANK`` when CUDA is
    present, else the CPU. The backend follows the device: NCCL for CUDA, gloo for the CPU.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_name == "auto":
        use_cuda = torch.cuda.is_available()
    else:
        use_cuda = torch.device(device_name).type == "cuda"
    device = torch.device("cuda", local_rank) if use_cuda and launched() else None
    if launched() and not dist.is_initialized():
        if device is not None:
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend="nccl" if device is not None else "gloo",
            timeout=datetime.timedelta(minutes=30),
        )
    return device if device is not None else torch.device("cpu")


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` under DistributedDataParallel when distributed, else itself.

    Build a new wrapper after every pruning step: DDP registers the parameters it synchronises when
    it is built, and pruning replaces them.
    """
    if not active():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def gather(obj: Any) -> list[Any]:
    """``obj`` from every rank, in rank order (a list of one when not distributed)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def digest(model: nn.Module) -> str:
    """A short hash of every parameter and buffer: equal across ranks iff the models are equal."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
