"""Generated data, registered as ``synthetic``: any number of classes, shape and size, learnable
and deterministic by seed, for dry runs and tests that need no files."""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch
from pydantic import Field

from taylorprune.data.images import TensorImages
from taylorprune.data.memory import check_fits
from taylorprune.data.registry import DATASETS, MAX_SIDE, DataRequest, Splits

_Side = Annotated[int, Field(ge=1, le=MAX_SIDE)]


@DATASETS.register("synthetic")
def synthetic(
    request: DataRequest,
    *,
    num_classes: Annotated[int, Field(ge=2, le=100_000)] = 10,
    input_shape: tuple[_Side, _Side, _Side] = (3, 32, 32),
    num_train: Annotated[int, Field(ge=1, le=10_000_000)] = 512,
    num_val: Annotated[int, Field(ge=1, le=10_000_000)] = 256,
    noise: Annotated[float, Field(ge=0)] = 1.0,
) -> Splits:
    """Gaussian noise plus a class-dependent pattern, so a model can learn it (for dry runs).

    ``input_shape`` is (C, H, W) (``input_size`` replaces H and W); ``noise`` is the standard
    deviation of the noise; each class pattern has unit standard deviation. Labels cycle through
    the classes (balanced). Deterministic by ``seed``; no augmentation.
    """
    shape = tuple(input_shape)
    if request.input_size is not None:
        shape = (shape[0], request.input_size, request.input_size)
    check_fits(
        4 * (num_classes + num_train + num_val) * int(np.prod(shape)),
        f"data.kwargs: synthetic data of {num_train + num_val:,} images of shape {shape}",
    )
    gen = torch.Generator().manual_seed(request.seed)
    patterns = torch.randn((num_classes, *shape), generator=gen)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=gen)]
        images = patterns[labels] + noise * torch.randn((n, *shape), generator=gen)
        return images, labels

    (xt, yt), (xv, yv) = make(num_train), make(num_val)
    return Splits(TensorImages(xt, yt), TensorImages(xv, yv), num_classes, shape)  # type: ignore[arg-type]
