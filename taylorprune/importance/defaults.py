"""The default scoring and ranking, in one place: the recipe schema, :class:`Scoring`,
:func:`channel_scores`, :func:`prune` and :class:`StructuredPruner` all read these.

Chosen from the oracle study (docs/importance.md) and the quality study under the iterative
schedule (docs/benchmarks.md).
"""

from __future__ import annotations

#: The criterion (a ``CRITERIA`` name).
CRITERION = "taylor_fo_bn"
#: BatchNorm while scoring: True normalises with batch statistics, False with the running ones.
TRAIN_MODE = True
#: Per-group normalisation of the scores before the global ranking ("mean", "l2", "max", None):
#: none. Taylor scores estimate loss changes, which differ across groups by orders of magnitude;
#: dividing each group by its mean destroys that order (docs/importance.md).
NORMALIZE: str | None = None
#: Rank by score per MAC that removing the channel saves: raw scores alone take whole cheap
#: late-stage layers, per MAC the budget goes where it buys the most (docs/benchmarks.md).
COST_AWARE = True
#: Momentum of the average of the scores across the iterative schedule's removals: each window's
#: mean is folded into ``E <- 0.5 E + 0.5 M``, which halves the minibatch noise of a short window
#: without delaying the removals; the quality study's best measured setting (docs/benchmarks.md).
#: One-shot pruning scores one window, which the average leaves as it is.
EMA: float | None = 0.5
