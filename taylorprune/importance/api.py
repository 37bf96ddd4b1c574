"""One-call scoring: ``channel_scores(model, batches, loss_fn)``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from torch import Tensor, nn
from tqdm.auto import tqdm

from taylorprune.errors import UserError
from taylorprune.graph import ChannelGraph
from taylorprune.importance import defaults
from taylorprune.importance.accumulator import ImportanceAccumulator
from taylorprune.importance.criteria import DEFAULT_CRITERION, Criterion
from taylorprune.importance.scoring import accumulate, preserved_state

logger = logging.getLogger("taylorprune")


def channel_scores(
    model: nn.Module,
    batches: Iterable[tuple[Any, Any]],
    loss_fn: Callable[[Tensor, Any], Tensor],
    criterion: str | Criterion = DEFAULT_CRITERION,
    train_mode: bool = defaults.TRAIN_MODE,
    *,
    quiet: bool = True,
) -> dict[str, Tensor]:
    """Importance of every prunable output channel of ``model``, averaged over ``batches``.

    ``batches`` yields ``(inputs, targets)``; each is run forward, ``loss_fn(model(inputs),
    targets)`` is back-propagated and scored. ``train_mode=True`` uses batch statistics in BatchNorm
    (and active dropout), as during fine-tuning; ``False`` uses running statistics. Returns ``{gate
    name: 1-D CPU tensor}`` with one score per output channel of the gate module (the BatchNorm of a
    conv→BN pair, otherwise the conv or Linear), raw as the criterion ranks them; coupled gates hold
    the same scores.

    The model is left as found: parameters are not changed, and buffers (BatchNorm running
    statistics), ``.grad`` fields, ``requires_grad`` flags and the train/eval mode of every module
    are restored. Couplings come
    from a :class:`~taylorprune.graph.ChannelGraph` built on the first input of the first batch,
    ignoring no layer, so the classifier's units are scored too.

    Raises :class:`UserError` for an unknown criterion, an empty ``batches`` or a model that cannot
    be traced.
    """
    it = iter(batches)
    try:
        first = next(it)
    except StopIteration:
        raise UserError("channel_scores: no batches to score on") from None

    with preserved_state(model):
        for p in model.parameters():
            p.requires_grad_(True)
        graph = ChannelGraph(model, _first_example(first[0]))
        with ImportanceAccumulator(model, graph.groups(), criterion, graph=graph) as acc:
            model.train(train_mode)
            batch_iter = tqdm(_chain(first, it), desc="scoring", disable=quiet, leave=False)
            if accumulate(model, acc, batch_iter, loss_fn) == 0:
                raise UserError("channel_scores: no batches to score on")
            return acc.scores()


def _first_example(inputs: Any) -> Any:
    if isinstance(inputs, Tensor):
        return inputs[:1]
    if isinstance(inputs, list | tuple):
        return type(inputs)(_first_example(x) for x in inputs)
    return inputs


def _chain(first: Any, rest: Iterable[Any]) -> Iterable[Any]:
    yield first
    yield from rest
