"""Several criteria scored from one backward pass per minibatch.

The oracle study scores every criterion on the same minibatches; one pass per criterion would cost
five times as much. The library scores one criterion at a time
(:func:`taylorprune.importance.scoring.accumulate`), which is all pruning needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

from taylorprune.importance.accumulator import ImportanceAccumulator
from taylorprune.importance.scoring import LossFn, accumulate


def accumulate_shared(
    model: nn.Module,
    accumulators: Sequence[ImportanceAccumulator],
    batches: Iterable[tuple[Any, Any]],
    loss_fn: LossFn,
) -> int:
    """:func:`~taylorprune.importance.scoring.accumulate` for several accumulators on one model:
    one forward and one backward per minibatch feed them all, which costs about what one criterion
    costs. Criteria that need second derivatives cannot share a pass (their backward keeps the
    graph for double backprop); one such accumulator alone is fine, more raise ``ValueError``.
    Returns the number of minibatches added."""
    if len(accumulators) == 1:
        return accumulate(model, accumulators[0], batches, loss_fn)
    second_order = [a.criterion for a in accumulators if "hessian" in a.criterion.requirements]
    if second_order:
        raise ValueError(f"{second_order[0]!r} needs a scoring pass of its own (double backprop)")
    n = 0
    for inputs, targets in batches:
        model.zero_grad(set_to_none=True)
        loss_fn(model(inputs), targets).backward()
        for acc in accumulators:
            acc.update()
        n += 1
    return n
