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

The names below load their module on first use: timing a model (``taylorprune measure``) needs
only :mod:`~taylorprune.latency.timing`, not torch-pruning's groups.
"""

from taylorprune._lazy import lazy_names

_LAZY = {
    "CORRECTIONS": "taylorprune.latency.model",
    "Constraints": "taylorprune.latency.selection",
    "DeviceInfo": "taylorprune.latency.timing",
    "LatencyGroup": "taylorprune.latency.selection",
    "LatencyModel": "taylorprune.latency.model",
    "LatencyTable": "taylorprune.latency.table",
    "LayerEntry": "taylorprune.latency.table",
    "RESIDUALS": "taylorprune.latency.model",
    "SELECTORS": "taylorprune.latency.selection",
    "Selection": "taylorprune.latency.selection",
    "TimingSettings": "taylorprune.latency.timing",
    "allowed_keep": "taylorprune.latency.selection",
    "axis_points": "taylorprune.latency.table",
    "build_table": "taylorprune.latency.build",
    "check_budget": "taylorprune.latency.selection",
    "closest_latency": "taylorprune.latency.selection",
    "device_info": "taylorprune.latency.timing",
    "latency_groups": "taylorprune.latency.groups",
    "layer_effects": "taylorprune.latency.groups",
    "measure_latency": "taylorprune.latency.timing",
    "measure_models": "taylorprune.latency.timing",
    "select": "taylorprune.latency.selection",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())
