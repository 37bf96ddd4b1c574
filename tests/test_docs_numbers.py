"""Tables the docs quote from committed results hold those results: a figure typed by hand that
drifts from its file (a single seed labelled as a mean, a rerun not carried over) fails here."""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _table_after(text: str, header: str) -> list[dict[str, str]]:
    """The markdown table whose header row starts with ``header``, as one dict per row."""
    lines = text[text.index(header) :].splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(head, (c.strip() for c in line.strip("|").split("|")), strict=True)))
    return rows


def _number(cell: str) -> float:
    return float(cell.replace("−", "-"))


def test_the_oracle_table_is_the_mean_over_scoring_seeds_of_correlations_csv():
    """docs/importance.md's oracle table (converged ResNet-20, 30 minibatches of 32, population
    oracle) against tools/results/oracle/correlations.csv: each cell the mean over the seeds the
    file has, to the two decimals shown."""
    text = (ROOT / "docs" / "importance.md").read_text()
    rows = _table_after(text, "| criterion | BN train | BN eval |")
    with open(ROOT / "tools" / "results" / "oracle" / "correlations.csv", newline="") as f:
        results = [
            r for r in csv.DictReader(f) if r["stage"] == "final" and r["oracle"] == "population"
        ]

    def mean(criterion: str, bn: str, window: str, key: str) -> float:
        found = [
            float(r[key])
            for r in results
            if r["criterion"] == criterion
            and r["bn"] == bn
            and (bn == "-" or (r["batch"], r["window"]) == ("32", window))
        ]
        assert found, (criterion, bn, window)
        return statistics.fmean(found)

    columns = {
        "BN train": ("train", "30", "spearman_all"),
        "BN eval": ("eval", "30", "spearman_all"),
        "BN eval, 100 minibatches": ("eval", "100", "spearman_all"),
        "group-mean normalised (train)": ("train", "30", "spearman_all_norm"),
        "per layer, median (train)": ("train", "30", "spearman_layer_median"),
    }
    checked = 0
    for row in rows:
        names = [part.strip().split("`")[1] for part in row["criterion"].split(" / ")]
        if "Hutchinson" in row["criterion"]:
            names = ["taylor_so_hutchinson"]
        if len(names) > 1:  # the weight criteria: one figure each, in the first column
            figures = row["BN train"].split(" / ")
            for name, figure in zip(names, figures, strict=True):
                assert abs(_number(figure) - mean(name, "-", "", "spearman_all")) <= 0.005, name
                checked += 1
            continue
        for column, (bn, window, key) in columns.items():
            if row[column] in ("–", ""):
                continue
            got = mean(names[0], bn, window, key)
            assert abs(_number(row[column]) - got) <= 0.005 + 1e-9, (names[0], column, got)
            checked += 1
    assert checked >= 30


#: docs/importance.md's end-to-end rows, by their label, and the variant each quotes.
E2E_LABELS = {
    "`taylor_fo_bn_fg`, eval mode, raw per MAC": "taylor_fo_bn_fg_bn-eval_noema_raw-mac",
    "`taylor_fo_bn`, eval mode, raw per MAC": "taylor_fo_bn_bn-eval_noema_raw-mac",
    "`taylor_fo_bn`, train mode, EMA, raw per MAC": "taylor_fo_bn_bn-train_ema_raw-mac",
    "`taylor_fo_bn`, eval mode, EMA, raw per MAC": "taylor_fo_bn_bn-eval_ema_raw-mac",
    "`taylor_fo_bn_var`, eval mode, raw per MAC": "taylor_fo_bn_var_bn-eval_noema_raw-mac",
    "`tp_magnitude`, raw": "tp_magnitude_noema_raw",
    "`tp_magnitude`, raw per MAC": "tp_magnitude_noema_raw-mac",
    "`tp_magnitude`, group mean": "tp_magnitude_noema_mean",
    "`tp_magnitude`, group mean per MAC": "tp_magnitude_noema_mean-mac",
    "`random`, per channel": "random_noema_raw",
    "`random`, per MAC": "random_noema_raw-mac",
}
#: What a label may add; the first marks the default, the row every other row is paired with.
E2E_NOTES = (
    " (the default: the well-fit switch)",
    " (the default without the switch)",
    " (the default before the selection)",
)


