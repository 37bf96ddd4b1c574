"""What a run leaves behind: report.json, report.md, metrics.csv, plots, and a one-screen summary.

The report is a plain dict (JSON types only) whose fields are documented in ``docs/report.md``.
Every section is optional here: a section that is missing or ``None`` is left out of the Markdown
and the summary, so that partial runs (a failed fine-tuning, a measure-only run) can still be
written. One writer per output (JSON, Markdown, CSV, plots, the terminal summary) over the one
report dict, so that a field added to the report reaches every view at once.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from taylorprune._io import atomic_write_text
from taylorprune.plots import plot_run

log = logging.getLogger("taylorprune")

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
METRICS_CSV = "metrics.csv"

# Stages of a run in the order they happen, with the label shown to people.
STAGES = (("baseline", "baseline"), ("pruned", "pruned"), ("finetuned", "fine-tuned"))
# Timings spent inside the phases' own (the distillation teacher's forward passes): not added up.
WITHIN_PHASES = ("distill_teacher_s",)

# metrics.csv columns in this order first; any other keys follow alphabetically.
METRIC_COLUMNS = (
    "phase",
    "epoch",
    "step",
    "iters",
    "time_s",
    "train_loss",
    "train_top1",
    "loss",
    "top1",
    "val_loss",
    "val_top1",
    "val_top5",
    "lr",
    "macs",
    "teacher_s",
)


def write_report(
    out_dir: str | os.PathLike, report: Mapping[str, Any], *, plots: bool = True
) -> None:
    """Write ``report.json``, ``report.md``, ``metrics.csv`` and (``plots``) the plots into
    ``out_dir``.

    Each text file is written to a temporary file in ``out_dir`` and moved over the old one with
    ``os.replace``, so a reader never sees a half-written file. JSON is serialised first, before
    anything is written: a report that cannot be serialised (``TypeError``/``ValueError`` from
    ``json``, e.g. a tensor or a NaN) leaves the previous files in place.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, allow_nan=False) + "\n"
    atomic_write_text(text, out / REPORT_JSON)
    drawn = plot_run(report, out) if plots else []
    atomic_write_text(render_markdown(report, [p.name for p in drawn]), out / REPORT_MD)
    atomic_write_text(metrics_csv(report.get("metrics") or ()), out / METRICS_CSV)
    log.info("report written to %s", out)


# -- CSV -------------------------------------------------------------------------------------------


def metrics_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """``rows`` (the report's ``metrics``) as CSV text; missing values are empty cells."""
    rows = list(rows)
    keys = {k for row in rows for k in row}
    columns = [c for c in METRIC_COLUMNS if c in keys] + sorted(keys - set(METRIC_COLUMNS))
    if not columns:
        columns = list(METRIC_COLUMNS)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()


# -- number formatting -----------------------------------------------------------------------------


def si(value: float | None, unit: str = "") -> str:
    """``4.11 G`` style: three significant figures with a K/M/G/T prefix; ``-`` for ``None``."""
    if value is None:
        return "-"
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}".rstrip()
    return f"{value:.3g} {unit}".rstrip()


def _pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f} %"


