"""Recipes: the typed schema of a run, ``base:`` chains, ``--set`` overrides, validation.

A recipe is a YAML file parsed once with :func:`load_recipe` into a :class:`Recipe` (pydantic,
strict about unknown keys). Every problem a user can make in a recipe raises
:class:`~taylorprune.errors.UserError` with one line naming the file, the key path and what is
wrong.

Layering: ``base: other.yaml`` (relative to the file that names it) is loaded first and merged
deeply under this file (mappings merge key by key, anything else is replaced), bases may chain,
and ``--set a.b=value`` overrides are applied last, each value parsed as a YAML scalar or flow
collection.

Schema and loading share the module (over 400 lines) because the one-line errors need both: a
message names the file a value came from (loading) and the key path the schema refused.
"""

from __future__ import annotations

import copy
import re
import reprlib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from taylorprune._registry import did_you_mean
from taylorprune._yaml import YAMLProblem, as_declared, load_yaml
from taylorprune.data import MAX_SIDE
from taylorprune.errors import UserError
from taylorprune.importance import defaults
from taylorprune.pruning.schedule import LATENCY_FRACTION
from taylorprune.pruning.targets import Target, TargetError, target_keys

__all__ = [
    "BaselineConfig",
    "DataConfig",
    "DistillConfig",
    "ImportanceConfig",
    "MeasureConfig",
    "ModelConfig",
    "PruningConfig",
    "Recipe",
    "TrainConfig",
    "load_recipe",
]

SET_SOURCE = "--set"

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


class _Strict(BaseModel):
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


class DistillConfig(_Strict):
    """Knowledge distillation from the unpruned baseline (see :mod:`taylorprune.distill`): the
    loss is ``(1 − weight)·CE + weight·temperature²·KL(teacher ‖ student)`` at ``temperature``;
    ``while_pruning``: the iterative schedule's training windows distill too (else only
    fine-tuning does)."""

    weight: float = Field(ge=0, le=1)
    temperature: float = Field(gt=0, le=1000)
    while_pruning: bool = True


class TrainConfig(_Strict):
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


class ModelConfig(_Strict):
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


class DataConfig(_Strict):
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
            _check_batch_pixels(key, getattr(self, key), "input_size", self.input_size)
        return self


def _check_batch_pixels(batch_key: str, batch: int, size_key: str, size: int | None) -> None:
    """Refuse a batch whose input alone is implausibly large (the side is known only when set)."""
    if size is None or batch * size * size <= MAX_BATCH_PIXELS:
        return
    gib = batch * size * size * 3 * 4 / 2**30
    raise ValueError(
        f"{batch_key} {batch} at {size_key} {size} is {batch * size * size:.3g} pixels per batch "
        f"({gib:,.0f} GiB as 3-channel float32 before any activation); at most "
        f"{MAX_BATCH_PIXELS:.3g} pixels per batch"
    )


class BaselineConfig(_Strict):
    """How the unpruned model is obtained when it is not pretrained."""

    train: TrainConfig | None = None  # None: use the model as built (pretrained or checkpoint)
    cache: bool = True  # reuse a trained baseline keyed by a hash of model + data + train + seed


class ImportanceConfig(_Strict):
    """How channel importance is scored (see ``taylorprune.importance``)."""

    criterion: str = defaults.CRITERION
    train_mode: bool = defaults.TRAIN_MODE  # True: BN normalises with batch statistics
    ema: float | None = Field(defaults.EMA, ge=0, lt=1)  # across pruning steps; null: window mean


def _target(value: Any) -> Target:
    # The schema's only target check: the grammar lives in Target.parse. Its TargetError is a
    # ValueError, so pydantic reports it under the field's key path (see _error_line).
    return Target.parse(value, where="")


#: ``pruning.target`` in a recipe: any form of the target grammar (see
#: :mod:`taylorprune.pruning.targets`), held as a :class:`Target` and written back as
#: ``{macs: 0.5, params: null, channels: null}``.
TargetField = Annotated[
    Target, PlainValidator(_target), PlainSerializer(Target.to_mapping, return_type=dict)
]


