"""ImageNet-style folders of image files, registered as ``imagefolder``.

Images are decoded by PIL one at a time as they are read, so a damaged file would surface deep in
a run: :func:`check_image_headers` reads every header up front, and :func:`read_image` turns a
decoding failure into one :class:`UserError` naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from taylorprune.data.images import TransformedDataset
from taylorprune.data.registry import DATASETS, DataRequest, Splits
from taylorprune.errors import UserError

# (mean, std) per channel of ImageNet's training images scaled to [0, 1].
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


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
