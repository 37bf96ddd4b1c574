"""Saving pruned models as data, loading them safely in a fresh process, exporting to ONNX."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from taylorprune.errors import UserError
from taylorprune.models import build_model
from taylorprune.pruning import StructuredPruner, Target
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
    assert payload["widths"]["layer1.0.conv1"]["out_channels"] == model.layer1[0].conv1.out_channels


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
    with pytest.raises(UserError, match="no such file"):
        load_pruned(tmp_path / "missing.pt")


class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"format": "taylorprune.pruned", "x": _Exploit(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="refused to load"):
        load_pruned(tmp_path / "evil.pt")
    assert not marker.exists()


def test_meta_must_be_plain_data(tmp_path):
    with pytest.raises(UserError, match="meta.obj"):
        save_pruned(torch.nn.Linear(2, 2), tmp_path / "m.pt", arch=VGG, obj=object())


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
