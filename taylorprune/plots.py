"""PNG plots of a run, drawn with matplotlib's object API (no pyplot, no display).

Figures are built as ``matplotlib.figure.Figure`` objects, which render through the Agg canvas when
saved, so nothing here selects a backend or touches pyplot's global state. matplotlib is imported
where a figure is made, so that importing taylorprune does not load it. ``*_figure`` functions
return the figure (what tests inspect); ``plot_*`` functions save them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taylorprune._io import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PROGRESS_PNG = "progress.png"
CHANNELS_PNG = "channels.png"
LATENCY_PNG = "latency.png"

_MAC_COLOR = "tab:blue"
_ACC_COLOR = "tab:orange"


def _scale(values: Sequence[float]) -> tuple[float, str]:
    """A divisor and its prefix so that the largest value reads between 1 and 1000."""
    top = max((abs(v) for v in values), default=0.0)
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if top >= factor:
            return factor, prefix
    return 1.0, ""


def plot_run(report: Mapping[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """Draw the plots a run's data allows into ``out_dir``; returns the paths written.

    ``progress.png``: MACs and top-1 over pruning steps (step 0 is the baseline) and top-1 over
    fine-tuning epochs; drawn when the report has ``steps`` or fine-tuning ``metrics``.
    ``channels.png``: output channels per prunable layer before vs after; drawn when it has
    ``layers``. ``latency.png``: a latency target's predicted against measured latency of every
    trial; drawn when it has ``latency_target``.
    """
    out = Path(out_dir)
    written = []
    progress = progress_figure(report)
    if progress is not None:
        written.append(_save(progress, out / PROGRESS_PNG))
    if report.get("layers"):
        written.append(_save(channels_figure(report["layers"]), out / CHANNELS_PNG))
    latency = latency_figure(report)
    if latency is not None:
        written.append(_save(latency, out / LATENCY_PNG))
    return written


def _save(fig: Figure, path: Path) -> Path:
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))


def progress_figure(report: Mapping[str, Any]) -> Figure | None:
    """MACs and top-1 over pruning steps (left) and top-1 over fine-tuning epochs (right); a panel
    is left out when the report has no ``steps`` / no fine-tuning ``metrics``, and the figure is
    None when it has neither."""
    from matplotlib.figure import Figure

    steps = report.get("steps") or []
    finetune = [m for m in report.get("metrics") or [] if m.get("phase") == "finetune"]
    panels = int(bool(steps)) + int(bool(finetune))
    if not panels:
        return None
    fig = Figure(figsize=(6.0 * panels, 4.2), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    baseline = report.get("baseline") or {}
    if steps:
        ax = axes[0]
        xs = [0] + [s["step"] for s in steps]
        macs = [baseline.get("macs")] + [s.get("macs") for s in steps]
        pts = [(x, m) for x, m in zip(xs, macs, strict=True) if m is not None]
        factor, prefix = _scale([m for _, m in pts])
        handles = ax.plot(
            [x for x, _ in pts], [m / factor for _, m in pts], "o-", color=_MAC_COLOR, label="MACs"
        )
        _integer_ticks(ax, xs)
        ax.set_xlabel("pruning step (0 = baseline)")
        ax.set_ylabel(f"MACs ({prefix}MACs, batch of one)", color=_MAC_COLOR)
        ax.set_ylim(bottom=0)
        ax.set_title("Pruning")
        ax.grid(alpha=0.3)
        accs = [baseline.get("top1")] + [s.get("top1") for s in steps]
        acc_pts = [(x, a) for x, a in zip(xs, accs, strict=True) if a is not None]
        if acc_pts:
            twin = ax.twinx()
            handles += twin.plot(
                *zip(*acc_pts, strict=True), "s--", color=_ACC_COLOR, label="top-1"
            )
            twin.set_ylabel("top-1 accuracy (%)", color=_ACC_COLOR)
        ax.legend(handles=handles, loc="lower left")
    if finetune:
        ax = axes[-1]
        epochs = [m.get("epoch") for m in finetune]
        for key, label, style in (("val_top1", "validation", "o-"), ("train_top1", "train", ".:")):
            pts = [
                (e, m[key]) for e, m in zip(epochs, finetune, strict=True) if m.get(key) is not None
            ]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=label)
        if baseline.get("top1") is not None:
            ax.axhline(baseline["top1"], color="grey", ls="--", label="baseline (validation)")
        _integer_ticks(ax, [e for e in epochs if e is not None])
        ax.set_xlabel("fine-tuning epoch")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title("Fine-tuning")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    return fig


def _integer_ticks(ax: Any, xs: Sequence[int]) -> None:
    """Whole-number ticks; a lone point gets a unit-wide axis instead of fractional ticks."""
    from matplotlib.ticker import MaxNLocator

    values = sorted(set(xs))
    if len(values) == 1:
        ax.set_xlim(values[0] - 1, values[0] + 1)
        ax.set_xticks(values)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def channels_figure(layers: Sequence[Mapping[str, Any]]) -> Figure:
    """Output channels per prunable layer (a report's ``layers``): before as wide grey bars, after
    as narrow blue bars in front, in the report's order."""
    from matplotlib.figure import Figure

    n = len(layers)
    fig = Figure(figsize=(min(max(6.0, 0.22 * n + 2.0), 30.0), 4.8), layout="constrained")
    ax = fig.subplots()
    xs = range(n)
    before = [r.get("channels_before") or 0 for r in layers]
    after = [r.get("channels_after") or 0 for r in layers]
    ax.bar(xs, before, width=0.8, color="lightgrey", edgecolor="grey", label="before")
    ax.bar(xs, after, width=0.5, color=_MAC_COLOR, label="after")
    ax.set_xticks(list(xs), [r["name"] for r in layers], rotation=90, fontsize=7)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylabel("output channels")
    ax.set_title(
        f"Channels per prunable layer: {sum(after):,} of {sum(before):,} kept "
        f"({100 * sum(after) / max(sum(before), 1):.1f} %)"
    )
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return fig


def latency_figure(report: Mapping[str, Any]) -> Figure | None:
    """A latency target's fit: for every trial, the latency the table predicted (raw, before any
    recalibration, hollow; and as corrected when the step selected it, filled) against the
    latency measured side by side with the baseline, in ms at the baseline's scale; the diagonal
    is a perfect prediction. None without ``latency_target`` trials."""
    from matplotlib.figure import Figure

    target = report.get("latency_target") or {}
    checks = target.get("checks") or []
    if not checks:
        return None
    fig = Figure(figsize=(5.6, 5.0), layout="constrained")
    ax = fig.subplots()
    measured = [c["measured_ms"] for c in checks]
    ax.scatter(
        measured,
        [c["raw_ms"] for c in checks],
        facecolors="none",
        edgecolors="grey",
        label="table + residual (raw)",
    )
    applied = [c.get("applied", False) for c in checks]
    colors = [_ACC_COLOR if a else _MAC_COLOR for a in applied]
    ax.scatter(measured, [c["predicted_ms"] for c in checks], c=colors, label="recalibrated")
    for c in checks:
        ax.annotate(
            f"{c['step']}.{c['attempt']}",
            (c["measured_ms"], c["predicted_ms"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    values = measured + [c["predicted_ms"] for c in checks] + [c["raw_ms"] for c in checks]
    base = target.get("baseline_ms")
    if base:
        values.append(base)
        keep = target.get("keep")
        if keep:
            ax.axvline(keep * base, color="grey", ls=":", label="target")
    lo, hi = 0.95 * min(values), 1.05 * max(values)
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="predicted = measured")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured latency (ms per batch, side by side with the baseline)")
    ax.set_ylabel("predicted latency (ms per batch)")
    ax.set_title("Latency table fit (step.try; orange: applied)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return fig
