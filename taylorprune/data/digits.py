"""scikit-learn's 8×8 digits, registered as ``digits``: shipped with scikit-learn, so it needs no
files and no network, which makes it the dataset of quick runs and tests."""

from __future__ import annotations

import numpy as np
import torch

from taylorprune.data.images import TensorImages, normalise, resize
from taylorprune.data.registry import DATASETS, DataRequest, Splits


@DATASETS.register("digits")
def digits(request: DataRequest) -> Splits:
    """scikit-learn's 8×8 handwritten digits (1,797 images, 10 classes, 1 channel), shipped with
    scikit-learn: a stratified split of 1,347 train / 450 val fixed by ``random_state=0`` (not by
    ``seed``, so every run sees the same split). Pixels 0..16 are scaled to [0, 1] and normalised
    with the train split's mean and std. Augmentation: random crop with 1 pixel padding."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.long)
    idx_train, idx_val = train_test_split(
        np.arange(len(labels)), test_size=450, stratify=bunch.target, random_state=0
    )
    idx_train, idx_val = torch.as_tensor(idx_train), torch.as_tensor(idx_val)
    mean = images[idx_train].mean().item()
    std = images[idx_train].std().item()
    images = resize(normalise(images, ((mean,), (std,))), request.input_size, "digits")
    pad = 1 if request.augment else 0
    xt, yt = images[idx_train], labels[idx_train]
    train = TensorImages(xt, yt, pad=pad, seed=request.aug_seed)
    val = TensorImages(images[idx_val], labels[idx_val])
    shape = tuple(images.shape[1:])
    return Splits(train, val, 10, shape, TensorImages(xt, yt))  # type: ignore[arg-type]
