"""Datasets and loaders: sklearn digits, (Fashion-)MNIST, CIFAR, ImageNet-style folders, synthetic.

Every dataset is a function registered in :data:`DATASETS` that returns the train and validation
datasets plus their class count and input shape; :func:`build_data` wraps them in loaders.

Validation on a holdout: ``holdout=N`` carves N training images (a shuffle seeded by
``holdout_seed``, not by the run's seed) out as the validation set, seen without augmentation; the
dataset's own validation (or test) split is then kept apart as ``DataBundle.test``, which nothing
evaluates unless asked.

Options: a dataset function's keyword-only parameters are its options (``data.kwargs`` in a
recipe), checked against their annotations by :func:`dataset_options` before anything is loaded.

The module is long because it holds seven short dataset functions next to the loader builder and
the augmentation they share; each dataset is read on its own.

Determinism: shuffling uses a ``torch.Generator`` seeded with ``seed``; random augmentation draws
from a generator of its own, seeded from ``seed`` in the main process and from the worker's seed in
each loader worker (itself drawn from the seeded loader generator). The same arguments, the number
of workers included, therefore give the same batches, and the global torch RNG is left alone.
"""

from __future__ import annotations

import functools
import gzip
import inspect
import logging
import os
import reprlib
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from taylorprune._registry import Registry, did_you_mean
from taylorprune._yaml import as_declared
from taylorprune.errors import UserError

logger = logging.getLogger("taylorprune")

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
DEFAULT_DOWNLOAD_ROOT = os.path.join("~", ".cache", "taylorprune", "datasets")

# (mean, std) per channel of the training images scaled to [0, 1].
FASHION_MNIST_STATS = ((0.2860,), (0.3530,))
MNIST_STATS = ((0.1307,), (0.3081,))
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

#: Largest image side in pixels (``input_size``, a synthetic ``input_shape``): far above the 224 to
#: 512 of ImageNet runs, far below what fails to allocate.
MAX_SIDE = 4_096


@dataclass
class DataBundle:
    """Loaders plus what a model needs to know about the data.

    ``input_shape`` is ``(channels, height, width)`` of one example as the model sees it.
    ``train_sampler`` is the ``DistributedSampler`` when ``distributed`` (call its ``set_epoch``
    each epoch), else ``None``. ``val_split`` names what ``val`` holds: ``"holdout"`` (training
    images held out) or ``"val"`` (the dataset's own validation split). ``test`` is the dataset's
    own split when a holdout validates, else None. ``train_eval`` is the training split without
    augmentation, index for index with ``train.dataset`` (what BatchNorm statistics are
    re-estimated on: :func:`calibration_loader`).
    """

    train: DataLoader
    val: DataLoader
    num_classes: int
    input_shape: tuple[int, int, int]
    train_sampler: Sampler | None = None
    val_split: str = "val"
    test: DataLoader | None = None
    train_eval: Dataset | None = None


@dataclass(frozen=True)
class DataRequest:
    """What every dataset function gets (its own options come as keyword arguments)."""

    root: str | None
    seed: int  # for data that is generated or split: the same on every rank
    aug_seed: int  # for random augmentation: differs between ranks
    input_size: int | None
    augment: bool
    download: bool


@dataclass
class Splits:
    """What a dataset function returns. ``train_eval``: the training images as the validation
    transform gives them (no augmentation), index for index with ``train``; None when ``train``
    has no augmentation (a holdout is then taken from ``train`` itself)."""

    train: Dataset
    val: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]
    train_eval: Dataset | None = None


DatasetFn = Callable[..., Splits]  # (request: DataRequest, *, option=default, ...) -> Splits
DATASETS: Registry[DatasetFn] = Registry("dataset")


def dataset_options(
    name: str, options: Mapping[str, Any], where: str = "data.kwargs"
) -> dict[str, Any]:
    """``options`` for dataset ``name`` checked against its function's keyword-only parameters:
    names, annotated types (strict: ``"abc"`` is not an int, ``5`` is not a shape) and bounds.

    Returns every option, defaults filled in. Raises :class:`UserError` naming ``where`` and the
    option: an unknown dataset or option (with the nearest), a wrong type, a value out of bounds.
    """
    schema = _options_schema(DATASETS.get(name))
    fields = schema.model_fields
    for key in options:
        if key not in fields:
            hint = did_you_mean(key, list(fields)) if fields else ""
            raise UserError(f"{where}: dataset {name!r} takes no option {key!r}{hint}")
    given = {k: as_declared(v, fields[k].annotation) for k, v in options.items()}
    try:
        checked = schema.model_validate(given)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        key = ".".join(str(p) for p in err["loc"])
        raise UserError(f"{where}.{key}: {err['msg']}, got {_short(err.get('input'))}") from None
    return {k: getattr(checked, k) for k in fields}


