"""Channel importance: Taylor criteria and baselines, accumulated over minibatches.

See ``docs/importance.md`` for the formulas, the choices made for coupled channels and the oracle
study. The names below load their module on first use (``defaults``, read by the recipe schema,
needs neither torch-pruning nor the scoring code); ``CRITERIA`` comes with the ``tp_*`` criteria
registered.
"""

from taylorprune._lazy import lazy_names

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
# the tp_* criteria registered before any name is handed out
__getattr__, __dir__ = lazy_names(
    __name__, _LAZY, globals(), first="taylorprune.importance.tp_criteria"
)
