"""Latency on the user's device: a measured per-layer table, a whole-network prediction, and the
selection of channel widths that keeps the most saliency under a latency budget (HALP).

- :mod:`~taylorprune.latency.timing`: devices, settings, medians after warm-up.
- :mod:`~taylorprune.latency.layers`: which layers the table covers, their signatures.
- :mod:`~taylorprune.latency.table`: grid, interpolation, the table as a file.
- :mod:`~taylorprune.latency.build`: measuring a table, the on-disk cache.
- :mod:`~taylorprune.latency.model`: whole-network prediction and recalibration.
- :mod:`~taylorprune.latency.selection`: the knapsack and the greedy.
- :mod:`~taylorprune.latency.groups`: torch-pruning's groups as selection input.
- :mod:`~taylorprune.latency.fit`: how well the table predicts.
"""

from taylorprune.latency.build import build_table
from taylorprune.latency.groups import latency_groups, layer_effects
from taylorprune.latency.model import CORRECTIONS, RESIDUALS, LatencyModel
from taylorprune.latency.selection import (
    SELECTORS,
    Constraints,
    LatencyGroup,
    Selection,
    allowed_keep,
    check_budget,
    closest_latency,
    select,
)
from taylorprune.latency.table import LatencyTable, LayerEntry, axis_points
from taylorprune.latency.timing import (
    DeviceInfo,
    TimingSettings,
    device_info,
    measure_latency,
    measure_models,
)

__all__ = [
    "CORRECTIONS",
    "RESIDUALS",
    "SELECTORS",
    "Constraints",
    "DeviceInfo",
    "LatencyGroup",
    "LatencyModel",
    "LatencyTable",
    "LayerEntry",
    "Selection",
    "TimingSettings",
    "allowed_keep",
    "axis_points",
    "build_table",
    "check_budget",
    "closest_latency",
    "device_info",
    "latency_groups",
    "layer_effects",
    "measure_latency",
    "measure_models",
    "select",
]
