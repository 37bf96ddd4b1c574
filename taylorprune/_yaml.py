"""YAML as recipes read it: ``yaml.safe_load`` without its two traps for configuration files.

- A key given twice in one mapping is an error. Plain YAML keeps the later value silently, so
  ``seed: 0`` followed further down by ``seed: 7`` would run with 7.
- Aliases (``*name``) may not expand the document by more than :data:`MAX_ALIAS_EXPANSION` values
  beyond those written in it, and may not refer to a node that contains them. A few aliases are
  harmless, but nine nested lists of nine aliases (the "billion laughs") build a value that prints
  as 9^9 strings: checking, printing or hashing it would run until killed.

Everything else is ``yaml.safe_load``: the same types, tags and merge keys (``<<: *base``).
:func:`as_declared` smooths two YAML gaps where a typed schema reads the data.
"""

from __future__ import annotations

import re
import typing
from typing import Any

import yaml

#: Values that aliases may add to a document beyond those written in it.
MAX_ALIAS_EXPANSION = 10_000

_MERGE_TAG = "tag:yaml.org,2002:merge"
_NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")


class YAMLProblem(yaml.YAMLError):
    """A document that parses but is refused; ``line`` and ``column`` count from 1."""

    def __init__(self, problem: str, mark: yaml.Mark | None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.line = mark.line + 1 if mark is not None else None
        self.column = mark.column + 1 if mark is not None else None


class _Loader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        # Checked on the keys as written, before merge keys add the merged mapping's keys (which
        # the mapping's own keys may override: that is what merging is for).
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if first is not key_node:
                raise YAMLProblem(
                    f"duplicate key {key!r} (first on line {first.start_mark.line + 1}); a key "
                    "may appear once per mapping",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """The data of one YAML document, as ``yaml.safe_load`` returns it.

    Raises:
        yaml.YAMLError: malformed YAML (with its marks), or a :class:`YAMLProblem`: a duplicate key,
            an alias that expands too far or refers to its own container, nesting too deep.
    """
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise YAMLProblem("nested too deeply", None) from None
        if node is None:
            return None
        _check_aliases(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_aliases(root: yaml.Node) -> None:
    """Refuse a node graph whose expansion (aliases copied out) exceeds the written nodes by more
    than :data:`MAX_ALIAS_EXPANSION`, or that has a cycle. Linear in the nodes written."""
    sizes: dict[int, int] = {}  # id(node) -> values in its expansion, itself included
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise YAMLProblem("an alias refers to a node that contains it", node.start_mark)
        open_nodes.add(key)
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        sizes[key] = 1 + sum(size(child) for child in children)
        open_nodes.discard(key)
        return sizes[key]

    expanded = size(root)
    if expanded - len(sizes) > MAX_ALIAS_EXPANSION:
        raise YAMLProblem(
            f"aliases expand this document to {expanded:,} values, {expanded - len(sizes):,} more "
            f"than it holds (at most {MAX_ALIAS_EXPANSION:,} more are allowed)",
            None,
        )


def as_declared(value: Any, annotation: Any) -> Any:
    """``value`` as a field declared ``annotation`` should receive it from YAML.

    YAML 1.1 reads ``1e-3`` (no dot) as a string: a numeric string becomes a float where a float is
    declared. YAML has no tuples: a list becomes a tuple where a tuple is declared. Anything else is
    returned unchanged, for the schema to check strictly.
    """
    options = (annotation, *typing.get_args(annotation))  # ``X | None`` declares X
    if isinstance(value, str) and float in options and _NUMBER.match(value):
        return float(value)
    if isinstance(value, list) and any(typing.get_origin(a) is tuple for a in options):
        return tuple(value)
    return value
