"""Loading a recipe: YAML files, ``base:`` chains, ``--set`` overrides, one-line errors.

:func:`load_recipe` reads a file, loads the ``base:`` it names first (relative to the file that
names it) and merges the file deeply over it (mappings merge key by key, anything else is
replaced); bases may chain. ``--set a.b=value`` overrides come last, each value parsed as a YAML
scalar or flow collection. Then :class:`~taylorprune.recipe.schema.Recipe` validates the result.

Every problem is a :class:`~taylorprune.errors.UserError` of one line. The loader records which
file (or ``--set``) each key path came from, so that the line names where the refused value was
written, its key path and the problem, and for an unknown key the nearest valid one.
"""

from __future__ import annotations

import copy
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from taylorprune._registry import did_you_mean
from taylorprune._yaml import YAMLProblem, load_yaml
from taylorprune.errors import UserError
from taylorprune.pruning.targets import Target, TargetError, target_keys
from taylorprune.recipe.schema import Recipe, short_repr

SET_SOURCE = "--set"


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
    shown = "" if kind.startswith("value_error") else f", got {short_repr(err.get('input'))}"
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
