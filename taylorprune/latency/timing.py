"""How latency is timed, the one implementation behind every latency the package reports.

A latency is a median in milliseconds per batch, taken after untimed warm-up passes, in eval mode
under ``torch.inference_mode``, with a fixed number of intra-op CPU threads, on the device, dtype
and memory format of a :class:`TimingSettings`. On CUDA, kernels run asynchronously, so intervals
are taken with CUDA events after a synchronisation; a call shorter than a millisecond is repeated
inside one interval so that the event resolution does not dominate.

Models compared are timed *side by side* (:func:`interleaved_times`): each round visits every
model, so a change of machine load hits all alike, and a ratio is taken round by round
(:func:`side_by_side`: the median per-round ratio with its 10th and 90th percentiles). The latency
tables, a latency target's trials, the report's reading of the pruned model against the baseline
and ``taylorprune measure`` all time through here.
"""

from __future__ import annotations

import functools
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from taylorprune._clean_copy import clean_copy
from taylorprune.errors import UserError

__all__ = [
    "DTYPES",
    "DeviceInfo",
    "TimingSettings",
    "cpu_name",
    "device_info",
    "interleaved_times",
    "measure_latency",
    "measure_models",
    "module_to_settings",
    "ratio_stats",
    "resolve_device",
    "side_by_side",
    "summary",
    "threads_set",
    "time_ms",
    "time_once",
    "to_settings",
]