def _fraction_pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _int(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{sec:02d}s" if hours else f"{minutes}m{sec:02d}s"


def _stages(report: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    return [(label, report[key]) for key, label in STAGES if report.get(key)]


# -- Markdown --------------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def render_markdown(report: Mapping[str, Any], plots: Sequence[str] = ()) -> str:
    """``report.md``: the report's tables for people. ``plots``: PNG file names to link."""
    title = report.get("recipe") or "run"
    lines = [f"# taylorprune report: {title}", ""]
    info = [
        ("created", report.get("created")),
        ("taylorprune", report.get("taylorprune_version")),
        ("criterion", report.get("criterion")),
        ("well fit", _well_fit_text(report.get("well_fit"))),
        ("input shape", "x".join(str(d) for d in report.get("input_shape") or ()) or None),
        ("device", report.get("device")),
        ("top-1 measured on", _validation_text(report.get("validation"))),
    ]
    lines += [f"- {k}: {v}" for k, v in info if v is not None]
    if report.get("convention"):
        lines += [f"- counting: {report['convention']}"]
    lines.append("")

    stages = _stages(report)
    if stages:
        lines += ["## Model", ""]
        lines += _table(
            ["stage", "MACs", "params", "top-1", "top-5", "loss"],
            (
                [
                    label,
                    _int(s.get("macs")),
                    _int(s.get("params")),
                    _pct(s.get("top1")),
                    _pct(s.get("top5")),
                    "-" if s.get("loss") is None else f"{s['loss']:.4f}",
                ]
                for label, s in stages
            ),
        )
    distill = report.get("distill")
    if distill:
        where = "pruning and fine-tuning" if distill.get("while_pruning") else "fine-tuning"
        lines += [
            f"Distilled from the baseline in {where}: weight {distill['weight']:g}, temperature "
            f"{distill['temperature']:g}, teacher forward passes "
            f"{_duration(distill.get('teacher_s'))}.",
            "",
        ]
    test = report.get("test")
    if test:
        lines += [f"On the test split ({test['size']:,} images, measured once at the end):", ""]
        lines += _table(
            ["stage", "top-1", "top-5", "loss"],
            (
                [label, _pct(s.get("top1")), _pct(s.get("top5")), f"{s['loss']:.4f}"]
                for label, s in (("baseline", test["baseline"]), ("fine-tuned", test["finetuned"]))
            ),
        )
    red = report.get("reduction")
    if red:
        lines += [
            f"Reduction: MACs {_fraction_pct(red.get('macs'))}, "
            f"params {_fraction_pct(red.get('params'))}, "
            f"top-1 drop {_points(red.get('top1_drop'))}.",
            "",
        ]
    target = report.get("target")
    if target:
        lines += ["## Target", ""]
        lines += [f"- {k}: {_reason(v) if k in _REASONS else _value(v)}" for k, v in target.items()]
        lines.append("")
    lat = report.get("latency")
    if lat:
        lines += _latency_md(lat)
    lat_target = report.get("latency_target")
    if lat_target:
        lines += _latency_target_md(lat_target)
    steps = report.get("steps") or ()
    if steps:
        lines += ["## Pruning steps", ""]
        lines += _table(
            ["step", "iteration", "MACs", "params", "channels removed", "top-1"],
            (
                [
                    s.get("step"),
                    s.get("iteration", "-"),
                    _int(s.get("macs")),
                    _int(s.get("params")),
                    s.get("channels_removed", "-"),
                    _pct(s.get("top1")),
                ]
                for s in steps
            ),
        )
    layers = report.get("layers") or ()
    if layers:
        lines += ["## Layers (prunable conv and linear)", ""]
        lines += _table(
            [
                "layer",
                "in channels",
                "out channels",
                "MACs before",
                "MACs after",
                "params before",
                "params after",
                "MACs share before → after",
            ],
            (
                [
                    f"`{r['name']}`",
                    _arrow(r.get("in_channels_before"), r.get("in_channels_after")),
                    _arrow(r.get("channels_before"), r.get("channels_after")),
                    _int(r.get("macs_before")),
                    _int(r.get("macs_after")),
                    _int(r.get("params_before")),
                    _int(r.get("params_after")),
                    f"{_fraction_pct(r.get('macs_share_before'))} → "
                    f"{_fraction_pct(r.get('macs_share_after'))}",
                ]
                for r in layers
            ),
        )
    timings = report.get("timings")
    if timings:
        lines += ["## Timings", ""]
        lines += _table(
            ["phase", "time"],
            (
                [k.removesuffix("_s") + (" (within the phases)" if k in WITHIN_PHASES else ""),
                 _duration(v)]
                for k, v in timings.items()
            ),
        )  # fmt: skip
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)


def _validation_text(val: Mapping[str, Any] | None) -> str | None:
    if not val:
        return None
    held_out = _held_out_text(val)
    text = held_out or f"the dataset's validation split ({val['size']:,} images)"
    recalibrated = _recalibrated_text(val)
    return text if recalibrated is None else f"{text}; pruned stage and steps with {recalibrated}"


def _held_out_text(val: Mapping[str, Any]) -> str | None:
    """The held-out validation images of a report's ``validation``; None: not a holdout."""
    if val.get("split") != "holdout":
        return None
    return f"{val['size']:,} training images held out (holdout_seed {val.get('holdout_seed')})"


def _recalibrated_text(val: Mapping[str, Any]) -> str | None:
    """What the pruned stage was measured with under ``pruning.bn_recalibration``; None: off."""
    images = val.get("bn_recalibration_images")
    return f"BatchNorm statistics re-estimated on {images:,} training images" if images else None


def _arrow(before: Any, after: Any) -> str:
    if before is None and after is None:
        return "-"
    return f"{before} → {after}"


def _value(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _signed(value: float) -> str:
    """``value`` to two decimals with its sign; what rounds to zero is ``+0.00``, not ``-0.00``."""
    return f"{round(value, 2) + 0.0:+.2f}"


def _points(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} pt"


def _latency_md(lat: Mapping[str, Any]) -> list[str]:
    """The final model against the baseline, timed side by side: medians and the ratio."""
    lines = ["## Latency", ""]
    lines.append(
        f"Side by side, {lat.get('runs', '?')} rounds over {lat.get('copies', 1)} set(s) of fresh "
        f"copies after {lat.get('warmup', '?')} warm-up passes each; device {lat.get('device')}, "
        f"batch {lat.get('batch_size')}, threads {lat.get('threads')}, {lat.get('dtype')}, "
        f"channels_last {lat.get('channels_last', False)}."
    )
    lines.append("")
    rows = [
        [
            label,
            _ms(lat.get(f"{key}_ms")),
            f"{_ms(lat.get(f'{key}_p10_ms'))} – {_ms(lat.get(f'{key}_p90_ms'))}",
            _mib(lat.get(f"{key}_peak_activation_mib")),
        ]
        for key, label in (("baseline", "baseline"), ("pruned", "pruned"))
    ]
    lines += _table(["model", "median", "p10 – p90", "peak activations"], rows)
    lines += [
        f"Latency {_fraction(lat.get('fraction'))} of the baseline's, speed-up "
        f"{_ratio(lat.get('speedup'))} (per-round p10–p90 {_ratio(lat.get('speedup_p10'))} – "
        f"{_ratio(lat.get('speedup_p90'))}; ideal from MACs {_ratio(lat.get('ideal_speedup'))}).",
        "",
    ]
    return lines


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _latency_target_md(lt: Mapping[str, Any]) -> list[str]:
    """A latency target: where it was timed and every trial (the final reading that judges it is
    the Latency section's)."""
    s, d = lt.get("settings") or {}, lt.get("device") or {}
    layout = "channels_last" if s.get("channels_last") else "contiguous"
    stats = lt.get("table_stats") or {}
    lines = ["## Latency target", ""]
    lines.append(
        f"Keep {lt.get('keep', 0):.3f} of the baseline's latency, judged on the Latency "
        f"section's reading. Timed on {d.get('type')} '{d.get('name')}' ({d.get('threads')} "
        f"threads, torch {d.get('torch')}), batch {s.get('batch_size')}, {s.get('dtype')}, "
        f"{layout}; selection {lt.get('method')}; table "
        f"{lt.get('table') or 'measured for this run'} ({stats.get('points', '?')} points, "
        f"{stats.get('cached', '?')} from the cache). Baseline {_ms(lt.get('baseline_ms'))} when "
        "the run started."
    )
    lines.append("")
    checks = lt.get("checks") or ()
    if checks:
        lines += _table(
            [
                "step",
                "try",
                "budget",
                "predicted",
                "measured",
                "of baseline (p10–p90)",
                "readings",
                "error",
                "applied",
            ],
            (
                [
                    c["step"],
                    c["attempt"],
                    _ms(c.get("budget_ms")),
                    _ms(c.get("predicted_ms")),
                    _ms(c.get("measured_ms")),
                    f"{c['fraction']:.3f} ({c['fraction_p10']:.3f}–{c['fraction_p90']:.3f})",
                    ", ".join(f"{r:.3f}" for r in c.get("readings", ())),
                    f"{100 * c['error']:+.1f} %",
                    "yes" if c.get("applied") else "",
                ]
                for c in checks
            ),
        )
    return lines


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} MiB"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


# -- one-screen summary ----------------------------------------------------------------------------


def format_summary(report: Mapping[str, Any]) -> str:
    """A one-screen text summary of a run: baseline -> pruned -> fine-tuned and the reductions."""
    head = f"taylorprune {report.get('recipe') or 'run'}"
    if report.get("criterion"):
        head += f" | criterion {report['criterion']}"
    lines = [head]
    fit = report.get("well_fit") or {}
    if fit.get("switched"):
        lines.append(f"well fit: {_well_fit_text(fit)}")
    target = report.get("target") or {}
    if target.get("keep") is not None:
        kind = {"macs": "MACs"}.get(target.get("kind"), target.get("kind", "?"))
        aim = f"target: keep {target['keep']:.3g} of the {kind}"
        if target.get("achieved_keep") is not None:
            aim += f", kept {target['achieved_keep']:.3f}"
        lines.append(aim)
    rows = [("", "MACs", "params", "top-1", "top-5")]
    rows += [
        (
            label,
            si(s.get("macs")),
            si(s.get("params")),
            _pct(s.get("top1")),
            _pct(s.get("top5")),
        )
        for label, s in _stages(report)
    ]
    red = report.get("reduction")
    if red:
        rows.append(
            (
                "change",
                _signed_fraction(red.get("macs")),
                _signed_fraction(red.get("params")),
                "-" if red.get("top1_drop") is None else f"{_signed(-red['top1_drop'])} pt",
                "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    if target.get("stopped_short"):
        lines.append(f"stopped short of the target: {_reason(target['stopped_short'])}")
    if target.get("overshot"):
        kept = target.get("achieved_keep")
        where = (
            ""
            if kept is None
            else f" (kept {kept:.3f} of baseline {target['kind']}, target {target['keep']:.3f})"
        )
        lines.append(f"went past the target's band{where}: {_reason(target['overshot'])}")
    val = report.get("validation") or {}
    if (held_out := _held_out_text(val)) is not None:
        lines.append(f"top-1 on {held_out}")
    if (recalibrated := _recalibrated_text(val)) is not None:
        lines.append(f"pruned: measured with {recalibrated}")
    distill = report.get("distill")
    if distill:
        where = "pruning and fine-tuning" if distill.get("while_pruning") else "fine-tuning"
        lines.append(
            f"distilled from the baseline in {where}: weight {distill['weight']:g}, temperature "
            f"{distill['temperature']:g}; teacher forward {_duration(distill.get('teacher_s'))}"
        )
    test = report.get("test")
    if test:
        lines.append(
            f"test ({test['size']:,} images): top-1 {_pct(test['baseline']['top1'])} -> "
            f"{_pct(test['finetuned']['top1'])}"
        )
    lat = report.get("latency")
    if lat:
        lines.append(
            f"latency ({lat.get('device')}, batch {lat.get('batch_size')}, "
            f"threads {lat.get('threads')}): {_ms(lat.get('baseline_ms'))} -> "
            f"{_ms(lat.get('pruned_ms'))}, {_ratio(lat.get('speedup'))} "
            f"({_ratio(lat.get('speedup_p10'))}–{_ratio(lat.get('speedup_p90'))}; ideal "
            f"{_ratio(lat.get('ideal_speedup'))})"
        )
    timings = report.get("timings")
    if timings:
        # the teacher's time is part of pruning and fine-tuning: on the distillation line
        parts = [
            f"{k.removesuffix('_s')} {_duration(v)}"
            for k, v in timings.items()
            if k not in WITHIN_PHASES
        ]
        lines.append("time: " + ", ".join(parts))
    return "\n".join(lines)


def _well_fit_text(fit: Mapping[str, Any] | None) -> str | None:
    """The well-fit reading (``report["well_fit"]``) in words; None when there was none."""
    if not fit:
        return None
    where = f"training top-1 {fit['top1']:.2f}% on {fit['images']} images"
    if fit.get("switched"):
        return f"{where}, at least {fit['threshold']:g}%: scored with {fit['criterion']}"
    return f"{where}, under {fit['threshold']:g}%: no switch"


_REASONS = ("stopped_short", "overshot")


def _reason(value: Any) -> str:
    """``stopped_short`` as text: a string, or an object with ``message`` (and ``code``)."""
    if isinstance(value, Mapping):
        message = value.get("message") or ""
        return f"{message} ({value['code']})" if value.get("code") else message
    return _value(value)


def _signed_fraction(value: float | None) -> str:
    """A fraction removed shown as a change: 0.45 removed -> ``-45.0 %``."""
    return "-" if value is None else f"{-100 * value:+.1f} %"
