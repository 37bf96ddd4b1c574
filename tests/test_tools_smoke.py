"""The benchmark tools: their pruning helpers against hand-computed masks, and each ``--smoke``
mode end to end (outputs present, values sane, reruns resume instead of recomputing)."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import _bench_common as common  # noqa: E402
import _cli  # noqa: E402
import bench_cost  # noqa: E402
import bench_distill  # noqa: E402
import bench_quality  # noqa: E402
import classic_mlp  # noqa: E402
import compare_runs  # noqa: E402
import oracle_study  # noqa: E402

from taylorprune.models import build_model  # noqa: E402


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TAYLORPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TAYLORPRUNE_STUDY_CACHE", str(tmp_path / "study-cache"))


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    spec = {
        "source": "builtin",
        "name": "mlp",
        "num_classes": 3,
        "in_chans": 1,
        "kwargs": {"input_size": 4, "hidden": [10, 8, 6, 4]},
    }
    return build_model(spec)


# -- helpers ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_study_baseline_is_the_pipelines_and_never_enters_the_product_cache(tmp_path):
    """``study_baseline`` trains through the pipeline's baseline phase (bit for bit the baseline
    ``taylorprune run`` starts from) and keeps it in the tools' cache only."""
    from taylorprune.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"base: {ROOT / 'recipes/tiny/quickstart.yaml'}\nthreads: 1\n"
        "baseline: {train: {epochs: 2}, cache: true}\nmeasure: {latency: false}\n"
    )
    product = Path(os.environ["TAYLORPRUNE_CACHE"])
    paths = common.study_baseline(recipe, mid=True)
    assert not product.exists() or not any(p.is_file() for p in product.rglob("*"))
    assert paths["final"].is_relative_to(common.cache_dir())
    final = torch.load(paths["final"], weights_only=True)
    mid = torch.load(paths["mid"], weights_only=True)
    assert any(not torch.equal(mid[k], final[k]) for k in final)  # one epoch apart
    out = tmp_path / "run"
    os.environ["TAYLORPRUNE_CACHE"] = str(product)  # what the user's run uses
    assert (
        main(["--quiet", "run", str(recipe), "-o", str(out), "--set", "pruning.max_steps=1"]) == 0
    )
    from taylorprune import load_pruned

    pipeline = load_pruned(out / "checkpoints" / "baseline.model.pt").state_dict()
    assert final.keys() == pipeline.keys()
    assert all(torch.equal(final[k], pipeline[k]) for k in final)
    assert common.study_baseline(recipe, mid=True) == paths  # trained once


def test_an_interrupted_study_baseline_continues_to_the_uninterrupted_weights(
    tmp_path, monkeypatch
):
    """Killed after its first epoch, ``study_baseline`` continues from that epoch's checkpoint
    (not from scratch) and ends with the weights of a training that was never interrupted."""
    import taylorprune.pipeline.context as context_mod

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"base: {ROOT / 'recipes/tiny/quickstart.yaml'}\nthreads: 1\n"
        "baseline: {train: {epochs: 3}}\nmeasure: {latency: false}\n"
    )
    for name in ("TAYLORPRUNE_CACHE", "TAYLORPRUNE_STUDY_CACHE"):  # restored afterwards
        monkeypatch.setenv(name, os.environ[name])
    monkeypatch.setenv("TAYLORPRUNE_STUDY_CACHE", str(tmp_path / "interrupted"))
    write = context_mod.write_run_checkpoint

    def killed_after_epoch_1(out_dir, ckpt, arch):
        write(out_dir, ckpt, arch)
        if ckpt.phase == "baseline" and ckpt.done == 1:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(context_mod, "write_run_checkpoint", killed_after_epoch_1)
        with pytest.raises(KeyboardInterrupt):
            common.study_baseline(recipe)
    starts = []
    fit = context_mod.RunContext.fit

    def recorded(self, phase, model, cfg, optimizer, scheduler, start_epoch, *args, **kwargs):
        starts.append(start_epoch)
        return fit(self, phase, model, cfg, optimizer, scheduler, start_epoch, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(context_mod.RunContext, "fit", recorded)
        resumed = torch.load(common.study_baseline(recipe)["final"], weights_only=True)
    assert starts == [1]  # from the checkpoint, not from scratch
    monkeypatch.setenv("TAYLORPRUNE_STUDY_CACHE", str(tmp_path / "uninterrupted"))
    whole = torch.load(common.study_baseline(recipe)["final"], weights_only=True)
    assert resumed.keys() == whole.keys()
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)


