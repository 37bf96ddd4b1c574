"""Datasets: sizes, classes, shapes, normalisation, determinism, and the files each one reads."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from taylorprune.data import (
    DATASETS,
    DEBIAN_FASHION_MNIST,
    TensorImages,
    _ShardSampler,
    build_data,
    calibration_loader,
    dataset_options,
    read_idx,
)
from taylorprune.errors import UserError


def first_batch(bundle, split="train"):
    return next(iter(getattr(bundle, split)))


def all_images(loader):
    return torch.cat([x for x, _ in loader])


# ------------------------------------------------------------------------------------ digits
def test_digits_split_and_content():
    from sklearn.datasets import load_digits

    bundle = build_data("digits", batch_size=64, augment=False)
    assert (len(bundle.train.dataset), len(bundle.val.dataset)) == (1347, 450)
    assert bundle.num_classes == 10 and bundle.input_shape == (1, 8, 8)
    # Stratified: every class has its share (±1) of the 450 validation images.
    target = load_digits().target
    val_labels = torch.cat([y for _, y in bundle.val]).numpy()
    for c in range(10):
        assert abs((val_labels == c).sum() - (target == c).mean() * 450) <= 1
    # The two splits together are sklearn's 1,797 images, each once, up to one affine map.
    train_x = bundle.train.dataset.images  # all of them, unshuffled and not augmented
    val_x = all_images(bundle.val)
    both = torch.cat([train_x, val_x]).flatten(1)
    lo, hi = both.min(), both.max()  # pixel values 0 and 16 both occur
    pixels = ((both - lo) / (hi - lo) * 16).round().to(torch.int64).numpy()
    ours = sorted(map(tuple, pixels.tolist()))
    theirs = sorted(map(tuple, load_digits().data.astype(np.int64).tolist()))
    assert ours == theirs
    # Normalised with the train split's statistics.
    assert abs(train_x.mean().item()) < 1e-4 and abs(train_x.std().item() - 1) < 1e-3


def test_digits_split_is_scikit_learns_and_loading_does_not_import_it():
    import subprocess
    import sys

    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from taylorprune.data._digits_split import N_VAL, ORDER

    target = load_digits().target
    train, val = train_test_split(
        np.arange(len(target)), test_size=450, stratify=target, random_state=0
    )
    assert list(ORDER) == [*train.tolist(), *val.tolist()] and len(val) == N_VAL
    # images in the stored order, labels with them: what scikit-learn's split would give
    bundle = build_data("digits", batch_size=64, augment=False)
    assert torch.equal(torch.cat([y for _, y in bundle.val]), torch.as_tensor(target[val]))
    code = (
        "import sys; from taylorprune.data import build_data; build_data('digits', batch_size=8);"
        "print('sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_digits_determinism_and_global_rng():
    state = torch.get_rng_state()
    a = first_batch(build_data("digits", batch_size=32, seed=5))
    b = first_batch(build_data("digits", batch_size=32, seed=5))
    c = first_batch(build_data("digits", batch_size=32, seed=6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert torch.equal(
        torch.get_rng_state(), state
    )  # shuffling and augmentation kept their own RNG


def test_determinism_with_workers():
    kw = {"batch_size": 16, "seed": 3, "workers": 1}
    a = first_batch(build_data("digits", **kw))
    b = first_batch(build_data("digits", **kw))
    assert torch.equal(a[0], b[0])


def test_subsets_and_batches():
    bundle = build_data(
        "digits", batch_size=10, eval_batch_size=7, train_subset=35, val_subset=20, seed=1
    )
    assert (len(bundle.train.dataset), len(bundle.val.dataset)) == (35, 20)
    assert len(bundle.train) == 3  # the partial batch of 5 is dropped
    assert [len(y) for _, y in bundle.val] == [7, 7, 6]  # nothing dropped when evaluating
    again = build_data("digits", batch_size=10, train_subset=35, seed=1)
    assert bundle.train.dataset.indices == again.train.dataset.indices
    with pytest.raises(UserError, match="data.train_subset"):
        build_data("digits", batch_size=10, train_subset=0)


def test_tensor_images_augmentation_is_a_shifted_window_or_flip():
    images = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).view(2, 1, 5, 5) + 1
    data = TensorImages(images, torch.tensor([0, 1]), pad=2, flip=True, seed=0)
    shifts, flips = set(), 0
    for _ in range(200):
        x, y = data[1]
        padded = torch.nn.functional.pad(images[1], (2, 2, 2, 2))
        matches = [
            (dy, dx, f)
            for dy in range(5)
            for dx in range(5)
            for f in (False, True)
            if torch.equal(
                x,
                (padded[:, dy : dy + 5, dx : dx + 5]).flip(-1)
                if f
                else padded[:, dy : dy + 5, dx : dx + 5],
            )
        ]
        assert matches and y == 1
        shifts.add(matches[0][:2])
        flips += matches[0][2]
    assert len(shifts) == 25  # every offset of the 2-pixel padding occurs
    assert 60 < flips < 140


# ------------------------------------------------------------------------- (Fashion-)MNIST
def write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(
        struct.pack(">I", d) for d in array.shape
    )
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_idx_root(root, n_train=6, n_val=4, size=28):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for stem, n in (("train", n_train), ("t10k", n_val)):
        write_idx(root / f"{stem}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, size, size)))
        write_idx(root / f"{stem}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return root


def test_mnist_from_generated_idx_files(tmp_path):
    root = make_idx_root(tmp_path / "mnist")
    raw = read_idx(str(root / "t10k-images-idx3-ubyte.gz"))
    bundle = build_data("mnist", root=root, batch_size=4, augment=False)
    assert (len(bundle.train.dataset), len(bundle.val.dataset)) == (6, 4)
    assert bundle.input_shape == (1, 28, 28) and bundle.num_classes == 10
    x, y = first_batch(bundle, "val")
    expected = (torch.from_numpy(raw.astype(np.float32)) / 255 - 0.1307) / 0.3081
    assert torch.allclose(x[:, 0], expected, atol=1e-6)
    assert y.tolist() == [0, 1, 2, 3]


def torchvision_read_idx(gz_path, tmp_path) -> torch.Tensor:
    """torchvision's own IDX reader (it takes uncompressed files) as the reference."""
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    plain = tmp_path / os.path.basename(str(gz_path)).removesuffix(".gz")
    with gzip.open(gz_path, "rb") as f:
        plain.write_bytes(f.read())
    return read_sn3_pascalvincent_tensor(str(plain))