class PruningConfig(_Strict):
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
    # measure the pruned model and each step on a copy with BN statistics re-estimated
    bn_recalibration: bool = False
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


class MeasureConfig(_Strict):
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


_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
# The name becomes a folder (runs/<name>/...): no separators, no leading dot or dash, no controls.
_NAME = re.compile(rf"^[A-Za-z0-9_][A-Za-z0-9._-]{{0,{MAX_NAME - 1}}}$")


class Recipe(_Strict):
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
    finetune: TrainConfig = Field(default_factory=TrainConfig)
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
    retrain: Literal["finetune", "rewind", "scratch"] = "finetune"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"{_short(value)} cannot name a run folder: use 1 to {MAX_NAME} letters, digits, "
                "'.', '_' or '-', not starting with '.' or '-'"
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
            _check_batch_pixels(
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


# ----------------------------------------------------------------------------------------------
# Loading: YAML, bases, overrides, and one-line errors


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: recipe file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read recipe: {err}") from None
    try:
        data = load_yaml(text)
    except YAMLProblem as err:
        where = f":{err.line}:{err.column}" if err.line is not None else ""
        raise UserError(f"{path}{where}: {err.problem}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{path}{where}: malformed YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe must be a mapping of keys, got {type(data).__name__}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise UserError(f"{path}: keys must be strings, got {bad[0]!r}")
    return data


def _merge(
    base: dict[str, Any],
    top: Mapping[str, Any],
    source: str,
    provenance: dict[tuple[str, ...], str],
    prefix: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Deep-merge ``top`` over ``base`` (mappings key by key, anything else replaced)."""
    out = dict(base)
    for key, value in top.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value, source, provenance, path)
        else:
            out[key] = copy.deepcopy(value)
            for p in [p for p in provenance if p[: len(path)] == path]:
                del provenance[p]
        provenance[path] = source
    return out


def _load_chain(
    path: Path, provenance: dict[tuple[str, ...], str], seen: tuple[Path, ...] = ()
) -> dict[str, Any]:
    resolved = path.resolve()
    if resolved in seen:
        chain = " -> ".join(str(p) for p in (*seen, resolved))
        raise UserError(f"{path}: base recipes form a cycle: {chain}")
    data = _read_yaml(path)
    base = data.pop("base", None)
    merged: dict[str, Any] = {}
    if base is not None:
        if not isinstance(base, str) or not base:
            raise UserError(f"{path}: base: must be a path to a recipe file, got {base!r}")
        base_path = Path(base).expanduser()
        if not base_path.is_absolute():
            base_path = path.parent / base_path
        if not base_path.is_file():
            raise UserError(f"{path}: base: file not found: {base_path}")
        merged = _load_chain(base_path, provenance, (*seen, resolved))
    return _merge(merged, data, str(path), provenance)


def _model_class(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``annotation`` (``X``, ``X | None``), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_class(arg)
            if found is not None:
                return found
    return None


def _field_class(cls: type[BaseModel], key: str) -> type[BaseModel] | None:
    return _model_class(cls.model_fields[key].annotation)


def _is_free_dict(cls: type[BaseModel], key: str) -> bool:
    return typing.get_origin(cls.model_fields[key].annotation) is dict


def _printable(text: str) -> str:
    return text if text.isprintable() else repr(text)


def _check_override_path(path: tuple[str, ...], override: str) -> None:
    """Unknown key paths in ``--set`` are errors, with the nearest valid key."""
    cls: type[BaseModel] | None = Recipe
    choices: list[str] = list(Recipe.model_fields)
    for depth, key in enumerate(path):
        if not choices:
            where = ".".join(path[:depth])
            raise UserError(f"{SET_SOURCE} {override}: {where} has no sub-keys")
        if key not in choices:
            where = _printable(".".join(path[: depth + 1]))
            raise UserError(
                f"{SET_SOURCE} {override}: unknown key {where}{did_you_mean(key, choices)}"
            )
        if cls is None:  # a key of the target grammar: a leaf
            choices = []
            continue
        if _is_free_dict(cls, key):
            return  # free-form kwargs: any sub-key is allowed
        if cls.model_fields[key].annotation is Target:
            cls, choices = None, target_keys()
            continue
        cls = _field_class(cls, key)
        choices = list(cls.model_fields) if cls is not None else []


def _apply_override(
    data: dict[str, Any], override: str, provenance: dict[tuple[str, ...], str]
) -> dict[str, Any]:
    shown = _printable(override)  # errors stay on one line
    key_path, sep, raw = override.partition("=")
    key_path = key_path.strip()
    if not sep or not key_path:
        raise UserError(f"{SET_SOURCE} {shown!r}: expected KEY.PATH=VALUE")
    path = tuple(key_path.split("."))
    if any(not part for part in path):
        raise UserError(f"{SET_SOURCE} {shown!r}: empty key in {key_path!r}")
    _check_override_path(path, shown)
    try:
        value = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or "malformed value"
        raise UserError(f"{SET_SOURCE} {shown}: cannot parse the value: {problem}") from None
    # The value replaces whatever was at the path, mappings included: ``--set
    # pruning.target={params: 0.5}`` switches the kind of target rather than adding a second one.
    out = copy.deepcopy(data)
    node = out
    for depth, key in enumerate(path[:-1]):
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
        provenance[path[: depth + 1]] = SET_SOURCE
    node[path[-1]] = value
    for p in [p for p in provenance if p[: len(path)] == path]:
        del provenance[p]
    provenance[path] = SET_SOURCE
    return out


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 2, 4, 4
_REPR.maxstring = _REPR.maxother = 60


def _short(value: Any, limit: int = 60) -> str:
    # reprlib: a value that is huge or deeply nested is never rendered whole.
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error_line(
    err: dict[str, Any], provenance: dict[tuple[str, ...], str], default_source: str
) -> str:
    loc = tuple(str(p) for p in err["loc"])
    message = err["msg"]
    # pydantic prefixes messages raised in validators with "Value error, ".
    message = message.removeprefix("Value error, ")
    cause = err.get("ctx", {}).get("error")
    if isinstance(cause, TargetError):  # the key inside the target value, if any, joins the path
        loc, message = (*loc, *cause.keys), cause.problem
    source = default_source
    for i in range(len(loc), 0, -1):
        if loc[:i] in provenance:
            source = provenance[loc[:i]]
            break
    key_path = ".".join(loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        cls: type[BaseModel] | None = Recipe
        for key in loc[:-1]:
            cls = _field_class(cls, key) if cls is not None and key in cls.model_fields else None
        hint = did_you_mean(loc[-1], list(cls.model_fields)) if cls is not None else ""
        return f"{source}: {key_path}: unknown key{hint}"
    if kind == "missing":
        return f"{source}: {key_path}: required key is missing"
    shown = "" if kind.startswith("value_error") else f", got {_short(err.get('input'))}"
    if not key_path:
        return f"{source}: {message}"
    return f"{source}: {key_path}: {message}{shown}"


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read, merge (``base:`` chain), override (``KEY.PATH=VALUE``) and validate a recipe.

    Relative ``base:`` paths are relative to the file that names them; other paths in the recipe
    (``data.root``, ``model.checkpoint``) are kept as written (relative to the working directory).

    Raises:
        UserError: one line naming the file (or ``--set``), the key path and the problem: a missing
            or unreadable file, malformed YAML (with line and column), a cycle of bases, an unknown
            key (with the nearest valid key), a wrong type, a value out of range, an incoherent
            combination.
    """
    path = Path(path)
    provenance: dict[tuple[str, ...], str] = {}
    data = _load_chain(path, provenance)
    for override in overrides:
        data = _apply_override(data, override, provenance)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        line = _error_line(errors[0], provenance, str(path))
        if len(errors) > 1:
            line += f" (and {len(errors) - 1} more)"
        raise UserError(line) from None
