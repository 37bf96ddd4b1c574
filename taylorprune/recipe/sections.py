"""The sections of a recipe, one strict pydantic model each, and the bounds on sizes they enforce.

Each section (``model``, ``data``, ``baseline``, ``importance``, ``pruning``, ``finetune``,
``measure``) is checked on its own here: types, ranges, and rules between its own keys. Rules that
span sections belong to :class:`~taylorprune.recipe.schema.Recipe`. :class:`TrainConfig` is also
used without a recipe (``taylorprune.train``, ``taylorprune.optimizers``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationInfo,
    field_validator,
    model_validator,
)

from taylorprune._yaml import as_declared
from taylorprune.data import MAX_SIDE
from taylorprune.importance import defaults
from taylorprune.pruning.targets import LATENCY_FRACTION, Target

# Upper bounds on sizes, far above what a real run uses, so that a typo (an extra zero, 1e9) is an
# error naming the key before anything runs, not an allocation failure hours later.
MAX_BATCH = 65_536  # examples per process and batch
MAX_BATCH_PIXELS = 2**32  # batch x side^2: 48 GiB for one batch of 3-channel float32 images
MAX_CLASSES = 1_000_000
MAX_CHANNELS = 4_096  # input channels (hyperspectral images have a few hundred)
MAX_WORKERS = 256
MAX_THREADS = 1_024
MAX_SEED = 2**32 - 1  # numpy's seed range; torch's is wider
MAX_NAME = 100


class StrictModel(BaseModel):
    # Unknown keys are errors (a typo must not silently fall back to a default). Strict types: a
    # bool is not an int and 2.5 is not an int. Assignments are validated too, so a runner cannot
    # put the recipe into a state a file could not express.
    model_config = ConfigDict(
        extra="forbid", strict=True, validate_assignment=True, allow_inf_nan=False
    )

    @field_validator("*", mode="before")
    @classmethod
    def _from_yaml(cls, value: Any, info: ValidationInfo) -> Any:
        # ``1e-3`` is a float, not the string YAML 1.1 makes of it.
        field = cls.model_fields.get(info.field_name or "")
        return value if field is None else as_declared(value, field.annotation)


class DistillConfig(StrictModel):
    """Knowledge distillation from the unpruned baseline (see :mod:`taylorprune.distill`): the
    loss is ``(1 − weight)·CE + weight·temperature²·KL(teacher ‖ student)`` at ``temperature``;
    ``while_pruning``: the iterative schedule's training windows distill too (else only
    fine-tuning does)."""

    weight: float = Field(ge=0, le=1)
    temperature: float = Field(gt=0, le=1000)
    while_pruning: bool = True


class TrainConfig(StrictModel):
    """One training phase: baseline training or fine-tuning after pruning.

    Epochs count passes over the training loader; ``max_iters`` caps the total number of
    minibatches (tiny runs). Warm-up, ``step_size`` and ``eval_every`` are in epochs.
    """

    epochs: int = Field(10, ge=0)
    max_iters: int | None = Field(None, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD momentum; beta1 for adamw
    nesterov: bool = False
    weight_decay: float = Field(5.0e-4, ge=0)
    schedule: Literal["cosine", "step", "onecycle", "constant"] = "cosine"
    warmup_epochs: float = Field(0, ge=0)
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.1, gt=0, le=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    amp: Literal["bf16", "fp16"] | None = None
    channels_last: bool = False
    grad_clip: float | None = Field(None, gt=0)
    eval_every: int = Field(1, ge=1)
    distill: DistillConfig | None = None  # learn from the unpruned baseline too (finetune only)

    @model_validator(mode="after")
    def _coherent(self) -> TrainConfig:
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov is true but momentum is 0 (nesterov needs momentum > 0)")
        if self.epochs > 0 and self.warmup_epochs > self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) is longer than training "
                f"({self.epochs} epochs)"
            )
        return self


#: Distillation while recovering, the quality study's choice (docs/benchmarks.md, "Protocol"): of
#: four settings, the one with the best validation top-1 after fine-tuning over both networks and
#: both selection seeds, ahead of plain fine-tuning (tools/results/quality; a test holds this to
#: that choice).
DEFAULT_DISTILL = {"weight": 0.5, "temperature": 4.0, "while_pruning": True}


class FinetuneConfig(TrainConfig):
    """Fine-tuning after pruning (the ``finetune`` section): a training phase that by default also
    learns from the unpruned baseline (:data:`DEFAULT_DISTILL`); ``distill: null`` fine-tunes on
    the labels alone."""

    distill: DistillConfig | None = Field(default_factory=lambda: DistillConfig(**DEFAULT_DISTILL))


class ModelConfig(StrictModel):
    """Which network to build and where its weights come from (see ``taylorprune.models``)."""

    source: Literal["builtin", "torchvision", "timm", "checkpoint"] = "builtin"
    name: str | None = "resnet20"
    num_classes: int | None = Field(None, ge=1, le=MAX_CLASSES)  # None: the dataset's
    in_chans: int | None = Field(None, ge=1, le=MAX_CHANNELS)  # None: the dataset's
    pretrained: bool = False
    weights: str | None = None  # torchvision weights enum name (e.g. IMAGENET1K_V2) or a local file
    checkpoint: str | None = None  # local file: a state_dict or a saved pruned model
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _coherent(self) -> ModelConfig:
        if self.source == "checkpoint" and not self.checkpoint:
            raise ValueError("source is checkpoint but checkpoint (a local file) is not set")
        if self.source != "checkpoint" and not self.name:
            raise ValueError(f"source is {self.source} but name is not set")
        return self


class DataConfig(StrictModel):
    """Which dataset and how it is loaded (see ``taylorprune.data``)."""

    name: str = "digits"
    root: str | None = None
    # per process; the size barely changes how well scores rank channels (docs/importance.md)
    batch_size: int = Field(32, ge=1, le=MAX_BATCH)
    eval_batch_size: int = Field(256, ge=1, le=MAX_BATCH)
    workers: int = Field(0, ge=0, le=MAX_WORKERS)
    # square side in pixels; None: the dataset's
    input_size: int | None = Field(None, ge=1, le=MAX_SIDE)
    train_subset: int | None = Field(None, ge=1)  # first N after a seeded shuffle
    val_subset: int | None = Field(None, ge=1)
    # validate on N training images (None: on the dataset's own split, which then is the test set)
    holdout: int | None = Field(None, ge=1)
    holdout_seed: int = Field(0, ge=0, le=MAX_SEED)  # which N: fixed, whatever the run's seed
    augment: bool = True
    download: bool = False
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _batches_fit(self) -> DataConfig:
        for key in ("batch_size", "eval_batch_size"):
            check_batch_pixels(key, getattr(self, key), "input_size", self.input_size)
        return self


def check_batch_pixels(batch_key: str, batch: int, size_key: str, size: int | None) -> None:
    """Refuse a batch whose input alone is implausibly large (the side is known only when set)."""
    if size is None or batch * size * size <= MAX_BATCH_PIXELS:
        return
    gib = batch * size * size * 3 * 4 / 2**30
    raise ValueError(
        f"{batch_key} {batch} at {size_key} {size} is {batch * size * size:.3g} pixels per batch "
        f"({gib:,.0f} GiB as 3-channel float32 before any activation); at most "
        f"{MAX_BATCH_PIXELS:.3g} pixels per batch"
    )


class BaselineConfig(StrictModel):
    """How the unpruned model is obtained when it is not pretrained."""

    train: TrainConfig | None = None  # None: use the model as built (pretrained or checkpoint)
    cache: bool = True  # reuse a trained baseline keyed by a hash of model + data + train + seed


class ImportanceConfig(StrictModel):
    """How channel importance is scored (see ``taylorprune.importance``)."""

    criterion: str = defaults.CRITERION
    train_mode: bool = defaults.TRAIN_MODE  # True: BN normalises with batch statistics
    ema: float | None = Field(defaults.EMA, ge=0, lt=1)  # across pruning steps; null: window mean
    # taylor_fo_bn scores with taylor_fo_bn_fg on a baseline this accurate (%) on training images;
    # null: never (taylorprune.importance.well_fit)
    well_fit_top1: float | None = Field(defaults.WELL_FIT_TOP1, gt=0, le=100)


def _target(value: Any) -> Target:
    # The schema's only target check: the grammar lives in Target.parse. Its TargetError is a
    # ValueError, so pydantic reports it under the field's key path (see ``loading._error_line``).
    return Target.parse(value, where="")


#: ``pruning.target`` in a recipe: any form of the target grammar (see
#: :mod:`taylorprune.pruning.targets`), held as a :class:`Target` and written back as
#: ``{macs: 0.5, params: null, channels: null}``.
TargetField = Annotated[
    Target, PlainValidator(_target), PlainSerializer(Target.to_mapping, return_type=dict)
]


class PruningConfig(StrictModel):
    """How channels are removed (see ``taylorprune.pruning``)."""

    target: TargetField = Target("macs", 0.5)
    schedule: Literal["iterative", "oneshot"] = "iterative"
    score_batches: int = Field(30, ge=1)
    # at most this many channels per step, or (exclusive) down to 1 - k·fraction_per_step at step k
    channels_per_step: int | None = Field(100, ge=1)
    fraction_per_step: float | None = Field(None, gt=0, lt=1)
    max_steps: int | None = Field(None, ge=1)
    round_to: int = Field(1, ge=1)
    min_channels: int = Field(1, ge=1)
    max_fraction: float = Field(0.9, gt=0, le=1)
    ignored_layers: list[str] = Field(default_factory=list)  # names or regexes
    include: list[str] | None = None  # regexes; None: every group
    normalize: Literal["l2", "mean", "max"] | None = defaults.NORMALIZE  # null: raw scores
    cost_aware: bool = defaults.COST_AWARE  # rank by score per MAC saved
    clear_momentum: bool = True
    # measure the pruned model and each step on a copy with BN statistics re-estimated (the
    # quality study's rule chose it: docs/benchmarks.md#protocol)
    bn_recalibration: bool = True
    bn_recalibration_batches: int = Field(10, ge=1)  # training minibatches re-estimated on

    @model_validator(mode="before")
    @classmethod
    def _one_pace(cls, data: Any) -> Any:
        # channels_per_step's default gives way to a fraction_per_step given without it.
        if isinstance(data, dict) and data.get("fraction_per_step") is not None:
            data = {"channels_per_step": None, **data}
        return data

    @model_validator(mode="after")
    def _paced(self) -> PruningConfig:
        if self.channels_per_step is not None and self.fraction_per_step is not None:
            raise ValueError(
                f"channels_per_step ({self.channels_per_step}) and fraction_per_step "
                f"({self.fraction_per_step}) exclude each other: set one to null"
            )
        if self.fraction_per_step is not None and self.target.kind == "latency":
            raise ValueError(LATENCY_FRACTION)
        paced = self.channels_per_step is not None or self.fraction_per_step is not None
        if self.schedule == "iterative" and not paced:
            raise ValueError("the iterative schedule needs channels_per_step or fraction_per_step")
        return self

    @field_validator("ignored_layers", "include")
    @classmethod
    def _regexes(cls, patterns: list[str] | None) -> list[str] | None:
        for i, pattern in enumerate(patterns or ()):
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"item {i} {pattern!r} is not a valid regex: {err}") from None
        return patterns


class MeasureConfig(StrictModel):
    """What is measured on the baseline and the pruned model (see ``taylorprune.measure``), and
    where a latency target is timed: ``latency_batch_size``, ``threads`` (None: the recipe's),
    ``channels_last``, ``dtype`` and ``device`` (None: the recipe's); ``latency_table``: a table
    file from ``taylorprune latency-table --output`` (None: measured at the start of the run,
    cached); ``latency_method``: the selection (docs/latency.md); ``test``: evaluate the baseline
    and the final model on the test split (there is one with ``data.holdout``)."""

    latency: bool = True
    latency_batch_size: int = Field(16, ge=1, le=MAX_BATCH)
    latency_runs: int = Field(20, ge=1)
    threads: int | None = Field(None, ge=1, le=MAX_THREADS)
    channels_last: bool = False
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str | None = None  # cpu | cuda | cuda:N; None: the recipe's device
    latency_table: str | None = None
    latency_method: Literal["knapsack", "greedy"] = "knapsack"
    test: bool = False  # evaluate baseline and result on the test split (with data.holdout)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str | None) -> str | None:
        if value is not None and not _MEASURE_DEVICE.match(value):
            raise ValueError(f"{value!r} is not cpu, cuda or cuda:N")
        return value


_MEASURE_DEVICE = re.compile(r"^(cpu|cuda|cuda:\d+)$")
