"""The oracle study's analysis: correlations, tables, CSVs and plots from its cached records.

``tools/oracle_study.py`` measures and caches one JSON record per measurement; :func:`write_results`
reads them all back and writes ``results.json``, ``results.md``, ``correlations.csv``,
``removal.csv``, ``population_oracle.json`` and two plots. Nothing here runs a model.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

import _bench_common as common
import numpy as np
from matplotlib.figure import Figure
from scipy.stats import kendalltau, spearmanr

if TYPE_CHECKING:
    from oracle_study import Plan

BN_MODES = {"train": True, "eval": False}
HUTCHINSON = "taylor_so_hutchinson"
#: criteria of the headline table, in this order
CRITERIA_ORDER = [
    "taylor_fo_bn",
    "taylor_fo_bn_fg",
    "taylor_so",
    HUTCHINSON,
    "taylor_fo_weight",
    "taylor_act",
    "l2_norm",
    "l1_norm",
    "bn_scale",
    "random",
]


def merged_oracle(recs: dict[str, dict], stage: str) -> dict | None:
    """The population-oracle record of ``stage`` with its extension's parts appended."""
    if f"pop-{stage}" not in recs:
        return None
    rec = recs[f"pop-{stage}"]
    ext = recs.get(f"pop-{stage}-ext")
    if ext is None:
        return rec
    return {**rec, "halves": rec["halves"] + ext["halves"],
            "examples": rec["examples"] + ext["examples"]}  # fmt: skip


def _mean_of(parts: list[dict], sizes: list[int]) -> dict[str, np.ndarray]:
    return {r: sum(n * np.asarray(p[r], float) for p, n in zip(parts, sizes, strict=True))
            / sum(sizes) for r in parts[0]}  # fmt: skip


def population(rec: dict) -> dict[str, np.ndarray]:
    """The held-out loss change per channel: every part's values weighted by its size."""
    return _mean_of(rec["halves"], rec["examples"])


