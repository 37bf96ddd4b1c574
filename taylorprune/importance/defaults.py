"""The default scoring and ranking, in one place: the recipe schema, :class:`Scoring`,
:func:`channel_scores`, :func:`prune` and :class:`StructuredPruner` all read these.

The quality study's protocol (docs/benchmarks.md, "Protocol") chose them: of the library's 16
variants (criterion ``taylor_fo_bn`` or ``taylor_fo_bn_var`` x BatchNorm train / eval x EMA none /
0.5 x ranking raw / raw per MAC), the one with the best validation top-1 after fine-tuning, averaged
over its three MACs levels, two seeds and two networks (tools/results/quality/table.md); a test
holds these to that choice. What else each rests on is said beside it.
"""

from __future__ import annotations

#: The criterion (a ``CRITERIA`` name).
CRITERION = "taylor_fo_bn"
#: BatchNorm while scoring: True normalises with batch statistics, False with the running ones
#: (eval mode, the study's choice). Eval mode ranks what a removal costs the network as it is,
#: train mode what it costs once BatchNorm's statistics follow it; on a well-fit network the two
#: disagree (docs/importance.md, "Well-fit networks"). Eval mode costs about 1.9x a training step
#: under the iterative schedule (a scoring pass of its own per minibatch).
TRAIN_MODE = False
#: Per-group normalisation of the scores before the global ranking ("mean", "l2", "max", None):
#: none. Taylor scores estimate loss changes, which differ across groups by orders of magnitude;
#: dividing each group by its mean destroys that order (docs/importance.md).
NORMALIZE: str | None = None
#: Rank by score per MAC that removing the channel saves: raw scores alone take whole cheap
#: late-stage layers, per MAC the budget goes where it buys the most (one removal step of 30% of
#: the MACs: 92.7 ± 0.4% top-1 against 84.4 ± 5.6% raw, docs/importance.md).
COST_AWARE = True
#: Momentum of the average of the scores across the iterative schedule's removals (None: each
#: removal ranks the mean of its own window, the study's choice). With a momentum m each window's
#: mean M is folded into ``E <- m E + (1 - m) M``. One-shot pruning scores one window either way.
EMA: float | None = None
#: The training top-1 (%) at or above which a run scoring with ``taylor_fo_bn`` scores with
#: :data:`WELL_FIT_CRITERION` instead (``taylorprune.importance.well_fit``; None: never). The
#: well-fit networks of docs/importance.md read 99.8-100% on training images, the quality study's
#: Fashion-MNIST networks 94.8% and 95.5%; not chosen by the quality study, whose networks it
#: leaves alone.
WELL_FIT_TOP1: float | None = 99.0
#: What a well-fit network is scored with: the per-example squares, which rank its channels best.
WELL_FIT_CRITERION = "taylor_fo_bn_fg"
#: How many training images (no augmentation) the reading takes.
WELL_FIT_IMAGES = 640
