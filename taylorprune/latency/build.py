"""Measuring a latency table on the device, with measurements cached on disk.

Every grid point of every table layer is timed in isolation: a freshly built module of the layer's
signature at those widths (with its merged BatchNorm), in eval mode under ``inference_mode``, on a
random input of the run's batch size, dtype and memory format; ``warmup`` untimed calls, then the
median of ``runs``. Points are kept per signature in ``$TAYLORPRUNE_CACHE/latency`` (default
``~/.cache/taylorprune/latency``), keyed by the device's type and name, the CPU threads, the torch
version, the signature, the batch size, dtype and memory format: layers of one model that share a
signature are measured once, and so are those of any later model on the same device.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from taylorprune._io import atomic_write_text
from taylorprune.errors import UserError
from taylorprune.latency.layers import TableLayer, build_layer, find_layers, layer_input
from taylorprune.latency.table import LatencyTable, LayerEntry, grid_for
from taylorprune.latency.timing import (
    DeviceInfo,
    TimingSettings,
    device_info,
    module_to_settings,
    resolve_device,
    threads_set,
    time_ms,
    to_settings,
)

logger = logging.getLogger("taylorprune")

_CACHE_FORMAT = "taylorprune.latency_points"
_CACHE_VERSION = 1

Point = tuple[int, int]

#: Spread of a point's timings (interquartile range / median; the median over points) above
#: which a table is reported as noisy. A quiet machine stays within a few percent.
_NOISY = 0.1


def cache_root() -> Path:
    """The folder of cached latency measurements."""
    root = os.environ.get("TAYLORPRUNE_CACHE") or Path.home() / ".cache" / "taylorprune"
    return Path(root) / "latency"


def cache_key(device: DeviceInfo, settings: TimingSettings, signature: str) -> dict[str, Any]:
    """Everything a measured point depends on, apart from its two widths."""
    return {
        "format": _CACHE_VERSION,
        "device": device.type,
        "name": device.name,
        "threads": device.threads,
        "torch": device.torch,
        "batch_size": settings.batch_size,
        "dtype": settings.dtype,
        "channels_last": settings.channels_last,
        "signature": json.loads(signature),
    }


def cache_path(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_root() / f"{key['device']}-{digest}.json"


def read_points(key: dict[str, Any]) -> dict[Point, float]:
    """Cached points for ``key``; an unreadable or foreign file counts as empty."""
    path = cache_path(key)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != _CACHE_FORMAT or data.get("key") != key:
            return {}
        return {(int(a), int(b)): float(ms) for a, b, ms in data["points"]}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, KeyError) as exc:
        logger.warning("latency cache %s unreadable (%s); measuring again", path, exc)
        return {}


def write_points(key: dict[str, Any], points: dict[Point, float]) -> None:
    data = {
        "format": _CACHE_FORMAT,
        "key": key,
        "points": [[a, b, ms] for (a, b), ms in sorted(points.items())],
    }
    atomic_write_text(json.dumps(data) + "\n", cache_path(key))


def measure_point(
    signature: dict[str, Any],
    cin: int,
    cout: int,
    settings: TimingSettings,
    device: torch.device,
    *,
    warmup: int,
    runs: int,
) -> float:
    """Median latency (ms per batch) of one call of a ``signature`` layer at ``cin`` -> ``cout``."""
    times = measure_points(signature, [(cin, cout)], settings, device, warmup=warmup, runs=runs)
    return float(np.median(times[(cin, cout)]))


def measure_points(
    signature: dict[str, Any],
    points: Sequence[Point],
    settings: TimingSettings,
    device: torch.device,
    *,
    warmup: int,
    runs: int,
    chunk: int = 16,
    seed: int = 0,
) -> dict[Point, list[float]]:
    """``runs`` timings (ms per batch) of a ``signature`` layer at each ``(cin, cout)`` of
    ``points``.

    Points are timed in rounds, one call each per round in a shuffled order, ``chunk`` points at a
    time (to bound the memory of live modules and inputs): a change in machine load during the
    measurement then spreads over all widths alike instead of biasing some against others.
    """
    rng = random.Random(seed)
    order = list(points)
    rng.shuffle(order)
    out: dict[Point, list[float]] = {}
    with torch.inference_mode():
        for start in range(0, len(order), chunk):
            part = order[start : start + chunk]
            inputs = {
                cin: to_settings(layer_input(signature, cin, settings.batch_size), settings, device)
                for cin in {p[0] for p in part}
            }
            modules = {
                p: module_to_settings(build_layer(signature, *p), settings, device) for p in part
            }
            calls = {p: functools.partial(modules[p], inputs[p[0]]) for p in part}
            for p in part:
                for _ in range(warmup):
                    calls[p]()
            times: dict[Point, list[float]] = {p: [] for p in part}
            for _ in range(runs):
                rng.shuffle(part)
                for p in part:
                    times[p] += time_ms(calls[p], device, warmup=0, runs=1)
            out.update(times)
    return out


def build_table(
    model: nn.Module,
    input_shape: Sequence[int],
    settings: TimingSettings,
    *,
    align: int = 8,
    low: float = 0.1,
    warmup: int = 1,
    runs: int = 5,
    use_cache: bool = True,
    rebuild: bool = False,
    progress: bool = False,
) -> LatencyTable:
    """Measure the latency table of ``model`` (one sample of ``input_shape``) under ``settings``.

    ``align`` and ``low`` choose the grid (:func:`~taylorprune.latency.table.axis_points`);
    ``warmup``/``runs`` the timing of each point. Cached points are reused unless ``rebuild``
    (which measures everything again and overwrites the cache) or ``use_cache=False``. Raises
    :class:`UserError` for a device that does not exist here or a model that does not run on
    ``input_shape``.
    """
    if align < 1 or not 0.0 <= low < 1.0:
        raise UserError(f"latency table: need align >= 1 and 0 <= low < 1, got {align}, {low}")
    dev = resolve_device(settings.device)
    info = device_info(settings)
    start = time.perf_counter()
    try:
        layers = find_layers(model, input_shape)
    except Exception as exc:  # a forward pass that fails on this shape is the user's input
        shape = "x".join(map(str, input_shape))
        raise UserError(
            f"model does not run on input {shape} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    if not layers:
        raise UserError("latency table: the model has no convolution, Linear or norm layer")
    grids = {layer.name: grid_for(layer, align, low) for layer in layers}
    wanted: dict[str, set[Point]] = {}
    signatures: dict[str, dict[str, Any]] = {}
    for layer in layers:
        sig = layer.key()
        signatures[sig] = layer.signature
        entry = LayerEntry(layer, *grids[layer.name], np.zeros(0))
        wanted.setdefault(sig, set()).update(entry.points())

    measured: dict[str, dict[Point, float]] = {}
    n_new = n_cached = 0
    todo = []
    for sig, points in wanted.items():
        key = cache_key(info, settings, sig)
        have = read_points(key) if use_cache and not rebuild else {}
        measured[sig] = {p: have[p] for p in points if p in have}
        n_cached += len(measured[sig])
        todo += [(sig, p) for p in sorted(points) if p not in have]
    bar = tqdm(total=len(todo), desc="latency table", disable=not progress, leave=False)
    spreads = []
    with threads_set(settings.threads):
        for sig in dict.fromkeys(s for s, _ in todo):
            points = [p for s, p in todo if s == sig]
            times = measure_points(signatures[sig], points, settings, dev, warmup=warmup, runs=runs)
            for p, t in times.items():
                measured[sig][p] = float(np.median(t))
                q1, q2, q3 = np.percentile(t, [25, 50, 75])
                spreads.append((q3 - q1) / max(q2, 1e-12))
            n_new += len(points)
            bar.update(len(points))
    bar.close()
    spread = float(np.median(spreads)) if spreads else 0.0
    if spread > _NOISY and runs > 1:
        logger.warning(
            "latency table: repeated timings of a layer spread over %.0f%% (interquartile range, "
            "median over points); the machine is busy or unstable and the table will be noisy",
            100 * spread,
        )
    if use_cache:
        for sig in {s for s, _ in todo}:
            key = cache_key(info, settings, sig)
            merged = {} if rebuild else read_points(key)
            merged.update(measured[sig])
            write_points(key, merged)

    entries = {
        layer.name: _entry(layer, grids[layer.name], measured[layer.key()]) for layer in layers
    }
    seconds = time.perf_counter() - start
    stats = {
        "layers": len(layers),
        "signatures": len(wanted),
        "points": sum(len(p) for p in wanted.values()),
        "measured": n_new,
        "cached": n_cached,
        "seconds": seconds,
        "warmup": warmup,
        "runs": runs,
        "spread": spread,
    }
    logger.info(
        "latency table: %d layers, %d signatures, %d points (%d measured, %d from cache) in %.1f s",
        *(stats[k] for k in ("layers", "signatures", "points", "measured", "cached", "seconds")),
    )
    return LatencyTable(info, settings, tuple(input_shape), entries, align, low, stats)


def _entry(
    layer: TableLayer, grid: tuple[np.ndarray, np.ndarray], points: dict[Point, float]
) -> LayerEntry:
    cin_axis, cout_axis = grid
    if layer.tied:
        values = np.array([points[(int(c), int(c))] for c in cout_axis])
    else:
        values = np.array([[points[(int(a), int(b))] for b in cout_axis] for a in cin_axis])
    return LayerEntry(layer, cin_axis, cout_axis, values * layer.calls)
