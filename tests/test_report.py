"""report.json / report.md / metrics.csv / plots from a hand-built report dict."""

from __future__ import annotations

import copy
import csv
import io
import json
from pathlib import Path

import pytest
import torch

from taylorprune import plots, report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_report() -> dict:
    """A report as the runner builds it, with round numbers that are easy to find in the outputs."""
    layers = [  # name, in channels before/after, out channels before/after, MACs, params
        ("conv1", 3, 3, 64, 40, 118_013_952, 73_758_720, 9_408, 5_880),
        ("layer1.0.conv1", 64, 40, 64, 33, 115_605_504, 37_013_760, 36_864, 11_880),
        ("layer1.0.conv2", 64, 33, 64, 40, 115_605_504, 45_158_400, 36_864, 11_880),
        ("fc", 512, 256, 1000, 1000, 512_000, 256_000, 513_000, 257_000),
    ]
    steps = [
        {"step": 1, "iteration": 30, "macs": 1_500_000_000, "params": 10_000_000,
         "channels_removed": 100, "top1": 60.5},
        {"step": 2, "iteration": 60, "macs": 1_200_000_000, "params": 9_000_000,
         "channels_removed": 100, "top1": 52.25},
        {"step": 3, "iteration": 90, "macs": 907_049_216, "params": 8_123_456,
         "channels_removed": 57, "top1": 41.0},
    ]  # fmt: skip
    metrics = [
        {"phase": "baseline", "epoch": 0, "step": None, "val_top1": 69.76, "val_loss": 1.25},
        *(
            {"phase": "prune", "epoch": 0, "step": s["step"], "val_top1": s["top1"],
             "macs": s["macs"], "lr": 1e-3}
            for s in steps
        ),
        *(
            {"phase": "finetune", "epoch": e, "step": None, "train_loss": 2.0 - 0.3 * e,
             "train_top1": 50.0 + 5 * e, "val_top1": 55.0 + 4 * e, "val_loss": 1.9 - 0.2 * e,
             "lr": 1e-3 * 0.1 ** (e // 2), "macs": 907_049_216}
            for e in range(1, 5)
        ),
    ]  # fmt: skip
    return {
        "taylorprune_version": "0.1.0",
        "recipe": "resnet18_tiny",
        "created": "2026-11-21T09:00:00+00:00",
        "convention": "MACs counted by fvcore in eval mode on a batch of one",
        "input_shape": [3, 224, 224],
        "device": "cpu",
        "baseline": {"macs": 1_819_065_856, "params": 11_689_512, "top1": 69.76, "top5": 89.08,
                     "loss": 1.25},
        "pruned": {"macs": 907_049_216, "params": 8_123_456, "top1": 41.0, "top5": None,
                   "loss": 3.5},
        "finetuned": {"macs": 907_049_216, "params": 8_123_456, "top1": 71.0 - 3.12, "top5": 85.5,
                      "loss": 1.4},
        "reduction": {"macs": 1 - 907_049_216 / 1_819_065_856,
                      "params": 1 - 8_123_456 / 11_689_512, "top1_drop": 3.12},
        "target": {"kind": "macs", "keep": 0.5, "achieved_keep": 907_049_216 / 1_819_065_856,
                   "stopped_short": None},
        "criterion": "taylor_fo_bn",
        "steps": steps,
        "layers": [
            {"name": n, "in_channels_before": ib, "in_channels_after": ia, "channels_before": cb,
             "channels_after": ca, "macs_before": mb,
             "macs_after": ma, "params_before": pb, "params_after": pa,
             "macs_share_before": mb / 1_819_065_856, "macs_share_after": ma / 907_049_216}
            for n, ib, ia, cb, ca, mb, ma, pb, pa in layers
        ],
        "latency": {"device": "cpu", "batch_size": 16, "threads": 2, "dtype": "float32",
                    "channels_last": False, "runs": 50, "warmup": 10, "copies": 3,
                    "baseline_ms": 123.4, "pruned_ms": 77.7, "baseline_p10_ms": 120.0,
                    "baseline_p90_ms": 130.0, "pruned_p10_ms": None, "pruned_p90_ms": None,
                    "fraction": 0.625, "fraction_p10": 0.6, "fraction_p90": 0.65,
                    "speedup": 1.6, "speedup_p10": 1.54, "speedup_p90": 1.67,
                    "ideal_speedup": 1_819_065_856 / 907_049_216,
                    "baseline_peak_activation_mib": 12.25, "pruned_peak_activation_mib": 8.0},
        "metrics": metrics,
        "timings": {"baseline_s": 12.5, "scoring_s": 3.25, "pruning_s": 40.0,
                    "finetune_s": 3725.0, "total_s": 3781.0},
    }  # fmt: skip


def test_write_report_produces_valid_json_md_csv_and_pngs(tmp_path):
    rep = make_report()
    report.write_report(tmp_path, rep)

    assert json.loads((tmp_path / "report.json").read_text()) == rep

    rows = list(csv.DictReader(io.StringIO((tmp_path / "metrics.csv").read_text())))
    assert len(rows) == len(rep["metrics"])
    assert [r["phase"] for r in rows] == [m["phase"] for m in rep["metrics"]]
    assert rows[0]["val_top1"] == "69.76" and rows[0]["step"] == "" and rows[0]["train_loss"] == ""
    assert float(rows[-1]["train_loss"]) == pytest.approx(rep["metrics"][-1]["train_loss"])

    for name in ("progress.png", "channels.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name

    # Nothing but the outputs is left behind (no temporary files).
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "channels.png",
        "metrics.csv",
        "progress.png",
        "report.json",
        "report.md",
    ]


def test_a_report_without_plots_has_every_other_file_and_links_no_picture(tmp_path):
    rep = make_report()
    report.write_report(tmp_path / "with", rep)
    report.write_report(tmp_path / "without", rep, plots=False)
    assert sorted(p.name for p in (tmp_path / "without").iterdir()) == [
        "metrics.csv",
        "report.json",
        "report.md",
    ]
    with_md = (tmp_path / "with" / "report.md").read_text()
    without_md = (tmp_path / "without" / "report.md").read_text()
    assert ".png" not in without_md
    assert with_md.startswith(without_md + "\n## Plots\n")  # the same report, less its pictures


def test_markdown_contains_the_numbers(tmp_path):
    rep = make_report()
    report.write_report(tmp_path, rep)
    md = (tmp_path / "report.md").read_text()
    for stage in ("baseline", "pruned", "finetuned"):
        assert f"{rep[stage]['macs']:,}" in md
        assert f"{rep[stage]['params']:,}" in md
    assert "69.76 %" in md and "67.88 %" in md  # baseline and fine-tuned top-1
    assert "MACs 50.1 %" in md  # 1 - 907049216/1819065856 = 0.5014 removed
    assert "top-1 drop 3.12 pt" in md
    assert "| `layer1.0.conv1` | 64 → 40 | 64 → 33 | 115,605,504 | 37,013,760 | 36,864 |" in md
    assert "| 6.4 % → 4.1 % |" in md  # 115605504/1819065856, 37013760/907049216
    assert "| 3 | 90 | 907,049,216 | 8,123,456 | 57 | 41.00 % |" in md
    assert "| baseline | 123.40 ms | 120.00 ms – 130.00 ms | 12.2 MiB |" in md
    assert "| pruned | 77.70 ms | - – - | 8.0 MiB |" in md
    assert "Latency 0.625 of the baseline's, speed-up 1.60x (per-round p10–p90 1.54x – 1.67x" in md
    assert "1h02m05s" in md  # fine-tuning 3725 s
    assert "![progress.png](progress.png)" in md
    assert rep["convention"] in md


def test_failed_serialisation_leaves_the_old_files(tmp_path):
    good = make_report()
    report.write_report(tmp_path, good)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    for bad_value in (torch.tensor(1.0), float("nan")):
        bad = copy.deepcopy(good)
        bad["pruned"]["top1"] = bad_value
        with pytest.raises((TypeError, ValueError)):
            report.write_report(tmp_path, bad)
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_partial_report_writes_what_it_has(tmp_path):
    rep = {k: v for k, v in make_report().items() if k in ("recipe", "baseline", "convention")}
    report.write_report(tmp_path, rep)
    assert json.loads((tmp_path / "report.json").read_text()) == rep
    assert (tmp_path / "metrics.csv").read_text().startswith("phase,epoch,step")
    assert not (tmp_path / "progress.png").exists()
    assert "11,689,512" in (tmp_path / "report.md").read_text()
    summary = report.format_summary(rep)
    assert "baseline" in summary and "pruned" not in summary


def test_format_summary_fits_a_screen_and_shows_the_reductions():
    rep = make_report()
    text = report.format_summary(rep)
    lines = text.splitlines()
    assert len(lines) <= 24 and max(len(line) for line in lines) <= 100
    assert lines[0] == "taylorprune resnet18_tiny | criterion taylor_fo_bn"
    assert lines[1] == "target: keep 0.5 of the MACs, kept 0.499"
    baseline = next(line for line in lines if line.startswith("baseline"))
    finetuned = next(line for line in lines if line.startswith("fine-tuned"))
    reduction = next(line for line in lines if line.startswith("change"))
    assert "1.82 G" in baseline and "11.7 M" in baseline and "69.76 %" in baseline
    assert "907 M" in finetuned and "8.12 M" in finetuned and "67.88 %" in finetuned
    assert "-50.1 %" in reduction and "-30.5 %" in reduction and "-3.12 pt" in reduction
    assert (
        "latency (cpu, batch 16, threads 2): 123.40 ms -> 77.70 ms, 1.60x (1.54x–1.67x; ideal "
        "2.01x)" in text
    )


@pytest.mark.parametrize(
    ("reason", "text"),
    [
        ("no prunable channels left", "no prunable channels left"),
        ({"code": "not_finished", "message": "pruning ended early"},
         "pruning ended early (not_finished)"),
    ],
)  # fmt: skip
def test_stopping_short_is_reported(tmp_path, reason, text):
    rep = make_report()
    rep["target"]["stopped_short"] = reason
    assert f"stopped short of the target: {text}" in report.format_summary(rep)
    report.write_report(tmp_path, rep)
    assert f"- stopped_short: {text}" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize(("drop", "shown"), [(0.0, "+0.00 pt"), (0.001, "+0.00 pt"),
                                             (0.22, "-0.22 pt"), (-0.5, "+0.50 pt")])  # fmt: skip
def test_the_change_in_top1_has_its_sign_and_no_negative_zero(drop, shown):
    rep = make_report()
    rep["reduction"]["top1_drop"] = drop
    change = next(ln for ln in report.format_summary(rep).splitlines() if ln.startswith("change"))
    assert change.endswith(shown)


def test_going_past_the_targets_band_is_reported(tmp_path):
    rep = make_report()
    rep["target"]["achieved_keep"] = 0.481
    rep["target"]["overshot"] = {"code": "granularity", "message": "blocks too coarse"}
    want = (
        "went past the target's band (kept 0.481 of baseline macs, target 0.500): "
        "blocks too coarse (granularity)"
    )
    assert want in report.format_summary(rep)
    report.write_report(tmp_path, rep)
    assert "- overshot: blocks too coarse (granularity)" in (tmp_path / "report.md").read_text()
    del rep["target"]["overshot"]  # a report written before the key existed
    assert "went past" not in report.format_summary(rep)


def _line(ax, label):
    """(x, y) data of the line labelled ``label`` on ``ax``."""
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == label]
    return list(line.get_xdata()), list(line.get_ydata())


def test_progress_figure_plots_the_reports_numbers():
    rep = make_report()
    fig = plots.progress_figure(rep)
    prune_ax, finetune_ax, twin = fig.axes  # the top-1 twin axis is added last
    assert prune_ax.get_title() == "Pruning" and finetune_ax.get_title() == "Fine-tuning"
    xs, macs = _line(prune_ax, "MACs")
    assert xs == [0, 1, 2, 3]  # step 0 is the baseline
    assert macs == pytest.approx([1.819065856, 1.5, 1.2, 0.907049216])  # in GMACs
    assert prune_ax.get_ylabel() == "MACs (GMACs, batch of one)"
    assert _line(twin, "top-1") == ([0, 1, 2, 3], [69.76, 60.5, 52.25, 41.0])
    assert _line(finetune_ax, "validation") == ([1, 2, 3, 4], [59.0, 63.0, 67.0, 71.0])
    assert _line(finetune_ax, "train") == ([1, 2, 3, 4], [55.0, 60.0, 65.0, 70.0])
    assert _line(finetune_ax, "baseline (validation)")[1] == [69.76, 69.76]


def test_progress_figure_with_one_finetuning_epoch_and_without_data():
    rep = make_report()
    rep["metrics"] = [m for m in rep["metrics"] if m["phase"] != "finetune" or m["epoch"] == 1]
    rep["steps"] = []
    (ax,) = plots.progress_figure(rep).axes
    assert _line(ax, "validation") == ([1], [59.0])
    assert ax.get_xlim() == (0.0, 2.0) and list(ax.get_xticks()) == [1]  # unit-wide, one tick
    rep["metrics"] = [m for m in rep["metrics"] if m["phase"] != "finetune"]
    assert plots.progress_figure(rep) is None


def test_channels_figure_shows_widths_before_and_after():
    (ax,) = plots.channels_figure(make_report()["layers"]).axes
    before, after = ([round(bar.get_height()) for bar in container] for container in ax.containers)
    assert before == [64, 64, 64, 1000] and after == [40, 33, 40, 1000]
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "conv1", "layer1.0.conv1", "layer1.0.conv2", "fc"
    ]  # fmt: skip
    # 40 + 33 + 40 + 1000 = 1113 of 64 * 3 + 1000 = 1192, i.e. 93.37 %
    assert ax.get_title() == "Channels per prunable layer: 1,113 of 1,192 kept (93.4 %)"


