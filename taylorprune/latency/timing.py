"""Where and how latency is timed: the device, its identity, and medians after warm-up.

Every latency in :mod:`taylorprune.latency` is a median in milliseconds per batch, taken after
untimed warm-up passes, in eval mode under ``torch.inference_mode``, with a fixed number of
intra-op CPU threads: the conventions of :func:`taylorprune.measure.latency`. How one call is
timed (:func:`time_ms`, :func:`time_once`, :func:`summary`, :func:`threads_set`) lives in
:mod:`taylorprune._timing`, shared with :mod:`taylorprune.measure`, and is re-exported here.
"""

from __future__ import annotations

import copy
import functools
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from taylorprune._timing import summary, threads_set, time_ms, time_once
from taylorprune.errors import UserError

__all__ = [
    "DTYPES",
    "DeviceInfo",
    "TimingSettings",
    "cpu_name",
    "device_info",
    "measure_latency",
    "measure_models",
    "module_to_settings",
    "resolve_device",
    "summary",
    "threads_set",
    "time_ms",
    "time_once",
    "to_settings",
]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


@dataclass(frozen=True)
class TimingSettings:
    """What a latency is the latency of, apart from the model: device, batch, threads, numerics.

    ``device`` is ``"cpu"`` or ``"cuda[:N]"``; ``threads`` the intra-op CPU threads (``None``: as
    set now, read when the device is described); ``dtype`` a key of :data:`DTYPES` (the model and
    inputs are converted to it); ``channels_last`` the memory format of 4-D tensors.
    """

    device: str = "cpu"
    batch_size: int = 16
    threads: int | None = None
    dtype: str = "float32"
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise UserError(f"dtype: unknown {self.dtype!r}; choices: {', '.join(DTYPES)}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise UserError(f"batch size: expected an integer >= 1, got {self.batch_size!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise UserError(f"threads: expected an integer >= 1, got {self.threads!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DeviceInfo:
    """The identity of the hardware and software a latency was measured on.

    ``name`` is the CPU model (``/proc/cpuinfo``) or the GPU's name; ``threads`` the intra-op CPU
    threads in use; ``torch`` the torch version. Two measurements are comparable only when
    ``type``, ``name`` and ``threads`` agree (and preferably ``torch``).
    """

    type: str
    name: str
    threads: int
    torch: str

    def describe(self) -> str:
        return f"{self.type} '{self.name}' ({self.threads} threads, torch {self.torch})"

    def as_dict(self) -> dict:
        return asdict(self)


def resolve_device(device: str) -> torch.device:
    """``device`` as a torch device, or a :class:`UserError` if it does not exist here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(
            f"device {device!r}: not a device name (expected cpu or cuda[:N])"
        ) from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise UserError(f"device {device!r}: only cpu and cuda[:N] latency is supported")
    if not torch.cuda.is_available():
        raise UserError(f"device {device!r}: CUDA is not available on this machine")
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise UserError(
            f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return torch.device("cuda", index)


def device_info(settings: TimingSettings) -> DeviceInfo:
    """The :class:`DeviceInfo` of ``settings``' device (raises :class:`UserError` if absent)."""
    dev = resolve_device(settings.device)
    threads = settings.threads or torch.get_num_threads()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name()
    return DeviceInfo(dev.type, name, int(threads), str(torch.__version__))


@functools.cache
def cpu_name() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``; elsewhere what ``platform`` knows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def to_settings(x: torch.Tensor, settings: TimingSettings, device: torch.device) -> torch.Tensor:
    """A tensor on ``device`` in ``settings``' dtype and memory format."""
    x = x.to(device=device, dtype=settings.torch_dtype)
    if settings.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def module_to_settings(
    module: nn.Module, settings: TimingSettings, device: torch.device
) -> nn.Module:
    """``module`` in eval mode on ``device`` in ``settings``' dtype and memory format (in place)."""
    module = module.to(device=device, dtype=settings.torch_dtype)
    if settings.channels_last:
        module = module.to(memory_format=torch.channels_last)
    return module.eval()


def measure_models(
    models: Sequence[nn.Module],
    input_shape: Sequence[int],
    settings: TimingSettings,
    *,
    runs: int = 20,
    warmup: int = 3,
    seed: int = 0,
) -> list[dict[str, float]]:
    """End-to-end latency of each of ``models`` (batch ``settings.batch_size`` of ``input_shape``).

    The models' timed passes interleave (each round visits all models, in an order that rotates
    from round to round) so that drifts in machine load hit all alike: ratios between them are
    then far steadier than the absolute times on a shared machine. Each model is copied to the
    device, dtype and memory format of ``settings``; the callers' models are left as they were.
    Returns :func:`summary` per model, in order.
    """
    times = interleaved_times(models, input_shape, settings, runs=runs, warmup=warmup, seed=seed)
    return [summary(t) for t in times]


def interleaved_times(
    models: Sequence[nn.Module],
    input_shape: Sequence[int],
    settings: TimingSettings,
    *,
    runs: int = 20,
    warmup: int = 3,
    seed: int = 0,
    copies: int = 1,
) -> list[list[float]]:
    """The timings (ms) behind :func:`measure_models`: ``times[i][r]`` is model ``i`` in round
    ``r``, so that ratios can be taken round by round (:func:`ratio_summary`).

    ``copies > 1`` splits the rounds into that many blocks, each on fresh copies of the models
    (warmed up again): on a CPU the ratio between two models moves by several percent from one
    set of copies to the next while its rounds within one set agree closely, so pooling sets
    averages that out at the same number of timed rounds."""
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    dev = resolve_device(settings.device)
    x = torch.randn(
        settings.batch_size, *input_shape, generator=torch.Generator().manual_seed(seed)
    )
    x = to_settings(x, settings, dev)
    times: list[list[float]] = [[] for _ in models]
    blocks = [runs // copies + (1 if b < runs % copies else 0) for b in range(copies)]
    done = 0
    for block in blocks:
        if block == 0:
            continue
        nets = [module_to_settings(copy.deepcopy(m), settings, dev) for m in models]
        with threads_set(settings.threads), torch.inference_mode():
            for net in nets:
                for _ in range(warmup):
                    net(x)
            for r in range(done, done + block):
                for k in range(len(nets)):
                    i = (k + r) % len(nets)
                    times[i].append(time_once(lambda net=nets[i]: net(x), dev))
        done += block
    return times


def ratio_summary(times: Sequence[float], reference: Sequence[float]) -> dict[str, float]:
    """Median, 10th and 90th percentile of ``times[r] / reference[r]`` over rounds ``r`` of one
    interleaved measurement: a load change during a round slows both alike and cancels."""
    return ratio_stats([t / ref for t, ref in zip(times, reference, strict=True)])


def ratio_stats(ratios: Sequence[float]) -> dict[str, float]:
    """Median, 10th and 90th percentile of per-round ratios (of one reading or several pooled)."""
    s = summary(list(ratios))
    return {"median": s["median_ms"], "p10": s["p10_ms"], "p90": s["p90_ms"], "runs": s["runs"]}


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    settings: TimingSettings,
    *,
    runs: int = 20,
    warmup: int = 3,
) -> dict[str, float]:
    """End-to-end latency of ``model`` (:func:`summary`: ``median_ms``, ``p10_ms``, ...)."""
    return measure_models([model], input_shape, settings, runs=runs, warmup=warmup)[0]
