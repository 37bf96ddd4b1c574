"""The dataset registry: :data:`DATASETS` maps a name to a function that returns its splits.

A dataset function takes a :class:`DataRequest` (where the files are, the seeds, the image size,
whether to augment or download) and returns :class:`Splits`. Its keyword-only parameters are its
options (``data.kwargs`` in a recipe), checked against their annotations by
:func:`dataset_options` before anything is loaded. Each family of datasets registers itself in a
module of its own in this package.
"""

from __future__ import annotations

import functools
import inspect
import os
import reprlib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from torch.utils.data import Dataset

from taylorprune._registry import Registry, did_you_mean
from taylorprune._yaml import as_declared
from taylorprune.errors import UserError

#: Where torchvision fetches datasets to, and reads them from, when no ``data.root`` is given.
DEFAULT_DOWNLOAD_ROOT = os.path.join("~", ".cache", "taylorprune", "datasets")

#: Largest image side in pixels (``input_size``, a synthetic ``input_shape``): far above the 224 to
#: 512 of ImageNet runs, far below what fails to allocate.
MAX_SIDE = 4_096


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
