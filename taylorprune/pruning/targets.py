"""Pruning targets: what fraction of the baseline MACs, parameters, channels or latency to keep.

:meth:`Target.parse` is the one grammar for targets, used by the recipe schema, ``prune()`` and
the tools alike. A value is the fraction KEPT, written as

- a number: ``0.6``;
- a percentage kept: ``"60%"``;
- a percentage removed: ``"-40%"``;
- a reduction factor: ``"2x"`` (or ``"2×"``): 2× fewer, i.e. keep 1/2;
- a one-key mapping naming the kind: ``{macs: 0.6}``, ``{params: "50%"}``, ``{channels: "2x"}``,
  ``{latency: 0.6}``, or the amount removed: ``{remove_macs: 0.3}``, ``{remove_params: "30%"}``.

Bare values are of the kind given to :meth:`Target.parse` (MACs by default): ``"2x"`` alone is
2× fewer MACs. A latency target names its kind, and its factor is a speed-up: ``{latency: "1.6x"}``
is 1.6× faster, i.e. keep 1/1.6 = 0.625 of the baseline's measured latency (the same arithmetic as
every other factor: the quantity divided by 1.6).

Kinds are the rows of :data:`KINDS`; adding one is one row there plus a way for the pruner to
measure it. Counted kinds are met within :data:`TOLERANCE` of the baseline; a measured kind
(latency) within a fraction of the target itself (``TargetKind.relative_tolerance``): timings are
noisy, and 5% of the target is what a user can tell apart.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from taylorprune._registry import did_you_mean
from taylorprune.errors import UserError

#: Why ``fraction_per_step`` is refused with a latency target (recipe schema and the loop alike).
LATENCY_FRACTION = (
    "fraction_per_step is not for a latency target (each step would time candidate models "
    "against a moving budget): use channels_per_step"
)


@dataclass(frozen=True)
class TargetKind:
    """One quantity a target can bound; ``noun`` names it in messages ("0.6 of the MACs").

    ``relative_tolerance``: None for a counted quantity (met within :data:`TOLERANCE` of the
    baseline); for a measured one, how far above the target (as a fraction of the target) still
    meets it."""

    name: str
    noun: str
    relative_tolerance: float | None = None


#: The kinds of target, by name.
KINDS: dict[str, TargetKind] = {
    k.name: k
    for k in (
        TargetKind("macs", "MACs"),
        TargetKind("params", "parameters"),
        # The output channels of every prunable group, coupled channels counted once.
        TargetKind("channels", "channels"),
        # The measured latency on the recipe's ``measure`` settings (taylorprune.latency).
        TargetKind("latency", "latency", relative_tolerance=0.05),
    )
}

#: A mapping key ``remove_<kind>`` gives the fraction removed instead of the fraction kept.
REMOVE_PREFIX = "remove_"

#: Tolerance on the achieved fraction of the baseline (absolute): 0.6 is met by 0.59..0.61.
TOLERANCE = 0.01

# Percentages and removals are rounded so that "-45%" is stored as 0.55, not 0.55000000000000004.
_DIGITS = 12
_NUM = r"(\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_KEPT_PERCENT = re.compile(rf"^({_NUM})\s*%$")
_REMOVED_PERCENT = re.compile(rf"^-\s*({_NUM})\s*%$")
_FACTOR = re.compile(rf"^({_NUM})\s*[x×]$")
_FORMS = "0.6, '60%' (kept), '-40%' (removed) or '2x' (2x fewer)"


class TargetError(UserError, ValueError):
    """A target that does not parse. ``keys`` is the path inside the target value (``("macs",)``)
    and ``problem`` the message without the path, so that a schema can prefix its own key path.

    A ``ValueError`` too, so that pydantic reports it as a validation error of the field.
    """

    def __init__(self, where: str, keys: tuple[str, ...], problem: str) -> None:
        self.keys = keys
        self.problem = problem
        path = ".".join(p for p in (where, *keys) if p)
        super().__init__(f"{path}: {problem}" if path else problem)


@dataclass(frozen=True)
class Target:
    """Keep ``keep`` (a fraction in (0, 1)) of the baseline ``kind`` (a name in :data:`KINDS`).

    ``Target("macs", 0.6)`` means "prune until the model has 60% of its baseline MACs" (-40%).
    Build one from user input with :meth:`parse`.
    """

    kind: str = "macs"
    keep: float = 0.6

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise TargetError("target", (), _unknown_kind(self.kind))
        _check_keep(self.kind, self.keep, "target", ())

    def met_by(self, fraction: float, tolerance: float | None = None) -> bool:
        """True when ``fraction`` (achieved / baseline) is at or below the target plus tolerance
        (default: :attr:`tolerance`)."""
        return fraction <= self.keep + (self.tolerance if tolerance is None else tolerance)

    @property
    def tolerance(self) -> float:
        """How far above ``keep`` (as a fraction of the baseline) still meets the target."""
        relative = KINDS[self.kind].relative_tolerance
        return TOLERANCE if relative is None else relative * self.keep

    def within(self, fraction: float) -> bool:
        """True when ``fraction`` is within the tolerance of the target on either side."""
        return abs(fraction - self.keep) <= self.tolerance

    def to_mapping(self) -> dict[str, float | None]:
        """``{kind: keep}`` with every other kind ``None``: how a resolved recipe writes it."""
        return {name: (self.keep if name == self.kind else None) for name in KINDS}

    @classmethod
    def parse(cls, value: Any, kind: str = "macs", where: str = "target") -> Target:
        """A target from user input in any form of the grammar (see the module docstring).

        A mapping may hold ``None`` for the kinds it does not use (a resolved recipe's form).
        ``kind`` applies to bare values; ``where`` names the key path in error messages.

        Raises:
            TargetError: a :class:`~taylorprune.errors.UserError` naming ``where``, the key inside
                the value if any, and the problem.
        """
        if isinstance(value, Target):
            return value
        if isinstance(value, dict):
            return cls._parse_mapping(value, where)
        if kind not in KINDS:
            raise TargetError(where, (), _unknown_kind(kind))
        return cls(kind, _keep(value, kind, where, ()))

    @classmethod
    def _parse_mapping(cls, value: dict, where: str) -> Target:
        given = {k: v for k, v in value.items() if v is not None}
        if len(given) != 1:
            got = f" (got {', '.join(map(repr, given))})" if given else ""
            raise TargetError(where, (), f"give exactly one of {', '.join(target_keys())}{got}")
        ((key, inner),) = given.items()
        key = str(key)
        name = key.removeprefix(REMOVE_PREFIX)
        if name not in KINDS:
            raise TargetError(where, (), _unknown_kind(key, target_keys()))
        if key.startswith(REMOVE_PREFIX):
            removed = _fraction_removed(inner, name, where, (key,))
            return cls(name, _check_keep(name, round(1.0 - removed, _DIGITS), where, (key,)))
        return cls(name, _keep(inner, name, where, (key,)))


def target_keys() -> list[str]:
    """Every key a target mapping may hold: each kind and its ``remove_`` form."""
    return [*KINDS, *(REMOVE_PREFIX + k for k in KINDS)]


def _unknown_kind(key: object, choices: list[str] | None = None) -> str:
    names = choices or list(KINDS)
    return f"unknown target kind {key!r}{did_you_mean(key, names)}; choices: {', '.join(names)}"


def _keep(value: Any, kind: str, where: str, keys: tuple[str, ...]) -> float:
    """The fraction kept from a number or one of the string forms."""
    if isinstance(value, str):
        text = value.strip()
        for pattern, to_keep in (
            (_KEPT_PERCENT, lambda x: round(x / 100.0, _DIGITS)),
            (_REMOVED_PERCENT, lambda x: round(1.0 - x / 100.0, _DIGITS)),
            (_FACTOR, lambda x: _factor(x, value, where, keys)),
        ):
            m = pattern.match(text)
            if m:
                return _check_keep(kind, to_keep(float(m.group(1))), where, keys)
    return _check_keep(kind, _number(value, where, keys, f"expected {_FORMS}"), where, keys)


def _factor(x: float, text: str, where: str, keys: tuple[str, ...]) -> float:
    if x <= 1.0:
        raise TargetError(where, keys, f"{text!r} is not a reduction: the factor must be > 1")
    return 1.0 / x


def _fraction_removed(value: Any, kind: str, where: str, keys: tuple[str, ...]) -> float:
    """The fraction removed under ``remove_<kind>``: a number or a percentage."""
    expected = "expected the fraction removed, such as 0.4 or '40%'"
    m = _KEPT_PERCENT.match(value.strip()) if isinstance(value, str) else None
    removed = float(m.group(1)) / 100.0 if m else _number(value, where, keys, expected)
    if not 0.0 < removed < 1.0:
        raise TargetError(
            where,
            keys,
            f"fraction of the {KINDS[kind].noun} removed must be in (0, 1), got {removed:g}",
        )
    return removed


def _number(value: Any, where: str, keys: tuple[str, ...], expected: str) -> float:
    """A plain number; a numeric string (YAML 1.1 reads ``1e-1`` as one) counts as a number."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TargetError(where, keys, f"{expected}, got {_shown(value)}")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise TargetError(where, keys, f"{expected}, got {_shown(value)}") from None
    if not math.isfinite(number):
        raise TargetError(where, keys, f"{expected}, got {_shown(value)}")
    return number


def _check_keep(kind: str, keep: float, where: str, keys: tuple[str, ...]) -> float:
    if isinstance(keep, bool) or not isinstance(keep, int | float) or not 0.0 < keep < 1.0:
        hint = " (write a removal as '-40%')" if isinstance(keep, int | float) and keep < 0 else ""
        raise TargetError(
            where,
            keys,
            f"fraction of the {KINDS[kind].noun} kept must be in (0, 1), got {_shown(keep)}"
            f"{hint}; 0 would delete the model, 1 prunes nothing",
        )
    return float(keep)


def _shown(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
