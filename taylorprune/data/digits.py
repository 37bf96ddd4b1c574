"""scikit-learn's 8×8 digits, registered as ``digits``: shipped with scikit-learn, so it needs no
files and no network, which makes it the dataset of quick runs and tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from taylorprune.data._digits_split import N_VAL, ORDER
from taylorprune.data.images import TensorImages, normalise, resize
from taylorprune.data.registry import DATASETS, DataRequest, Splits
from taylorprune.errors import UserError


@DATASETS.register("digits")
def digits(request: DataRequest) -> Splits:
    """scikit-learn's 8×8 handwritten digits (1,797 images, 10 classes, 1 channel), shipped with
    scikit-learn: a stratified split of 1,347 train / 450 val fixed by ``random_state=0`` (not by
    ``seed``, so every run sees the same split). Pixels 0..16 are scaled to [0, 1] and normalised
    with the train split's mean and std. Augmentation: random crop with 1 pixel padding."""
    pixels = np.loadtxt(_digits_file(), delimiter=",")
    images = torch.tensor(pixels[:, :-1].reshape(-1, 1, 8, 8), dtype=torch.float32) / 16.0
    labels = torch.tensor(pixels[:, -1].astype(np.int64))
    order = torch.tensor(ORDER)
    idx_train, idx_val = order[: len(order) - N_VAL], order[len(order) - N_VAL :]
    mean = images[idx_train].mean().item()
    std = images[idx_train].std().item()
    images = resize(normalise(images, ((mean,), (std,))), request.input_size, "digits")
    pad = 1 if request.augment else 0
    xt, yt = images[idx_train], labels[idx_train]
    train = TensorImages(xt, yt, pad=pad, seed=request.aug_seed)
    val = TensorImages(images[idx_val], labels[idx_val])
    shape = tuple(images.shape[1:])
    return Splits(train, val, 10, shape, TensorImages(xt, yt))  # type: ignore[arg-type]


def _digits_file() -> Path:
    """scikit-learn's copy of the UCI digits (64 pixels and the label per row), found without
    importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    raise UserError("data: the digits dataset ships with scikit-learn, which is not installed")
