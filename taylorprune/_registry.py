"""A small strict registry: names map to objects, duplicates and unknown names are errors."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from taylorprune.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (classes or functions) registered with a decorator.

    A duplicate name raises ``ValueError`` (a programming error); an unknown name raises
    :class:`~taylorprune.errors.UserError` that names the registry, suggests the nearest name and
    lists the choices (a user error: it usually comes from a recipe or the command line).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.name} registry already has an entry named {name!r}")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UserError(unknown_name_message(self.name, name, self.names())) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


def unknown_name_message(kind: str, name: str, choices: list[str]) -> str:
    """``unknown <kind> 'x' (did you mean 'y'?); choices: a, b, c``."""
    close = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {kind} {name!r}{hint}; choices: {', '.join(choices)}"
