"""Interrupted runs continue with ``--resume`` and end exactly where an uninterrupted run ends, and
a run folder never continues (or pairs results with) a recipe it does not belong to."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from _forked import run_forked

import taylorprune.pipeline.context as context_mod
from taylorprune.cli import main

ROOT = Path(__file__).resolve().parents[1]
FASHION = str(ROOT / "recipes/tiny/fashion_mnist_resnet20.yaml")
QUICK = str(ROOT / "recipes/tiny/quickstart.yaml")
# The case: three capped pruning steps. One thread: the in-process and subprocess runs
# then do the same arithmetic in the same order.
FASHION_SETS = ["--set", "threads=1", "--set", "measure.latency=false"]
QUICK_SETS = [
    "--set", "threads=1",
    "--set", "baseline.train.epochs=2",
    "--set", "finetune.epochs=2",
    "--set", "measure.latency=false",
]  # fmt: skip
# Every checkpoint the Fashion-MNIST twin writes, the last pruning step included.
FASHION_TAGS = [
    "baseline-001", "prune-001", "prune-002", "prune-003", "finetune-000", "finetune-001"
]  # fmt: skip

pytestmark = pytest.mark.slow


def _run(recipe: str, sets: list[str], out: Path, *extra: str) -> int:
    """A run without plots: what these tests compare is report.json, checkpoints and weights."""
    return main(["--quiet", "run", "--no-plots", recipe, "-o", str(out), *sets, *extra])


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, tag: str) -> None:
    """Make the run stop like on Ctrl-C right after run checkpoint ``tag`` is written."""
    real = context_mod.write_run_checkpoint

    def write_then_stop(out_dir, ckpt, arch):
        real(out_dir, ckpt, arch)
        if ckpt.tag == tag:
            raise KeyboardInterrupt

    monkeypatch.setattr(context_mod, "write_run_checkpoint", write_then_stop)


def _outcome(out: Path) -> dict:
    """What must not depend on interruptions: widths, steps, figures, and the final weights."""
    report = json.loads((out / "report.json").read_text())
    state = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    return {
        "widths": [(row["name"], row["channels_after"]) for row in report["layers"]],
        "steps": [(s["channels_removed"], s["macs"], s["iteration"]) for s in report["steps"]],
        "stages": {k: report[k] for k in ("baseline", "pruned", "finetuned")},
        "weights": state,
    }


def _assert_same_run(got: dict, want: dict) -> None:
    assert got["widths"] == want["widths"]
    assert got["steps"] == want["steps"]
    for stage in ("baseline", "pruned", "finetuned"):
        a, b = got["stages"][stage], want["stages"][stage]
        assert (a["macs"], a["params"]) == (b["macs"], b["params"]), stage
        assert a["top1"] == pytest.approx(b["top1"], abs=1e-6), stage
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), stage
    assert got["weights"].keys() == want["weights"].keys()
    for name, w in want["weights"].items():
        if w.is_floating_point():
            assert torch.allclose(got["weights"][name], w, rtol=1e-5, atol=1e-6), name
        else:
            assert torch.equal(got["weights"][name], w), name


def _killed_then_resumed(recipe: str, sets: list[str], tag: str, out: Path, monkeypatch) -> dict:
    """The outcome of a run interrupted right after checkpoint ``tag``, then resumed."""
    with monkeypatch.context() as m:
        _interrupt_after(m, tag)
        assert _run(recipe, sets, out) == 130
    assert _run(recipe, sets, out, "--resume") == 0
    return _outcome(out)


def _assert_bit_for_bit(got: dict, want: dict) -> None:
    _assert_same_run(got, want)
    for name, w in want["weights"].items():
        assert torch.equal(got["weights"][name], w), name


@pytest.fixture(scope="module")
def fashion(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("fashion") / "run"
    assert _run(FASHION, FASHION_SETS, out) == 0
    assert not list(out.glob("*.png")) and "## Plots" not in (out / "report.md").read_text()
    outcome = _outcome(out)
    assert len(outcome["steps"]) == 3  # max_steps
    return outcome


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("quick") / "run"
    assert _run(QUICK, QUICK_SETS, out) == 0
    return _outcome(out)


@pytest.mark.parametrize("tag", FASHION_TAGS)
def test_resume_at_every_checkpoint_ends_like_an_uninterrupted_run(
    tag, fashion, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _interrupt_after(m, tag)
        assert _run(FASHION, FASHION_SETS, out) == 130
    assert not (out / "report.json").exists()
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["tag"] == tag
    assert _run(FASHION, FASHION_SETS, out, "--resume") == 0
    _assert_same_run(_outcome(out), fashion)


@pytest.mark.parametrize("tag", ["baseline-001", "prune-003", "finetune-001"])
def test_resume_mid_schedule_towards_the_target(tag, quick, tmp_path, monkeypatch):
    """The quickstart twin prunes until its MACs target (6 steps), not until a step cap."""
    _assert_same_run(
        _killed_then_resumed(QUICK, QUICK_SETS, tag, tmp_path / "run", monkeypatch), quick
    )


# Distillation from the baseline in the schedule's windows and in fine-tuning.
KD_SETS = [*QUICK_SETS, "--set", "finetune.distill={weight: 0.5, temperature: 4}"]


@pytest.fixture(scope="module")
def quick_kd(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("quick_kd") / "run"
    assert _run(QUICK, KD_SETS, out) == 0
    return _outcome(out)


@pytest.mark.parametrize("tag", ["prune-002", "finetune-001"])
def test_a_distilling_run_resumes_bit_for_bit(tag, quick_kd, tmp_path, monkeypatch):
    """Killed while pruning or fine-tuning with the baseline as teacher: the resumed run's teacher
    is the baseline it saved (checkpoints/baseline.model.pt), and it ends exactly as an
    uninterrupted run."""
    got = _killed_then_resumed(QUICK, KD_SETS, tag, tmp_path / "run", monkeypatch)
    _assert_bit_for_bit(got, quick_kd)


def test_resume_after_one_shot_pruning(tmp_path, monkeypatch):
    sets = [*QUICK_SETS, "--set", "pruning.schedule=oneshot"]
    ref = tmp_path / "ref"
    assert _run(QUICK, sets, ref) == 0
    got = _killed_then_resumed(QUICK, sets, "prune-001", tmp_path / "run", monkeypatch)
    _assert_same_run(got, _outcome(ref))


def test_a_run_that_went_past_its_targets_band_says_so_also_when_resumed(tmp_path, monkeypatch):
    """Blocks of 8 channels: a 44% channel target lands on 42.9%, below the 1% band."""
    sets = [*QUICK_SETS, "--set", "pruning.round_to=8", "--set", "pruning.target={channels: 0.44}"]
    ref = tmp_path / "ref"
    assert _run(QUICK, sets, ref) == 0
    got = _killed_then_resumed(QUICK, sets, "finetune-001", tmp_path / "run", monkeypatch)
    _assert_same_run(got, _outcome(ref))
    targets = [
        json.loads((d / "report.json").read_text())["target"] for d in (ref, tmp_path / "run")
    ]
    assert targets[0] == targets[1]
    assert targets[0]["stopped_short"] is None and targets[0]["achieved_keep"] < 0.43
    assert targets[0]["overshot"]["code"] == "granularity"
    assert "round_to=8" in targets[0]["overshot"]["message"]
    assert "- overshot: the last step's removal" in (ref / "report.md").read_text()


def test_without_fine_tuning_the_delivered_model_is_recalibrated_and_resumes(tmp_path, monkeypatch):
    """``finetune.epochs: 0`` with ``pruning.bn_recalibration``: the saved model's BatchNorm
    statistics are re-estimated, so the final figures are the ``pruned`` row's (without it, the
    final model reads statistics trailing the last removal); killed right after the fine-tuning
    phase's first checkpoint, the resumed run ends the same."""
    sets = [*QUICK_SETS, "--set", "finetune.epochs=0", "--set", "pruning.bn_recalibration=true",
            "--set", "pruning.bn_recalibration_batches=2"]  # fmt: skip
    ref = tmp_path / "ref"
    assert _run(QUICK, sets, ref) == 0
    want = _outcome(ref)
    pruned, final = want["stages"]["pruned"], want["stages"]["finetuned"]
    assert final["top1"] == pytest.approx(pruned["top1"], abs=1e-6)
    assert final["loss"] == pytest.approx(pruned["loss"], rel=1e-5)
    got = _killed_then_resumed(QUICK, sets, "finetune-000", tmp_path / "run", monkeypatch)
    _assert_bit_for_bit(got, want)


