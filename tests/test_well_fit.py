"""The well-fit reading: a baseline that fits its training images is scored with the per-example
criterion, and the decision holds through a run, its report and a resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from taylorprune.cli import main
from taylorprune.importance import well_fit
from taylorprune.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
QUICK = str(ROOT / "recipes/tiny/quickstart.yaml")
SETS = ["--set", "threads=1", "--set", "baseline.train.epochs=2", "--set", "finetune.epochs=2",
        "--set", "measure.latency=false"]  # fmt: skip


class _Fixed(nn.Module):
    """Predicts class 0 for every input; a BatchNorm whose mode must survive the reading."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(2)

    def forward(self, x):
        return self.bn(torch.zeros(len(x), 2)) + torch.tensor([1.0, 0.0])


def _batches(right: int, wrong: int):
    targets = torch.tensor([0] * right + [1] * wrong)
    return [(torch.zeros(len(targets), 3), targets)]


def _unread():
    raise AssertionError("the batches were read")
    yield


def test_the_switch_happens_at_the_threshold_and_only_for_taylor_fo_bn():
    model = _Fixed().train()
    cpu = torch.device("cpu")
    fit = well_fit.decide(model, _batches(99, 1), "taylor_fo_bn", 99.0, cpu)
    assert fit is not None and fit.switched and fit.criterion == "taylor_fo_bn_fg"
    assert (fit.top1, fit.images, fit.threshold) == (99.0, 100, 99.0)
    assert model.training  # the reading is taken in eval mode and the mode restored
    fit = well_fit.decide(model, _batches(98, 2), "taylor_fo_bn", 99.0, cpu)
    assert fit is not None and not fit.switched and fit.criterion == "taylor_fo_bn"
    assert well_fit.WellFit.from_dict(fit.as_dict()) == fit
    # another criterion, or no threshold: nothing to decide, nothing read
    assert well_fit.decide(model, _unread(), "l1_norm", 99.0, cpu) is None
    assert well_fit.decide(model, _unread(), "taylor_fo_bn", None, cpu) is None


def test_the_recipe_takes_a_threshold_or_null_and_refuses_a_percentage_out_of_range(capsys):
    assert load_recipe(QUICK).importance.well_fit_top1 == 99.0
    assert load_recipe(QUICK, ["importance.well_fit_top1=null"]).importance.well_fit_top1 is None
    assert main(["validate", QUICK, "--set", "importance.well_fit_top1=101"]) == 2
    assert "importance.well_fit_top1" in capsys.readouterr().err


@pytest.mark.slow
def test_a_switched_run_reports_it_and_resumes_without_reading_again(tmp_path, monkeypatch):
    """With a threshold the tiny twin's baseline reaches, the run scores with taylor_fo_bn_fg and
    says so; killed after its second pruning step and resumed, it ends as the uninterrupted run
    without taking the reading again (the pruned model would read otherwise)."""
    import taylorprune.pipeline.context as context_mod

    sets = [*SETS, "--set", "importance.well_fit_top1=1"]
    ref = tmp_path / "ref"
    assert main(["--quiet", "run", "--no-plots", QUICK, "-o", str(ref), *sets]) == 0
    want = json.loads((ref / "report.json").read_text())
    assert want["criterion"] == "taylor_fo_bn_fg" and want["well_fit"]["switched"]
    assert "well fit: training top-1" in (ref / "report.md").read_text()
    saved = torch.load(ref / "model.pt", weights_only=True)
    assert saved["meta"]["criterion"] == "taylor_fo_bn_fg"

    out = tmp_path / "run"
    real = context_mod.write_run_checkpoint

    def write_then_stop(out_dir, ckpt, arch):
        real(out_dir, ckpt, arch)
        if ckpt.tag == "prune-002":
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(context_mod, "write_run_checkpoint", write_then_stop)
        assert main(["--quiet", "run", "--no-plots", QUICK, "-o", str(out), *sets]) == 130

    def no_reading(*args, **kwargs):
        raise AssertionError("a resumed schedule read the training top-1 again")

    monkeypatch.setattr(well_fit, "decide", no_reading)
    assert main(["--quiet", "run", "--no-plots", QUICK, "-o", str(out), *sets, "--resume"]) == 0
    got = json.loads((out / "report.json").read_text())
    assert got["well_fit"] == want["well_fit"] and got["criterion"] == want["criterion"]
    assert [s["channels_removed"] for s in got["steps"]] == [
        s["channels_removed"] for s in want["steps"]
    ]
    assert got["finetuned"]["top1"] == pytest.approx(want["finetuned"]["top1"], abs=1e-6)