def test_mean_std_is_the_sample_spread():
    assert common.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert common.mean_std([5.0]) == (5.0, 0.0)


@pytest.mark.parametrize("k", [0, 25, 50, 92.5, 99])
def test_weight_pruning_zeroes_k_percent_of_each_hidden_matrix(k):
    model = _mlp()
    before = {
        n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)
    }
    classic_mlp.prune_weights(model, k)
    for name, m in model.named_modules():
        if not isinstance(m, nn.Linear):
            continue
        w0, w = before[name], m.weight.detach()
        if name == "fc":  # the classifier is never pruned
            assert torch.equal(w, w0)
            continue
        n = math.floor(w0.numel() * k / 100)
        zeroed = w == 0
        assert int(zeroed.sum()) == n
        if 0 < n < w0.numel():  # every zeroed weight is no larger than every kept one
            assert w0[zeroed].abs().max() <= w0[~zeroed].abs().min()
        assert torch.equal(w[~zeroed], w0[~zeroed])


def test_unit_pruning_zeroes_rows_of_the_lowest_units():
    model = _mlp()
    scores = classic_mlp.l2_scores(model)
    for name, m in classic_mlp.hidden_linears(model).items():
        assert torch.allclose(scores[name], torch.sqrt((m.weight.detach() ** 2).sum(1)))
    classic_mlp.prune_units(model, 50, scores)
    for name, m in classic_mlp.hidden_linears(model).items():
        rows_zero = (m.weight == 0).all(1)
        assert int(rows_zero.sum()) == m.out_features // 2
        assert scores[name][rows_zero].max() <= scores[name][~rows_zero].min()


def test_zeroed_unit_is_the_same_network_as_a_removed_unit():
    # The claim classic_mlp rests on: no bias, ReLU(0) = 0, so a zeroed incoming row removes a unit.
    model = _mlp().eval()
    classic_mlp.prune_units(model, 50, classic_mlp.l2_scores(model))
    x = torch.randn(5, 1, 4, 4)
    h = x.flatten(1)
    layers = list(classic_mlp.hidden_linears(model).values())
    keep_prev = None
    for layer in layers:
        w = layer.weight.detach()
        if keep_prev is not None:
            w = w[:, keep_prev]
        keep = ~(layer.weight == 0).all(1)
        h = torch.relu(h @ w[keep].T)
        keep_prev = keep
    out = h @ model.fc.weight.detach()[:, keep_prev].T
    assert torch.allclose(model(x), out, atol=1e-5)


def test_compare_runs_ignores_the_clock_and_finds_every_other_difference():
    before = {"created": "a", "timings": {"total_s": 1.0}, "steps": [{"macs": 5, "time_s": 2.0}]}
    after = {"created": "b", "timings": {"total_s": 9.0}, "steps": [{"macs": 5, "time_s": 7.0}]}
    assert compare_runs.differences(before, after) == []
    after["steps"].append({"macs": 4})
    after["target"] = {"achieved_keep": 0.7}
    assert compare_runs.differences(before, after) == [
        ".steps: length 1 != 2",
        ".target: only in after",
    ]
    assert compare_runs.differences({"x": [1.0, None]}, {"x": [1.0, 0.5]}) == [".x[1]: None != 0.5"]