def test_read_idx_matches_torchvision_and_rejects_truncation(tmp_path):
    root = make_idx_root(tmp_path / "m", size=9)
    path = str(root / "train-images-idx3-ubyte.gz")
    reference = torchvision_read_idx(path, tmp_path)
    assert torch.equal(torch.from_numpy(read_idx(path).copy()), reference)
    with gzip.open(path, "rb") as f:
        data = f.read()
    with gzip.open(path, "wb") as f:
        f.write(data[:-10])
    with pytest.raises(UserError, match="truncated"):
        read_idx(path)


def test_mnist_missing_lists_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setattr("taylorprune.data.mnist.DEFAULT_DOWNLOAD_ROOT", str(tmp_path / "cache"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=f"not found; looked in {tmp_path / 'empty'}"):
        build_data("mnist", root=tmp_path / "empty", batch_size=4)
    with pytest.raises(UserError, match=f"data.root {tmp_path / 'nowhere'} is not a folder"):
        build_data("mnist", root=tmp_path / "nowhere", batch_size=4)


@pytest.fixture
def system_fashion_mnist(tmp_path, monkeypatch):
    """A system copy of Fashion-MNIST (6 train images) and an empty download cache."""
    monkeypatch.setattr("taylorprune.data.mnist.DEFAULT_DOWNLOAD_ROOT", str(tmp_path / "cache"))
    system = make_idx_root(tmp_path / "system")
    monkeypatch.setattr("taylorprune.data.mnist.DEBIAN_FASHION_MNIST", str(system))
    return system


def test_a_given_root_is_the_only_place_read(tmp_path, system_fashion_mnist):
    assert len(build_data("fashion_mnist", batch_size=2).train.dataset) == 6  # the system copy
    own = make_idx_root(tmp_path / "own", n_train=8)
    assert len(build_data("fashion_mnist", root=own, batch_size=2).train.dataset) == 8
    # A root without the files, or no folder at all, is an error naming it: the system copy is
    # never used in its place.
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as info:
        build_data("fashion_mnist", root=tmp_path / "empty", batch_size=2)
    message = str(info.value)
    assert f"looked in {tmp_path / 'empty'}," in message
    assert str(system_fashion_mnist) not in message
    with pytest.raises(UserError, match="nonexistent is not a folder"):
        build_data("fashion_mnist", root=tmp_path / "nonexistent", batch_size=2)


def test_download_goes_to_the_given_root_or_the_cache(tmp_path, system_fashion_mnist, monkeypatch):
    fetched = []

    def fake_download(dataset, root):
        fetched.append(root)
        make_idx_root(Path(root) / "FashionMNIST" / "raw", n_train=5)

    monkeypatch.setattr("taylorprune.data.mnist._torchvision_download", fake_download)
    # Files found (here the system copy): nothing is fetched.
    assert len(build_data("fashion_mnist", batch_size=2, download=True).train.dataset) == 6
    assert fetched == []
    # A given root that lacks the files (even one that does not exist yet) is fetched into.
    root = tmp_path / "new"
    bundle = build_data("fashion_mnist", root=root, batch_size=2, download=True)
    assert fetched == [str(root)] and len(bundle.train.dataset) == 5


def test_input_size_resizes_in_memory_images(tmp_path):
    root = make_idx_root(tmp_path / "m")
    bundle = build_data("mnist", root=root, batch_size=2, input_size=32, augment=False)
    assert bundle.input_shape == (1, 32, 32)
    assert first_batch(bundle)[0].shape == (2, 1, 32, 32)


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.isfile(os.path.join(DEBIAN_FASHION_MNIST, "train-images-idx3-ubyte.gz")),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_from_debian_package(tmp_path):
    bundle = build_data("fashion_mnist", batch_size=128, augment=False)
    assert (len(bundle.train.dataset), len(bundle.val.dataset)) == (60_000, 10_000)
    assert bundle.num_classes == 10 and bundle.input_shape == (1, 28, 28)
    labels = torchvision_read_idx(
        os.path.join(DEBIAN_FASHION_MNIST, "t10k-labels-idx1-ubyte.gz"), tmp_path
    )
    assert torch.equal(torch.cat([y for _, y in bundle.val]), labels.long())
    # The published normalisation constants are the training set's statistics.
    train = bundle.train.dataset.images
    assert abs(train.mean().item()) < 1e-3 and abs(train.std().item() - 1) < 1e-3
    x, _ = first_batch(build_data("fashion_mnist", batch_size=8))
    assert x.shape == (8, 1, 28, 28)


# ------------------------------------------------------------------------------------ CIFAR
def make_cifar10_root(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """torchvision's CIFAR-10 layout with 4 random images per batch file (20 train, 4 test)."""
    import torchvision.datasets.cifar as cifar

    # torchvision checks the official files' md5 sums; these files are generated.
    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (4, 3072)).astype(np.uint8), "labels": [0, 1, 2, 3]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return folder


def test_cifar10_from_generated_batches(tmp_path, monkeypatch):
    folder = make_cifar10_root(tmp_path, monkeypatch)

    def build():
        return build_data("cifar10", root=tmp_path, batch_size=8, augment=True)

    bundle = build()
    assert (len(bundle.train.dataset), len(bundle.val.dataset)) == (20, 4)
    assert bundle.num_classes == 10 and bundle.input_shape == (3, 32, 32)
    assert first_batch(bundle)[0].shape == (8, 3, 32, 32)
    x, _ = first_batch(bundle, "val")
    with open(folder / "test_batch", "rb") as f:
        raw = pickle.load(f)["data"].reshape(4, 3, 32, 32).astype(np.float32) / 255
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    assert torch.allclose(x, (torch.from_numpy(raw) - mean) / std, atol=1e-5)
    # Seeded crops and flips: two fresh builds give the same first batch.
    assert torch.equal(first_batch(build())[0], first_batch(build())[0])


def test_cifar_missing_root(tmp_path):
    with pytest.raises(UserError, match="cifar100: not found or corrupted in"):
        build_data("cifar100", root=tmp_path, batch_size=8)


# ------------------------------------------------------------------------------- imagefolder
def make_image_folder(root, classes=("ant", "bee"), splits=("train", "val"), n=3):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (30, 40, 3)).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")