def check_runs(runs: int, warmup: int) -> None:
    """``ValueError`` unless ``runs >= 1`` and ``warmup >= 0``."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")


@contextmanager
def threads_set(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` intra-op CPU threads (``None``: unchanged), restoring the setting."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def time_ms(
    fn: Callable[[], object], device: torch.device, *, warmup: int, runs: int
) -> list[float]:
    """``runs`` timings of ``fn()`` in milliseconds, after ``warmup`` untimed calls."""
    check_runs(runs, warmup)
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        return [time_once(fn, device) for _ in range(runs)]
    return _cuda_times(fn, device, runs)


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """One timed call in milliseconds (on CUDA between two events on ``device``'s current
    stream, after a synchronisation)."""
    if device.type != "cuda":
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    with torch.cuda.device(device):
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)


def _cuda_times(fn: Callable[[], object], device: torch.device, runs: int) -> list[float]:
    first = time_once(fn, device)
    # Repeat short calls within one interval: event timestamps resolve about a microsecond, and
    # a kernel of a few microseconds would otherwise be mostly launch and timing noise.
    inner = max(1, min(100, int(1.0 / max(first, 1e-3))))
    times = []
    with torch.cuda.device(device):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(runs):
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / inner)
    return times


def summary(times_ms: Sequence[float]) -> dict[str, float]:
    """Median, 10th and 90th percentile (ms) and the number of runs."""
    times = list(times_ms)
    deciles = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else None
    return {
        "median_ms": statistics.median(times),
        "p10_ms": deciles[0] if deciles else times[0],
        "p90_ms": deciles[-1] if deciles else times[0],
        "runs": len(times),
    }


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
    """``module`` in eval mode on ``device`` in ``settings``' dtype and memory format (in place;
    a model trained in channels_last is made contiguous again when the settings say so, so that
    models compared are timed in the same layout)."""
    module = module.to(device=device, dtype=settings.torch_dtype)
    layout = torch.channels_last if settings.channels_last else torch.contiguous_format
    return module.to(memory_format=layout).eval()


Inputs = torch.Tensor | Sequence[torch.Tensor]


def measure_models(
    models: Sequence[nn.Module],
    input_shape: Sequence[int] | None,
    settings: TimingSettings,
    *,
    runs: int = 20,
    warmup: int = 3,
    seed: int = 0,
    inputs: Inputs | None = None,
) -> list[dict[str, float]]:
    """End-to-end latency of each of ``models``, timed side by side (:func:`interleaved_times`):
    :func:`summary` per model, in order."""
    times = interleaved_times(
        models, input_shape, settings, runs=runs, warmup=warmup, seed=seed, inputs=inputs
    )
    return [summary(t) for t in times]


def interleaved_times(
    models: Sequence[nn.Module],
    input_shape: Sequence[int] | None,
    settings: TimingSettings,
    *,
    runs: int = 20,
    warmup: int = 3,
    seed: int = 0,
    copies: int = 1,
    inputs: Inputs | None = None,
) -> list[list[float]]:
    """``times[i][r]``: model ``i`` in round ``r`` (ms). Each round visits every model, in an
    order that rotates from round to round, so that drifts in machine load hit all alike.

    The batch is ``settings.batch_size`` random inputs of ``input_shape`` (seeded by ``seed``), or
    ``inputs`` as given (a tensor or a tuple of tensors). Models and inputs are copied to the
    settings' device, dtype and memory format; the callers' models are left as they were.
    ``copies > 1`` splits the rounds into that many blocks, each on fresh copies of the models
    (warmed up again): on a CPU the ratio between two models moves by several percent from one
    set of copies to the next while its rounds within one set agree closely, so pooling sets
    averages that out at the same number of timed rounds."""
    check_runs(runs, warmup)
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    dev = resolve_device(settings.device)
    if inputs is None:
        assert input_shape is not None, "input_shape or inputs"
        g = torch.Generator().manual_seed(seed)
        inputs = torch.randn(settings.batch_size, *input_shape, generator=g)
    xs = tuple(
        to_settings(x, settings, dev) for x in ((inputs,) if torch.is_tensor(inputs) else inputs)
    )
    times: list[list[float]] = [[] for _ in models]
    blocks = [runs // copies + (1 if b < runs % copies else 0) for b in range(copies)]
    done = 0
    for block in blocks:
        if block == 0:
            continue
        nets = [module_to_settings(clean_copy(m), settings, dev) for m in models]
        with threads_set(settings.threads), torch.inference_mode():
            for net in nets:
                for _ in range(warmup):
                    net(*xs)
            for r in range(done, done + block):
                for k in range(len(nets)):
                    i = (k + r) % len(nets)
                    times[i].append(time_once(lambda net=nets[i]: net(*xs), dev))
        done += block
    return times


def side_by_side(
    reference: nn.Module,
    model: nn.Module,
    input_shape: Sequence[int] | None,
    settings: TimingSettings,
    *,
    runs: int = 20,
    warmup: int = 3,
    copies: int = 1,
    inputs: Inputs | None = None,
) -> dict[str, Any]:
    """``model`` against ``reference``, timed side by side (:func:`interleaved_times`).

    Returns each model's median with its 10th and 90th percentiles (``baseline_ms``,
    ``baseline_p10_ms``, ``baseline_p90_ms``, ``pruned_ms``, ...), the median per-round ratio
    ``fraction`` (model / reference) and its inverse ``speedup``, each with its 10th and 90th
    percentiles (a load change during a round slows both alike and cancels), ``runs``,
    ``warmup``, ``copies`` and the per-round ratios (``ratios``, to pool several readings with
    :func:`ratio_stats`).
    """
    times = interleaved_times(
        [reference, model], input_shape, settings, runs=runs, warmup=warmup, copies=copies,
        inputs=inputs,
    )  # fmt: skip
    ratios = [t / b for t, b in zip(times[1], times[0], strict=True)]
    fraction = ratio_stats(ratios)
    speedup = ratio_stats([1.0 / r for r in ratios])
    base, pruned = summary(times[0]), summary(times[1])
    return {
        "baseline_ms": base["median_ms"],
        "baseline_p10_ms": base["p10_ms"],
        "baseline_p90_ms": base["p90_ms"],
        "pruned_ms": pruned["median_ms"],
        "pruned_p10_ms": pruned["p10_ms"],
        "pruned_p90_ms": pruned["p90_ms"],
        "fraction": fraction["median"],
        "fraction_p10": fraction["p10"],
        "fraction_p90": fraction["p90"],
        "speedup": speedup["median"],
        "speedup_p10": speedup["p10"],
        "speedup_p90": speedup["p90"],
        "runs": runs,
        "warmup": warmup,
        "copies": copies,
        "ratios": ratios,
    }


def ratio_summary(times: Sequence[float], reference: Sequence[float]) -> dict[str, float]:
    """Median, 10th and 90th percentile of ``times[r] / reference[r]`` over rounds ``r`` of one
    interleaved measurement."""
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
