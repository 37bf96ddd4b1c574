"""Model sources: builtin architectures against closed-form parameter counts, offline weight loading
through the real torchvision/timm paths, checkpoints, and spec parsing."""

from __future__ import annotations

import os
import pickle
import socket
from urllib.parse import urlparse

import pytest
import torch
from torch import nn

from taylorprune.errors import UserError
from taylorprune.models import (
    BUILTIN,
    MODELS,
    build_model,
    model_spec_for_save,
    parse_model_string,
)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails at once, so no test can hang on the network."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------ closed forms
def cifar_resnet_params(depth: int, in_chans: int, num_classes: int, width: float = 1.0) -> int:
    """He et al.'s CIFAR ResNet with 1×1 conv + BN projection shortcuts, counted by hand."""
    n = (depth - 2) // 6
    c = [round(16 * width), round(32 * width), round(64 * width)]
    total = 9 * in_chans * c[0] + 2 * c[0]  # stem conv + BN
    prev = c[0]
    for ch in c:
        for _ in range(n):
            total += 9 * prev * ch + 2 * ch + 9 * ch * ch + 2 * ch  # two conv3x3 + BN
            if prev != ch:
                total += prev * ch + 2 * ch  # projection conv1x1 + BN
            prev = ch
    return total + c[2] * num_classes + num_classes


@pytest.mark.parametrize("depth", [20, 32, 56, 110])
@pytest.mark.parametrize(("in_chans", "num_classes"), [(3, 10), (1, 100)])
def test_cifar_resnet_param_count(depth, in_chans, num_classes):
    model = build_model(
        {"name": f"resnet{depth}", "in_chans": in_chans, "num_classes": num_classes}
    )
    assert n_params(model) == cifar_resnet_params(depth, in_chans, num_classes)


def test_resnet20_matches_published_count_without_projections():
    # The published 0.27 M (269,722 in common option-A implementations) has no projection
    # parameters; option B adds a conv1x1 + BN at the two stage transitions.
    model = build_model({"name": "resnet20", "num_classes": 10})
    projections = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert n_params(model) - projections == 269_722


def test_cifar_resnet_width_multiplier():
    model = build_model({"name": "resnet20", "num_classes": 10, "kwargs": {"width": 0.5}})
    assert n_params(model) == cifar_resnet_params(20, 3, 10, width=0.5)
    assert model.layer3[0].conv1.out_channels == 32


def test_cifar_resnet_projection_only_where_shape_changes():
    model = build_model({"name": "resnet32", "num_classes": 10})
    with_proj = [name for name, m in model.named_modules() if name.endswith("downsample")]
    assert with_proj == ["layer2.0.downsample", "layer3.0.downsample"]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, 784 * 1000 + 1000 * 1000 + 1000 * 500 + 500 * 200 + 200 * 10),
        (
            {"bias": True},
            784 * 1000
            + 1000 * 1000
            + 1000 * 500
            + 500 * 200
            + 200 * 10
            + 1000
            + 1000
            + 500
            + 200
            + 10,
        ),
        (
            # BN makes hidden biases redundant: they are left out; BN adds gamma and beta per unit.
            {"batchnorm": True},
            784 * 1000
            + 1000 * 1000
            + 1000 * 500
            + 500 * 200
            + 200 * 10
            + 2 * (1000 + 1000 + 500 + 200),
        ),
        ({"hidden": [5, 3], "input_size": 8, "bias": True}, 64 * 5 + 5 + 5 * 3 + 3 + 3 * 10 + 10),
    ],
)
def test_mlp_param_count(kwargs, expected):
    model = build_model({"name": "mlp", "in_chans": 1, "num_classes": 10, "kwargs": kwargs})
    assert n_params(model) == expected


def test_vgg_small_param_count():
    model = build_model(
        {"name": "vgg_small", "in_chans": 1, "num_classes": 10, "kwargs": {"cfg": [4, "M", 6]}}
    )
    # conv 1->4 + BN, conv 4->6 + BN, Linear 6->10.
    assert n_params(model) == 9 * 1 * 4 + 8 + 9 * 4 * 6 + 12 + 6 * 10 + 10


