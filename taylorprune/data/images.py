"""The image datasets that dataset families return, and how their random augmentation stays
reproducible.

:class:`TensorImages` holds a whole split in memory as one normalised tensor (built with
:func:`normalise` and :func:`resize`) and augments it itself; :class:`TransformedDataset` runs a
torchvision transform over another dataset. Both draw their randomness from a generator of their
own, seeded from ``seed`` in the main process and reseeded by :func:`worker_init` from each loader
worker's seed, so the same arguments give the same draws and the global torch RNG is left alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from taylorprune.data.memory import check_fits


class _Seeded:
    """Holds the generator that random augmentation draws from; reseeded per loader worker."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)


class TensorImages(Dataset, _Seeded):
    """Images held in memory as one float tensor ``(N, C, H, W)``, already normalised, with integer
    labels ``(N,)``. Augmentation (training only): a random crop of the image zero-padded by ``pad``
    pixels (zero is the normalised mean, not black) and, if ``flip``, a horizontal flip with
    probability 1/2."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        pad: int = 0,
        flip: bool = False,
        seed: int = 0,
    ) -> None:
        _Seeded.__init__(self, seed)
        if images.ndim != 4 or labels.shape != (images.shape[0],):
            raise ValueError(f"images (N,C,H,W) and labels (N,) expected, got {images.shape}")
        self.images = images.contiguous()
        self.labels = labels.long()
        self.pad = pad
        self.flip = flip

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.images[index]
        if self.pad:
            h, w = x.shape[-2:]
            padded = F.pad(x, (self.pad,) * 4)
            dy, dx = torch.randint(0, 2 * self.pad + 1, (2,), generator=self.generator).tolist()
            x = padded[:, dy : dy + h, dx : dx + w]
        if self.flip and torch.rand((), generator=self.generator) < 0.5:
            x = x.flip(-1)
        return x, int(self.labels[index])


class TransformedDataset(Dataset, _Seeded):
    """Applies a torchvision transform to ``(image, label)`` items of ``base``.

    torchvision's random transforms draw from the global torch RNG; each item runs them under a
    forked RNG seeded from this dataset's own generator, so they are reproducible and leave the
    caller's RNG untouched.
    """

    def __init__(self, base: Dataset, transform: Callable[[Any], torch.Tensor], seed: int = 0):
        _Seeded.__init__(self, seed)
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        item_seed = int(torch.randint(0, 2**62, (), generator=self.generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed)
            return self.transform(image), int(label)


def _seeded_parts(dataset: Dataset) -> list[_Seeded]:
    found: list[_Seeded] = []
    while True:
        if isinstance(dataset, _Seeded):
            found.append(dataset)
        if isinstance(dataset, TransformedDataset):
            dataset = dataset.base
        elif isinstance(dataset, Subset):
            dataset = dataset.dataset
        else:
            return found


def worker_init(worker_id: int) -> None:
    """Reseed a worker's copy of the dataset's augmentation generator from the worker's own seed,
    which DataLoader derives from its seeded generator; also seed numpy for user transforms."""
    info = torch.utils.data.get_worker_info()
    if info is None:
        return
    for part in _seeded_parts(info.dataset):
        part.reseed(info.seed % 2**63)
    np.random.seed(info.seed % 2**32)


def resize(images: torch.Tensor, input_size: int | None, dataset: str) -> torch.Tensor:
    """``images`` ``(N, C, H, W)`` resized to ``input_size`` square (antialiased bilinear), or
    as they are for None or their own size. Raises :class:`UserError` when the result cannot fit
    in this machine's memory."""
    if input_size is None or images.shape[-1] == input_size == images.shape[-2]:
        return images
    n, c = images.shape[:2]
    check_fits(
        4 * n * c * input_size**2,
        f"data.input_size {input_size}: {dataset} at {input_size}x{input_size} in memory "
        f"({n:,} images)",
    )
    return F.interpolate(images, size=(input_size, input_size), mode="bilinear", antialias=True)


def normalise(images: torch.Tensor, stats: tuple[Sequence[float], Sequence[float]]) -> torch.Tensor:
    """``images`` ``(N, C, H, W)`` less the per-channel mean, over the std: ``stats`` is
    ``(means, stds)``."""
    mean = torch.tensor(stats[0]).view(1, -1, 1, 1)
    std = torch.tensor(stats[1]).view(1, -1, 1, 1)
    return (images - mean) / std
