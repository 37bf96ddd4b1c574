"""The whole recipe: its top-level keys, its sections, the rules that span sections.

:class:`Recipe` is what :func:`~taylorprune.recipe.load_recipe` returns and what a run writes back
as ``recipe.yaml`` (:meth:`Recipe.resolved_yaml`). The sections themselves are checked in
:mod:`taylorprune.recipe.sections`.
"""

from __future__ import annotations

import re
import reprlib
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from taylorprune.recipe.sections import (
    MAX_NAME,
    MAX_SEED,
    MAX_THREADS,
    BaselineConfig,
    DataConfig,
    FinetuneConfig,
    ImportanceConfig,
    MeasureConfig,
    ModelConfig,
    PruningConfig,
    StrictModel,
    check_batch_pixels,
)

_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
# The name becomes a folder (runs/<name>/...): no separators, no leading dot or dash, no controls.
_NAME = re.compile(rf"^[A-Za-z0-9_][A-Za-z0-9._-]{{0,{MAX_NAME - 1}}}$")

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 2, 4, 4
_REPR.maxstring = _REPR.maxother = 60


def short_repr(value: Any, limit: int = 60) -> str:
    """``value`` as a one-line message quotes it: its repr, cut to ``limit`` characters."""
    # reprlib: a value that is huge or deeply nested is never rendered whole.
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Recipe(StrictModel):
    """A fully resolved, validated recipe. Build it with :func:`load_recipe`."""

    name: str
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = Field(None, ge=1, le=MAX_THREADS)  # CPU threads; None: torch's default
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    baseline: BaselineConfig = Field(default_factory=BaselineConfig)
    importance: ImportanceConfig = Field(default_factory=ImportanceConfig)
    pruning: PruningConfig = Field(default_factory=PruningConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
    retrain: Literal["finetune", "rewind", "scratch"] = "finetune"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"{short_repr(value)} cannot name a run folder: use 1 to {MAX_NAME} letters, "
                "digits, '.', '_' or '-', not starting with '.' or '-'"
            )
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError(f"{value!r} is not auto, cpu, cuda or cuda:N")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Recipe:
        train = self.baseline.train
        if train is not None and train.distill is not None:
            raise ValueError(
                "baseline.train.distill: the baseline has no teacher (distillation is from the "
                "baseline, in finetune)"
            )
        # fp16 autocast needs a GradScaler, which this project only supports on CUDA.
        if self.device == "cpu":
            phases = (("baseline.train", self.baseline.train), ("finetune", self.finetune))
            for key, train in phases:
                if train is not None and train.amp == "fp16":
                    raise ValueError(f"{key}.amp: fp16 needs a CUDA device (use bf16 on cpu)")
        if self.measure.test and self.data.holdout is None:
            raise ValueError(
                "measure.test: there is no test split without data.holdout (the dataset's own "
                "split validates)"
            )
        try:
            check_batch_pixels(
                "latency_batch_size",
                self.measure.latency_batch_size,
                "data.input_size",
                self.data.input_size,
            )
        except ValueError as err:
            raise ValueError(f"measure.{err}") from None
        return self

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain Python data (no ``base:``; every default filled in)."""
        return self.model_dump(mode="json")

    def resolved_yaml(self) -> str:
        """The resolved recipe as YAML; loading it again gives an equal :class:`Recipe`."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)
