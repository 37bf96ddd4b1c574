"""MNIST and Fashion-MNIST from their IDX files, registered as ``mnist`` and ``fashion_mnist``.

Both read the same four files (:func:`read_idx`, no torchvision needed) from the same places: a
``data.root`` the user gives is the only place read, else the download cache, then the system's
copy; torchvision fetches missing files only with ``data.download``.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence

import numpy as np
import torch

from taylorprune.data.images import TensorImages, normalise, resize
from taylorprune.data.registry import DATASETS, DEFAULT_DOWNLOAD_ROOT, DataRequest, Splits
from taylorprune.errors import UserError

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"

# (mean, std) per channel of the training images scaled to [0, 1].
FASHION_MNIST_STATS = ((0.2860,), (0.3530,))
MNIST_STATS = ((0.1307,), (0.3081,))

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str) -> np.ndarray:
    """An IDX file (the MNIST format; ``.gz`` or plain) as a numpy array of its stored shape.

    Header: two zero bytes, a type code (0x08 = unsigned byte) and the number of dimensions, then
    one big-endian uint32 per dimension. Raises :class:`UserError` for a malformed file.
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(shape)):
        raise UserError(f"{path}: size does not match its IDX header {shape} (truncated?)")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(dirs: Sequence[str], stem: str) -> str | None:
    for d in dirs:
        for name in (stem + ".gz", stem):
            path = os.path.join(d, name)
            if os.path.isfile(path):
                return path
    return None


def _mnist_like(
    request: DataRequest,
    *,
    dataset: str,
    tv_folder: str,
    extra_dirs: Sequence[str],
    stats: tuple[Sequence[float], Sequence[float]],
    flip: bool,
) -> Splits:
    # A root the user gives is the only place read: falling back to another copy would hide that
    # their files were not used. Without one, the download cache, then the system's copy.
    if request.root:
        if not os.path.isdir(request.root) and not request.download:
            raise UserError(f"{dataset}: data.root {request.root} is not a folder")
        download_root, roots, extra_dirs = request.root, [request.root], ()
        advice = f"put the IDX files in {request.root}, or set data.download: true to fetch them"
    else:
        download_root = os.path.expanduser(DEFAULT_DOWNLOAD_ROOT)
        roots = [download_root]
        advice = "set data.root to their folder, or data.download: true to fetch them"
    dirs = []
    for r in roots:
        dirs += [r, os.path.join(r, tv_folder, "raw"), os.path.join(r, tv_folder)]
    dirs += list(extra_dirs)
    stems = [s for pair in _IDX_FILES.values() for s in pair]
    if any(_find_idx(dirs, s) is None for s in stems) and request.download:
        _torchvision_download(dataset, download_root)
    arrays = {}
    for stem in stems:
        path = _find_idx(dirs, stem)
        if path is None:
            raise UserError(
                f"{dataset}: {stem}(.gz) not found; looked in {', '.join(dirs)} ({advice})"
            )
        arrays[stem] = read_idx(path)

    def split(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        img_stem, lab_stem = _IDX_FILES[kind]
        images = torch.from_numpy(arrays[img_stem].copy()).float().div_(255.0).unsqueeze(1)
        labels = torch.from_numpy(arrays[lab_stem].astype(np.int64))
        if images.shape[0] != labels.shape[0]:
            raise UserError(f"{dataset}: {kind} images and labels differ in count")
        return resize(normalise(images, stats), request.input_size, dataset), labels

    (xt, yt), (xv, yv) = split("train"), split("val")
    pad = 2 if request.augment else 0
    train = TensorImages(xt, yt, pad=pad, flip=flip and request.augment, seed=request.aug_seed)
    val = TensorImages(xv, yv)
    shape = tuple(xt.shape[1:])
    return Splits(train, val, 10, shape, TensorImages(xt, yt))  # type: ignore[arg-type]


def _torchvision_download(dataset: str, root: str) -> None:
    import torchvision

    cls = {"fashion_mnist": torchvision.datasets.FashionMNIST, "mnist": torchvision.datasets.MNIST}
    try:
        for train in (True, False):
            cls[dataset](root, train=train, download=True)
    except Exception as exc:  # network failures of every kind
        raise UserError(f"{dataset}: download to {root} failed ({exc})") from None


@DATASETS.register("fashion_mnist")
def fashion_mnist(request: DataRequest) -> Splits:
    """Fashion-MNIST (60,000 train / 10,000 test 28×28 grey images, 10 classes), validated on the
    test set. With ``root``, the IDX files are read from there only (also torchvision's
    ``FashionMNIST/raw`` layout; ``download`` fetches missing ones into it). Without, from the
    download cache, then the Debian package's ``/usr/share/datasets/fashion-mnist`` (``download``
    fetches into the cache). Normalised with mean 0.2860, std 0.3530; augmentation: random crop
    with 2 pixel padding and a horizontal flip."""
    return _mnist_like(
        request,
        dataset="fashion_mnist",
        tv_folder="FashionMNIST",
        extra_dirs=[DEBIAN_FASHION_MNIST],
        stats=FASHION_MNIST_STATS,
        flip=True,
    )


@DATASETS.register("mnist")
def mnist(request: DataRequest) -> Splits:
    """MNIST digits, like :func:`fashion_mnist` but normalised with 0.1307/0.3081 and not flipped
    (a flipped digit is another symbol)."""
    return _mnist_like(
        request,
        dataset="mnist",
        tv_folder="MNIST",
        extra_dirs=["/usr/share/datasets/mnist"],
        stats=MNIST_STATS,
        flip=False,
    )
