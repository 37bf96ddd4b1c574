"""Every supported architecture prunes to -40% MACs (within 1%), saves and reloads without being
told its architecture, and still trains.

Random-init models on 32x32 inputs; one independent fvcore count per model checks the MACs.
"""

from __future__ import annotations

import pytest
import torch

from taylorprune.measure import count
from taylorprune.models import build_model
from taylorprune.models._factory import SPEC_ATTRIBUTE
from taylorprune.pruning import StructuredPruner, Target
from taylorprune.serialization import load_pruned, read_pruned, save_pruned

FAST = [
    ({"source": "torchvision", "name": "resnet18"}, (3, 32, 32)),
    ({"source": "torchvision", "name": "mnasnet0_5"}, (3, 32, 32)),
    ({"source": "timm", "name": "resnet18"}, (3, 32, 32)),
    ({"source": "builtin", "name": "vgg_small"}, (3, 32, 32)),
    ({"source": "builtin", "name": "resnet20"}, (3, 32, 32)),
    (
        {
            "source": "builtin",
            "name": "mlp",
            "in_chans": 1,
            "kwargs": {"input_size": 8, "hidden": [64, 48, 32]},
        },
        (1, 8, 8),
    ),
]
SLOW = [
    ({"source": "torchvision", "name": n}, (3, 32, 32))
    for n in (
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "wide_resnet50_2",
        "resnext50_32x4d",
    )
] + [
    ({"source": "timm", "name": n}, (3, 32, 32))
    for n in ("resnet50", "resnet50d", "resnet26t", "seresnet50")
]


def _id(case):
    spec, _ = case
    return f"{spec['source']}:{spec['name']}"


def _prune_and_check(spec: dict, shape: tuple[int, ...], tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model({**spec, "num_classes": 10})
    if spec["source"] != "builtin":
        delattr(model, SPEC_ATTRIBUTE)  # as if built by torchvision/timm directly
    x = torch.randn(2, *shape)
    macs0, params0 = count(model, x[:1])
    pruner = StructuredPruner(model, x)
    g = torch.Generator().manual_seed(0)
    scores = {grp.root: torch.rand(grp.size, generator=g) for grp in pruner.groups()}
    step = pruner.remove_to_target(scores, Target("macs", 0.6))
    macs, params = count(model, x[:1])
    assert step.stopped_short is None
    assert abs(macs / macs0 - 0.6) <= 0.01, macs / macs0
    assert params < params0
    assert pruner.baseline_macs == macs0
    model.eval()
    path = save_pruned(model, tmp_path / "m.pt")
    arch = read_pruned(path)["arch"]
    assert (arch["source"], arch["name"], arch["num_classes"]) == (spec["source"], spec["name"], 10)
    with torch.no_grad():
        assert torch.equal(load_pruned(path)(x), model(x))
    model.train()
    out = model(x)
    assert out.shape == (2, 10)
    out.logsumexp(1).sum().backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())


@pytest.mark.parametrize("case", FAST, ids=_id)
def test_zoo_fast(case, tmp_path):
    _prune_and_check(*case, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW, ids=_id)
def test_zoo_slow(case, tmp_path):
    _prune_and_check(*case, tmp_path)