def test_imagefolder(tmp_path):
    make_image_folder(tmp_path)
    bundle = build_data("imagefolder", root=tmp_path, batch_size=4, input_size=16)
    assert bundle.num_classes == 2 and bundle.input_shape == (3, 16, 16)
    x, y = first_batch(bundle)
    assert x.shape == (4, 3, 16, 16)
    xv, yv = first_batch(bundle, "val")
    assert yv.tolist() == [0, 0, 0, 1]  # val keeps folder order
    again = build_data("imagefolder", root=tmp_path, batch_size=4, input_size=16)
    assert torch.equal(first_batch(again)[0], x)  # seeded random crops
    assert torch.equal(first_batch(again, "val")[0], xv)


def test_imagefolder_errors(tmp_path):
    make_image_folder(tmp_path / "a", splits=("train",))
    with pytest.raises(UserError, match="val folder not found"):
        build_data("imagefolder", root=tmp_path / "a", batch_size=4)
    make_image_folder(tmp_path / "b", splits=("train",))
    make_image_folder(tmp_path / "b", classes=("ant", "cat"), splits=("val",))
    with pytest.raises(UserError, match="different classes"):
        build_data("imagefolder", root=tmp_path / "b", batch_size=4)
    with pytest.raises(UserError, match="data.root is required"):
        build_data("imagefolder", batch_size=4)