def test_the_well_fit_end_to_end_tables_are_their_e2e_json():
    """The two end-to-end tables of docs/importance.md (digits CNN, then the quickstart's
    ResNet-20) against tools/results/wellfit/e2e.json and wellfit/quickstart/e2e.json: mean ± sd
    after fine-tuning, the seeds where fewer than all, and the paired difference from the default
    with its interval."""
    text = (ROOT / "docs" / "importance.md").read_text()
    header = "| variant | −50%: fine-tuned | − default (95% interval) |"
    second = text.index(header) + len(header)
    tables = [_cells_after(text, header), _cells_after(text[second:], header)]
    for rows, folder in zip(tables, ["wellfit", "wellfit/quickstart"], strict=True):
        e2e = json.loads((ROOT / "tools" / "results" / folder / "e2e.json").read_text())
        results = {(r["variant"], r["keep"]): r for r in e2e["rows"]}
        assert len(rows) == len(E2E_LABELS)
        for label, *cells in rows:
            bare = label
            for note in E2E_NOTES:
                bare = bare.removesuffix(note)
            variant = E2E_LABELS[bare]
            assert label.endswith(E2E_NOTES[0]) == (variant == e2e["default"]), label
            for (tuned, diff), keep in zip((cells[:2], cells[2:]), (0.5, 0.3), strict=True):
                r = results[(variant, keep)]
                seeds = f" ({r['seeds']} seeds)" if r["seeds"] < 5 else ""
                want = f"{r['val']['mean']:.2f} ± {r['val']['sd']:.2f}{seeds}"
                assert tuned == want, (folder, label, keep)
                c = r["vs_default"]["val"]
                want = "" if c is None else f"{c['mean']:+.2f} [{c['low']:+.2f}, {c['high']:+.2f}]"
                assert diff.replace("−", "-") == want, (folder, label, keep)


def _cells_after(text: str, header: str) -> list[list[str]]:
    """The rows of the markdown table whose header row starts with ``header``, cell by cell."""
    lines = text[text.index(header) :].splitlines()
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def test_the_distillation_scores_in_benchmarks_md_are_the_selection_runs():
    """The selection scores docs/benchmarks.md quotes for plain fine-tuning and each distillation
    setting, computed from the committed runs as the protocol's rule computes them."""
    sys.path.insert(0, str(ROOT / "tools"))
    import bench_quality as quality

    out, p = ROOT / "tools" / "results" / "quality", quality.plan(smoke=False)
    networks = list(quality.NETWORKS)
    default = quality.choose_default(out, networks, p)
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    start = text.index("**The choices made")
    paragraph = text[start : text.index("\n\n", start)]
    for kd in (None, *p.kd_grid):
        runs = [
            quality._runs(out, n, default.with_distill(kd), p.selection_seeds) for n in networks
        ]
        score = statistics.fmean(quality._score(r) for r in runs)  # type: ignore[arg-type]
        assert f"{score:.2f}" in paragraph, (kd, score)


def test_the_quality_results_in_benchmarks_md_are_the_study_files():
    """Once the quality study is complete, docs/benchmarks.md has a Results section, and every
    paired interval (``+0.12 [-0.30, +0.54]``) and every mean ± sd it quotes is one the study's
    own table.md or verdicts.md prints: a figure typed by hand, or left over from a partial
    report, fails here."""
    import re

    folder = ROOT / "tools" / "results" / "quality"
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    if not (folder / "verdicts.md").exists():
        assert "\n## Results\n" not in text
        return
    start = text.index("\n## Results\n")
    section = " ".join(text[start : text.index("\n## ", start + 1)].split())  # lines joined
    printed = (folder / "table.md").read_text() + (folder / "verdicts.md").read_text()
    signed = r"[+\-−]\d+\.\d\d"
    intervals = re.findall(rf"{signed} \[{signed}, {signed}\]", section)
    spreads = re.findall(r"\d+\.\d\d ± \d+\.\d\d", section)
    assert intervals and spreads
    for figure in intervals + spreads:
        assert figure.replace("−", "-") in printed, figure
