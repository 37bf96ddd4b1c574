"""Every supported architecture prunes to 0.6 of its MACs (within 1%), or stops short naming why,
saves and reloads exactly without being told its architecture, and still trains.

The fast half of torch-pruning's model-zoo list (``tools/zoo_check.py`` runs all 39 at full size:
``tools/results/zoo/zoo.md``) and the builtin models, random init on small inputs; one independent
fvcore count per model checks the MACs. Groups that cannot be pruned safely are left whole and
named: ViT's attention width, ShuffleNet's shuffled channels.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import taylorprune
from taylorprune.measure import count
from taylorprune.models import build_model
from taylorprune.models._factory import SPEC_ATTRIBUTE
from taylorprune.pruning import StructuredPruner, Target
from taylorprune.pruning.verify import ATTENTION_REASON
from taylorprune.serialization import load_pruned, read_pruned, save_pruned

# (spec, input shape): the fast half of tools/zoo_check.py's list and the builtin models. Models
# of a few torchvision and timm families are saved as if built by torchvision/timm directly
# (IDENTIFIED: save_pruned finds their architecture from class and tensors); the others carry the
# spec that built them, as build_model's models do.
FAST = [
    *(
        ({"source": "torchvision", "name": name}, (3, size, size))
        for name, size in (
            ("alexnet", 64),
            ("resnet18", 32),
            ("resnext50_32x4d", 32),
            ("mobilenet_v2", 32),
            ("mobilenet_v3_small", 32),
            ("mobilenet_v3_large", 32),
            ("mnasnet0_5", 32),
            ("mnasnet1_0", 32),
            ("efficientnet_b0", 32),
            ("regnet_x_400mf", 32),
            ("regnet_y_400mf", 32),
            ("squeezenet1_0", 64),
            ("squeezenet1_1", 64),
        )
    ),
    *(
        ({"source": "timm", "name": name}, (3, 32, 32))
        for name in ("resnet18", "resnet18d", "resnet26", "resnet26d", "resnet26t", "resnet34")
    ),
    # without the auxiliary heads: they run in train mode only, where torch-pruning never traces
    (
        {
            "source": "torchvision",
            "name": "googlenet",
            "kwargs": {"aux_logits": False, "init_weights": True},
        },
        (3, 32, 32),
    ),
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
IDENTIFIED = {"torchvision:resnet18", "torchvision:mnasnet0_5", "timm:resnet18", "timm:resnet26t"}


def _id(case):
    spec, _ = case
    return f"{spec['source']}:{spec['name']}"


def _reloads_exactly(model: nn.Module, x: torch.Tensor, tmp_path, spec: dict) -> None:
    model.eval()
    path = save_pruned(model, tmp_path / "m.pt")
    arch = read_pruned(path)["arch"]
    assert (arch["source"], arch["name"], arch["num_classes"]) == (spec["source"], spec["name"], 10)
    with torch.no_grad():
        assert torch.equal(load_pruned(path)(x), model(x))


def _prune_and_check(spec: dict, shape: tuple[int, ...], tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model({**spec, "num_classes": 10})
    if f"{spec['source']}:{spec['name']}" in IDENTIFIED:
        delattr(model, SPEC_ATTRIBUTE)  # as if built by torchvision/timm directly
    x = torch.randn(2, *shape)
    macs0, params0 = count(model, x[:1])
    pruner = StructuredPruner(model, x)
    assert pruner.left_whole == ()
    g = torch.Generator().manual_seed(0)
    scores = {grp.root: torch.rand(grp.size, generator=g) for grp in pruner.groups()}
    step = pruner.remove_to_target(scores, Target("macs", 0.6))
    macs, params = count(model, x[:1])
    assert step.stopped_short is None
    assert abs(macs / macs0 - 0.6) <= 0.01, macs / macs0
    assert params < params0
    assert pruner.baseline_macs == macs0
    _reloads_exactly(model, x, tmp_path, spec)
    model.train()
    out = model(x)
    assert out.shape == (2, 10)
    out.logsumexp(1).sum().backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())


@pytest.mark.parametrize("case", FAST, ids=_id)
def test_zoo_fast(case, tmp_path):
    _prune_and_check(*case, tmp_path)


def test_vit_prunes_to_the_target_without_ignored_layers(tmp_path, caplog):
    """The bar: torchvision's ViT-B/32 through ``taylorprune.prune`` with nothing ignored. Its
    hidden width is every attention layer's width and is left whole; the MLPs carry the cut."""
    torch.manual_seed(0)
    spec = {"source": "torchvision", "name": "vit_b_32", "num_classes": 10}
    vit = build_model({**spec, "kwargs": {"image_size": 64}})
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([3, 7])
    macs0, _ = count(vit, x[:1])
    with caplog.at_level("WARNING", logger="taylorprune"):
        out = taylorprune.prune(vit, x, [(x, y)], F.cross_entropy, target_macs=0.6)
    assert out is vit
    macs, _ = count(vit, x[:1])
    assert abs(macs / macs0 - 0.6) <= 0.01, macs / macs0
    assert f"whole, pruning the rest: 'conv_proj' ({ATTENTION_REASON})" in caplog.text
    assert (vit.conv_proj.out_channels, vit.hidden_dim) == (768, 768)
    hidden = [block.mlp[0].out_features for block in vit.encoder.layers]
    assert min(hidden) >= math.ceil(0.1 * 3072)
    # every MAC removed is an MLP's: 5 tokens (4 patches and the class token) times one hidden
    # unit's two 768-wide dot products (its row of mlp.0, its column of mlp.3)
    assert macs0 - macs == 5 * 2 * 768 * (12 * 3072 - sum(hidden))
    _reloads_exactly(vit, x, tmp_path, spec)


