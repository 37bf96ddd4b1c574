"""A small strict registry: names map to objects, duplicates and unknown names are errors.

Also home of the one "did you mean" helper: every message about an unknown name (registry entry,
recipe key, dataset option, model name) suggests the nearest choice the same way.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from taylorprune.errors import UserError

T = TypeVar("T")

#: Longer choice lists are summarised by their count in error messages (timm has over 1,000 models).
MAX_LISTED_CHOICES = 40


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


def did_you_mean(name: object, choices: Iterable[str], n: int = 1) -> str:
    """``" (did you mean 'x'?)"`` naming the ``n`` choices closest to ``name``, or ``""``.

    Closeness is difflib's similarity ratio, at least 0.5: one or two typed letters wrong, missing
    or swapped in a word of five or more.
    """
    close = difflib.get_close_matches(str(name), list(choices), n=n, cutoff=0.5)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def unknown_name_message(kind: str, name: object, choices: Iterable[str], n: int = 1) -> str:
    """``unknown <kind> 'x' (did you mean 'y'?); choices: a, b, c``.

    More than :data:`MAX_LISTED_CHOICES` choices are given as a count (``; 1204 available``);
    ``n`` is how many nearest choices are suggested.
    """
    names = sorted(choices)
    listed = (
        f"choices: {', '.join(names)}"
        if len(names) <= MAX_LISTED_CHOICES
        else f"{len(names)} available"
    )
    return f"unknown {kind} {name!r}{did_you_mean(name, names, n)}; {listed}"