def _norm(values: np.ndarray) -> np.ndarray:
    """The pruner's ``normalize="mean"``: a group's scores divided by their mean magnitude."""
    denom = float(np.mean(np.abs(values[np.isfinite(values)]))) if len(values) else 0.0
    return values / denom if denom > 0 else values


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """NaN where either side is constant (the correlation is not defined)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a, b).statistic)


def correlate(scores: dict[str, list[float]], oracle: dict[str, np.ndarray]) -> dict[str, float]:
    """Spearman/Kendall of ``scores`` with ``oracle`` over the measured channels: every channel
    ranked together, raw and with each group divided by its mean (as the pruner ranks), and per
    group (median and mean over groups)."""
    per, c_all, n_all, o_all = [], [], [], []
    for root, o in oracle.items():
        c = np.asarray(scores[root], float)
        keep = np.isfinite(o) & np.isfinite(c)
        c_n = _norm(c)[keep]
        c, o = c[keep], o[keep]
        if len(o) >= 3:
            per.append(_spearman(c, o))
        c_all.append(c), n_all.append(c_n), o_all.append(o)
    c, cn, o = np.concatenate(c_all), np.concatenate(n_all), np.concatenate(o_all)
    return {
        "spearman_all": _spearman(c, o),
        "spearman_all_norm": _spearman(cn, o),
        "kendall_all": float(kendalltau(c, o).statistic) if np.ptp(c) > 0 else math.nan,
        "spearman_layer_median": float(np.nanmedian(per)) if per else math.nan,
        "spearman_layer_mean": float(np.nanmean(per)) if per else math.nan,
        "channels": len(o),
    }


def correlation_rows(recs: dict[str, dict]) -> list[dict]:
    """One row per (checkpoint, BN, batch, window, seed, criterion, oracle)."""
    rows: list[dict] = []
    pops = {s: population(merged_oracle(recs, s)) for s in ("final", "mid") if f"pop-{s}" in recs}
    pmos = {k[4:]: r for k, r in recs.items() if k.startswith("pmo-")}

    def add(scores, oracle_name, oracle, **where):
        for crit, sc in scores.items():
            rows.append(
                {**where, "criterion": crit, "oracle": oracle_name, **correlate(sc, oracle)}
            )

    for key, rec in recs.items():
        kind, stage, *rest = key.split("-")
        if stage not in pops:
            continue
        absolute = {r: np.abs(v) for r, v in pops[stage].items()}
        if kind == "scores":
            bn, batch, seed = rest[0], int(rest[1][1:]), int(rest[2][1:])
            pmo = pmos.get(f"{stage}-{bn}-b{batch}")
            for window, scores in rec["windows"].items():
                where = {
                    "stage": stage,
                    "bn": bn,
                    "batch": batch,
                    "window": int(window),
                    "seed": seed,
                }
                add(scores, "population", absolute, **where)
                add(scores, "population_signed", pops[stage], **where)
                if pmo is not None and seed == 0 and int(window) == pmo["batches"]:
                    oracle = {r: np.asarray(v, float) for r, v in pmo["scores"].items()}
                    add(scores, "per_minibatch", oracle, **where)
        elif kind == "static":
            where = {"stage": stage, "bn": "-", "batch": 0, "window": 0, "seed": int(rest[0][1:])}
            add(rec["scores"], "population", absolute, **where)
            add(rec["scores"], "population_signed", pops[stage], **where)
        elif kind == "pmo":
            where = {
                "stage": stage,
                "bn": rest[0],
                "batch": int(rest[1][1:]),
                "window": rec["batches"],
                "seed": 0,
            }
            add({"per_minibatch_oracle": rec["scores"]}, "population", absolute, **where)
    return rows


def _ms(values: list[float]) -> str:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return "–"
    m, sd = common.mean_std(vals)
    return f"{m:.2f}" if len(vals) == 1 else f"{m:.2f} ± {sd:.2f}"


def _pick(rows: list[dict], **where) -> list[dict]:
    return [r for r in rows if all(r.get(k) == v for k, v in where.items())]


def _criteria_in(rows: list[dict]) -> list[str]:
    seen = {r["criterion"] for r in rows}
    return [c for c in CRITERIA_ORDER if c in seen] + sorted(seen - set(CRITERIA_ORDER))


def headline_table(rows: list[dict], plan: Plan, stage: str) -> list[str]:
    pop = _pick(rows, stage=stage, oracle="population")
    batches = plan.batch_sizes
    head = ["criterion", "BN"] + [f"B={b}" for b in batches]
    head += [f"B={plan.default_batch} normalised", f"B={plan.default_batch} per layer"]
    head += [f"B={plan.default_batch} vs per-minibatch oracle"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for crit in _criteria_in(pop):
        if crit == "per_minibatch_oracle":
            continue
        static = bool(_pick(pop, criterion=crit, bn="-"))
        for bn in ["-"] if static else list(BN_MODES):

            def sel(batch, oracle="population", window=plan.window, crit=crit, bn=bn, st=static):
                if st:
                    return _pick(rows, stage=stage, oracle=oracle, criterion=crit)
                return _pick(
                    rows,
                    stage=stage,
                    oracle=oracle,
                    criterion=crit,
                    bn=bn,
                    batch=batch,
                    window=window,
                )

            cells = [_ms([r["spearman_all"] for r in sel(b)]) for b in batches]
            d = sel(plan.default_batch)
            cells += [
                _ms([r["spearman_all_norm"] for r in d]),
                _ms([r["spearman_layer_median"] for r in d]),
            ]
            pmo = (
                []
                if static
                else sel(plan.default_batch, "per_minibatch", plan.pmo_batches(plan.default_batch))
            )
            cells.append(_ms([r["spearman_all"] for r in pmo]))
            lines.append(f"| `{crit}` | {bn} | " + " | ".join(cells) + " |")
    return lines


def window_table(rows: list[dict], plan: Plan, stage: str) -> list[str]:
    sel = _pick(rows, stage=stage, oracle="population", batch=plan.default_batch)
    windows = sorted({r["window"] for r in sel})
    head = ["criterion", "BN"] + [f"{w} minibatches" for w in windows]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for crit in [c for c in _criteria_in(sel) if c != "per_minibatch_oracle"]:
        for bn in BN_MODES:
            cells = [
                _ms([r["spearman_all"] for r in _pick(sel, criterion=crit, bn=bn, window=w)])
                for w in windows
            ]
            lines.append(f"| `{crit}` | {bn} | " + " | ".join(cells) + " |")
    return lines


def oracle_table(rows: list[dict], recs: dict[str, dict]) -> list[str]:
    lines = [
        "| checkpoint | BN | batch | minibatches | Spearman all | per layer (median) |",
        "|---|---|---|---|---|---|",
    ]
    for r in _pick(rows, criterion="per_minibatch_oracle", oracle="population"):
        lines.append(
            f"| {r['stage']} | {r['bn']} | {r['batch']} | {r['window']} | "
            f"{r['spearman_all']:.2f} | {r['spearman_layer_median']:.2f} |"
        )
    return lines


def reliability(rec: dict) -> dict[str, float]:
    """Split-half Spearman of |ΔL| across all measured channels (even against odd parts), and the
    Spearman–Brown estimate for the whole set. A perfect predictor's correlation with this oracle
    is about the square root of the latter."""
    parts, sizes = rec["halves"], rec["examples"]
    a, b = (np.concatenate([np.abs(v) for v in _mean_of(parts[k::2], sizes[k::2]).values()])
            for k in (0, 1))  # fmt: skip
    keep = np.isfinite(a) & np.isfinite(b)
    r = _spearman(a[keep], b[keep])
    return {"split_half": r, "spearman_brown": 2 * r / (1 + r)}


def subset_table(recs: dict[str, dict], plan: Plan, stage: str) -> list[str]:
    """How much the Spearman of the main criteria depends on which held-out images the oracle
    used: against each part of the oracle set and against all of it (first seed)."""
    rec = merged_oracle(recs, stage)
    if rec is None or len(rec["halves"]) < 4:
        return []
    parts, sizes = rec["halves"], rec["examples"]
    first = {r: np.abs(v) for r, v in _mean_of(parts[:2], sizes[:2]).items()}
    second = {r: np.abs(v) for r, v in _mean_of(parts[2:], sizes[2:]).items()}
    whole = {r: np.abs(v) for r, v in population(rec).items()}
    lines = ["| criterion | BN | images 1–2,048 | images 2,049–4,096 | all |",
             "|---|---|---|---|---|"]  # fmt: skip
    s0 = plan.seeds[0]
    for bn in BN_MODES:
        key = f"scores-{stage}-{bn}-b{plan.default_batch}-s{s0}"
        scores = recs.get(key, {}).get("windows", {}).get(str(plan.window), {})
        for crit in [c for c in CRITERIA_ORDER if c in scores][:4]:
            cells = [correlate(scores[crit], o)["spearman_all"] for o in (first, second, whole)]
            lines.append(f"| `{crit}` | {bn} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    return ["Which held-out images: Spearman (all channels, batch "
            f"{plan.default_batch}, {plan.window} minibatches, first seed) against the oracle "
            "of each half of the set and of all of it.", "", *lines, ""]  # fmt: skip


def removal_rows(recs: dict[str, dict]) -> list[dict]:
    """One row per removal record: what ranked (criterion, BN mode, batch, window, seed, or the
    oracle), how (normalisation, per MAC, steps), what went (unit, fraction) and the result."""
    rows = []
    for key, rec in recs.items():
        if not key.startswith(("removal-", "iterative-")):
            continue
        parts = rec["ranking"].split(":")
        if parts[0] == "crit":
            crit, bn, batch, window, seed = (
                parts[1],
                parts[2],
                int(parts[3]),
                int(parts[4]),
                int(parts[5]),
            )
        else:
            crit, bn, batch, window, seed = rec["ranking"], "-", 0, 0, 0
        if bn == "-":
            batch = window = 0  # weights only (or the oracle): no scoring minibatches
        rows.append(
            {
                "stage": key.split("-")[1],
                "criterion": crit,
                "bn": bn,
                "batch": batch,
                "window": window,
                "seed": seed,
                "normalize": rec["normalize"],
                "per_mac": rec["cost_aware"],
                "steps": rec.get("steps", 1),
                "unit": rec.get("unit", "channels"),
                "fraction": rec["fraction"],
                "top1": rec["top1"],
                "loss": rec["loss"],
                "macs_left": rec["macs_left"],
            }
        )
    return rows


def _pivot(rows: list[dict], cols: dict[str, dict], row_keys: list[tuple[str, str]]) -> list[str]:
    """Markdown: one line per (criterion, BN mode), one column per filter in ``cols``; cells are
    top-1 % mean ± std over seeds."""
    table = {
        key: [
            _ms([r["top1"] for r in _pick(rows, criterion=key[0], bn=key[1], **where)])
            for where in cols.values()
        ]
        for key in row_keys
    }
    table = {k: v for k, v in table.items() if any(c != "–" for c in v)}
    used = [j for j in range(len(cols)) if any(v[j] != "–" for v in table.values())]
    head = ["ranking", "BN", *(list(cols)[j] for j in used)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (crit, bn), cells in table.items():
        lines.append(f"| `{crit}` | {bn} | " + " | ".join(cells[j] for j in used) + " |")
    return lines


def _ranking_keys(rows: list[dict]) -> list[tuple[str, str]]:
    keys = {(r["criterion"], r["bn"]) for r in rows}
    order = {c: i for i, c in enumerate(["oracle:signed", "oracle:abs", *CRITERIA_ORDER])}
    return sorted(keys, key=lambda k: (order.get(k[0], 99), k[1] != "train", k))


def removal_tables(rows: list[dict], recs: dict, plan: Plan, stage: str) -> list[str]:
    """One pruning step at the recipe's scoring setting; the candidates' variants."""
    sel = _pick(rows, stage=stage)
    if not sel:
        return []
    recipe = [
        r for r in sel if r["batch"] in (0, plan.default_batch) and r["window"] in (0, plan.window)
    ]
    one = _pick(recipe, steps=1, per_mac=False)
    cols = {}
    for unit in ("macs", "channels"):
        for norm in ("mean", "raw"):
            for f in plan.fractions:
                label = f"{norm}, −{f:.0%} {'MACs' if unit == 'macs' else 'channels'}"
                cols[label] = {"unit": unit, "normalize": norm, "fraction": f}
    out = [
        "One step, every ranking (scores: batch "
        f"{plan.default_batch}, {plan.window} minibatches, first seed unless ± is shown). "
        "'mean': each group divided by its mean before the global ranking; 'raw': ranked as "
        "scored (the pruner's default ranks raw scores per MAC saved: next table).",
        "",
        *_pivot(one, cols, _ranking_keys(one)),
    ]
    last = plan.fractions[-1]
    big = _pick(recipe, unit="macs", fraction=last)
    variants = {}
    for norm in ("raw", "mean"):
        variants[f"one step, {norm}"] = {"normalize": norm, "steps": 1, "per_mac": False}
        variants[f"per MAC, {norm}"] = {"normalize": norm, "steps": 1, "per_mac": True}
        variants[f"{plan.iterative_steps} steps, {norm}"] = {
            "normalize": norm,
            "steps": plan.iterative_steps,
        }
    if not big:
        return out + _baseline_line(recs, stage)
    out += [
        "",
        f"Removing {last:.0%} of the MACs: at once, at once ranked per MAC saved, or in "
        f"{plan.iterative_steps} steps re-scored on the pruned network (no fine-tuning).",
        "",
        *_pivot(big, variants, _ranking_keys(big)),
    ]
    cands = [r for r in _pick(sel, steps=1, per_mac=False, fraction=last) if r["bn"] != "-"]
    settings = {}
    for unit in ("macs",):
        u = "MACs"
        for norm in ("raw", "mean"):
            for w in sorted({r["window"] for r in cands if r["batch"] == plan.default_batch}):
                settings[f"{norm}, {w}×{plan.default_batch}, −{last:.0%} {u}"] = {
                    "unit": unit,
                    "normalize": norm,
                    "window": w,
                    "batch": plan.default_batch,
                }
            for b in sorted({r["batch"] for r in cands} - {plan.default_batch}):
                settings[f"{norm}, {plan.window}×{b}, −{last:.0%} {u}"] = {
                    "unit": unit,
                    "normalize": norm,
                    "window": plan.window,
                    "batch": b,
                }

    def settings_of(k: tuple[str, str]) -> set:
        return {(r["batch"], r["window"]) for r in _pick(cands, criterion=k[0], bn=k[1])}

    keys = [k for k in _ranking_keys(cands) if len(settings_of(k)) > 1]
    if keys:
        out += [
            "",
            "Window (minibatches × batch) and batch size, one step.",
            "",
            *_pivot(cands, settings, keys),
        ]
    return out + _baseline_line(recs, stage)


def _baseline_line(recs: dict, stage: str) -> list[str]:
    base = recs.get(f"base-{stage}")
    if not base:
        return []
    a, b = base["as_trained"], base["bn_reestimated"]
    return [
        "",
        f"No removal: {a['top1']:.2f}% (loss {a['loss']:.3f}); BN statistics "
        f"re-estimated the same way: {b['top1']:.2f}% ({b['loss']:.3f}).",
    ]


def write_results(cache: Path, out: Path, plan: Plan, meta: dict, *, plots: bool = True) -> None:
    """Tables, CSVs, the summary JSON and (``plots``) the plots from every record in ``cache``."""
    recs = {p.stem: common.read_json(p) for p in sorted(cache.glob("*.json"))}
    recs = {k: v for k, v in recs.items() if v is not None}
    rows = correlation_rows(recs)
    removal = removal_rows(recs)
    stages = [s for s in ("final", "mid") if f"pop-{s}" in recs]
    merged = {s: merged_oracle(recs, s) for s in stages}
    rel = {s: reliability(merged[s]) for s in stages}
    info = {**common.machine(), **meta, "plan": {k: v for k, v in vars(plan).items()}}
    seconds = {k: round(v["seconds"], 1) for k, v in recs.items()}
    base = {s: recs[f"base-{s}"] for s in stages if f"base-{s}" in recs}
    common.write_json(
        out / "results.json",
        {
            "meta": info,
            "oracle_reliability": rel,
            "baseline": base,
            "seconds": seconds,
            "rows": "correlations.csv and removal.csv",
        },
    )
    common.write_json(
        out / "population_oracle.json",
        {
            s: {
                "examples": merged[s]["examples"],
                **rel[s],
                "delta_loss": {
                    r: [float(f"{x:.6g}") for x in v] for r, v in population(merged[s]).items()
                },
            }
            for s in stages
        },
    )
    _csv(out / "correlations.csv", rows)
    _csv(out / "removal.csv", removal)
    md = [
        f"# Oracle study: ResNet-20 on Fashion-MNIST ({info['date']})",
        "",
        "Spearman of each criterion against the population oracle |L_D(c=0) − L_D| (held-out "
        "test images, eval-mode BN) across every channel, mean ± std over "
        f"{len(plan.seeds)} seeds of the scoring minibatches; window {plan.window} minibatches "
        "unless stated. See docs/importance.md for the reading.",
    ]
    for s in stages:
        md += [
            "",
            f"## Checkpoint `{s}`",
            "",
            f"Oracle: {sum(merged[s]['examples'])} held-out images"
            f"{' (every other channel)' if plan.oracle_stride.get(s, 1) > 1 else ''}; split-half "
            f"Spearman {rel[s]['split_half']:.3f} (whole set, Spearman–Brown: "
            f"{rel[s]['spearman_brown']:.3f}).",
            "",
            *subset_table(recs, plan, s),
            *headline_table(rows, plan, s),
            "",
            f"### Window length (batch {plan.default_batch})",
            "",
            *window_table(rows, plan, s),
            "",
            "### Removal oracle (held-out top-1 % / loss, BN re-estimated, no fine-tuning)",
            "",
            *removal_tables(removal, recs, plan, s),
        ]
    md += ["", "## The two oracles", "", *oracle_table(rows, recs)]
    common.write_file(out / "results.md", "\n".join(md) + "\n")
    if plots and "final" in stages:
        _plots(rows, removal, plan, out)


def _csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    common.write_file(path, text.getvalue())


def _plots(rows: list[dict], removal: list[dict], plan: Plan, out: Path) -> None:
    """``spearman.png`` (every criterion against the oracle; the window length) and, once the
    removal phases ran, ``removal.png`` (top-1 after removing the larger fraction of the MACs)."""
    _spearman_plot(rows, plan, out / "spearman.png")
    _removal_plot(removal, plan, out / "removal.png")


def _spearman_plot(rows: list[dict], plan: Plan, path: Path) -> None:
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    ax, ax2 = fig.subplots(1, 2, width_ratios=[3, 2])
    pop = _pick(rows, stage="final", oracle="population")
    crits = [c for c in _criteria_in(pop) if c != "per_minibatch_oracle"]
    for i, bn in enumerate([*BN_MODES, "-"]):
        xs, ms, sds = [], [], []
        for j, c in enumerate(crits):
            sel = _pick(pop, criterion=c, bn=bn)
            if bn != "-":
                sel = _pick(sel, batch=plan.default_batch, window=plan.window)
            if sel:
                m, sd = common.mean_std([r["spearman_all"] for r in sel])
                xs.append(j + (i - 0.5) * 0.38 * (bn != "-")), ms.append(m), sds.append(sd)
        label = {"train": "BN train mode", "eval": "BN eval mode", "-": "weights only"}[bn]
        ax.bar(xs, ms, 0.36, yerr=sds, label=label, capsize=2)
    ax.set_xticks(range(len(crits)), crits, rotation=30, ha="right")
    ax.axhline(0.85, color="k", lw=0.8, ls="--")
    ax.set_ylabel("Spearman vs population oracle (all channels)")
    ax.set_title(f"converged, batch {plan.default_batch}, {plan.window} minibatches")
    ax.legend(fontsize=8)
    for c in [c for c in ("taylor_fo_bn", "taylor_fo_bn_fg", "taylor_so") if c in crits]:
        for bn, ls in (("train", "--"), ("eval", "-")):
            sel = _pick(pop, criterion=c, bn=bn, batch=plan.default_batch)
            ws = sorted({r["window"] for r in sel})
            ys = [common.mean_std([r["spearman_all"] for r in _pick(sel, window=w)])[0] for w in ws]
            if ws:
                ax2.plot(ws, ys, ls, marker="o", label=f"{c} ({bn})")
    ax2.set_xscale("log")
    ax2.set_xlabel(f"window (minibatches of {plan.default_batch})")
    ax2.set_ylabel("Spearman vs population oracle")
    if ax2.lines:
        ax2.legend(fontsize=7)
    ax2.axhline(0.85, color="k", lw=0.8, ls="--")
    common.save_png(fig, path, dpi=110)


def _removal_plot(removal: list[dict], plan: Plan, path: Path) -> None:
    last = plan.fractions[-1]
    sel = [
        r
        for r in _pick(removal, stage="final", unit="macs", fraction=last)
        if r["batch"] in (0, plan.default_batch) and r["window"] in (0, plan.window)
    ]
    shown = {"oracle:signed", "bn_scale", "l1_norm", "taylor_fo_bn", "taylor_fo_bn_fg", "taylor_so"}
    keys = [k for k in _ranking_keys(sel) if k[0] in shown
            and len({(r["normalize"], r["steps"], r["per_mac"]) for r in
                     _pick(sel, criterion=k[0], bn=k[1])}) > 1]  # fmt: skip
    variants = [
        ("one step, mean", {"normalize": "mean", "steps": 1, "per_mac": False}),
        ("one step, raw", {"normalize": "raw", "steps": 1, "per_mac": False}),
        ("per MAC, raw", {"normalize": "raw", "steps": 1, "per_mac": True}),
        (
            f"{plan.iterative_steps} steps, mean",
            {"normalize": "mean", "steps": plan.iterative_steps},
        ),
        (f"{plan.iterative_steps} steps, raw", {"normalize": "raw", "steps": plan.iterative_steps}),
    ]
    if not keys:
        return
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(variants)
    for i, (label, where) in enumerate(variants):
        ms, sds = [], []
        for crit, bn in keys:
            vals = [r["top1"] for r in _pick(sel, criterion=crit, bn=bn, **where)]
            m, sd = common.mean_std(vals) if vals else (math.nan, 0.0)
            ms.append(m), sds.append(sd)
        xs = np.arange(len(keys)) + (i - (len(variants) - 1) / 2) * width
        ax.bar(xs, ms, width * 0.95, yerr=sds, capsize=2, label=label)
    names = [c if bn == "-" else f"{c} ({bn})" for c, bn in keys]
    ax.set_xticks(range(len(keys)), names, rotation=20, ha="right", fontsize=8)
    shown_means = [p.get_height() for p in ax.patches if math.isfinite(p.get_height())]
    ax.set_ylim(max(0.0, min(shown_means, default=5.0) - 5), 90)
    ax.set_ylabel("held-out top-1 % (BN re-estimated, no fine-tuning)")
    ax.set_title(f"converged ResNet-20, {last:.0%} of the MACs removed")
    ax.legend(fontsize=8, ncols=len(variants), loc="upper center", bbox_to_anchor=(0.5, -0.2))
    common.save_png(fig, path, dpi=110)