@pytest.mark.parametrize(
    ("value", "text"),
    [(1_819_065_856, "1.82 G"), (907_049_216, "907 M"), (11_689_512, "11.7 M"), (999, "999"),
     (None, "-")],
)  # fmt: skip
def test_si(value, text):
    assert report.si(value) == text


# -- docs/report.md names every key report.json holds, and nothing else ----------------------------
DOCS = Path(__file__).resolve().parents[1] / "docs" / "report.md"
#: Keys written only where a run of the test cannot take them: on CUDA, and for an applied step of
#: a latency target that is not capped by channels_per_step (the run below may end capped).
CONDITIONAL = {
    "latency": {"baseline_peak_cuda_mib", "pruned_peak_cuda_mib"},
    "check": {
        "confirmed_fraction", "confirmed_p10", "confirmed_p90",
        "pooled_fraction", "pooled_p10", "pooled_p90",
    },
}  # fmt: skip


def _documented() -> dict[str, set[str]]:
    """Per object heading of docs/report.md's report.json section: the keys its table names."""
    text = DOCS.read_text().split("## `report.json`", 1)[1].split("\n## ", 1)[0]
    out: dict[str, set[str]] = {}
    for part in text.split("\n### ")[1:]:
        title, _, body = part.partition("\n")
        name = "top" if title.strip() == "Top level" else title.strip().strip("`")
        rows = [line for line in body.splitlines() if line.startswith("| `")]
        out[name] = {line.split("`")[1] for line in rows}
    return out