# Every builtin at 8×8 (digits); the shallow ones also at 28×28 and 32×32 (the deep ones only
# differ in block count, and cost seconds there on two cores).
SHAPE_CASES = [(name, 8) for name in BUILTIN.names()] + [
    (name, size) for name in ("resnet20", "mlp", "vgg_small") for size in (28, 32)
]


@pytest.mark.parametrize(("name", "size"), SHAPE_CASES)
def test_every_builtin_forward_shape(name, size):
    kwargs = {"input_size": size, "hidden": [16, 8]} if name == "mlp" else {}
    model = build_model({"name": name, "in_chans": 1, "num_classes": 7, "kwargs": kwargs})
    assert model.training
    out = model(torch.randn(2, 1, size, size))
    assert out.shape == (2, 7)
    out.sum().backward()  # a trainable graph end to end
    assert all(p.grad is not None for p in model.parameters())


def test_builtin_errors():
    with pytest.raises(UserError, match="did you mean 'resnet20'"):
        build_model({"name": "resnet20x"})
    with pytest.raises(UserError, match="6n\\+2"):
        from taylorprune.models import CifarResNet

        CifarResNet(depth=21)
    with pytest.raises(UserError, match="bad kwargs"):
        build_model({"name": "resnet20", "kwargs": {"widht": 2}})
    with pytest.raises(UserError, match="no pretrained weights"):
        build_model({"name": "resnet20", "pretrained": True})


def test_spec_validation():
    with pytest.raises(UserError, match="unknown key 'num_class'"):
        build_model({"name": "resnet20", "num_class": 10})
    with pytest.raises(UserError, match="model.num_classes"):
        build_model({"name": "resnet20", "num_classes": 0})
    with pytest.raises(UserError, match="unknown model source 'tv'"):
        build_model({"source": "tv", "name": "resnet18"})
    with pytest.raises(UserError, match="'name' is required"):
        build_model({"source": "torchvision"})


# -------------------------------------------------------------------------------- torchvision
def _place_torchvision_weights(tmp_path, monkeypatch, name="resnet18", member="DEFAULT"):
    """A random-init state_dict where torchvision looks for the weights file; returns it."""
    from torchvision.models import get_model, get_model_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = get_model_weights(name)[member]
    torch.manual_seed(0)
    state = get_model(name, weights=None).state_dict()
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(state, folder / os.path.basename(urlparse(weights.url).path))
    return state


