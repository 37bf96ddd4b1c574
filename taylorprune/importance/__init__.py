"""Channel importance: Taylor criteria and baselines, accumulated over minibatches.

See ``docs/importance.md`` for the formulas, the choices made for coupled channels and the oracle
study. The names below load their module on first use (``defaults``, read by the recipe schema,
needs neither torch-pruning nor the scoring code); ``CRITERIA`` comes with the ``tp_*`` criteria
registered.
"""

import importlib
from typing import Any

_LAZY = {
    "CRITERIA": "taylorprune.importance.criteria",
    "DEFAULT_CRITERION": "taylorprune.importance.criteria",
    "Criterion": "taylorprune.importance.criteria",
    "GroupBatch": "taylorprune.importance.criteria",
    "ImportanceAccumulator": "taylorprune.importance.accumulator",
    "TaylorSO": "taylorprune.importance.criteria",
    "channel_scores": "taylorprune.importance.api",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        importlib.import_module("taylorprune.importance.tp_criteria")  # registers the tp_* criteria
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'taylorprune.importance' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