@pytest.mark.parametrize("workers", [0, 1])
def test_an_unreadable_image_is_a_user_error_naming_the_file(tmp_path, workers):
    make_image_folder(tmp_path, n=2)
    bad = tmp_path / "train" / "bee" / "1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    kw = {"root": tmp_path, "batch_size": 4, "input_size": 8, "workers": workers, "augment": False}
    with pytest.raises(UserError) as info:  # the header check, before any loader exists
        build_data("imagefolder", **kw)
    assert str(info.value).startswith(f"{bad}: unreadable image ("), str(info.value)
    bundle = build_data("imagefolder", **kw, check_images=False)
    with pytest.raises(UserError) as info:
        for _ in bundle.train:
            pass
    # One line naming the file, also when torch re-raises it from a loader worker.
    assert str(info.value).startswith(f"{bad}: unreadable image ("), str(info.value)
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)


# -------------------------------------------------------------------------------- synthetic
def test_synthetic_is_deterministic_and_learnable():
    kw = {"num_classes": 4, "input_shape": (2, 6, 6), "num_train": 200, "num_val": 100}
    bundle = build_data("synthetic", batch_size=50, seed=7, **kw)
    assert bundle.num_classes == 4 and bundle.input_shape == (2, 6, 6)
    same = build_data("synthetic", batch_size=50, seed=7, **kw)
    other = build_data("synthetic", batch_size=50, seed=8, **kw)
    assert torch.equal(first_batch(bundle)[0], first_batch(same)[0])
    assert not torch.equal(first_batch(bundle)[0], first_batch(other)[0])
    # Signal: class means estimated on train classify val far above chance (0.25).
    xt, yt = bundle.train.dataset.images.flatten(1), bundle.train.dataset.labels
    means = torch.stack([xt[yt == c].mean(0) for c in range(4)])
    xv, yv = bundle.val.dataset.images.flatten(1), bundle.val.dataset.labels
    accuracy = (torch.cdist(xv, means).argmin(1) == yv).float().mean().item()
    assert accuracy > 0.9
    assert torch.bincount(yt).tolist() == [50, 50, 50, 50]


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"num_clases": 3}, "data.kwargs: dataset 'synthetic' takes no option 'num_clases' (did"),
        ({"num_classes": "abc"}, "data.kwargs.num_classes: Input should be a valid integer"),
        ({"num_classes": True}, "data.kwargs.num_classes: Input should be a valid integer"),
        ({"num_classes": 1}, "data.kwargs.num_classes: Input should be greater than or equal to 2"),
        ({"input_shape": 5}, "data.kwargs.input_shape: Input should be a valid tuple, got 5"),
        ({"input_shape": (8, 8)}, "data.kwargs.input_shape.2: Field required, got (8, 8)"),
        ({"input_shape": [3, 0, 8]}, "data.kwargs.input_shape.1: Input should be greater"),
        ({"input_shape": [3, 8, 100_000]}, "data.kwargs.input_shape.2: Input should be less"),
        ({"num_train": 2.5}, "data.kwargs.num_train: Input should be a valid integer"),
        ({"noise": "loud"}, "data.kwargs.noise: Input should be a valid number"),
        ({"noise": float("nan")}, "data.kwargs.noise: Input should be a finite number"),
    ],
)
def test_synthetic_options_are_checked_against_its_signature(options, fragment):
    with pytest.raises(UserError) as info:
        dataset_options("synthetic", options)
    assert str(info.value).startswith(fragment), str(info.value)
    with pytest.raises(UserError) as again:
        build_data("synthetic", batch_size=8, **options)
    assert str(again.value) == str(info.value)


