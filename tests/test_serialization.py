"""Saving pruned models as data, loading them safely in a fresh process, exporting to ONNX."""

from __future__ import annotations

import enum
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from taylorprune.errors import UserError
from taylorprune.models import build_model
from taylorprune.pruning import StructuredPruner, Target, prune
from taylorprune.serialization import export_onnx, load_pruned, read_pruned, save_pruned

ARCH = {"source": "torchvision", "name": "resnet18", "num_classes": 10}
VGG = {"source": "builtin", "name": "vgg_small", "num_classes": 5, "kwargs": {"cfg": [16, "M", 24]}}


def _pruned(arch, keep=0.6, size=32, **opts):
    torch.manual_seed(0)
    model = build_model(arch).eval()
    x = torch.randn(1, 3, size, size)
    pruner = StructuredPruner(model, x, **opts)
    g = torch.Generator().manual_seed(0)
    scores = {grp.root: torch.rand(grp.size, generator=g) for grp in pruner.groups()}
    pruner.remove_to_target(scores, Target("macs", keep))
    with torch.no_grad():  # non-trivial BN statistics so that a wrong load shows
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_save_load_in_a_fresh_process_gives_identical_outputs(tmp_path):
    model = _pruned(ARCH)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    path = save_pruned(model, tmp_path / "m.pt", arch=ARCH, recipe="test", criterion="taylor_fo_bn")
    torch.save(x, tmp_path / "x.pt")
    script = textwrap.dedent(
        f"""
        import torch
        from taylorprune.serialization import load_pruned
        model = load_pruned({str(path)!r})
        x = torch.load({str(tmp_path / "x.pt")!r}, weights_only=True)
        with torch.no_grad():
            torch.save(model(x), {str(tmp_path / "y.pt")!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    got = torch.load(tmp_path / "y.pt", weights_only=True)
    # another process may run the kernels on another thread count; a wrong load is far off
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    payload = read_pruned(path)
    assert payload["meta"] == {"recipe": "test", "criterion": "taylor_fo_bn"}
    conv1 = payload["modules"]["layer1.0.conv1"]
    assert conv1["type"] == "Conv2d"
    assert conv1["attributes"]["out_channels"] == model.layer1[0].conv1.out_channels


def test_load_restores_widths_of_a_builtin_model(tmp_path):
    model = _pruned(VGG, keep=0.5)
    path = save_pruned(model, tmp_path / "v.pt", arch=VGG)
    loaded = load_pruned(path)
    assert [m.out_channels for m in loaded.modules() if isinstance(m, torch.nn.Conv2d)] == [
        m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)
    ]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_wrong_architecture_is_a_user_error(tmp_path):
    model = _pruned(ARCH)
    path = save_pruned(model, tmp_path / "m.pt", arch=ARCH)
    payload = torch.load(path, weights_only=True)
    payload["arch"] = {**ARCH, "name": "resnet34"}
    torch.save(payload, tmp_path / "wrong.pt")
    with pytest.raises(UserError, match="does not match architecture 'resnet34'"):
        load_pruned(tmp_path / "wrong.pt")


def test_truncated_and_foreign_files_are_user_errors(tmp_path):
    model = _pruned(VGG)
    path = save_pruned(model, tmp_path / "m.pt", arch=VGG)
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupted") as err:
        load_pruned(tmp_path / "cut.pt")
    assert "\n" not in str(err.value)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(UserError, match="not a saved pruned model"):
        load_pruned(tmp_path / "plain.pt")
    with pytest.raises(UserError, match="missing.pt: no such file"):
        load_pruned(tmp_path / "missing.pt")


class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"format": "taylorprune.pruned", "x": _Exploit(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="refusing to load"):
        load_pruned(tmp_path / "evil.pt")
    assert not marker.exists()


def test_meta_must_be_plain_data(tmp_path):
    with pytest.raises(UserError, match="meta.obj"):
        save_pruned(torch.nn.Linear(2, 2), tmp_path / "m.pt", arch=VGG, obj=object())


class _Layout(str, enum.Enum):
    NCHW = "nchw"


class MyNet(nn.Module):
    """A user-defined architecture taylorprune knows nothing about; ``width`` is read in forward,
    so the attribute itself must come back with the pruned width. ``layout`` is a str enum, which
    ``weights_only`` could not read back: it is not saved (the fresh instance has it)."""

    def __init__(self) -> None:
        super().__init__()
        self.layout = _Layout.NCHW
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 12, 3, stride=2, padding=1)
        self.width = 12
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        y = self.conv2(torch.relu(self.bn(self.conv(x))))
        return self.fc(y.mean((2, 3)).reshape(-1, self.width))


def test_user_model_saved_without_arch_loads_into_a_fresh_instance(tmp_path):
    torch.manual_seed(0)
    model = MyNet().eval()
    x = torch.randn(1, 3, 8, 8)
    pruner = StructuredPruner(model, x, verify=False)  # runs again after the fix-up below
    g = torch.Generator().manual_seed(1)
    pruner.remove({grp.root: torch.rand(grp.size, generator=g) for grp in pruner.groups()}, 10)
    model.width = model.conv2.out_channels  # the user's own fix-up after pruning
    assert (model.conv.out_channels, model.conv2.out_channels) != (16, 12)  # really pruned
    path = save_pruned(model, tmp_path / "my.pt")
    assert read_pruned(path)["arch"] is None

    fresh = MyNet()
    loaded = load_pruned(path, model=fresh)
    assert loaded is fresh and not loaded.training
    assert loaded.width == model.width and loaded.conv.out_channels == model.conv.out_channels
    assert loaded.layout is _Layout.NCHW
    batch = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(batch), model(batch))
    with pytest.raises(UserError, match=r"saved without its architecture \(a .*MyNet\)") as err:
        load_pruned(path)
    assert "model=<an unpruned MyNet>" in str(err.value)


def test_torchvision_resnet50_after_prune_saves_without_arch(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    x = torch.randn(4, 3, 32, 32)
    batches = [(x, torch.tensor([0, 1, 2, 3]))]
    prune(model, x, batches, nn.functional.cross_entropy, target_macs=0.6)
    model.eval()
    path = save_pruned(model, tmp_path / "r50.pt")
    arch = read_pruned(path)["arch"]
    assert (arch["source"], arch["name"], arch["num_classes"]) == ("torchvision", "resnet50", 1000)
    loaded = load_pruned(path)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: torchvision.models.resnet18(num_classes=10), ("torchvision", "resnet18", 10)),
        (lambda: torchvision.models.wide_resnet50_2(), ("torchvision", "wide_resnet50_2", 1000)),
        (lambda: torchvision.models.mnasnet0_5(), ("torchvision", "mnasnet0_5", 1000)),
        # RegNet computes its widths with tensor ops: built on the CPU, tensors moved to meta
        (lambda: torchvision.models.regnet_y_400mf(), ("torchvision", "regnet_y_400mf", 1000)),
        (lambda: build_model(VGG), ("builtin", "vgg_small", 5)),
    ],
    ids=["resnet18", "wide_resnet50_2", "mnasnet0_5", "regnet_y_400mf", "builtin"],
)
def test_arch_of_identifies_the_unpruned_builder(build, expected):
    from taylorprune.models import arch_of

    arch = arch_of(build())
    assert (arch["source"], arch["name"], arch["num_classes"]) == expected
    assert arch["pretrained"] is False and arch["weights"] is None


def test_arch_of_a_pruned_timm_model(tmp_path):
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", num_classes=7).eval()
    x = torch.randn(1, 3, 32, 32)
    pruner = StructuredPruner(model, x)
    g = torch.Generator().manual_seed(0)
    pruner.remove_to_target(
        {grp.root: torch.rand(grp.size, generator=g) for grp in pruner.groups()},
        Target("macs", 0.5),
    )
    path = save_pruned(model, tmp_path / "t.pt")
    arch = read_pruned(path)["arch"]
    assert (arch["source"], arch["name"], arch["num_classes"]) == ("timm", "resnet18", 7)
    with torch.no_grad():
        assert torch.equal(load_pruned(path)(x), model(x))


@pytest.mark.parametrize("pruned", [False, True], ids=["unpruned", "pruned"])
def test_mnasnet_round_trip_keeps_module_versions(tmp_path, pruned):
    # MNASNet's loader needs the per-module versions the state_dict carries in its _metadata.
    torch.manual_seed(0)
    model = torchvision.models.mnasnet0_5(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    if pruned:
        pruner = StructuredPruner(model, x)
        g = torch.Generator().manual_seed(0)
        scores = {grp.root: torch.rand(grp.size, generator=g) for grp in pruner.groups()}
        pruner.remove_to_target(scores, Target("macs", 0.6))
    path = save_pruned(model, tmp_path / "mnas.pt")
    loaded = load_pruned(path)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))

    # The same file stripped of the versions (as files before this fix): one line, naming it.
    data = torch.load(path, weights_only=True)
    data["state_dict"] = dict(data["state_dict"])
    torch.save(data, tmp_path / "old.pt")
    with pytest.raises(UserError, match=r"old.pt: does not match architecture 'mnasnet0_5'") as err:
        load_pruned(tmp_path / "old.pt")
    assert "\n" not in str(err.value)


def test_version_1_files_still_load(tmp_path):
    # Version 1 kept only conv/linear/norm widths under "widths" and a plain-dict state_dict.
    model = _pruned(VGG, keep=0.5)
    widths = {
        name: {"in_channels": m.in_channels, "out_channels": m.out_channels, "groups": m.groups}
        if isinstance(m, nn.Conv2d)
        else {"num_features": m.num_features}
        if isinstance(m, nn.BatchNorm2d)
        else {"in_features": m.in_features, "out_features": m.out_features}
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.BatchNorm2d | nn.Linear)
    }
    state = {k: v.clone() for k, v in model.state_dict().items()}
    old = {"format": "taylorprune.pruned", "version": 1, "arch": VGG, "widths": widths,
           "state_dict": state, "meta": {}}  # fmt: skip
    torch.save(old, tmp_path / "v1.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_pruned(tmp_path / "v1.pt")(x), model(x))


def test_absurd_widths_are_a_user_error(tmp_path):
    model = _pruned(VGG, keep=0.5)
    path = save_pruned(model, tmp_path / "m.pt", arch=VGG)
    data = torch.load(path, weights_only=True)
    data["modules"]["features.0"]["attributes"]["out_channels"] = 10**9
    torch.save(data, tmp_path / "absurd.pt")
    with pytest.raises(
        UserError, match=r"layer features.0 \(Conv2d\) is inconsistent: says 1000000000x3 channels"
    ):
        load_pruned(tmp_path / "absurd.pt")


def test_failed_writes_are_user_errors_and_leave_no_partial_file(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"m\.pt: cannot write"):
        save_pruned(nn.Linear(2, 2), tmp_path / "file" / "m.pt")

    def full_disk(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError, match="No space left on device"):
        save_pruned(nn.Linear(2, 2), tmp_path / "out" / "m.pt")
    assert list((tmp_path / "out").iterdir()) == []


def test_onnx_export_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = _pruned(ARCH)
    x = torch.randn(3, 3, 32, 32)
    path = export_onnx(model, tmp_path / "m.onnx", x[:1])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x.numpy()})  # batch 3 through a dynamic axis
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
