"""How a latency target is timed and predicted: the setup (device, batch, threads, dtype, the
table to read) and the latency model of a network built from it, its table read or measured and
the network timed.

A table given by file must come from this device, with these settings, for this model and input;
otherwise one is measured (its points cached on disk).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from taylorprune._clean_copy import clean_copy
from taylorprune.errors import UserError
from taylorprune.latency.build import build_table
from taylorprune.latency.layers import find_layers
from taylorprune.latency.model import LatencyModel
from taylorprune.latency.selection import SELECTORS
from taylorprune.latency.table import LatencyTable
from taylorprune.latency.timing import TimingSettings, device_info


@dataclass(frozen=True)
class LatencySetup:
    """How a latency target is measured and planned.

    ``settings``: device, batch, threads, dtype, memory format of every timing. ``table``: a table
    file written by ``taylorprune latency-table --output`` (None: measure one here, cached).
    ``method``: a key of :data:`~taylorprune.latency.SELECTORS`. ``runs``/``warmup``: timed and
    untimed rounds of each side-by-side measurement, whose rounds are spread over ``copies`` fresh
    copies of the two models (see :func:`~taylorprune.latency.timing.interleaved_times`).
    ``attempts``: selections an uncapped step may try before it takes the best.
    """

    settings: TimingSettings
    table: str | None = None
    method: str = "knapsack"
    runs: int = 10
    warmup: int = 2
    attempts: int = 4
    copies: int = 3

    def __post_init__(self) -> None:
        SELECTORS.get(self.method)  # an unknown method fails here, naming the choices
        if self.runs < 1 or self.warmup < 0 or self.attempts < 1 or self.copies < 1:
            raise UserError(
                f"latency setup: need runs >= 1, warmup >= 0, attempts >= 1 and copies >= 1, got "
                f"{self.runs}, {self.warmup}, {self.attempts}, {self.copies}"
            )


def latency_model_for(
    model: nn.Module,
    input_shape: Sequence[int],
    setup: LatencySetup,
    *,
    runs: int | None = None,
    progress: bool = False,
) -> LatencyModel:
    """The latency model of ``model`` (unpruned, one sample of ``input_shape``) under ``setup``.

    The table is read from ``setup.table`` and must have been measured on this device with these
    settings, for this model and input; otherwise it is built here (points cached on disk). The
    baseline is measured now (``runs``, default ``setup.runs``). Raises :class:`UserError` for a
    device that does not exist here, a table from another device, other settings or another model.
    """
    info = device_info(setup.settings)
    model = clean_copy(model).cpu()
    if setup.table is None:
        table = build_table(model, input_shape, setup.settings, progress=progress)
    else:
        where = f"measure.latency_table {str(Path(setup.table))!r}"
        table = LatencyTable.load(setup.table)
        table.check(info, setup.settings, where=where)
        _check_same_model(table, model, input_shape, where)
    return LatencyModel.measure(table, model, runs=runs or setup.runs, warmup=setup.warmup)


def _check_same_model(
    table: LatencyTable, model: nn.Module, input_shape: Sequence[int], where: str
) -> None:
    if tuple(table.input_shape) != tuple(input_shape):
        raise UserError(
            f"{where} was measured for input {'x'.join(map(str, table.input_shape))}, but this "
            f"run's input is {'x'.join(map(str, input_shape))}"
        )
    mine = {layer.name: (layer.cin, layer.cout) for layer in find_layers(model, input_shape)}
    if mine != table.full_widths():
        other = sorted(set(mine.items()) ^ set(table.full_widths().items()))
        raise UserError(
            f"{where} was measured for another model (first difference: layer {other[0][0]!r}); "
            "build one for this model with `taylorprune latency-table`"
        )
