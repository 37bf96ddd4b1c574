"""The iterative schedule without training (``tools/studies/no_training.py``) against the plain
loop it replaces: re-estimate BatchNorm, score the next window as one-shot scoring does, remove,
repeat."""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from taylorprune.models import build_model
from taylorprune.pruning import StructuredPruner, Target
from taylorprune.pruning.schedule import Scoring, score_groups
from taylorprune.train import recalibrate_bn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from studies.no_training import prune_without_training

FRACTION, STEPS, WINDOW = 0.3, 3, 2


def _data():
    """The scoring windows, then two calibration minibatches."""
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(8, 2, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g))
        for _ in range(STEPS * WINDOW + 2)
    ]


def _plain_loop(model, batches, calibration, criterion, train_mode, normalize, unit):
    """The loop by hand: a fresh scoring of each window, a removal to the step's own target."""
    pruner = StructuredPruner(model, torch.zeros(1, 2, 8, 8), normalize=normalize)
    total = round(FRACTION * pruner.channels())
    per_step = math.ceil(total / STEPS)
    removed = steps = 0
    while steps < STEPS and (unit == "macs" or removed < total):
        recalibrate_bn(model, calibration, batches=len(calibration))
        window = batches[steps * WINDOW : (steps + 1) * WINDOW]
        if criterion == "bn_scale":
            window = []  # weights only
        scores = score_groups(
            pruner, window, F.cross_entropy, Scoring(criterion, train_mode=train_mode)
        )
        if unit == "macs":
            step = pruner.remove_to_target(
                scores, Target("macs", 1.0 - FRACTION * (steps + 1) / STEPS)
            )
        else:
            step = pruner.remove(scores, min(per_step, total - removed))
        removed, steps = removed + step.channels_removed, steps + 1
    return steps, removed, pruner.fraction("macs")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("criterion", "train_mode", "normalize", "unit"),
    [
        ("taylor_fo_bn", False, "mean", "macs"),  # eval-mode BN while scoring, MACs in steps
        ("taylor_fo_bn", True, None, "channels"),
        ("bn_scale", True, "mean", "channels"),  # weights only: the windows are not scored
    ],
)
def test_prune_without_training_is_the_plain_loop(criterion, train_mode, normalize, unit):
    torch.manual_seed(0)
    model = build_model({"source": "builtin", "name": "resnet20", "num_classes": 3, "in_chans": 2})
    model.eval()
    data = _data()
    batches, calibration = data[: STEPS * WINDOW], data[STEPS * WINDOW :]
    want_model = copy.deepcopy(model)
    want = _plain_loop(want_model, batches, calibration, criterion, train_mode, normalize, unit)
    pruner = StructuredPruner(model, torch.zeros(1, 2, 8, 8), normalize=normalize)
    result = prune_without_training(
        pruner,
        batches,
        calibration,
        criterion=criterion,
        train_mode=train_mode,
        fraction=FRACTION,
        steps=STEPS,
        window=WINDOW,
        unit=unit,
    )
    removed = sum(s.channels_removed for s in result.steps)
    assert (len(result.steps), removed, pruner.fraction("macs")) == want
    assert want[0] == STEPS and want[1] > 0
    if unit == "macs":
        assert abs(want[2] - (1 - FRACTION)) <= 0.02
    recalibrate_bn(model, calibration, batches=len(calibration))
    recalibrate_bn(want_model, calibration, batches=len(calibration))
    got, ref = model.state_dict(), want_model.state_dict()
    assert got.keys() == ref.keys()
    for k in ref:
        assert got[k].shape == ref[k].shape, k
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0, msg=k)


def test_unknown_unit_is_refused():
    model = build_model({"source": "builtin", "name": "mlp", "num_classes": 3, "in_chans": 1})
    pruner = StructuredPruner(model, torch.zeros(1, 1, 28, 28))
    with pytest.raises(ValueError, match="unit"):
        prune_without_training(
            pruner, [], [], criterion="l1_norm", train_mode=True, fraction=0.3, steps=2,
            window=1, unit="params",
        )  # fmt: skip