# -- the tools' smoke modes -----------------------------------------------------------------------
@pytest.mark.slow
def test_bench_quality_runs_every_phase_resumes_and_reports_byte_for_byte(
    tmp_path, monkeypatch, caplog
):
    """The protocol's phases in smoke form on one network: selection, distillation selection,
    final runs on fresh seeds with the test split read; a job held by another process is left to
    it, and waited for by a chained worker, which takes it if that process gives it up; a rerun
    computes nothing; a report from the files alone is the same bytes."""
    out = tmp_path / "q"
    argv = ["--smoke", "--out", str(out), "--threads", "1", "--networks", "vgg"]
    p = bench_quality.plan(smoke=True)
    n_select = len(p.families)
    assert bench_quality.status(out, ["vgg"], p) == [
        f"select: 0 of {n_select} runs",
        "kd-select: waits for the phases before it",
        "final: waits for the phases before it",
    ]
    # a job another process holds is left to it by a single phase, and taken once it is free
    first = bench_quality.jobs("select", out, ["vgg"], p)[0]
    held = out / "vgg" / "runs" / f"{first[1].name}_s{first[2]}.json"
    with bench_quality.claim(held) as mine:
        assert mine
        line = f"select: 0 of {n_select} runs, 1 running"
        assert bench_quality.status(out, ["vgg"], p)[0] == line
        assert bench_quality.main([*argv, "--phase", "select"]) == 0
        assert not held.exists()
        assert len(list((out / "vgg" / "runs").glob("*.json"))) == n_select - 1
        with bench_quality.claim(held) as other:
            assert not other
    assert not held.with_name(f".{held.name}.lock").exists()
    # every phase, in order; the job held again by a "process" that dies without its result
    taken, gone = threading.Event(), threading.Event()

    def hold_then_die() -> None:
        with bench_quality.claim(held):
            taken.set()
            gone.wait(timeout=30)  # released once the chained worker has waited for it

    monkeypatch.setattr(bench_quality, "POLL_S", 0.05)
    pause = time.sleep
    monkeypatch.setattr(bench_quality.time, "sleep", lambda s: (gone.set(), pause(s)))
    holder = threading.Thread(target=hold_then_die)
    holder.start()
    taken.wait(timeout=30)
    with caplog.at_level("INFO", logger="taylorprune.bench"):
        assert bench_quality.main([*argv, "--phase", "all"]) == 0
    holder.join()
    assert "select: waiting for 1 runs held by other processes" in caplog.text
    assert held.exists()
    n_final = len(p.families) + len(bench_quality.KD_FAMILIES)
    assert bench_quality.status(out, ["vgg"], p) == [
        f"select: {n_select} of {n_select} runs",
        f"kd-select: {len(p.kd_grid)} of {len(p.kd_grid)} runs",
        f"final: {n_final} of {n_final} runs",
    ]
    runs = [json.loads(p.read_text()) for p in sorted((out / "vgg" / "runs").glob("*.json"))]
    selection = [r for r in runs if not r["final"]]
    assert len(selection) == len(p.families) + len(p.kd_grid)  # one variant a family, one seed
    finals = [r for r in runs if r["final"]]
    assert {r["seed"] for r in finals} == {10}  # fresh seeds only
    assert len(finals) == len(p.families) + len(bench_quality.KD_FAMILIES)
    for r in runs:
        levels = r["levels"]
        assert [lv["keep"] for lv in levels] == list(bench_quality.LEVELS)
        # smoke pacing 0.3: steps to 0.7, 0.4 (past -50%), 0.15 (past -70% and -85%)
        assert [lv["steps"] for lv in levels] == [2, 3, 3]
        assert all(("test" in lv) == r["final"] for lv in levels)  # test read by finals only
        assert all(0 <= lv["val"] <= 100 and 0 <= lv["val_recal"] <= 100 for lv in levels)
    assert all(len(r["curve"]) == r["levels"][-1]["steps"] for r in finals)
    outputs = ["summary.json", "table.md", "verdicts.md"]
    outputs += ["finetuned_vs_macs_vgg.png", "pruning_curve_vgg.png"]
    before = {name: (out / name).read_bytes() for name in outputs}
    stamps = {p: p.stat().st_mtime_ns for p in (out / "vgg" / "runs").glob("*.json")}
    assert bench_quality.main([*argv, "--phase", "final"]) == 0  # resumes: nothing recomputed
    assert {p: p.stat().st_mtime_ns for p in (out / "vgg" / "runs").glob("*.json")} == stamps
    for name in outputs:
        (out / name).unlink()
    assert bench_quality.main([*argv, "--report-only"]) == 0
    assert {name: (out / name).read_bytes() for name in outputs} == before
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["networks"]["vgg"]["chosen"]) == set(p.families)
    # a job is the same whichever process runs it and whatever ran before it in that process
    # (pairing by seed rests on it): here the selection in another order, from the other shard
    other = tmp_path / "other-order"
    argv = ["--smoke", "--out", str(other), "--threads", "1", "--networks", "vgg"]
    assert bench_quality.main([*argv, "--phase", "select", "--shard", "1/2"]) == 0
    for path in sorted((other / "vgg" / "runs").glob("*.json")):
        a, b = (
            _without_clock(json.loads(q.read_text()))
            for q in (out / "vgg" / "runs" / path.name, path)
        )
        assert a == b, path.name
    assert summary["complete"] and summary["bn_recalibration"]["points"] == 3 * n_final
    # one fresh seed in smoke form: no interval, so every verdict cell is empty and the bar open
    assert summary["networks"]["vgg"]["bar"]["met"] is None
    assert "| tp_taylor + KD | – | – | – |" in (out / "verdicts.md").read_text()


