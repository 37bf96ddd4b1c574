"""A per-layer latency lookup table: latency against input and output width, by interpolation.

Each table layer (:mod:`taylorprune.latency.layers`) has a grid of widths per axis, chosen by
:func:`axis_points`: a ladder of multiples of ``align`` (the step the hardware favours) that grows
by factors 4/3 and 3/2, from about ``low`` of the full width up to the full width, which is always
a grid point. Latency in between is bilinear in the two widths: exact at grid points, monotone
between them wherever the measured values are, and exact for any cost of the form ``a + b·cin +
c·cout + d·cin·cout``, which is what MACs and memory traffic of a convolution look like. Outside
the grid the nearest grid value is used (widths under ``low`` of the full width are rare and
dominated by fixed overheads).

A :class:`LatencyTable` remembers the device and settings it was measured with and refuses to be
used with others (:meth:`LatencyTable.check`).
"""

from __future__ import annotations

import bisect
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from taylorprune._io import atomic_write_text
from taylorprune.errors import UserError
from taylorprune.latency.layers import TableLayer
from taylorprune.latency.timing import DeviceInfo, TimingSettings

logger = logging.getLogger("taylorprune")

FORMAT = "taylorprune.latency_table"
VERSION = 1

_LADDER_MAX = 1 << 20


def _ladder(align: int, upto: int) -> list[int]:
    """``align`` times 1, 2, 3, 4, 6, 8, 12, 16, ... (powers of two and three times them), under
    ``upto``: consecutive points differ by a factor 4/3 or 3/2."""
    out: set[int] = set()
    p = 1
    while p * align < upto:
        out.add(p * align)
        if 3 * p * align < upto:
            out.add(3 * p * align)
        p *= 2
    return sorted(out)


def axis_points(full: int, align: int = 8, low: float = 0.1) -> tuple[int, ...]:
    """Grid widths for an axis whose full width is ``full``, ascending, ``full`` last.

    Multiples of ``align`` on a ladder (``align`` x 1, 2, 3, 4, 6, 8, 12, ...) below ``full``, from
    the largest ladder point at or under ``low * full`` (or the smallest one) upwards.
    """
    if full < 1 or align < 1 or full > _LADDER_MAX:
        raise ValueError(f"axis_points: bad full={full} or align={align}")
    ladder = _ladder(align, full)
    under = [p for p in ladder if p <= low * full]
    start = under[-1] if under else (ladder[0] if ladder else full)
    return (*(p for p in ladder if p >= start), full)


@dataclass
class LayerEntry:
    """One layer's grid and measured latency (ms per batch, all ``calls`` together).

    ``cin_axis``/``cout_axis`` are ascending grid widths; ``values[i, j]`` the latency at
    ``(cin_axis[i], cout_axis[j])``. A tied layer (depthwise conv, norm) has one width: its
    ``cin_axis`` equals ``cout_axis`` and ``values[j]`` is the latency at width ``cout_axis[j]``.
    """

    layer: TableLayer
    cin_axis: np.ndarray
    cout_axis: np.ndarray
    values: np.ndarray = field(repr=False)

    @property
    def name(self) -> str:
        return self.layer.name

    def latency(self, cin: Any, cout: Any) -> np.ndarray:
        """Interpolated latency (ms) at ``cin``, ``cout`` (scalars or broadcastable arrays)."""
        cin = np.asarray(cin, dtype=np.float64)
        cout = np.asarray(cout, dtype=np.float64)
        if self.layer.tied:
            return np.interp(np.broadcast_arrays(cin, cout)[1], self.cout_axis, self.values)
        i0, i1, ti = _bracket(self.cin_axis, cin)
        j0, j1, tj = _bracket(self.cout_axis, cout)
        v = self.values
        return (1 - ti) * ((1 - tj) * v[i0, j0] + tj * v[i0, j1]) + ti * (
            (1 - tj) * v[i1, j0] + tj * v[i1, j1]
        )

    def at(self, cin: float, cout: float) -> float:
        """:meth:`latency` at one point, in plain Python (the selection calls it very often)."""
        if self.layer.tied:
            j, t = _bracket_one(self._cout, cout)
            v = self.values
            return float(v[j] + t * (v[j + 1] - v[j])) if t else float(v[j])
        i, ti = _bracket_one(self._cin, cin)
        j, tj = _bracket_one(self._cout, cout)
        v = self.values
        low = v[i, j] + tj * (v[i, j + 1] - v[i, j]) if tj else v[i, j]
        if not ti:
            return float(low)
        high = v[i + 1, j] + tj * (v[i + 1, j + 1] - v[i + 1, j]) if tj else v[i + 1, j]
        return float(low + ti * (high - low))

    def __post_init__(self) -> None:
        self._cin = [float(c) for c in self.cin_axis]
        self._cout = [float(c) for c in self.cout_axis]

    def full(self) -> float:
        """Latency at the layer's own widths."""
        return float(self.latency(self.layer.cin, self.layer.cout))

    def points(self) -> list[tuple[int, int]]:
        """The ``(cin, cout)`` grid points this entry needs measured."""
        if self.layer.tied:
            return [(int(c), int(c)) for c in self.cout_axis]
        return [(int(a), int(b)) for a in self.cin_axis for b in self.cout_axis]


