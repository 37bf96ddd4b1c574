"""One-call scoring: ``channel_scores(model, batches, loss_fn)``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from taylorprune.errors import UserError
from taylorprune.graph import ChannelGraph
from taylorprune.importance.accumulator import ImportanceAccumulator
from taylorprune.importance.criteria import DEFAULT_CRITERION, Criterion

logger = logging.getLogger("taylorprune")


def channel_scores(
    model: nn.Module,
    batches: Iterable[tuple[Any, Any]],
    loss_fn: Callable[[Tensor, Any], Tensor],
    criterion: str | Criterion = DEFAULT_CRITERION,
    train_mode: bool = True,
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

    The model is left as found: parameters, buffers (BatchNorm running statistics), ``.grad``
    fields, ``requires_grad`` flags and train/eval mode of every module are restored. Couplings come
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

    saved = _ModelState(model)
    try:
        for p in model.parameters():
            p.requires_grad_(True)
            p.grad = None
        graph = ChannelGraph(model, _first_example(first[0]))
        with ImportanceAccumulator(model, graph.groups(), criterion) as acc:
            model.train(train_mode)
            batch_iter = _chain(first, it)
            for inputs, targets in tqdm(batch_iter, desc="scoring", disable=quiet, leave=False):
                loss = loss_fn(model(inputs), targets)
                acc.backward(loss)
                for p in model.parameters():
                    p.grad = None
            if acc.num_batches() == 0:
                raise UserError("channel_scores: no batches to score on")
            return acc.scores()
    finally:
        saved.restore(model)


def _first_example(inputs: Any) -> Any:
    if isinstance(inputs, Tensor):
        return inputs[:1]
    if isinstance(inputs, list | tuple):
        return type(inputs)(_first_example(x) for x in inputs)
    return inputs


def _chain(first: Any, rest: Iterable[Any]) -> Iterable[Any]:
    yield first
    yield from rest


class _ModelState:
    """What scoring changes on a model: buffers, grads, requires_grad flags, modes."""

    def __init__(self, model: nn.Module) -> None:
        with torch.no_grad():
            self.buffers = {n: b.clone() for n, b in model.named_buffers()}
            self.params = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.grads = {n: p.grad for n, p in model.named_parameters()}
        self.requires = {n: p.requires_grad for n, p in model.named_parameters()}
        self.modes = {n: m.training for n, m in model.named_modules()}

    def restore(self, model: nn.Module) -> None:
        with torch.no_grad():
            for n, b in model.named_buffers():
                if n in self.buffers:
                    b.copy_(self.buffers[n])
            for n, p in model.named_parameters():
                if n in self.params:
                    p.copy_(self.params[n])
        for n, p in model.named_parameters():
            p.grad = self.grads.get(n)
            p.requires_grad_(self.requires.get(n, p.requires_grad))
        for n, m in model.named_modules():
            m.training = self.modes.get(n, m.training)