def test_vit_below_what_its_mlps_can_give_stops_at_the_closest_and_says_why():
    """The hidden width left whole, the smallest model is every MLP at its minimum width
    (10% of 64 rounded up: 7), which a ViT built with that MLP width counts exactly."""
    from torchvision.models.vision_transformer import VisionTransformer

    def vit(mlp_dim: int) -> nn.Module:
        torch.manual_seed(0)
        return VisionTransformer(32, 16, 2, num_heads=4, hidden_dim=32, mlp_dim=mlp_dim)

    model, x = vit(64), torch.randn(2, 3, 32, 32)
    macs0, _ = count(model, x[:1])
    pruner = StructuredPruner(model, x)
    g = torch.Generator().manual_seed(0)
    scores = {grp.root: torch.rand(grp.size, generator=g) for grp in pruner.groups()}
    step = pruner.remove_to_target(scores, Target("macs", 0.3))
    smallest = count(vit(7), x[:1])[0] / macs0
    assert step.stopped_short is not None and step.stopped_short.code == "constraints"
    assert step.stopped_short.achieved == pytest.approx(smallest, abs=1e-9)
    assert count(model, x[:1])[0] / macs0 == pytest.approx(smallest, abs=1e-9)
    assert step.stopped_short.message.endswith(f"left whole: 'conv_proj' ({ATTENTION_REASON})")
    assert [block.mlp[0].out_features for block in model.encoder.layers] == [7, 7]


def test_shufflenet_leaves_its_shuffled_channels_whole_and_prunes_the_rest(tmp_path, caplog):
    """torch-pruning maps ShuffleNetV2's channel shuffles as if the channels kept their order (and
    divides by zero on three of them): every width that passes a shuffle is left whole; the
    branches' inner widths, the stem and the last conv carry the cut."""
    torch.manual_seed(0)
    spec = {"source": "torchvision", "name": "shufflenet_v2_x1_0", "num_classes": 10}
    model = build_model(spec)
    delattr(model, SPEC_ATTRIBUTE)
    x = torch.randn(2, 3, 64, 64)
    macs0, _ = count(model, x[:1])
    with caplog.at_level("WARNING", logger="taylorprune"):
        pruner = StructuredPruner(model, x)
    blocks = {2: 4, 3: 8, 4: 4}
    shuffled = {f"stage{s}.{i}.branch2.5" for s, n in blocks.items() for i in range(n)}
    shuffled |= {f"stage{s}.0.branch1.2" for s in blocks} | {
        "stage3.0.branch1.0",
        "stage4.0.branch1.0",
    }
    assert {lw.layers[0] for lw in pruner.left_whole} == shuffled
    assert {lw.reason for lw in pruner.left_whole} == {
        "its channels pass a channel shuffle (view, transpose, view), which torch-pruning maps as "
        "if the channels kept their order"
    }
    assert "whole, pruning the rest: 'stage2.0.branch1.2', 'stage2.0.branch2.5', " in caplog.text
    assert "and 15 more (its channels pass a channel shuffle" in caplog.text
    inner = {f"stage{s}.{i}.branch2.0" for s, n in blocks.items() for i in range(n)}
    assert {grp.members[0] for grp in pruner.groups()} == inner | {"conv1.0", "conv5.0"}
    widths = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    g = torch.Generator().manual_seed(0)
    scores = {grp.root: torch.rand(grp.size, generator=g) for grp in pruner.groups()}
    step = pruner.remove_to_target(scores, Target("macs", 0.6))
    assert step.stopped_short is None
    assert abs(count(model, x[:1])[0] / macs0 - 0.6) <= 0.01
    now = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert all(now[n] == widths[n] for lw in pruner.left_whole for n in lw.layers if n in now)
    assert sum(now[n] for n in inner) < sum(widths[n] for n in inner)
    _reloads_exactly(model, x, tmp_path, spec)