@functools.cache
def _options_schema(fn: DatasetFn) -> type[BaseModel]:
    hints = typing.get_type_hints(fn, include_extras=True)
    params = inspect.signature(fn).parameters.values()
    fields: dict[str, Any] = {
        p.name: (hints[p.name], p.default) for p in params if p.kind is p.KEYWORD_ONLY
    }
    config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
    return create_model(f"{fn.__name__}_options", __config__=config, **fields)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxstring = 2, 4, 40


def _short(value: Any) -> str:
    return _REPR.repr(value)


def physical_memory() -> int | None:
    """Bytes of RAM of this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _check_fits(nbytes: int, what: str) -> None:
    """Refuse to allocate ``nbytes`` for ``what`` when it exceeds this machine's RAM.

    Only what cannot possibly fit is refused; a size that fits RAM but not what is free is left to
    the allocator.
    """
    total = physical_memory()
    if total is not None and nbytes > total:
        raise UserError(f"{what} needs {_size(nbytes)} of memory; this machine has {_size(total)}")


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:,.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:,.1f} MiB"


# --------------------------------------------------------------------------------- augmentation
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


def _worker_init(worker_id: int) -> None:
    """Reseed a worker's copy of the dataset's augmentation generator from the worker's own seed,
    which DataLoader derives from its seeded generator; also seed numpy for user transforms."""
    info = torch.utils.data.get_worker_info()
    if info is None:
        return
    for part in _seeded_parts(info.dataset):
        part.reseed(info.seed % 2**63)
    np.random.seed(info.seed % 2**32)


# ------------------------------------------------------------------------------------- builders
def build_data(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    batch_size: int,
    eval_batch_size: int | None = None,
    workers: int = 0,
    seed: int = 0,
    input_size: int | None = None,
    train_subset: int | None = None,
    val_subset: int | None = None,
    augment: bool = True,
    distributed: bool = False,
    holdout: int | None = None,
    holdout_seed: int = 0,
    **kwargs: Any,
) -> DataBundle:
    """Train and validation loaders for dataset ``name`` (see :data:`DATASETS`).

    ``input_size`` (pixels per side) resizes or crops to a square; ``None`` keeps the dataset's
    size. ``holdout`` (N) validates on N training images chosen by a shuffle seeded with
    ``holdout_seed`` (the same split whatever ``seed``, on every rank), seen without augmentation;
    training then uses the rest and the dataset's own validation split becomes the ``test``
    loader. ``train_subset``/``val_subset`` keep N examples of the training and validation sets
    (after the holdout) chosen by a shuffle seeded with ``seed``.
    ``download=True`` (a kwarg) allows torchvision to fetch missing files; other kwargs go to the
    dataset (synthetic: ``num_classes``, ``input_shape``, ``num_train``, ``num_val``, ``noise``).
    The train loader shuffles (seeded) and drops a last partial batch when there is more than one
    batch (a batch of one breaks BatchNorm in train mode); the val loader keeps order. With
    ``distributed`` the train loader uses ``DistributedSampler(shuffle=True, seed=seed)`` and the
    val (and test) loader this rank's unshuffled, unpadded share; torch.distributed must be
    initialised.

    Raises :class:`UserError` for an unknown name or option (with the nearest), a wrong option
    type, missing files (listing where they were looked for), an unreadable image (naming it, also
    while iterating), sizes that are invalid or cannot fit in this machine's memory, or a holdout
    that leaves no training data.
    """
    fn = DATASETS.get(name)
    for key, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UserError(f"data.{key} must be a positive integer, got {value!r}")
    if workers < 0:
        raise UserError(f"data.workers must be >= 0, got {workers}")
    if input_size is not None and (
        not isinstance(input_size, int) or not 1 <= input_size <= MAX_SIDE
    ):
        raise UserError(f"data.input_size must be an integer in 1..{MAX_SIDE}, got {input_size!r}")
    download = bool(kwargs.pop("download", False))
    options = dataset_options(name, kwargs)
    if distributed:
        rank, world = _dist_rank_world()
        aug_seed = seed + 1_000_003 * rank  # different augmentation on every rank
    else:
        rank, world, aug_seed = 0, 1, seed
    request = DataRequest(
        root=os.fspath(root) if root is not None else None,
        seed=seed,
        aug_seed=aug_seed,
        input_size=input_size,
        augment=augment,
        download=download,
    )
    splits = fn(request, **options)
    plain = splits.train if splits.train_eval is None else splits.train_eval
    train, train_eval, val, test, val_split = splits.train, plain, splits.val, None, "val"
    if holdout is not None:
        total = len(splits.train)  # type: ignore[arg-type]
        kept, held = _carve(total, holdout, holdout_seed, name)
        train, train_eval = Subset(splits.train, kept), Subset(plain, kept)
        val, test, val_split = Subset(plain, held), splits.val, "holdout"
    picked = _picked(len(train), train_subset, seed, "data.train_subset")  # type: ignore[arg-type]
    if picked is not None:
        train, train_eval = Subset(train, picked), Subset(train_eval, picked)
    val = _subset(val, val_subset, seed + 1, "data.val_subset")

    loader_gen = torch.Generator().manual_seed(seed)
    common: dict[str, Any] = {
        "num_workers": workers,
        "worker_init_fn": _worker_init if workers > 0 else None,
        "persistent_workers": False,
    }
    train_sampler: Sampler | None = None
    if distributed:
        from torch.utils.data.distributed import DistributedSampler

        train_sampler = DistributedSampler(
            train, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=False
        )
        shuffle = None
    else:
        shuffle = True
    n_train = len(train) // world
    train_loader = DataLoader(
        train,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=train_sampler,
        generator=loader_gen,
        drop_last=n_train > batch_size,
        **common,
    )

    def eval_loader(dataset: Dataset) -> DataLoader:
        n = len(dataset)  # type: ignore[arg-type]
        return DataLoader(
            dataset,
            batch_size=eval_batch_size or batch_size,
            shuffle=False,
            sampler=_ShardSampler(n, rank, world) if distributed else None,
            generator=torch.Generator().manual_seed(seed),
            **common,
        )

    return DataBundle(
        train_loader,
        eval_loader(val),
        splits.num_classes,
        splits.input_shape,
        train_sampler,
        val_split=val_split,
        test=None if test is None else eval_loader(test),
        train_eval=train_eval,
    )


def calibration_loader(data: DataBundle, batches: int, seed: int = 0) -> DataLoader:
    """``batches`` minibatches (of the training batch size) of training images without
    augmentation, for re-estimating BatchNorm statistics: a fixed choice seeded by ``seed``, the
    same images in the same order on every call and every rank. Reading it draws from no
    generator the training loader uses, so training goes on exactly as without it."""
    dataset = data.train_eval if data.train_eval is not None else data.train.dataset
    batch_size = data.train.batch_size or 1
    total = len(dataset)  # type: ignore[arg-type]
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    chosen = sorted(order[: min(total, batches * batch_size)].tolist())
    return DataLoader(Subset(dataset, chosen), batch_size=batch_size, shuffle=False, num_workers=0)


def _picked(total: int, n: int | None, seed: int, key: str) -> list[int] | None:
    """Which ``n`` of ``total`` examples a subset keeps (a shuffle seeded by ``seed``); None:
    all of them."""
    if n is None:
        return None
    if not isinstance(n, int) or n < 1:
        raise UserError(f"{key} must be a positive integer, got {n!r}")
    if n >= total:
        return None
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return order[:n].tolist()


def _subset(dataset: Dataset, n: int | None, seed: int, key: str) -> Dataset:
    picked = _picked(len(dataset), n, seed, key)  # type: ignore[arg-type]
    return dataset if picked is None else Subset(dataset, picked)


def _carve(total: int, holdout: int, seed: int, name: str) -> tuple[list[int], list[int]]:
    """The training indices kept and the ``holdout`` held out (both sorted), from a shuffle
    seeded by ``seed``."""
    if isinstance(holdout, bool) or not isinstance(holdout, int) or holdout < 1:
        raise UserError(f"data.holdout must be a positive integer, got {holdout!r}")
    if holdout >= total:
        raise UserError(
            f"data.holdout: holding out {holdout:,} of the {total:,} training images of {name} "
            "leaves no training data"
        )
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return sorted(order[holdout:].tolist()), sorted(order[:holdout].tolist())


def _dist_rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise UserError("data: distributed=True needs torch.distributed to be initialised first")
    return dist.get_rank(), dist.get_world_size()


class _ShardSampler(Sampler[int]):
    """Rank ``rank``'s share ``rank, rank + world, ...`` of ``range(n)``: unshuffled and unpadded,
    so summing correct counts over ranks gives the exact validation accuracy."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, n, world))

    def __iter__(self):  # type: ignore[override]
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _resize(images: torch.Tensor, input_size: int | None, dataset: str) -> torch.Tensor:
    if input_size is None or images.shape[-1] == input_size == images.shape[-2]:
        return images
    n, c = images.shape[:2]
    _check_fits(
        4 * n * c * input_size**2,
        f"data.input_size {input_size}: {dataset} at {input_size}x{input_size} in memory "
        f"({n:,} images)",
    )
    return F.interpolate(images, size=(input_size, input_size), mode="bilinear", antialias=True)