def _without_clock(data: object) -> object:
    """JSON data less its timings (keys ending in ``_s``)."""
    if isinstance(data, dict):
        return {k: _without_clock(v) for k, v in data.items() if not k.endswith("_s")}
    if isinstance(data, list):
        return [_without_clock(v) for v in data]
    return data


def _comparison(b: str, mean: float, half: float, keep: float = 0.3) -> dict:
    verdict = "win" if mean - half > 0 else "loss" if mean + half < 0 else "level"
    return {"a": "taylor_fo_bn", "b": b, "keep": keep, "split": "test", "n": 5, "mean": mean,
            "low": mean - half, "high": mean + half, "verdict": verdict}  # fmt: skip


@pytest.mark.parametrize(
    ("seed", "final", "curve"),
    [(10, True, True), (11, True, False), (10, False, False), (0, False, False)],
)
def test_bench_quality_records_the_curve_only_in_final_runs_on_the_curve_seed(
    seed, final, curve, monkeypatch
):
    from taylorprune.recipe import load_recipe

    seen = {}

    class Stop(Exception):
        pass

    def hooks(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(bench_quality, "_Hooks", hooks)
    recipe = load_recipe(ROOT / "recipes/tiny/quickstart.yaml")
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(10))
    args = type("Args", (), {"ft_iters": 1})()
    variant = bench_quality.Variant("taylor_fo_bn", "eval", None, None, True)
    with pytest.raises(Stop):
        bench_quality.run_job(recipe, model, variant, seed, final=final, args=args)
    assert seen["curve"] is curve


def test_bench_quality_status_costs_a_missing_run_at_the_mean_of_its_kind(tmp_path, monkeypatch):
    """A run that draws the pruning curve is costed at the curve runs' mean, any other at the
    mean of the other runs done, from the phases before where its own phase has none yet."""
    a, b = bench_quality.Variant("random", None), bench_quality.Variant("l1_norm", None)
    todo = {
        "select": [("vgg", a, 0, False), ("vgg", b, 0, False)],
        "final": [("vgg", a, 10, True), ("vgg", b, 10, True), ("vgg", a, 11, True)],
    }

    def jobs(phase, out, networks, p):
        if phase not in todo:
            raise SystemExit(1)
        return todo[phase]

    monkeypatch.setattr(bench_quality, "jobs", jobs)
    runs = tmp_path / "vgg" / "runs"
    runs.mkdir(parents=True)

    def done(variant, seed, final, seconds):
        record = {"final": final, "seed": seed, "total_s": seconds}
        (runs / f"{variant.name}_s{seed}.json").write_text(json.dumps(record))

    done(a, 0, False, 360.0)
    p = bench_quality.plan(smoke=True)
    assert bench_quality.status(tmp_path, ["vgg"], p) == [
        "select: 1 of 2 runs, about 0.1 h of one core left",
        "kd-select: waits for the phases before it",
        "final: 0 of 3 runs, about 0.3 h of one core left",  # no curve run yet: 3 x 360 s
    ]
    done(b, 0, False, 360.0)
    done(a, 10, True, 3600.0)
    assert bench_quality.status(tmp_path, ["vgg"], p)[2] == (
        "final: 1 of 3 runs, about 1.1 h of one core left"  # one curve run, one plain
    )


def test_bench_quality_keeps_the_baseline_beside_the_runs_and_refuses_another(
    tmp_path, monkeypatch
):
    """The baseline is trained once and kept (with its sha256) beside the runs, then read from
    there; changed bytes, or a baseline other than the one the runs on disk were measured on,
    stop the study with one line."""
    import hashlib
    import types

    from taylorprune.pipeline.options import RunOptions
    from taylorprune.recipe import load_recipe
    from taylorprune.runner import build_inputs

    p = bench_quality.plan(smoke=True)
    _, model, _, _ = build_inputs(RunOptions.from_recipe(load_recipe(p.recipes["vgg"])))
    trained = tmp_path / "trained.pt"
    torch.save(model.state_dict(), trained)
    calls = []
    monkeypatch.setattr(
        common, "study_baseline", lambda *a, **k: calls.append(a) or {"final": trained}
    )
    args = types.SimpleNamespace(out=tmp_path / "q")
    bench_quality._baseline("vgg", args, p)
    kept, info = args.out / "vgg" / "baseline.pt", args.out / "vgg" / "baseline.json"
    record = json.loads(info.read_text())
    assert kept.read_bytes() == trained.read_bytes()
    assert record["sha256"] == hashlib.sha256(trained.read_bytes()).hexdigest()
    _, again = bench_quality._baseline("vgg", args, p)  # read back, nothing trained
    assert len(calls) == 1
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name
    kept.write_bytes(kept.read_bytes() + b"\0")
    with pytest.raises(SystemExit, match="bytes do not match the sha256 in baseline.json"):
        bench_quality._baseline("vgg", args, p)
    # runs on disk measured on a baseline that reads otherwise: the one trained now is refused
    kept.unlink()
    del record["sha256"]
    info.write_text(json.dumps(record | {"val": record["val"] + 1.0}))
    with pytest.raises(SystemExit, match="not the network the runs on disk pruned"):
        bench_quality._baseline("vgg", args, p)
    assert not kept.exists()