def _bracket(axis: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of the grid points around ``x`` and the weight of the upper one (clamped)."""
    if len(axis) == 1:
        zero = np.zeros(np.shape(x), dtype=np.int64)
        return zero, zero, np.zeros(np.shape(x))
    xc = np.clip(x, axis[0], axis[-1])
    hi = np.clip(np.searchsorted(axis, xc, side="right"), 1, len(axis) - 1)
    lo = hi - 1
    t = (xc - axis[lo]) / (axis[hi] - axis[lo])
    return lo, hi, t


def _bracket_one(axis: list[float], x: float) -> tuple[int, float]:
    """Index of the grid point at or below ``x`` and the weight of the next one (clamped)."""
    if x <= axis[0]:
        return 0, 0.0
    if x >= axis[-1]:
        return len(axis) - 1, 0.0
    i = bisect.bisect_right(axis, x) - 1
    return i, (x - axis[i]) / (axis[i + 1] - axis[i])


def grid_for(layer: TableLayer, align: int, low: float) -> tuple[np.ndarray, np.ndarray]:
    """The ``(cin_axis, cout_axis)`` of ``layer``: one point for an input that never changes,
    widths that keep a grouped convolution valid (multiples of its groups)."""
    groups = int(layer.signature.get("groups") or 1) if layer.kind == "conv" else 1
    step = align * groups // math.gcd(align, groups)
    cout = np.array(axis_points(layer.cout, step, low), dtype=np.float64)
    if layer.tied:
        return cout, cout
    if layer.fixed_in:
        cin = np.array([layer.cin], dtype=np.float64)
    else:
        cin = np.array(axis_points(layer.cin, step, low), dtype=np.float64)
    return cin, cout


@dataclass
class LatencyTable:
    """Per-layer latency entries of one model on one device with one set of timing settings.

    ``input_shape`` is one sample's shape; ``entries`` maps table layer names to their
    :class:`LayerEntry` in forward order; ``stats`` records how the table was built (points
    measured and taken from the cache, seconds).
    """

    device: DeviceInfo
    settings: TimingSettings
    input_shape: tuple[int, ...]
    entries: dict[str, LayerEntry]
    align: int = 8
    low: float = 0.1
    stats: dict[str, Any] = field(default_factory=dict)

    # -- predictions -------------------------------------------------------------------------------
    def full_widths(self) -> dict[str, tuple[int, int]]:
        """Every layer's ``(cin, cout)`` in the model the table was built for."""
        return {n: (e.layer.cin, e.layer.cout) for n, e in self.entries.items()}

    def layer_latency(
        self, widths: Mapping[str, tuple[int, int]] | None = None
    ) -> dict[str, float]:
        """Interpolated latency (ms) of every layer at ``widths`` (missing layers: full widths)."""
        widths = widths or {}
        out = {}
        for name, e in self.entries.items():
            cin, cout = widths.get(name, (e.layer.cin, e.layer.cout))
            out[name] = float(e.latency(cin, cout))
        return out

    def total(self, widths: Mapping[str, tuple[int, int]] | None = None) -> float:
        """Sum of the layers' latency (ms) at ``widths``: the network's latency minus what is not
        in the table (activations, additions, pooling, overheads)."""
        return float(sum(self.layer_latency(widths).values()))

    # -- identity ----------------------------------------------------------------------------------
    def check(
        self, device: DeviceInfo, settings: TimingSettings, where: str = "latency table"
    ) -> None:
        """Raise :class:`UserError` unless the table was measured on ``device`` with ``settings``.

        The device type, name and CPU threads must agree, and so must batch size, dtype and memory
        format; another torch version is only logged (kernels may differ, usually not by much).
        """
        mine, theirs = self.device, device
        if (mine.type, mine.name, mine.threads) != (theirs.type, theirs.name, theirs.threads):
            raise UserError(
                f"{where} was measured on {mine.describe()}, but this run measures latency on "
                f"{theirs.describe()}; build one here with `taylorprune latency-table`"
            )
        for key in ("batch_size", "dtype", "channels_last"):
            a, b = getattr(self.settings, key), getattr(settings, key)
            if a != b:
                raise UserError(
                    f"{where} was measured with {key}={a!r}, but this run uses {key}={b!r}; "
                    "build one with the run's settings with `taylorprune latency-table`"
                )
        if mine.torch != theirs.torch:
            logger.warning(
                "%s was measured with torch %s, this run uses torch %s",
                where,
                mine.torch,
                theirs.torch,
            )

    # -- files -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "device": self.device.as_dict(),
            "settings": self.settings.as_dict(),
            "input_shape": list(self.input_shape),
            "align": self.align,
            "low": self.low,
            "stats": self.stats,
            "layers": [
                {
                    "name": e.layer.name,
                    "kind": e.layer.kind,
                    "signature": e.layer.signature,
                    "cin": e.layer.cin,
                    "cout": e.layer.cout,
                    "out_elements": e.layer.out_elements,
                    "fixed_in": e.layer.fixed_in,
                    "norm_name": e.layer.norm_name,
                    "calls": e.layer.calls,
                    "cin_axis": e.cin_axis.astype(int).tolist(),
                    "cout_axis": e.cout_axis.astype(int).tolist(),
                    "values_ms": e.values.tolist(),
                }
                for e in self.entries.values()
            ],
        }

    def save(self, path: str | Path) -> None:
        """Write the table as JSON (atomically)."""
        atomic_write_text(json.dumps(self.to_dict(), indent=1) + "\n", Path(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "latency table") -> LatencyTable:
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise UserError(f"{where}: not a taylorprune latency table")
        if data.get("version") != VERSION:
            raise UserError(f"{where}: table version {data.get('version')!r}, expected {VERSION}")
        try:
            entries = {}
            for rec in data["layers"]:
                layer = TableLayer(
                    name=rec["name"],
                    kind=rec["kind"],
                    signature=dict(rec["signature"]),
                    cin=int(rec["cin"]),
                    cout=int(rec["cout"]),
                    out_elements=int(rec["out_elements"]),
                    fixed_in=bool(rec["fixed_in"]),
                    norm_name=rec["norm_name"],
                    calls=int(rec["calls"]),
                )
                entries[layer.name] = LayerEntry(
                    layer,
                    np.asarray(rec["cin_axis"], dtype=np.float64),
                    np.asarray(rec["cout_axis"], dtype=np.float64),
                    np.asarray(rec["values_ms"], dtype=np.float64),
                )
            return cls(
                device=DeviceInfo(**data["device"]),
                settings=TimingSettings(**data["settings"]),
                input_shape=tuple(int(d) for d in data["input_shape"]),
                entries=entries,
                align=int(data["align"]),
                low=float(data["low"]),
                stats=dict(data.get("stats") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(
                f"{where}: damaged latency table ({type(exc).__name__}: {exc})"
            ) from None

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        """Read a table written by :meth:`save` (missing or damaged file: :class:`UserError`)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"latency table {str(path)!r}: no such file") from None
        except (OSError, ValueError) as exc:
            raise UserError(f"latency table {str(path)!r}: unreadable ({exc})") from None
        return cls.from_dict(data, where=f"latency table {str(path)!r}")


def entries_from_function(
    layers: Sequence[TableLayer],
    fn: Any,
    align: int = 8,
    low: float = 0.1,
) -> dict[str, LayerEntry]:
    """Entries whose grid values are ``fn(layer, cin, cout)`` (ms): a table without measuring,
    for tests and for studying the selection on a known cost."""
    out = {}
    for layer in layers:
        cin_axis, cout_axis = grid_for(layer, align, low)
        if layer.tied:
            values = np.array([fn(layer, int(c), int(c)) for c in cout_axis], dtype=np.float64)
        else:
            values = np.array(
                [[fn(layer, int(a), int(b)) for b in cout_axis] for a in cin_axis],
                dtype=np.float64,
            )
        out[layer.name] = LayerEntry(layer, cin_axis, cout_axis, values)
    return out
