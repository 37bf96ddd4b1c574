"""The loader side of the data: :func:`build_data` turns a registered dataset into loaders
(:class:`DataBundle`), and :func:`calibration_loader` gives training images without augmentation
for re-estimating BatchNorm statistics.

Validation on a holdout: ``holdout=N`` carves N training images (a shuffle seeded by
``holdout_seed``, not by the run's seed) out as the validation set, seen without augmentation; the
dataset's own validation (or test) split is then kept apart as ``DataBundle.test``, which nothing
evaluates unless asked.

Determinism: shuffling uses a ``torch.Generator`` seeded with ``seed``; random augmentation draws
from a generator of its own, seeded from ``seed`` in the main process and from the worker's seed in
each loader worker (itself drawn from the seeded loader generator). The same arguments, the number
of workers included, therefore give the same batches, and the global torch RNG is left alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from taylorprune.data.images import worker_init
from taylorprune.data.registry import DATASETS, MAX_SIDE, DataRequest, dataset_options
from taylorprune.errors import UserError


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
        "worker_init_fn": worker_init if workers > 0 else None,
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