def test_bench_quality_table_reads_final_runs_before_any_curve_run():
    """Shards finish runs in any order: a network whose final runs so far draw no curve still
    gets its table."""
    rec = {"points": 3, "spearman_val_stale": 0.5, "spearman_val_recal": 0.9}
    rec |= {"swing_val_stale": None, "swing_val_recal": None}
    text = bench_quality.markdown({"networks": {"vgg": {"bn_recalibration": rec}}})
    assert "0.500 as it is, 0.900 re-estimated (no pruning curve yet)." in text


def test_bench_quality_bar_needs_every_peer_a_point_behind_with_the_interval_above_zero():
    peers = bench_quality._peer_labels()
    assert peers == ["tp_taylor", "tp_magnitude", "l1_norm", "bn_scale", "random",
                     "tp_magnitude + KD", "tp_taylor + KD"]  # fmt: skip
    ahead = [_comparison(b, 2.0, 0.5) for b in peers]
    bar = bench_quality._bar(ahead, "taylor_fo_bn", peers)
    assert bar["met"] is True and bar["weakest"]["mean"] == 2.0
    for mean, half in ((0.9, 0.5), (1.5, 1.6)):  # short of a point; interval reaching 0
        close = [*ahead[:-1], _comparison(peers[-1], mean, half)]
        bar = bench_quality._bar(close, "taylor_fo_bn", peers)
        assert bar["met"] is False and bar["weakest"]["b"] == peers[-1]
    # another level, split or default row does not count; a peer without runs leaves it open
    others = [_comparison(peers[0], 5.0, 0.1, keep=0.5), {**ahead[0], "split": "val"}]
    bar = bench_quality._bar(ahead[1:] + others, "taylor_fo_bn", peers)
    assert bar == {"met": None, "missing": [peers[0]]}
    assert bench_quality._bar(ahead, "taylor_fo_bn + KD", peers)["met"] is None


def test_bench_quality_verdicts_state_each_cell_the_bar_and_the_recalibration_rule():
    peers = bench_quality._peer_labels()
    comparisons = [
        _comparison(b, 2.0 if b != "random" else -1.0, 0.5, keep=k)
        for b in peers for k in bench_quality.LEVELS
    ]  # fmt: skip
    kd = {**_comparison("taylor_fo_bn", 0.3, 0.4), "a": "taylor_fo_bn + KD"}
    comparisons.append(kd)  # distillation measured at -70% only, here
    net = {
        "final": [{"method": "taylor_fo_bn", "variant": "taylor_fo_bn_bn-train_ema_raw-mac"}],
        "comparisons": comparisons,
        "bar": bench_quality._bar(comparisons, "taylor_fo_bn", peers),
    }
    rec = {"points": 78, "spearman_val_stale": 0.5, "spearman_val_recal": 0.9, "default": True}
    text = bench_quality.verdicts_markdown(
        {"networks": {"resnet20": net, "vgg": net}, "bn_recalibration": rec}, "taylor_fo_bn"
    )
    assert "(taylor_fo_bn: `taylor_fo_bn_bn-train_ema_raw-mac`)" in text
    assert "| random |" + " -1.00 [-1.50, -0.50] loss |" * 6 in text
    assert "| tp_taylor |" + " +2.00 [+1.50, +2.50] win |" * 6 in text
    assert (
        "| (distillation: taylor_fo_bn + KD − taylor_fo_bn) | – | +0.30 [-0.10, +0.70] level "
        "| – | – | +0.30 [-0.10, +0.70] level | – |" in text
    )
    assert (
        "- resnet20: the bar (at least +1 point at −70% of the MACs against every peer, "
        "interval above 0) is not met (closest peer: random, -1.00 [-1.50, -0.50] loss)." in text
    )
    assert "`pruning.bn_recalibration` is on by default: over 78 final snapshots" in text


