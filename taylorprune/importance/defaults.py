"""The default scoring and ranking, in one place: the recipe schema, :class:`Scoring`,
:func:`channel_scores`, :func:`prune` and :class:`StructuredPruner` all read these.

Provisional: the quality study's protocol (docs/benchmarks.md, "Protocol") chooses the default
variant on validation data, and these follow it once its runs are done. What each rests on today
is said beside it.
"""

from __future__ import annotations

#: The criterion (a ``CRITERIA`` name).
CRITERION = "taylor_fo_bn"
#: BatchNorm while scoring: True normalises with batch statistics, False with the running ones.
#: Train mode ranks what a removal costs once BatchNorm's statistics follow it (as after
#: fine-tuning), eval mode what it costs the network as it is; on a well-fit network the two
#: disagree (docs/importance.md, "Well-fit networks"). Eval mode costs about 1.9x a training step
#: under the iterative schedule (a scoring pass of its own per minibatch).
TRAIN_MODE = True
#: Per-group normalisation of the scores before the global ranking ("mean", "l2", "max", None):
#: none. Taylor scores estimate loss changes, which differ across groups by orders of magnitude;
#: dividing each group by its mean destroys that order (docs/importance.md).
NORMALIZE: str | None = None
#: Rank by score per MAC that removing the channel saves: raw scores alone take whole cheap
#: late-stage layers, per MAC the budget goes where it buys the most (one removal step of 30% of
#: the MACs: 92.7 ± 0.4% top-1 against 84.4 ± 5.6% raw, docs/importance.md).
COST_AWARE = True
#: Momentum of the average of the scores across the iterative schedule's removals: each window's
#: mean is folded into ``E <- 0.5 E + 0.5 M``, which halves the minibatch noise of a short window
#: without delaying the removals (what it is worth after fine-tuning is not established).
#: One-shot pruning scores one window, which the average leaves as it is.
EMA: float | None = 0.5
