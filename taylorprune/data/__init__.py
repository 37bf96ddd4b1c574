"""Datasets and their loaders: sklearn digits, (Fashion-)MNIST, CIFAR, ImageNet-style folders,
synthetic data.

Every dataset is a function registered in :data:`DATASETS` (``registry.py``) that returns the
train and validation datasets plus their class count and input shape; :func:`build_data`
(``loaders.py``) wraps them in loaders. Each family of datasets is a module of its own that
registers itself; importing this package imports them all, so the registry is complete.
"""

from taylorprune.data import (  # noqa: F401  (they register)
    cifar,
    digits,
    imagefolder,
    mnist,
    synthetic,
)
from taylorprune.data.imagefolder import check_image_headers
from taylorprune.data.images import TensorImages
from taylorprune.data.loaders import DataBundle, build_data, calibration_loader
from taylorprune.data.loaders import _ShardSampler as _ShardSampler  # for the tests
from taylorprune.data.memory import physical_memory
from taylorprune.data.mnist import DEBIAN_FASHION_MNIST, read_idx
from taylorprune.data.registry import DATASETS, MAX_SIDE, dataset_options

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST",
    "MAX_SIDE",
    "DataBundle",
    "TensorImages",
    "build_data",
    "calibration_loader",
    "check_image_headers",
    "dataset_options",
    "physical_memory",
    "read_idx",
]
