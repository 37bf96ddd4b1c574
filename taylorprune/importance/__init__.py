"""Channel importance: Taylor criteria and baselines, accumulated over minibatches.

See ``docs/importance.md`` for the formulas, the choices made for coupled channels and the oracle
study.
"""

from taylorprune.importance import tp_criteria  # noqa: F401  (registers the tp_* criteria)
from taylorprune.importance.accumulator import ImportanceAccumulator
from taylorprune.importance.api import channel_scores
from taylorprune.importance.criteria import (
    CRITERIA,
    DEFAULT_CRITERION,
    Criterion,
    GroupBatch,
    TaylorSO,
)

__all__ = [
    "CRITERIA",
    "DEFAULT_CRITERION",
    "Criterion",
    "GroupBatch",
    "ImportanceAccumulator",
    "TaylorSO",
    "channel_scores",
]