def _observed(report: dict) -> dict[str, set[str]]:
    """The keys a report holds, per object of the schema (list items and nested objects)."""
    out: dict[str, set[str]] = {}

    def add(name: str, obj: dict | None) -> None:
        if obj:
            out.setdefault(name, set()).update(obj)

    add("top", report)
    for stage in ("baseline", "pruned", "finetuned"):
        add("stage", report[stage])
    for name in ("validation", "reduction", "target", "well_fit", "distill", "timings", "latency"):
        add(name, report.get(name))
    if report.get("test"):
        add("test", report["test"])
        for stage in ("baseline", "finetuned"):
            add("stage", report["test"][stage])
    for lw in report["target"]["left_whole"]:
        add("left_whole", lw)
    for step in report["steps"]:
        add("step", step)
        add("step_latency", step.get("latency"))
    for row in report["layers"]:
        add("layer", row)
    for row in report["metrics"]:
        add("metric", row)
    lt = report.get("latency_target")
    if lt:
        add("latency_target", lt)
        add("timing_settings", lt["settings"])
        add("timing_device", lt["device"])
        add("table_stats", lt["table_stats"])
        for c in lt["checks"]:
            add("check", c)
    add("distributed", report.get("distributed"))
    return out


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> dict:
    """A tiny latency-target run with every optional section: distillation, a holdout with the
    test split read, BatchNorm re-estimation; distributed figures as finish writes them under
    torchrun (two ranks faked) and a group left whole as the prune phase writes it."""
    from taylorprune.cli import main
    from taylorprune.pipeline import finish

    out = tmp_path_factory.mktemp("full") / "run"
    twin = Path(__file__).resolve().parents[1] / "recipes/tiny/quickstart_latency.yaml"
    sets = ["data.holdout=64", "measure.test=true", "pruning.bn_recalibration=true",
            "finetune.distill={weight: 0.5, temperature: 2}"]  # fmt: skip
    argv = ["--quiet", "run", "--no-plots", str(twin), "-o", str(out)]
    assert main([*argv, *(x for s in sets for x in ("--set", s))]) == 0
    report = json.loads((out / "report.json").read_text())
    fake = {"active": lambda: True, "gather": lambda x: [x, x], "world_size": lambda: 2,
            "digest": lambda m: "abc"}  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        for name, fn in fake.items():
            mp.setattr(finish.distributed, name, fn)
        mp.setattr(finish.torch.distributed, "get_backend", lambda: "gloo")
        report["distributed"] = finish._consistency(torch.nn.Linear(1, 1))
    # a group left whole, as the prune phase records it (none of the twin's is)
    from taylorprune.graph import LeftWhole

    report["target"]["left_whole"] = [LeftWhole(("layer1.0.conv1",), "a reason").as_dict()]
    return report


def test_the_report_docs_name_every_key_a_report_holds(full_report):
    documented, observed = _documented(), _observed(full_report)
    for name, keys in observed.items():
        assert name in documented, f"docs/report.md has no table for {name}"
        assert keys <= documented[name], (name, sorted(keys - documented[name]))


def test_the_report_docs_name_nothing_a_report_does_not_hold(full_report):
    documented, observed = _documented(), _observed(full_report)
    assert set(documented) == set(observed)
    for name, keys in documented.items():
        extra = keys - observed[name] - CONDITIONAL.get(name, set())
        assert not extra, (name, sorted(extra))
