"""Pruning targets: what fraction of the baseline MACs, parameters or channels to keep."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from taylorprune.errors import UserError

TargetKind = Literal["macs", "params", "channels"]
KINDS: tuple[str, ...] = ("macs", "params", "channels")

#: Tolerance on the achieved fraction of the baseline (absolute): 0.6 is met by 0.59..0.61.
TOLERANCE = 0.01


@dataclass(frozen=True)
class Target:
    """Keep ``keep`` (a fraction in (0, 1)) of the baseline ``kind``: MACs, params or channels.

    ``Target("macs", 0.6)`` means "prune until the model has 60% of its baseline MACs" (-40%).
    Channels count the output channels of every prunable group (coupled channels once).
    """

    kind: TargetKind = "macs"
    keep: float = 0.6

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"target: unknown kind {self.kind!r}; choices: {', '.join(KINDS)}")
        if not 0.0 < float(self.keep) < 1.0:
            raise UserError(
                f"target: {self.kind} fraction kept must be in (0, 1), got {self.keep!r} "
                "(0 would delete the model, 1 prunes nothing)"
            )

    def met_by(self, fraction: float, tolerance: float = TOLERANCE) -> bool:
        """True when ``fraction`` (achieved / baseline) is at or below the target plus tolerance."""
        return fraction <= self.keep + tolerance

    @classmethod
    def parse(cls, value: object, kind: str = "macs", where: str = "target") -> Target:
        """A target from a recipe value.

        Accepted: a fraction kept (``0.6``), a percentage string kept (``"60%"``) or removed
        (``"-40%"``), or a one-key mapping ``{"macs": 0.6}`` / ``{"remove_params": 0.3}``. ``kind``
        applies to bare values; ``where`` names the key path in error messages.
        """
        if isinstance(value, Target):
            return value
        if hasattr(value, "kind") and hasattr(value, "keep"):  # a validated recipe section
            return cls._make(str(value.kind), float(value.keep), where)
        if isinstance(value, dict):
            if len(value) != 1:
                raise UserError(
                    f"{where}: expected one key among {_key_choices()}, got {sorted(value)}"
                )
            ((key, inner),) = value.items()
            removed = str(key).startswith("remove_")
            name = str(key)[len("remove_") :] if removed else str(key)
            if name not in KINDS:
                raise UserError(f"{where}: unknown key {key!r}; choices: {_key_choices()}")
            frac = _fraction(inner, f"{where}.{key}")
            return cls._make(name, 1.0 - frac if removed else frac, f"{where}.{key}")
        if isinstance(value, str) and value.strip().startswith("-"):
            return cls._make(kind, 1.0 - _fraction(value.strip()[1:], where), where)
        return cls._make(kind, _fraction(value, where), where)

    @classmethod
    def _make(cls, kind: str, keep: float, where: str) -> Target:
        if not 0.0 < keep < 1.0:
            raise UserError(
                f"{where}: {kind} fraction kept must be in (0, 1), got {keep:.4g} "
                "(0 would delete the model, 1 prunes nothing)"
            )
        return cls(kind, keep)  # type: ignore[arg-type]


def _key_choices() -> str:
    return ", ".join([*KINDS, *(f"remove_{k}" for k in KINDS)])


def _fraction(value: object, where: str) -> float:
    """A fraction from ``0.4`` or ``"40%"``; bools and non-numbers are user errors."""
    if isinstance(value, bool):
        raise UserError(f"{where}: expected a fraction such as 0.6 or '60%', got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
        except ValueError:
            raise UserError(
                f"{where}: expected a fraction such as 0.6 or '60%', got {value!r}"
            ) from None
    if isinstance(value, int | float):
        return float(value)
    raise UserError(f"{where}: expected a fraction such as 0.6 or '60%', got {value!r}")
