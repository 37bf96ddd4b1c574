"""How well the table predicts: pruned networks measured against their prediction
(``taylorprune latency-table --check``).

Networks are measured *side by side*: the baseline and every pruned variant interleaved in each
round (:func:`~taylorprune.latency.timing.measure_models`), so a ratio to the baseline is far
steadier than an absolute time on a shared machine. Each row carries both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from taylorprune._clean_copy import clean_copy
from taylorprune.graph import ChannelGraph, ChannelGroup
from taylorprune.latency.model import LatencyModel
from taylorprune.latency.timing import measure_models


def _keeping(model: nn.Module, example: torch.Tensor, keep: Mapping[str, int]) -> nn.Module:
    """A copy of ``model`` whose group rooted at ``root`` keeps its first ``keep[root]`` channels
    (which ones go does not matter for latency, only how many)."""
    from taylorprune.pruning.removal import pruned_copy

    sizes = {g.root: g.size for g in ChannelGraph(clean_copy(model), example).groups()}
    channels = {r: range(keep[r], size) for r, size in sizes.items() if keep.get(r, size) < size}
    return pruned_copy(model, example, channels)


def width_configs(
    groups: Sequence[ChannelGroup],
    *,
    uniform: Sequence[float] = (0.9, 0.75, 0.5),
    random: int = 3,
    low: float = 0.3,
    align: int = 8,
    seed: int = 0,
) -> dict[str, dict[str, int]]:
    """Kept channels per group root for a few pruned variants of one model.

    ``uniform-<f>`` keeps the fraction ``f`` of every group; ``random-<i>`` a fraction drawn
    uniformly from ``[low, 1]`` per group. Widths are rounded to multiples of ``align`` (at least
    ``align``, at most the group's width).
    """

    def rounded(size: int, frac: float) -> int:
        return int(min(size, max(align, align * round(frac * size / align))))

    out: dict[str, dict[str, int]] = {}
    for f in uniform:
        out[f"uniform-{f:g}"] = {g.root: rounded(g.size, f) for g in groups}
    rng = np.random.default_rng(seed)
    for i in range(random):
        out[f"random-{i}"] = {g.root: rounded(g.size, rng.uniform(low, 1.0)) for g in groups}
    return out


def check_fit(
    model: nn.Module,
    latency: LatencyModel,
    configs: Mapping[str, Mapping[str, int]],
    *,
    runs: int = 10,
    warmup: int = 2,
) -> dict[str, Any]:
    """Predicted against measured latency for each pruned variant in ``configs`` (see
    :func:`width_configs`), measured side by side with the baseline ``model``.

    Returns ``baseline`` (measured now) and ``rows``: per variant ``name``, ``predicted_ms`` (raw
    prediction, i.e. without any correction), ``measured_ms`` (median) with ``p10_ms``/``p90_ms``,
    ``predicted_ratio``/``measured_ratio`` (to the baseline's prediction / measurement in the same
    run), their relative error ``error`` = predicted_ratio / measured_ratio - 1, and the
    variant's table-layer ``widths``.
    """
    table = latency.table
    example = torch.randn(1, *table.input_shape)
    variants = {name: _keeping(model, example, keep) for name, keep in configs.items()}
    times = measure_models(
        [model, *variants.values()], table.input_shape, table.settings, runs=runs, warmup=warmup
    )
    base, rest = times[0], times[1:]
    base_raw = latency.raw()
    rows = []
    for (name, net), t in zip(variants.items(), rest, strict=True):
        raw = latency.raw(latency.widths(net))
        pred_ratio = raw / base_raw
        meas_ratio = t["median_ms"] / base["median_ms"]
        rows.append(
            {
                "name": name,
                "predicted_ms": raw,
                "measured_ms": t["median_ms"],
                "p10_ms": t["p10_ms"],
                "p90_ms": t["p90_ms"],
                "predicted_ratio": pred_ratio,
                "measured_ratio": meas_ratio,
                "error": pred_ratio / meas_ratio - 1.0,
                "widths": latency.widths(net),
            }
        )
    return {"baseline": base, "table_baseline_ms": latency.baseline_ms, "rows": rows}
