"""Whole-network latency from the table: layer entries + a residual, recalibrated on measurements.

The table covers convolutions, Linear layers and norms. What it leaves out (activations,
additions, pooling, framework overhead) is the *residual*: the baseline's measured latency minus
the table's sum at the baseline widths. Most of it is element-wise work on the layers' outputs, so
by default it scales with the layers' output elements (``residual="activations"``); ``"constant"``
keeps it fixed. The *raw* prediction is the table's sum plus the residual: exact for the baseline
by construction. When the layers alone sum to more than the measured network (isolated timings
inflated, e.g. on a loaded machine) there is no residual and the table is scaled down instead
(``table_scale`` < 1): a negative residual would make thinner networks predict slower.

Isolated layers do not run exactly as they do inside the network (caches, memory layout
reorders), so a raw prediction of a pruned network can drift from its measured latency. Each
measurement given to :meth:`LatencyModel.calibrate` refits a *correction*, a monotone map from raw
to predicted latency:

- ``"scale"``: predicted = raw x measured/raw of the latest measurement;
- ``"anchored"``: the line through the baseline's (raw, measured) pair and the latest one;
- ``"none"``: predicted = raw.

Either way the prediction agrees with the latest measurement at its widths; the selection
(:mod:`taylorprune.latency.selection`) turns a budget into raw milliseconds with :meth:`raw_budget`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from taylorprune.errors import UserError
from taylorprune.latency.layers import module_widths
from taylorprune.latency.table import LatencyTable
from taylorprune.latency.timing import measure_latency

logger = logging.getLogger("taylorprune")

RESIDUALS: tuple[str, ...] = ("activations", "constant")
CORRECTIONS: tuple[str, ...] = ("scale", "anchored", "none")

Widths = Mapping[str, tuple[int, int]]


@dataclass(frozen=True)
class Calibration:
    """One real measurement: the raw prediction at its widths and the measured median (ms)."""

    raw_ms: float
    measured_ms: float

    @property
    def error(self) -> float:
        """Relative error of the raw prediction (raw / measured - 1)."""
        return self.raw_ms / self.measured_ms - 1.0


class LatencyModel:
    """Predicted latency (ms per batch) of the table's model at any per-layer widths.

    ``baseline_ms`` is the measured latency of the model at the table's full widths, with the
    table's settings. Widths are ``{layer name: (cin, cout)}`` for table layers; a layer not
    given keeps its full widths.
    """

    def __init__(
        self,
        table: LatencyTable,
        baseline_ms: float,
        *,
        residual: str = "activations",
        correction: str = "scale",
    ) -> None:
        if residual not in RESIDUALS:
            raise UserError(f"latency residual: unknown {residual!r}; choices: {RESIDUALS}")
        if correction not in CORRECTIONS:
            raise UserError(f"latency correction: unknown {correction!r}; choices: {CORRECTIONS}")
        if not baseline_ms > 0:
            raise ValueError(f"baseline latency must be positive, got {baseline_ms!r}")
        self.table = table
        self.residual = residual
        self.correction = correction
        self.names = list(table.entries)
        self._index = {n: i for i, n in enumerate(self.names)}
        self.full = table.full_widths()
        self.table_ms = table.total()
        self.residual_ms = max(0.0, float(baseline_ms) - self.table_ms)
        self.table_scale = (
            min(1.0, float(baseline_ms) / self.table_ms) if self.table_ms > 0 else 1.0
        )
        if self.table_scale < 1.0:
            logger.warning(
                "latency table: its layers sum to %.4g ms, more than the %.4g ms measured for the "
                "whole network (timings disturbed?); scaling the table by %.3f",
                self.table_ms,
                baseline_ms,
                self.table_scale,
            )
        layers = [table.entries[n].layer for n in self.names]
        self._elements = np.array([lay.out_elements * lay.calls for lay in layers], np.float64)
        self._elements0 = float(
            sum(e * lay.cout for e, lay in zip(self._elements, layers, strict=True))
        )
        self.calibrations: list[Calibration] = [Calibration(float(baseline_ms), float(baseline_ms))]
        self._a, self._b = 1.0, 0.0  # predicted = a * raw + b

    @classmethod
    def measure(
        cls,
        table: LatencyTable,
        model: nn.Module,
        *,
        runs: int = 20,
        warmup: int = 3,
        residual: str = "activations",
        correction: str = "scale",
    ) -> LatencyModel:
        """A model whose residual comes from measuring ``model`` (the baseline) now."""
        ms = measure_latency(model, table.input_shape, table.settings, runs=runs, warmup=warmup)
        return cls(table, ms["median_ms"], residual=residual, correction=correction)

    @property
    def baseline_ms(self) -> float:
        return self.calibrations[0].measured_ms

    # -- predictions -------------------------------------------------------------------------------
    def layer_cost(
        self, name: str, cin: np.ndarray | float, cout: np.ndarray | float
    ) -> np.ndarray:
        """Raw cost (ms) of layer ``name`` at widths ``cin``/``cout``: its table entry plus its
        share of the residual. The raw prediction is :attr:`constant_ms` plus the layers' sum."""
        cost = self.table_scale * self.table.entries[name].latency(cin, cout)
        if self.residual == "activations" and self._elements0 > 0:
            i = self._index[name]
            cost = cost + self.residual_ms * self._elements[i] * np.asarray(cout) / self._elements0
        return cost

    def layer_cost_at(self, name: str, cin: float, cout: float) -> float:
        """:meth:`layer_cost` at one point (plain floats: fast)."""
        cost = self.table_scale * self.table.entries[name].at(cin, cout)
        if self.residual == "activations" and self._elements0 > 0:
            cost += self.residual_ms * self._elements[self._index[name]] * cout / self._elements0
        return float(cost)

    @property
    def constant_ms(self) -> float:
        """The part of the raw prediction that no width changes."""
        return self.residual_ms if self.residual == "constant" or self._elements0 <= 0 else 0.0

    def raw(self, widths: Widths | None = None) -> float:
        """Table sum plus residual at ``widths``, before correction."""
        widths = widths or {}
        total = self.constant_ms
        for name in self.names:
            cin, cout = widths.get(name, self.full[name])
            total += float(self.layer_cost(name, cin, cout))
        return total

    def predict(self, widths: Widths | None = None) -> float:
        """Predicted latency (ms per batch) at ``widths`` (default: the baseline)."""
        return self.corrected(self.raw(widths))

    def predict_model(self, model: nn.Module) -> float:
        """Predicted latency of ``model`` (the table's model, possibly pruned) as it is now."""
        return self.predict(self.widths(model))

    def widths(self, model: nn.Module) -> dict[str, tuple[int, int]]:
        """The table layers' widths in ``model`` now."""
        return module_widths(model, self.names)

    def corrected(self, raw_ms: float) -> float:
        return self._a * raw_ms + self._b

    def raw_budget(self, budget_ms: float) -> float:
        """The raw latency whose prediction is ``budget_ms`` (the correction is increasing)."""
        return (budget_ms - self._b) / self._a

    # -- recalibration -----------------------------------------------------------------------------
    def calibrate(self, widths: Widths | nn.Module, measured_ms: float) -> Calibration:
        """Record a real measurement (ms) at ``widths`` (or of a model) and refit the correction.

        Returns the measurement with the raw prediction it is compared with.
        """
        if isinstance(widths, nn.Module):
            widths = self.widths(widths)
        cal = Calibration(self.raw(widths), float(measured_ms))
        self.calibrations.append(cal)
        self._a, self._b = fit_correction(self.correction, self.calibrations)
        return cal

    def check(self, model: nn.Module, *, runs: int = 20, warmup: int = 3) -> dict[str, float]:
        """Measure ``model`` (the table's model, pruned) now and recalibrate on it.

        What a pruning step reports: ``predicted_ms`` (before this recalibration), ``measured_ms``
        (median) with ``p10_ms``/``p90_ms``, and ``error`` = predicted / measured - 1.
        """
        predicted = self.predict_model(model)
        ms = measure_latency(
            model, self.table.input_shape, self.table.settings, runs=runs, warmup=warmup
        )
        self.calibrate(model, ms["median_ms"])
        return {
            "predicted_ms": predicted,
            "measured_ms": ms["median_ms"],
            "p10_ms": ms["p10_ms"],
            "p90_ms": ms["p90_ms"],
            "error": predicted / ms["median_ms"] - 1.0,
        }


def fit_correction(kind: str, pairs: Sequence[Calibration]) -> tuple[float, float]:
    """``(a, b)`` of predicted = a * raw + b for correction ``kind`` (a key of
    :data:`CORRECTIONS`) from measurements ``pairs``, the baseline's first."""
    base, last = pairs[0], pairs[-1]
    if kind == "none" or len(pairs) < 2:
        return 1.0, 0.0
    if kind == "anchored":
        span = base.raw_ms - last.raw_ms
        # Two points closer than 5% of the baseline make a slope of noise: scale instead.
        if abs(span) >= 0.05 * base.raw_ms:
            a = (base.measured_ms - last.measured_ms) / span
            if a > 0:
                return a, base.measured_ms - a * base.raw_ms
    return last.measured_ms / last.raw_ms, 0.0