def test_the_readme_quotes_the_quality_verdicts_whole():
    """The README's verdict block is the study's verdicts.md as it is on disk, or says there is
    none while the final runs are not complete."""
    verdicts = ROOT / "tools" / "results" / "quality" / "verdicts.md"
    expected = verdicts.read_text() if verdicts.exists() else bench_quality.NO_VERDICT
    assert bench_quality.readme_verdicts((ROOT / "README.md").read_text()) == expected


def test_bench_quality_paired_interval_is_the_t_interval():
    a = {1: 2.0, 2: 3.0, 3: 4.0}
    b = {1: 1.0, 2: 1.0, 3: 1.0, 4: 9.0}  # seed 4 has no partner
    c = bench_quality.paired(a, b)
    # differences 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.303
    assert c["n"] == 3 and c["mean"] == pytest.approx(2.0)
    assert c["high"] - c["mean"] == pytest.approx(4.3027 / 3**0.5, rel=1e-4)
    assert c["verdict"] == "level"  # 2 - 2.48 < 0
    assert bench_quality.paired({1: 1.0}, {1: 0.0}) is None


def test_bench_quality_grid_gives_every_family_the_products_options():
    fam = bench_quality.FAMILIES
    taylor = {(v.bn, v.ema, v.cost_aware) for v in fam["tp_taylor"]}
    ours = {(v.bn, v.ema, v.cost_aware) for v in fam["taylor_fo_bn"]}
    assert ours <= taylor  # every BN mode, EMA and per-MAC ranking ours has, tp_taylor has
    assert {v.normalize for v in fam["tp_taylor"]} == {None, "mean"}
    for static in ("tp_magnitude", "l1_norm", "bn_scale"):
        assert {(v.normalize, v.cost_aware) for v in fam[static]} == set(bench_quality.RANKINGS)
    names = [v.name for vs in fam.values() for v in vs]
    assert len(names) == len(set(names))


def test_shard_is_i_of_n_and_anything_else_an_argument_error():
    import argparse

    assert _cli.shard("0/1") == (0, 1) and _cli.shard("2/3") == (2, 3)
    for bad in ("3/3", "-1/2", "a/b", "1", "1/2/3"):
        with pytest.raises(argparse.ArgumentTypeError):
            _cli.shard(bad)


@pytest.mark.slow
def test_classic_mlp_smoke(tmp_path):
    assert classic_mlp.main(["--smoke", "--out", str(tmp_path), "--threads", "1"]) == 0
    rec = json.loads((tmp_path / "results.json").read_text())
    assert rec["sparsities"] == list(classic_mlp.SPARSITIES)
    acc = {m: [p["top1"] for p in rec["results"][m]] for m in classic_mlp.METHODS}
    assert all(0 <= a <= 100 for v in acc.values() for a in v)
    assert acc["weight"][0] == acc["unit_l2"][0] == acc["unit_taylor"][0]  # k = 0: same model
    assert acc["weight"][0] > 60  # the MLP learned the digits
    assert acc["unit_l2"][-1] < acc["unit_l2"][0]  # 99% of the units gone hurts
    assert (tmp_path / "mlp_weight_vs_unit.png").stat().st_size > 0
    (ax,) = classic_mlp.figure(rec).axes  # the saved figure plots the recorded accuracies
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {classic_mlp.LABELS[m] for m in classic_mlp.METHODS}
    for m in classic_mlp.METHODS:
        line = lines[classic_mlp.LABELS[m]]
        assert list(line.get_xdata()) == list(classic_mlp.SPARSITIES)
        assert list(line.get_ydata()) == acc[m]


@pytest.mark.slow
def test_bench_cost_smoke(tmp_path):
    assert bench_cost.main(["--smoke", "--out", str(tmp_path), "--threads", "1"]) == 0
    scoring = json.loads((tmp_path / "scoring.json").read_text())
    assert set(scoring["criteria"]) == set(bench_cost.SCORING_CRITERIA)
    for v in scoring["criteria"].values():  # medians of real timings, the overhead their ratio
        assert v["plain_ms"] > 0 and v["scored_ms"] > 0
        assert v["overhead"] == pytest.approx(v["scored_ms"] / v["plain_ms"] - 1)
    (prune,) = json.loads((tmp_path / "prune.json").read_text())
    assert abs(prune["taylorprune_macs_fraction"] - 0.5) <= 0.02
    assert abs(prune["torch_pruning_macs_fraction"] - 0.5) <= 0.02
    (lat,) = json.loads((tmp_path / "latency.json").read_text())
    assert 1.9 <= lat["ideal_speedup"] <= 2.1  # -50% MACs
    # the timed pair is the baseline and the pruned model, and the ratios are the right way up
    # (timings themselves are not asserted: they depend on the machine's load)
    assert lat["pruned_peak_activation_mib"] < lat["baseline_peak_activation_mib"]
    assert lat["speedup_p10"] <= lat["speedup"] <= lat["speedup_p90"]  # median per-round ratio
    assert lat["fraction_of_ideal"] == pytest.approx(lat["speedup"] / lat["ideal_speedup"])
    assert lat["runs"] >= 1 and lat["threads"] == 1
    assert not (tmp_path / "e2e.json").exists()  # smoke skips the recipe run
    assert "Device: cpu" in (tmp_path / "table.md").read_text()