def test_torchvision_pretrained_loads_the_cached_file(tmp_path, monkeypatch, no_network):
    state = _place_torchvision_weights(tmp_path, monkeypatch)
    model = build_model({"source": "torchvision", "name": "resnet18", "pretrained": True})
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_torchvision_pretrained_new_classes_and_channels(tmp_path, monkeypatch, no_network):
    state = _place_torchvision_weights(tmp_path, monkeypatch)
    model = build_model(
        {
            "source": "torchvision",
            "name": "resnet18",
            "pretrained": True,
            "weights": "IMAGENET1K_V1",
            "num_classes": 10,
            "in_chans": 1,
        }
    )
    assert model.fc.out_features == 10
    assert torch.equal(model.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    # A grey image x gives the same first-layer output as the RGB image (x, x, x) did.
    assert torch.allclose(model.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_torchvision_missing_file_offline_fails_fast(tmp_path, monkeypatch, no_network):
    from torchvision.models import ResNet18_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("TAYLORPRUNE_OFFLINE", "1")
    expected = os.path.join(str(tmp_path), "hub", "checkpoints", "resnet18-f37072fd.pth")
    with pytest.raises(UserError) as info:
        build_model({"source": "torchvision", "name": "resnet18", "pretrained": True})
    message = str(info.value)
    assert expected in message and ResNet18_Weights.DEFAULT.url in message
    assert "\n" not in message


def test_torchvision_failed_download_names_path_and_url(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("TAYLORPRUNE_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(UserError, match="could not be downloaded.*resnet18-f37072fd.pth"):
        build_model({"source": "torchvision", "name": "resnet18", "pretrained": True})


def test_torchvision_truncated_weights_file(tmp_path, monkeypatch, no_network):
    _place_torchvision_weights(tmp_path, monkeypatch)
    path = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(UserError, match="truncated or corrupted"):
        build_model({"source": "torchvision", "name": "resnet18", "pretrained": True})


def test_torchvision_weights_as_local_file(tmp_path):
    from torchvision.models import get_model

    torch.manual_seed(1)
    state = get_model("resnet18", weights=None, num_classes=5).state_dict()
    torch.save(state, tmp_path / "mine.pth")
    spec = {"source": "torchvision", "name": "resnet18", "pretrained": True}
    model = build_model({**spec, "weights": str(tmp_path / "mine.pth")})
    assert torch.equal(model.fc.weight, state["fc.weight"])
    model = build_model({**spec, "weights": str(tmp_path / "mine.pth"), "num_classes": 3})
    assert model.fc.out_features == 3
    assert torch.equal(model.conv1.weight, state["conv1.weight"])


def test_torchvision_names_and_weights_errors():
    with pytest.raises(UserError, match="did you mean 'resnet50'"):
        build_model({"source": "torchvision", "name": "resnet5O"})
    with pytest.raises(UserError, match="IMAGENET1K_V1"):
        build_model(
            {"source": "torchvision", "name": "resnet18", "pretrained": True, "weights": "V9"}
        )


def test_torchvision_random_init_with_classes():
    model = build_model({"source": "torchvision", "name": "resnet18", "num_classes": 4})
    assert model.fc.out_features == 4


# -------------------------------------------------------------------------------------- timm
def test_timm_weights_from_local_file(tmp_path, no_network):
    import timm

    torch.manual_seed(2)
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    torch.save(state, tmp_path / "timm_r18.pth")
    spec = {"source": "timm", "name": "resnet18", "pretrained": True}
    model = build_model({**spec, "weights": str(tmp_path / "timm_r18.pth")})
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    # Another class count: timm keeps everything but the classifier.
    model = build_model({**spec, "weights": str(tmp_path / "timm_r18.pth"), "num_classes": 6})
    assert model.fc.out_features == 6
    assert torch.equal(model.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])


def test_timm_not_cached_offline_fails_fast(tmp_path, monkeypatch, no_network):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("TAYLORPRUNE_OFFLINE", "1")
    with pytest.raises(UserError, match=f"timm/resnet18.*{tmp_path}"):
        build_model({"source": "timm", "name": "resnet18", "pretrained": True})


def test_timm_names():
    with pytest.raises(UserError, match="did you mean 'resnet50d'"):
        build_model({"source": "timm", "name": "resnet50dd"})
    model = build_model({"source": "timm", "name": "resnet18", "num_classes": 3, "in_chans": 1})
    assert model.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 3)


# -------------------------------------------------------------------------------- checkpoints
def test_checkpoint_state_dict_roundtrip(tmp_path):
    torch.manual_seed(3)
    spec = {"name": "resnet20", "num_classes": 10, "in_chans": 1}
    source = build_model(spec).eval()
    # Nested under "state_dict" with a DistributedDataParallel prefix, as training scripts save it.
    nested = {"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}
    torch.save(nested, tmp_path / "ckpt.pth")
    model = build_model({**spec, "checkpoint": str(tmp_path / "ckpt.pth")}).eval()
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(model(x), source(x))


def test_checkpoint_wrong_architecture(tmp_path):
    torch.save(build_model({"name": "resnet32"}).state_dict(), tmp_path / "r32.pth")
    with pytest.raises(UserError, match="unexpected key 'layer1.3.conv1.weight'"):
        build_model({"name": "resnet20", "checkpoint": str(tmp_path / "r32.pth")})
    torch.save(build_model({"name": "resnet20"}).state_dict(), tmp_path / "r20.pth")
    with pytest.raises(UserError, match=r"'conv1.weight' has shape \(16, 3, 3, 3\) in the file"):
        build_model({"name": "resnet20", "in_chans": 1, "checkpoint": str(tmp_path / "r20.pth")})
    with pytest.raises(
        UserError, match=r"'conv1.weight' has shape \(16, 3, 3, 3\) in the file but \(32, 3, 3, 3\)"
    ):
        build_model(
            {"name": "resnet20", "kwargs": {"width": 2}, "checkpoint": str(tmp_path / "r20.pth")}
        )


def test_checkpoint_truncated_and_missing(tmp_path):
    path = tmp_path / "r20.pth"
    torch.save(build_model({"name": "resnet20"}).state_dict(), path)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(UserError, match=f"cannot read {path}: truncated or corrupted"):
        build_model({"name": "resnet20", "checkpoint": str(path)})
    with pytest.raises(UserError, match="nope.pth: no such file"):
        build_model({"name": "resnet20", "checkpoint": str(tmp_path / "nope.pth")})


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_checkpoint_code_in_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"x": _Payload()}, f, protocol=2)
    with pytest.raises(UserError, match="refusing to load"):
        build_model({"name": "resnet20", "checkpoint": str(tmp_path / "evil.pth")})
    assert not (tmp_path / "pwned").exists()


def test_checkpoint_source_needs_a_pruned_model(tmp_path):
    torch.save(build_model({"name": "resnet20"}).state_dict(), tmp_path / "r20.pth")
    with pytest.raises(UserError, match="not a saved pruned model"):
        build_model(parse_model_string(str(tmp_path / "r20.pth")))


def test_checkpoint_source_rebuilds_a_saved_pruned_model(tmp_path):
    from taylorprune.serialization import save_pruned

    spec = {"name": "vgg_small", "num_classes": 3, "kwargs": {"cfg": [8, "M", 12]}}
    model = build_model(spec).eval()
    with torch.no_grad():
        model.features[0].weight.mul_(2.0)  # weights differ from a fresh build
    path = save_pruned(model, tmp_path / "pruned.pt")  # the spec travels with the built model
    loaded = build_model({"source": "checkpoint", "checkpoint": str(path)}).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    with pytest.raises(UserError, match="3 classes, the spec asks for 5"):
        build_model({"source": "checkpoint", "checkpoint": str(path), "num_classes": 5})


# ------------------------------------------------------------------------------------- specs
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("torchvision:resnet50", {"source": "torchvision", "name": "resnet50"}),
        ("timm:resnet50d", {"source": "timm", "name": "resnet50d"}),
        ("resnet20", {"source": "builtin", "name": "resnet20"}),
        ("builtin:mlp", {"source": "builtin", "name": "mlp"}),
        ("runs/x/pruned.pt", {"source": "checkpoint", "checkpoint": "runs/x/pruned.pt"}),
    ],
)
def test_parse_model_string(text, expected):
    assert parse_model_string(text) == expected


def test_parse_model_string_existing_file_and_errors(tmp_path):
    path = tmp_path / "model_without_suffix"
    path.write_bytes(b"")
    assert parse_model_string(str(path)) == {"source": "checkpoint", "checkpoint": str(path)}
    with pytest.raises(UserError, match="did you mean 'timm'"):
        parse_model_string("tim:resnet50")
    with pytest.raises(UserError, match="empty model string"):
        parse_model_string("  ")


def test_model_spec_for_save_drops_weights(tmp_path):
    spec = {
        "source": "torchvision",
        "name": "resnet18",
        "pretrained": True,
        "weights": "IMAGENET1K_V1",
        "checkpoint": "x.pth",
        "num_classes": None,
    }
    saved = model_spec_for_save(spec)
    assert saved["pretrained"] is False
    assert saved["weights"] is None and saved["checkpoint"] is None
    assert saved["num_classes"] == 1000  # made explicit: the pretrained model had 1000 classes
    assert spec["pretrained"] is True  # the caller's spec is not modified
    rebuilt = build_model(saved)
    assert n_params(rebuilt) == 11_689_512  # torchvision's documented resnet18 count


def test_every_source_is_registered():
    assert MODELS.names() == ["builtin", "checkpoint", "timm", "torchvision"]
