"""Bad input through the command line: each case is one line naming the problem, exit code 2, no
traceback and nothing written. Recipes go through ``validate`` (what a user runs first) and, where
the value would only bite later, through ``run`` too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from taylorprune.cli import main

ROOT = Path(__file__).resolve().parents[1]


def one_error_line(capsys, argv: list[str]) -> str:
    """Run the CLI; it must exit 2 with exactly one line on stderr. Returns that line."""
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("taylorprune: error: "), lines[0]
    return lines[0]


def recipe(folder: Path, body: str, name: str = "r.yaml") -> Path:
    path = folder / name
    path.write_text(body, encoding="utf-8")
    return path


SYNTHETIC = "data: {name: synthetic, kwargs: {num_train: 16, num_val: 8}}\n"

# (recipe text, fragments of the error line) for values that pass a naive schema and used to fail
# only later, mid-run or after training.
BAD_RECIPES = [
    (
        "name: r\ndata: {name: synthetic, kwargs: {num_classes: abc}}\n",
        ["r.yaml: data.kwargs.num_classes: Input should be a valid integer, got 'abc'"],
    ),
    (
        "name: r\ndata: {name: synthetic, kwargs: {input_shape: 5}}\n",
        ["r.yaml: data.kwargs.input_shape: Input should be a valid tuple, got 5"],
    ),
    ("name: r\ndata: {batch_size: 1.0e+29}\n", ["data.batch_size", "valid integer"]),
    (
        "name: r\ndata: {batch_size: 100000000000000000000000000000}\n",
        ["data.batch_size: Input should be less than or equal to 65536"],
    ),
    ("name: r\nseed: 4294967296\n", ["seed: Input should be less than or equal to 4294967295"]),
    ("name: r\ndata: {input_size: 100000}\n", ["data.input_size", "less than or equal to 4096"]),
    (
        "name: r\nmeasure: {latency_batch_size: 1000000000}\n",
        ["measure.latency_batch_size: Input should be less than or equal to 65536"],
    ),
    (
        "name: r\ndata: {batch_size: 65536, input_size: 4096}\n",
        ["r.yaml: data: batch_size 65536 at input_size 4096", "at most 4.29e+09 pixels"],
    ),
    (
        "name: r\ndata: {input_size: 2048}\nmeasure: {latency_batch_size: 2048}\n",
        ["measure.latency_batch_size 2048 at data.input_size 2048"],
    ),
    ("name: r\nmodel: {num_classes: 10000000000}\n", ["model.num_classes", "1000000"]),
    ("name: r\ndata: {workers: 100000}\n", ["data.workers", "256"]),
    # YAML
    ("name: r\nseed: 0\nseed: 7\n", ["r.yaml:3:1: duplicate key 'seed' (first on line 2)"]),
    (
        "name: r\nfinetune:\n  lr: 0.1\n  epochs: 3\n  lr: 0.2\n",
        ["r.yaml:5:3: duplicate key 'lr' (first on line 3)"],
    ),
    ("name: r\npruning: {ignored_layers: &a [x, *a]}\n", ["alias refers to a node that contains"]),
    # run names become folders
    ("name: ../../x\n", ["name: '../../x' cannot name a run folder"]),
    ('name: "a\\0b"\n', ["name: 'a\\x00b' cannot name a run folder"]),
    ("name: .hidden\n", ["cannot name a run folder"]),
    (f"name: {'x' * 101}\n", ["cannot name a run folder", "1 to 100"]),
]


@pytest.mark.parametrize(("text", "fragments"), BAD_RECIPES)
def test_validate_refuses_with_one_line(tmp_path, capsys, text, fragments):
    path = recipe(tmp_path, text)
    line = one_error_line(capsys, ["validate", str(path)])
    for fragment in fragments:
        assert fragment in line, line


def billion_laughs(levels: int = 9) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


# The bomb in unknown keys (printing the error must not expand it), in a typed field, and in a
# free-form mapping.
BOMB_TAILS = ["name: r\n", "name: r\nseed: *l8\n", "name: r\ndata: {kwargs: {x: *l8}}\n"]


def test_alias_bombs_are_refused_quickly(tmp_path):
    # In a process of its own with a timeout: before the fix, `validate --print` ran until killed.
    # One process validates the three files: each gets its own line.
    from _forked import run_forked

    paths = [
        str(recipe(tmp_path, billion_laughs() + tail, f"r{i}.yaml"))
        for i, tail in enumerate(BOMB_TAILS)
    ]
    code = run_forked(lambda: main(["validate", "--print", *paths]), tmp_path / "err", timeout=120)
    stderr = (tmp_path / "err").read_text()
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == len(paths) and "Traceback" not in stderr, stderr
    for path, line in zip(paths, lines, strict=True):
        assert line.startswith(f"taylorprune: error: {path}: aliases expand this document to")
        assert "at most 10,000 more" in line


def test_merge_keys_and_small_aliases_still_work(tmp_path, capsys):
    path = recipe(
        tmp_path,
        "name: r\nbaseline:\n  train: &train {epochs: 3, lr: 0.05}\n"
        "finetune:\n  <<: *train\n  lr: 0.01\n",
    )
    assert main(["validate", "--print", str(path)]) == 0
    out = capsys.readouterr().out
    assert "epochs: 3" in out and "lr: 0.01" in out


def test_validate_set_values_are_read_as_recipe_yaml(tmp_path, capsys):
    path = recipe(tmp_path, "name: r\n")
    line = one_error_line(capsys, ["validate", str(path), "--set", "data.kwargs={a: 1, a: 2}"])
    assert "cannot parse the value: duplicate key 'a'" in line


def test_run_refuses_an_unsafe_name_before_writing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = recipe(tmp_path, "name: ../../escaped\n" + SYNTHETIC)
    line = one_error_line(capsys, ["run", str(path)])
    assert "cannot name a run folder" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


def test_run_with_a_given_data_root_never_falls_back(tmp_path, capsys, monkeypatch):
    # A system copy exists (the Debian package's place, pointed at generated files) but the user
    # named another folder: the run must stop naming theirs, not train on the system copy.
    system = tmp_path / "system"
    system.mkdir()
    rng = np.random.default_rng(0)
    for stem, n in (("train", 6), ("t10k", 4)):
        _write_idx(system / f"{stem}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(system / f"{stem}-labels-idx1-ubyte", np.arange(n) % 10)
    monkeypatch.setattr("taylorprune.data.mnist.DEBIAN_FASHION_MNIST", str(system))
    monkeypatch.setattr("taylorprune.data.mnist.DEFAULT_DOWNLOAD_ROOT", str(tmp_path / "cache"))
    for root, fragment in (
        (tmp_path / "nonexistent", "is not a folder"),
        (tmp_path / "empty", "not found; looked in"),
    ):
        if root.name == "empty":
            root.mkdir()
        path = recipe(tmp_path, f"name: r\ndata: {{name: fashion_mnist, root: {root}}}\n")
        out = tmp_path / f"out-{root.name}"
        line = one_error_line(capsys, ["run", str(path), "-o", str(out)])
        assert line.startswith("taylorprune: error: fashion_mnist: ") and fragment in line, line
        assert str(root) in line and str(system) not in line
        assert not out.exists()


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_run_with_a_corrupt_image_names_the_file(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("ant", "bee"):
            (tmp_path / "data" / split / label).mkdir(parents=True)
            for i in range(4):
                pixels = rng.integers(0, 256, (12, 12, 3)).astype(np.uint8)
                Image.fromarray(pixels).save(tmp_path / "data" / split / label / f"{i}.png")
    bad = tmp_path / "data" / "train" / "bee" / "2.png"
    bad.write_bytes(b"not an image at all")
    path = recipe(
        tmp_path,
        "name: r\ndevice: cpu\nmodel: {name: resnet20, kwargs: {width: 0.25}}\n"
        f"data: {{name: imagefolder, root: {tmp_path / 'data'}, input_size: 8, batch_size: 16}}\n"
        "baseline: {train: {epochs: 1}, cache: false}\n"
        "pruning: {score_batches: 1}\nfinetune: {epochs: 1}\nmeasure: {latency: false}\n",
    )
    out = tmp_path / "out"
    line = one_error_line(capsys, ["run", str(path), "-o", str(out)])  # not --quiet: one line
    assert f"{bad}: unreadable image (" in line, line
    assert not out.exists()  # found before anything was written
    # a header that is sound over damaged pixel data is found when the image is decoded
    good = tmp_path / "data" / "train" / "ant" / "1.png"
    bad.write_bytes(good.read_bytes()[:60])
    line = one_error_line(capsys, ["--quiet", "run", str(path), "-o", str(out)])
    assert f"{bad}: unreadable image (" in line, line


# ----------------------------------------------------------------------------------- measure
@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["resnet20", "--input-size", "3", "100000", "100000"], "at most 4096 channels and 4096"),
        (["resnet20", "--input-size", "3", "32", "32", "--device", "foo"], "--device 'foo'"),
        (["resnet20", "--device", "gpu", "--latency"], "expected cpu, cuda or cuda:N"),
        (["resnet20", "--num-classes", "10000000000"], "--num-classes 10000000000: at most"),
        (["resnet20", "--batch-size", "1000000000", "--latency"], "--batch-size 1000000000"),
        (
            ["resnet20", "--input-size", "3", "4096", "4096", "--latency", "--batch-size", "4096"],
            "the input and activations need",
        ),
    ],
)
def test_measure_refuses_with_one_line(capsys, argv, fragment):
    line = one_error_line(capsys, ["measure", *argv])
    assert fragment in line, line


def test_measure_refuses_a_cuda_device_this_machine_lacks(capsys):
    if torch.cuda.is_available():
        argv = ["--device", f"cuda:{torch.cuda.device_count()}"]
        fragment = "CUDA device(s)"
    else:
        argv, fragment = ["--device", "cuda"], "CUDA is not available"
    line = one_error_line(capsys, ["measure", "resnet20", "--latency", "--runs", "1", *argv])
    assert fragment in line, line


def _set_width(module: str, attr: str, value):
    def edit(payload: dict) -> None:
        payload["modules"][module]["attributes"][attr] = value

    return edit


def _narrow_conv_only(payload: dict) -> None:
    # The conv and its weight agree on 8 channels; the BatchNorm after it still has 16.
    payload["modules"]["layer1.0.conv1"]["attributes"]["out_channels"] = 8
    weight = payload["state_dict"]["layer1.0.conv1.weight"]
    payload["state_dict"]["layer1.0.conv1.weight"] = weight[:8].clone()


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (
            _set_width("conv1", "out_channels", 10**9),
            "layer conv1 (Conv2d) is inconsistent: says 1000000000x3 channels, weight is (16, 3,",
        ),
        (_set_width("layer1.0.bn1", "num_features", -5), "layer layer1.0.bn1 has num_features -5"),
        (_set_width("fc", "in_features", 0), "layer fc has in_features 0; widths are positive"),
        (_set_width("conv1", "out_channels", "abc"), "layer conv1 has out_channels 'abc'"),
        (_set_width("conv1", "groups", True), "layer conv1 has groups True"),
        (lambda p: p["modules"].update(conv1=5), "malformed pruned model: module 'conv1'"),
        (
            lambda p: p["meta"].update(input_shape=[3, 100_000, 100_000]),
            "saved input_shape [3, 100000, 100000] is beyond 4096 pixels per side",
        ),
        (_narrow_conv_only, "the file's layers do not fit together"),
    ],
)
def test_measure_refuses_a_saved_model_with_absurd_widths(tmp_path, capsys, edit, fragment):
    from taylorprune.models import build_model
    from taylorprune.serialization import save_pruned

    arch = {"source": "builtin", "name": "resnet20", "num_classes": 10, "in_chans": 3}
    good = save_pruned(build_model(arch), tmp_path / "good.pt", arch=arch, input_shape=[3, 8, 8])
    assert main(["measure", str(good)]) == 0
    capsys.readouterr()
    payload = torch.load(good, weights_only=True)
    edit(payload)
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    line = one_error_line(capsys, ["measure", str(bad)])
    assert fragment in line and str(bad) in line, line


def test_an_unreachable_latency_target_is_the_only_line(tmp_path, capsys):
    """The latency table is built (and logged) before the target can be judged; the refusal is
    still the only line printed, and nothing is written."""
    recipe = ROOT / "recipes/tiny/quickstart.yaml"
    out = tmp_path / "run"
    capsys.readouterr()
    assert (
        main(["run", str(recipe), "-o", str(out), "--set", "pruning.target={latency: 1e-9}"]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be reached" in err[0], err
    assert not out.exists()