def _normalise(
    images: torch.Tensor, stats: tuple[Sequence[float], Sequence[float]]
) -> torch.Tensor:
    mean = torch.tensor(stats[0]).view(1, -1, 1, 1)
    std = torch.tensor(stats[1]).view(1, -1, 1, 1)
    return (images - mean) / std


# --------------------------------------------------------------------------------------- digits
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
    images = _resize(_normalise(images, ((mean,), (std,))), request.input_size, "digits")
    pad = 1 if request.augment else 0
    xt, yt = images[idx_train], labels[idx_train]
    train = TensorImages(xt, yt, pad=pad, seed=request.aug_seed)
    val = TensorImages(images[idx_val], labels[idx_val])
    shape = tuple(images.shape[1:])
    return Splits(train, val, 10, shape, TensorImages(xt, yt))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- (Fashion-)MNIST
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
        return _resize(_normalise(images, stats), request.input_size, dataset), labels

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


# ---------------------------------------------------------------------------------------- CIFAR
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


# ---------------------------------------------------------------------------------- imagefolder
@DATASETS.register("imagefolder")
def imagefolder(request: DataRequest, *, check_images: bool = True) -> Splits:
    """An ImageNet-style tree ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``.

    Train: RandomResizedCrop(``input_size``, default 224) and horizontal flip; val: resize to
    ``input_size·256/224`` then center crop. ImageNet normalisation. The class list is train's; val
    must have the same classes. ``check_images`` reads the header of every image before anything
    else happens (:func:`check_image_headers`: an empty file, a file that is not an image or a
    damaged header is one :class:`UserError` naming it, before a run writes anything); an image
    whose header is sound but whose data is damaged still raises :class:`UserError` naming its
    file when it is first decoded.
    """
    from torchvision import datasets
    from torchvision import transforms as T

    if not request.root:
        raise UserError("imagefolder: data.root is required (a folder with train/ and val/)")
    dirs = {s: os.path.join(request.root, s) for s in ("train", "val")}
    for split, path in dirs.items():
        if not os.path.isdir(path):
            raise UserError(f"imagefolder: {split} folder not found: {path}")
    size = request.input_size or 224
    tail = [T.ToTensor(), T.Normalize(*IMAGENET_STATS)]
    if request.augment:
        train_tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *tail])
    else:
        train_tf = T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size), *tail])
    val_tf = T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size), *tail])
    try:
        base_train = datasets.ImageFolder(dirs["train"], loader=read_image)
        base_val = datasets.ImageFolder(dirs["val"], loader=read_image)
    except (FileNotFoundError, RuntimeError) as exc:
        raise UserError(f"imagefolder: {exc}") from None
    if base_val.classes != base_train.classes:
        missing = sorted(set(base_train.classes) ^ set(base_val.classes))
        raise UserError(
            f"imagefolder: {dirs['val']} and {dirs['train']} have different classes "
            f"(first difference: {missing[0] if missing else 'order'})"
        )
    if check_images:
        check_image_headers([p for p, _ in base_train.samples + base_val.samples])
    train = TransformedDataset(base_train, train_tf, seed=request.aug_seed)
    val = TransformedDataset(base_val, val_tf)
    plain = TransformedDataset(base_train, val_tf)
    return Splits(train, val, len(base_train.classes), (3, size, size), plain)