@pytest.mark.slow
def test_bench_distill_smoke(tmp_path):
    assert bench_distill.main(["--smoke", "--out", str(tmp_path), "--threads", "1"]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    full, half = res["students"]
    assert full["student_macs_fraction"] == pytest.approx(1.0)
    assert abs(half["student_macs_fraction"] - 0.5) <= 0.02
    for r in (full, half):  # medians of real timings; their ratio the right way up
        assert 0 < r["teacher_forward_ms"] < r["distill_ms"]
        assert r["ratio"] == pytest.approx(r["distill_ms"] / r["plain_ms"])
    assert "| ResNet-20 (0.50) |" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_oracle_study_smoke_and_resume(tmp_path):
    out = tmp_path / "oracle"
    assert oracle_study.main(["--smoke", "--out", str(out), "--threads", "1"]) == 0
    results = json.loads((out / "results.json").read_text())
    rel = results["oracle_reliability"]["final"]
    assert all(math.isfinite(float(v)) for v in rel.values() if isinstance(v, int | float))
    rows = list(csv.DictReader((out / "correlations.csv").open()))
    criteria = oracle_study.default_criteria()
    assert "taylor_fo_bn" in criteria and oracle_study.HUTCHINSON in criteria
    pop = [r for r in rows if r["oracle"] == "population"]
    assert {r["criterion"] for r in pop} == {*criteria, "per_minibatch_oracle"}
    for r in rows:  # correlations over the 2 measured channels of each group (channel_cap)
        rho = float(r["spearman_all"])
        assert math.isnan(rho) or -1.0 <= rho <= 1.0
        assert int(r["channels"]) > 0
    removal = list(csv.DictReader((out / "removal.csv").open()))
    assert {r["criterion"] for r in removal} >= set(criteria)
    for r in removal:  # 10% of the channels removed by each ranking, no fine-tuning
        assert r["fraction"] == "0.1" and r["unit"] == "channels"
        assert 0.0 < float(r["macs_left"]) < 1.0 and 0.0 <= float(r["top1"]) <= 100.0
    assert (out / "spearman.png").stat().st_size > 0  # drawn once, at the end
    records = sorted((out / "cache").glob("*.json"))
    assert records
    stamps = {p: p.stat().st_mtime_ns for p in records}
    assert oracle_study.main(["--smoke", "--out", str(out), "--threads", "1"]) == 0
    assert {p: p.stat().st_mtime_ns for p in records} == stamps  # a rerun measures nothing again


def test_compare_runs_finds_a_changed_width_and_a_changed_weight(tmp_path):
    from taylorprune import prune, save_pruned

    model = _mlp()
    save_pruned(model, tmp_path / "a.pt")
    save_pruned(model, tmp_path / "same.pt")
    assert compare_runs.model_differences(tmp_path / "a.pt", tmp_path / "same.pt") == []
    with torch.no_grad():
        model.fc.weight[0, 0] += 1e-6
    save_pruned(model, tmp_path / "weight.pt")
    assert compare_runs.model_differences(tmp_path / "a.pt", tmp_path / "weight.pt") == [
        "model.pt: fc.weight differs"
    ]
    example = torch.zeros(1, 1, 4, 4)
    prune(model, example, [], nn.functional.cross_entropy, criterion="l1_norm", target_macs=0.5)
    save_pruned(model, tmp_path / "pruned.pt")
    found = compare_runs.model_differences(tmp_path / "a.pt", tmp_path / "pruned.pt")
    assert found[0] == "model.pt: module widths differ"


def test_wellfit_study_smoke(tmp_path, capsys):
    import _wellfit_e2e
    import wellfit_study

    for bad in (["--channels", "0"], ["--held-out", "x"]):
        with pytest.raises(SystemExit) as exc:
            wellfit_study.main(["--smoke", "--out", str(tmp_path / "bad"), *bad])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"{bad[0]}: expected an integer >= 1, got '{bad[1]}'" in err
    assert not (tmp_path / "bad").exists()

    args = ["--smoke", "--out", str(tmp_path), "--threads", "1", "--channels", "20"]
    assert wellfit_study.main([*args, "--held-out", "200"]) == 0
    r = json.loads((tmp_path / "results.json").read_text())
    assert (r["measured_channels"], r["oracle"]["held_out"]) == (20, 200)
    assert len(r["rows"]) == len(wellfit_study.VARIANTS)
    assert all(-1 <= x["eval"]["mean"] <= 1 for x in r["rows"])
    assert set(r["diagnosis"]) == {"train", "eval"}
    assert all(-1 <= x["recalibrated"]["mean"] <= 1 for x in r["rows"])
    assert [s["epochs"] for s in r["stages"]] == [2]
    assert r["channels"] == 48  # 8 + 8 + 16 + 16 channels of the narrow CNN
    assert "Spearman" in (tmp_path / "table.md").read_text()
    assert wellfit_study.main(["--smoke", "--end-to-end", "--out", str(tmp_path)]) == 0
    e2e = json.loads((tmp_path / "e2e.json").read_text())
    # paired with what the product scores this baseline with, as its well-fit reading decides
    fit = e2e["well_fit"]
    assert fit["criterion"] == ("taylor_fo_bn_fg" if fit["top1"] >= 99.0 else "taylor_fo_bn")
    chosen = dataclasses.replace(_wellfit_e2e.DEFAULT, criterion=fit["criterion"])
    default, other = (v.name for v in _wellfit_e2e.e2e_variants(chosen)[:2])
    assert e2e["default"] == default
    assert {(x["variant"], x["keep"]) for x in e2e["rows"]} == {
        (v, k) for v in (default, other) for k in _wellfit_e2e.E2E_LEVELS
    }
    assert len(list((tmp_path / "e2e").glob("*.json"))) == 2  # one run per variant and seed
    assert wellfit_study.main(["--smoke", "--reading", "--out", str(tmp_path)]) == 0
    reading = json.loads((tmp_path / "well_fit.json").read_text())
    assert reading["recipe"] == "digits_narrow_cnn.yaml"
    assert reading["well_fit"] == e2e["well_fit"]  # the same baseline, the same reading


def test_the_well_fit_switch_leaves_the_quality_studys_networks_alone():
    """The study chose the default on networks the switch does not touch: the product's reading
    of each (committed by ``wellfit_study.py --reading``) is under the default threshold."""
    from taylorprune.importance import defaults

    for net in bench_quality.NETWORKS:
        fit = json.loads((ROOT / "tools/results/wellfit" / net / "well_fit.json").read_text())
        assert fit["well_fit"]["threshold"] == defaults.WELL_FIT_TOP1
        assert not fit["well_fit"]["switched"] and fit["well_fit"]["top1"] < defaults.WELL_FIT_TOP1


def test_the_product_defaults_are_the_quality_studys_choices_once_it_makes_them():
    """The protocol makes the study's choices the product's: the default family's chosen variant
    (criterion, BatchNorm mode, EMA, ranking), distillation when it beat plain fine-tuning, and
    BatchNorm re-estimation by its rule over the final runs. Until the library family's selection
    runs are all committed, the defaults say they are provisional."""
    from taylorprune.importance import defaults
    from taylorprune.recipe.sections import FinetuneConfig, PruningConfig

    out, p = ROOT / "tools" / "results" / "quality", bench_quality.plan(smoke=False)
    networks = list(bench_quality.NETWORKS)
    try:
        v = bench_quality.choose_default(out, networks, p)
    except SystemExit:
        assert "Provisional" in (defaults.__doc__ or "")
        return
    ours = (defaults.CRITERION, defaults.TRAIN_MODE, defaults.EMA, defaults.NORMALIZE)
    assert (*ours, defaults.COST_AWARE) == (
        v.criterion, v.bn == "train", v.ema, v.normalize, v.cost_aware
    )  # fmt: skip
    assert "Provisional" not in (defaults.__doc__ or "")
    try:
        kd = bench_quality.choose_kd(out, networks, v, p)
    except SystemExit:
        return
    d = FinetuneConfig().distill
    assert (d if d is None else (d.weight, d.temperature, d.while_pruning)) == kd
    summary = common.read_json(out / "summary.json")
    if summary is not None and summary.get("complete"):
        assert PruningConfig().bn_recalibration == summary["bn_recalibration"]["default"]