def test_eval_mode_scoring_and_tp_taylor_ema_resume_bit_for_bit(tmp_path, monkeypatch):
    """Eval-mode BatchNorm scoring (a scoring pass of its own per minibatch) with torch-pruning's
    Taylor importance averaged across removals: killed between two pruning steps, the resumed run
    ends exactly as an uninterrupted one (the average is part of the run checkpoint)."""
    sets = [*FASHION_SETS, "--set", "importance.train_mode=false",
            "--set", "importance.criterion=tp_taylor", "--set", "importance.ema=0.5"]  # fmt: skip
    ref = tmp_path / "ref"
    assert _run(FASHION, sets, ref) == 0
    got = _killed_then_resumed(FASHION, sets, "prune-002", tmp_path / "run", monkeypatch)
    _assert_bit_for_bit(got, _outcome(ref))


def test_sigkill_right_after_the_last_pruning_step_then_resume(fashion, tmp_path):
    """A real SIGKILL at a chosen point: the process kills itself right after the checkpoint of
    the last pruning step is written (the issue's case: the resumed run made a fourth step)."""
    out = tmp_path / "run"
    real = context_mod.write_run_checkpoint

    def write_then_die(out_dir, ckpt, arch):
        real(out_dir, ckpt, arch)
        if ckpt.tag == "prune-003":
            os.kill(os.getpid(), signal.SIGKILL)

    def child() -> int:  # a process of its own: the patch and the kill stay in it
        context_mod.write_run_checkpoint = write_then_die
        return _run(FASHION, FASHION_SETS, out)

    assert run_forked(child, tmp_path / "stderr") == -signal.SIGKILL  # killed, not finished
    assert not (out / "report.json").exists()
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["tag"] == "prune-003"
    assert _run(FASHION, FASHION_SETS, out, "--resume") == 0
    got = _outcome(out)
    assert len(got["steps"]) == 3
    _assert_same_run(got, fashion)