def test_dataset_options_fill_defaults_and_read_yaml_forms():
    options = dataset_options("synthetic", {"input_shape": [1, 4, 4], "noise": "1e-1"})
    assert options == {
        "num_classes": 10,
        "input_shape": (1, 4, 4),
        "num_train": 512,
        "num_val": 256,
        "noise": 0.1,
    }
    assert dataset_options("digits", {}) == {}


def test_data_that_cannot_fit_in_memory_is_refused_before_allocating(monkeypatch):
    monkeypatch.setattr("taylorprune.data.memory.physical_memory", lambda: 2**20)  # 1 MiB
    # 1,797 digits at 32x32 float32 are 7.0 MiB; at their own 8x8 they are 0.4 MiB.
    assert build_data("digits", batch_size=8).input_shape == (1, 8, 8)
    with pytest.raises(UserError) as info:
        build_data("digits", batch_size=8, input_size=32)
    assert str(info.value) == (
        "data.input_size 32: digits at 32x32 in memory (1,797 images) needs 7.0 MiB of memory; "
        "this machine has 1.0 MiB"
    )
    # (10 patterns + 512 + 256 images) x 3x32x32 float32 = 9.1 MiB
    with pytest.raises(UserError, match=r"synthetic data of 768 images .* needs 9.1 MiB"):
        build_data("synthetic", batch_size=8, input_shape=(3, 32, 32))
    with pytest.raises(UserError, match="data.input_size must be an integer in 1..4096"):
        build_data("digits", batch_size=8, input_size=100_000)


# ---------------------------------------------------------------------------- registry, dist
def test_unknown_dataset_and_options():
    with pytest.raises(UserError, match="did you mean 'fashion_mnist'"):
        build_data("fashion-mnist", batch_size=8)
    with pytest.raises(UserError, match="takes no option 'foo'"):
        build_data("digits", batch_size=8, foo=1)
    with pytest.raises(UserError, match="data.batch_size"):
        build_data("digits", batch_size=0)
    assert set(DATASETS.names()) >= {
        "cifar10",
        "cifar100",
        "digits",
        "fashion_mnist",
        "imagefolder",
        "mnist",
        "synthetic",
    }


# --------------------------------------------------------------------------------- holdout
def _images(dataset) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def test_holdout_validates_on_training_images_seen_without_augmentation():
    plain = build_data("digits", batch_size=32, augment=False)
    bundle = build_data("digits", batch_size=32, holdout=200, seed=3)
    assert bundle.val_split == "holdout" and plain.val_split == "val" and plain.test is None
    assert (len(bundle.train.dataset), len(bundle.val.dataset)) == (1147, 200)
    # the dataset's own split is the test set, as it validates without a holdout
    assert len(bundle.test.dataset) == 450
    assert torch.equal(all_images(bundle.test), all_images(plain.val))
    # held-out images are training images, unaugmented, and no longer trained on
    every = plain.train.dataset.images.flatten(1)
    held = all_images(bundle.val).flatten(1)
    rows = torch.cdist(held, every).argmin(1)
    assert torch.equal(every[rows], held)
    kept = bundle.train.dataset.indices
    assert not set(rows.tolist()) & set(kept) and len(set(rows.tolist()) | set(kept)) == 1347
    # training is augmented (padded crops), its unaugmented view is index for index the same
    assert bundle.train.dataset.dataset.pad == 1
    assert torch.equal(_images(bundle.train_eval), every[kept].view(-1, 1, 8, 8))
    # the split is the holdout seed's, whatever the run's seed
    again = build_data("digits", batch_size=32, holdout=200, seed=4)
    other = build_data("digits", batch_size=32, holdout=200, seed=3, holdout_seed=1)
    assert torch.equal(all_images(again.val), all_images(bundle.val))
    assert not torch.equal(all_images(other.val), all_images(bundle.val))
    # subsets then pick from what is left: training images, and held-out images
    sub = build_data("digits", batch_size=32, holdout=200, train_subset=100, val_subset=50)
    assert set(sub.train.dataset.dataset.indices[i] for i in sub.train.dataset.indices) <= set(kept)
    assert (len(sub.train.dataset), len(sub.val.dataset), len(sub.train_eval)) == (100, 50, 100)