def check_image_headers(paths: Sequence[str], workers: int = 4) -> None:
    """Open every image far enough to read its format and size (PIL reads the header only, not
    the pixels), on ``workers`` threads: from a cold disk the cost is mostly waiting for it.

    Raises :class:`UserError` ``<path>: unreadable image (...)`` for the first file in ``paths``
    that is empty, not an image, or whose header is damaged. Cost (``tools/bench_image_check.py``,
    docs/models_and_data.md): 55–80 µs an image from the page cache, 150–175 µs from a cold disk
    on 4 threads, i.e. 1.2 to 4 minutes for ImageNet's 1.33 M files; ``data.kwargs:
    {check_images: false}`` skips it.
    """
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    def first_problem(chunk: Sequence[str]) -> str | None:
        for path in chunk:
            try:
                with Image.open(path) as image:
                    image.size  # noqa: B018 - parsed from the header
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
                detail = " ".join(str(exc).split())[:160] or type(exc).__name__
                return f"{path}: unreadable image ({detail})"
        return None

    chunks = [paths[i : i + 512] for i in range(0, len(paths), 512)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for message in pool.map(first_problem, chunks):
            if message is not None:
                raise UserError(message)


def read_image(path: str) -> Any:
    """The image file at ``path`` as an RGB PIL image (what torchvision's default loader returns).

    Raises :class:`UserError` ``<path>: unreadable image (...)`` for a file PIL cannot decode
    (corrupt, truncated, not an image, or larger than PIL's decompression-bomb limit).
    """
    from PIL import Image

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        detail = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise UserError(f"{path}: unreadable image ({detail})") from None


# ------------------------------------------------------------------------------------ synthetic
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
    _check_fits(
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