# -- which recipe a folder belongs to -------------------------------------------------------------
def test_resume_refuses_a_change_that_finished_work_depends_on(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _interrupt_after(m, "finetune-000")
        assert _run(FASHION, FASHION_SETS, out) == 130
    capsys.readouterr()
    assert _run(FASHION, FASHION_SETS, out, "--set", "pruning.channels_per_step=8", "--resume") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pruning.channels_per_step" in err[0] and "16" in err[0], err
    assert not (out / "report.json").exists()


def test_resume_accepts_a_change_no_finished_work_depends_on(fashion, tmp_path, monkeypatch):
    """The latency settings are only used at the end: a run may resume with other ones."""
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _interrupt_after(m, "finetune-000")
        assert _run(FASHION, FASHION_SETS, out) == 130
    sets = [*FASHION_SETS, "--set", "measure.latency=true", "--set", "measure.latency_runs=1"]
    assert _run(FASHION, sets, out, "--resume") == 0
    _assert_same_run(_outcome(out), fashion)
    report = json.loads((out / "report.json").read_text())
    assert report["latency"]["runs"] == 1
    assert "latency_runs: 1" in (out / "recipe.yaml").read_text()


def test_resume_after_an_interrupted_overwrite_starts_the_new_recipe(tmp_path, monkeypatch):
    """A finished seed-0 run, then ``--overwrite --set seed=3`` killed right after it wrote its
    recipe: ``--resume --set seed=3`` must run seed 3, not continue the seed-0 checkpoints."""
    out = tmp_path / "run"
    assert _run(FASHION, FASHION_SETS, out) == 0
    seed0 = _outcome(out)
    import taylorprune.runner as runner_mod

    real = runner_mod.prepare_contents

    def prepare_then_stop(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(runner_mod, "prepare_contents", prepare_then_stop)
        assert _run(FASHION, FASHION_SETS, out, "--overwrite", "--set", "seed=3") == 130
    # nothing of the seed-0 run is left next to the seed-3 recipe
    assert sorted(p.name for p in out.iterdir()) == ["recipe.yaml"]
    assert "seed: 3" in (out / "recipe.yaml").read_text()
    assert _run(FASHION, FASHION_SETS, out, "--set", "seed=3", "--resume") == 0
    seed3 = _outcome(out)
    assert seed3["stages"]["baseline"]["loss"] != seed0["stages"]["baseline"]["loss"]
    fresh = tmp_path / "fresh"
    assert _run(FASHION, FASHION_SETS, fresh, "--set", "seed=3") == 0
    _assert_same_run(seed3, _outcome(fresh))


def test_a_checkpoint_of_another_recipe_is_refused(tmp_path, monkeypatch, capsys):
    """Even when recipe.yaml was replaced, the checkpoint proves which recipe it belongs to."""
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _interrupt_after(m, "prune-002")
        assert _run(FASHION, FASHION_SETS, out) == 130
    recipe = out / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace("seed: 0", "seed: 3"))
    capsys.readouterr()
    assert _run(FASHION, FASHION_SETS, out, "--set", "seed=3", "--resume") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seed was 0, now 3" in err[0], err


# -- failures during a run ------------------------------------------------------------------------
def test_full_disk_while_saving_a_checkpoint(fashion, tmp_path, monkeypatch, capsys):
    """The disk fills up while the state of pruning step 2 is written: one line, exit 2, no
    temporary file, the previous checkpoint still the latest; resuming ends like a clean run."""
    import errno

    import taylorprune._io as io_mod

    writing: list[Path] = []
    real_write = io_mod.atomic_write

    def tracking_write(path, write):
        writing.append(Path(path))
        return real_write(path, write)

    class FullDisk:  # ``os`` as taylorprune._io sees it
        def __getattr__(self, name):
            return getattr(os, name)

        def fsync(self, fd):
            if writing[-1].name == "prune-002.state.pt":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(fd)

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(io_mod, "atomic_write", tracking_write)
        m.setattr(io_mod, "os", FullDisk())
        capsys.readouterr()
        assert _run(FASHION, FASHION_SETS, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "prune-002.state.pt" in err[0] and "No space left" in err[0], err
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["tag"] == "prune-001"
    assert not (out / "checkpoints" / "prune-002.model.pt").exists()
    assert not (out / "report.json").exists()
    assert _run(FASHION, FASHION_SETS, out, "--resume") == 0
    _assert_same_run(_outcome(out), fashion)


def test_an_error_mid_run_keeps_the_checkpoints_and_writes_no_report(
    fashion, tmp_path, monkeypatch, capsys
):
    """The data layer raising a UserError (a corrupt image) during pruning: one line, exit 2,
    the checkpoints so far kept, no report; once fixed, ``--resume`` ends like a clean run."""
    import taylorprune.pipeline.prune as prune_mod
    from taylorprune.errors import UserError

    real = prune_mod.train_epoch
    calls = []

    def corrupt_on_third_window(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise UserError("data/train/dress/0042.png: cannot read image (truncated file)")
        return real(*args, **kwargs)

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(prune_mod, "train_epoch", corrupt_on_third_window)
        capsys.readouterr()
        assert _run(FASHION, FASHION_SETS, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "0042.png: cannot read image" in err[0], err
    assert not (out / "report.json").exists() and not (out / "model.pt").exists()
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["tag"] == "prune-002"
    assert _run(FASHION, FASHION_SETS, out, "--resume") == 0
    _assert_same_run(_outcome(out), fashion)


# -- every checkpoint reads back with weights_only, for every target kind -------------------------
LATENCY = str(ROOT / "recipes/tiny/quickstart_latency.yaml")
# Small capped steps and a step cap: three pruning steps, well above the target.
LATENCY_SETS = [
    "--set", "finetune.epochs=2",
    "--set", "measure.latency=false",
    "--set", "pruning.channels_per_step=2",
    "--set", "pruning.max_steps=3",
]  # fmt: skip


def _load_each_checkpoint(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Load every run checkpoint right after it is written (the writer deletes the previous one)
    as ``--resume`` does: ``weights_only=True``. Returns the tags loaded."""
    real = context_mod.write_run_checkpoint
    loaded: list[str] = []

    def write_then_load(out_dir, ckpt, arch):
        real(out_dir, ckpt, arch)
        for kind in ("model", "state"):
            torch.load(Path(out_dir) / "checkpoints" / f"{ckpt.tag}.{kind}.pt", weights_only=True)
        loaded.append(ckpt.tag)

    monkeypatch.setattr(context_mod, "write_run_checkpoint", write_then_load)
    return loaded


@pytest.mark.parametrize("target", ["macs=0.7", "params=0.7", "channels=0.8"])
def test_every_checkpoint_of_every_target_kind_loads_with_weights_only(
    target, tmp_path, monkeypatch
):
    kind = target.split("=")[0]
    sets = [*QUICK_SETS, "--set", f"pruning.target={{{kind}: {target.split('=')[1]}}}"]
    loaded = _load_each_checkpoint(monkeypatch)
    assert _run(QUICK, sets, tmp_path / "run") == 0
    assert {t.split("-")[0] for t in loaded} == {"baseline", "prune", "finetune"}, loaded


def _latency_never_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    """A latency target's trials read the pruned model as fast as the baseline (real timings on a
    loaded machine can meet a target of 0.95 after any step): the schedule runs to max_steps. The
    table, the preflight and the report's final reading still time for real."""
    from taylorprune.pruning.latency_target import LatencyPlanner

    def read(self, model):
        return {"fraction": 1.0, "fraction_p10": 1.0, "fraction_p90": 1.0, "ratios": [1.0] * 3}

    monkeypatch.setattr(LatencyPlanner, "_measure", read)


def test_a_latency_run_resumes_after_a_kill_in_each_phase_and_when_finished(
    tmp_path, monkeypatch, capsys
):
    """A latency-target run killed after its first pruning step, then in fine-tuning, resumes
    each time; the report keeps every trial numbered as its step; a finished run resumes too.
    A changed timing setup is refused once the run has pruned."""
    _latency_never_faster(monkeypatch)
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        loaded = _load_each_checkpoint(m)
        _interrupt_after(m, "prune-001")  # wraps the loading writer
        assert _run(LATENCY, LATENCY_SETS, out) == 130
    assert loaded == ["baseline-001", "prune-001"]
    capsys.readouterr()
    for change in ("measure.threads=2", "measure.latency_batch_size=32"):
        assert _run(LATENCY, LATENCY_SETS, out, "--set", change, "--resume") == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and change.split("=")[0] in err[0], err
    assert "latency_batch_size: 64" in (out / "recipe.yaml").read_text()  # not rewritten
    with monkeypatch.context() as m:
        loaded = _load_each_checkpoint(m)
        _interrupt_after(m, "finetune-001")
        assert _run(LATENCY, LATENCY_SETS, out, "--resume") == 130
    assert loaded[-2:] == ["finetune-000", "finetune-001"]
    assert _run(LATENCY, LATENCY_SETS, out, "--resume") == 0
    report = json.loads((out / "report.json").read_text())
    checks = report["latency_target"]["checks"]
    steps = report["steps"]
    assert len(steps) == 3  # one before the kill, the others after (max_steps)
    assert [c["step"] for c in checks if c["applied"]] == [s["step"] for s in steps]
    assert sorted({c["step"] for c in checks}) == [s["step"] for s in steps]
    for s, c in zip(steps, [c for c in checks if c["applied"]], strict=True):
        assert s["latency"]["measured_ms"] == c["measured_ms"]
    # a finished latency run resumes (its last checkpoint is the last fine-tuning epoch)
    capsys.readouterr()
    assert _run(LATENCY, LATENCY_SETS, out, "--resume") == 0
    assert capsys.readouterr().err == ""
    assert json.loads((out / "report.json").read_text())["steps"] == steps


def test_checkpoint_state_is_made_plain_or_refused_when_written():
    import numpy as np

    from taylorprune.pipeline.checkpoints import as_plain

    state = as_plain({"torch": torch.__version__, "n": np.int64(3), "a": np.ones(2), "t": (1, "x")})
    assert type(state["torch"]) is str and type(state["n"]) is int
    assert torch.equal(state["a"], torch.ones(2, dtype=torch.float64)) and state["t"] == (1, "x")
    with pytest.raises(TypeError, match=r"state\.extra\.f holds a function"):
        as_plain({"extra": {"f": lambda: 0}})