def test_holdout_works_for_every_kind_of_dataset(tmp_path, monkeypatch):
    make_image_folder(tmp_path / "folder", n=4)  # 8 training and 8 validation images
    builds = {
        "mnist": ({"root": make_idx_root(tmp_path / "mnist", n_train=10)}, 10, 4),
        "synthetic": ({"num_train": 40, "num_val": 8, "input_shape": (1, 4, 4)}, 40, 8),
        "cifar10": ({"root": make_cifar10_root(tmp_path / "cifar", monkeypatch).parent}, 20, 4),
        "imagefolder": ({"root": tmp_path / "folder", "input_size": 8}, 8, 8),
    }
    for name, (kw, n_train, n_test) in builds.items():
        bundle = build_data(name, batch_size=2, holdout=3, **kw)
        sizes = (len(bundle.train.dataset), len(bundle.val.dataset), len(bundle.test.dataset))
        assert sizes == (n_train - 3, 3, n_test), name
        # held-out images come without augmentation: the same on every pass
        assert torch.equal(all_images(bundle.val), all_images(bundle.val)), name
        assert torch.equal(_images(bundle.val.dataset), _images(bundle.val.dataset)), name
        with pytest.raises(UserError, match=r"^data.holdout: holding out .* leaves no training"):
            build_data(name, batch_size=2, holdout=n_train, **kw)


def test_fashion_mnist_holdout_sizes():
    bundle = build_data("fashion_mnist", batch_size=128, holdout=5000)
    sizes = (len(bundle.train.dataset), len(bundle.val.dataset), len(bundle.test.dataset))
    assert sizes == (55_000, 5_000, 10_000)


def test_calibration_loader_is_fixed_unaugmented_and_leaves_training_alone():
    bundle = build_data("digits", batch_size=16, holdout=100, seed=2)
    reference = build_data("digits", batch_size=16, holdout=100, seed=2)
    a = list(calibration_loader(bundle, 3))
    b = list(calibration_loader(bundle, 3))
    assert [x.shape[0] for x, _ in a] == [16, 16, 16]
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b, strict=True))
    # training images only (never held-out ones), unaugmented
    train_images = _images(bundle.train_eval).flatten(1)
    chosen = torch.cat([x for x, _ in a]).flatten(1)
    assert torch.equal(train_images[torch.cdist(chosen, train_images).argmin(1)], chosen)
    # reading it moved no generator of the training loader
    assert torch.equal(first_batch(bundle)[0], first_batch(reference)[0])


def test_shard_sampler_partitions_without_padding():
    shards = [list(_ShardSampler(10, r, 3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(10))
    assert [len(s) for s in shards] == [4, 3, 3]


def test_distributed(tmp_path):
    import torch.distributed as dist
    from torch.utils.data.distributed import DistributedSampler

    with pytest.raises(UserError, match="torch.distributed"):
        build_data("digits", batch_size=8, distributed=True)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        bundle = build_data("digits", batch_size=64, distributed=True, seed=4)
        assert isinstance(bundle.train_sampler, DistributedSampler)
        assert bundle.train_sampler.seed == 4 and bundle.train_sampler.shuffle
        assert sum(len(y) for _, y in bundle.val) == 450
        bundle.train_sampler.set_epoch(1)
        epoch1 = list(bundle.train_sampler)
        bundle.train_sampler.set_epoch(2)
        assert epoch1 != list(bundle.train_sampler)
    finally:
        dist.destroy_process_group()
