"""CIFAR-10 and CIFAR-100 from torchvision's files, registered as ``cifar10`` and ``cifar100``:
decoded by torchvision and augmented with its transforms (random crop, flip)."""

from __future__ import annotations

import os

from taylorprune.data.images import TransformedDataset
from taylorprune.data.registry import DATASETS, DEFAULT_DOWNLOAD_ROOT, DataRequest, Splits
from taylorprune.errors import UserError

# (mean, std) per channel of the training images scaled to [0, 1].
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


def _cifar(request: DataRequest, num_classes: int) -> Splits:
    import torchvision
    from torchvision import transforms as T

    name = f"cifar{num_classes}"
    cls = torchvision.datasets.CIFAR10 if num_classes == 10 else torchvision.datasets.CIFAR100
    stats = CIFAR10_STATS if num_classes == 10 else CIFAR100_STATS
    root = request.root or os.path.expanduser(DEFAULT_DOWNLOAD_ROOT)
    try:
        base_train = cls(root, train=True, download=request.download)
        base_val = cls(root, train=False, download=False)
    except RuntimeError as exc:
        raise UserError(
            f"{name}: not found or corrupted in {root} ({exc}); set data.root to the folder "
            f"holding {cls.base_folder}, or data.download: true"
        ) from None
    except Exception as exc:  # network failures of every kind
        raise UserError(f"{name}: download to {root} failed ({exc})") from None
    size = request.input_size or 32
    tail = [T.ToTensor(), T.Normalize(*stats)]
    resize = [T.Resize(size)] if size != 32 else []
    if request.augment:
        train_tf = T.Compose(
            [*resize, T.RandomCrop(size, padding=4), T.RandomHorizontalFlip(), *tail]
        )
    else:
        train_tf = T.Compose([*resize, *tail])
    eval_tf = T.Compose([*resize, *tail])
    train = TransformedDataset(base_train, train_tf, seed=request.aug_seed)
    val = TransformedDataset(base_val, eval_tf)
    return Splits(train, val, num_classes, (3, size, size), TransformedDataset(base_train, eval_tf))


@DATASETS.register("cifar10")
def cifar10(request: DataRequest) -> Splits:
    """CIFAR-10 from torchvision's files in ``root`` (``cifar-10-batches-py``); random crop 32 with
    4 pixel padding and horizontal flip; per-channel normalisation. Downloads only with
    ``download``."""
    return _cifar(request, 10)


@DATASETS.register("cifar100")
def cifar100(request: DataRequest) -> Splits:
    """CIFAR-100, as :func:`cifar10` (``cifar-100-python``), 100 fine classes."""
    return _cifar(request, 100)
