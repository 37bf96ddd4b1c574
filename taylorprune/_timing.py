"""Timing one call: medians in milliseconds after warm-up, on the CPU or on CUDA.

The one timing implementation behind :func:`taylorprune.measure.latency` and
:mod:`taylorprune.latency`. On CUDA, kernels run asynchronously, so intervals are taken with CUDA
events after a synchronisation; a call shorter than a millisecond is repeated inside one interval
so that the event resolution does not dominate.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch


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
    """One timed call in milliseconds (on CUDA between two events, after a synchronisation)."""
    if device.type != "cuda":
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
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
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
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
