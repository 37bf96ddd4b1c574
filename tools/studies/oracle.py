"""Oracle importance: what removing channels really does to the loss, for validating criteria.

Three oracles, from the noisiest to the one that decides accuracy (``tools/oracle_study.py``,
``docs/importance.md``); none is meant for pruning, each costs forward passes per channel, and
only the studies use them:

* :func:`oracle_scores`, the papers' oracle: ``mean over minibatches of |L − L_{c=0}|`` on the
  minibatches a criterion is scored on. It shares the minibatches' noise with first-order scores.
* :func:`population_oracle`: the change ``L_D(c=0) − L_D`` of the mean loss over a held-out set D,
  BatchNorm in eval mode: the deployed network's expected loss change.
* :func:`recalibrated_oracle`: the same change once BatchNorm's statistics are re-estimated on
  training images after the channel is zeroed: the loss change of the network a pruning run ends
  with, whose statistics follow the removal (fine-tuning, ``pruning.bn_recalibration``).
* :func:`removal_oracle`: what a pruning step does: remove the lowest-scored fraction of channels
  at once with the product's pruner, re-estimate BatchNorm statistics, evaluate held-out top-1 and
  loss.

Channel c of a group is removed by zeroing its gate, i.e. the channel at every coupled gate
module's output (the BatchNorm output of a conv→BN pair), which is what physically removing it
does to the rest of the network.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from taylorprune.errors import UserError
from taylorprune.graph import ChannelGroup
from taylorprune.importance._gates import NORM_TYPES, channel_dim
from taylorprune.pruning.cost import widths_of
from taylorprune.pruning.pruner import StructuredPruner
from taylorprune.pruning.targets import Target
from taylorprune.train import evaluate, recalibrate_bn

#: ``{group root: channel indices}`` to measure; channels left out come back as NaN.
Channels = Mapping[str, Sequence[int]]


def oracle_scores(
    model: nn.Module,
    groups: list[ChannelGroup],
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    train_mode: bool = True,
    chunk: int = 8,
    channels: Channels | None = None,
    quiet: bool = True,
) -> dict[str, Tensor]:
    """``mean over batches of |L − L_{c=0}|`` for every channel c of every group, keyed by root.

    L is the mean cross-entropy of a minibatch; ``L_{c=0}`` the same with channel c's gate set to
    zero. ``train_mode=True`` normalises with each forward pass's own batch statistics, as training
    does (zeroing a channel changes the statistics of later layers, not of its own BN); ``False``
    uses the running statistics. ``chunk`` channel removals are evaluated in one pass: the
    minibatch is repeated ``chunk`` times and every BatchNorm computes statistics per copy, which is
    exactly ``chunk`` separate forward passes; layers that run before the zeroed gate reuse the
    outputs of the unmodified pass. The model (a deep copy is used) is left unchanged.
    """
    sums = {g.root: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    count = 0
    for _n, changes in _loss_changes(model, groups, batches, train_mode, chunk, channels, quiet):
        for root, change in changes.items():
            sums[root] += change.abs()
        count += 1
    return {
        root: _unmeasured_nan(s / max(count, 1), root, channels).float() for root, s in sums.items()
    }


def population_oracle(
    model: nn.Module,
    groups: list[ChannelGroup],
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    chunk: int = 8,
    channels: Channels | None = None,
    quiet: bool = True,
) -> dict[str, Tensor]:
    """``L_D(c=0) − L_D`` for every channel c of every group (float64, keyed by root), signed.

    ``batches`` is the held-out set D; L_D is the mean cross-entropy per example over all of it
    (minibatches weighted by their sizes), with BatchNorm in eval mode (running statistics), as the
    deployed network runs. The minibatch size therefore changes only the speed: each forward pass
    holds ``chunk`` × minibatch examples (a few hundred is fastest on a CPU), and the layers before
    a group's first gate run once per minibatch, not once per channel. Take ``abs()`` for the
    papers' |ΔL|; a negative value means removing the channel lowers the held-out loss.
    ``channels`` restricts the (costly) measurement to some channels. The model is left unchanged.
    """
    sums = {g.root: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    total = 0
    for n, changes in _loss_changes(model, groups, batches, False, chunk, channels, quiet):
        for root, change in changes.items():
            sums[root] += n * change
        total += n
    if total == 0:
        raise UserError("population_oracle: the held-out set is empty")
    return {root: _unmeasured_nan(s / total, root, channels) for root, s in sums.items()}


def recalibrated_oracle(
    model: nn.Module,
    groups: list[ChannelGroup],
    held_out: Iterable[tuple[Tensor, Tensor]],
    calibration: Iterable[tuple[Tensor, Tensor]],
    *,
    channels: Channels | None = None,
) -> dict[str, Tensor]:
    """``L_D(c=0) − L_D`` for every channel c of every group (float64, keyed by root, signed), both
    terms measured with BatchNorm statistics re-estimated (:func:`recalibrate_bn`) on every
    minibatch of ``calibration`` after the channel is zeroed: what removing c costs once the
    statistics of the layers after it follow the removal. L_D is the mean cross-entropy per
    example over ``held_out`` in eval mode. One re-estimation and one held-out pass per channel
    (no chunking: each zeroed channel needs statistics of its own). The model is left unchanged.
    """
    calibration = list(calibration)
    held_out = list(held_out)
    if not calibration:
        raise UserError("recalibrated_oracle: no calibration batches to re-estimate BatchNorm on")

    net = copy.deepcopy(model)  # weights untouched; each measurement re-estimates the statistics
    modules = dict(net.named_modules())

    def loss(zeroed: ChannelGroup | None, channel: int) -> float:
        handles = []
        for s in zeroed.gates if zeroed is not None else ():
            if channel in s.root_idxs:
                idx = s.idxs[list(s.root_idxs).index(channel)]
                handles.append(modules[s.name].register_forward_hook(_zero_hook(idx)))
        try:
            recalibrate_bn(net, calibration, batches=len(calibration))
            return float(evaluate(net, held_out)["loss"])
        finally:
            for h in handles:
                h.remove()

    base = loss(None, 0)
    todo = _channels_to_measure(groups, channels)
    out = {}
    for g in groups:
        change = torch.zeros(g.size, dtype=torch.float64)
        for c in todo[g.root]:
            change[c] = loss(g, c) - base
        out[g.root] = _unmeasured_nan(change, g.root, channels)
    return out


def _zero_hook(idx: int) -> Callable[[nn.Module, Any, Tensor], Tensor]:
    def hook(module: nn.Module, _inputs: Any, output: Tensor) -> Tensor:
        out = output.clone()
        out.select(channel_dim(module), idx).zero_()
        return out

    return hook


def removal_oracle(
    model: nn.Module,
    example_inputs: Tensor,
    group_scores: Mapping[str, Tensor],
    fraction: float,
    calibration: Iterable[tuple[Tensor, Tensor]],
    held_out: Iterable[tuple[Tensor, Tensor]],
    *,
    calibration_batches: int = 50,
    normalize: str | None = "mean",
    cost_aware: bool = False,
    unit: str = "channels",
) -> dict[str, float]:
    """Held-out top-1 and loss after one pruning step removing ``fraction`` of the channels or MACs.

    A deep copy of ``model`` loses its lowest-ranked channels under ``group_scores`` (keyed by
    group root, as :meth:`~taylorprune.importance.ImportanceAccumulator.group_scores` gives them)
    at once, through :class:`~taylorprune.pruning.StructuredPruner` with its default constraints
    (classifier kept, at most 90% of a group) and ranking options (``normalize``: per-group
    division before the global ranking; ``cost_aware``: score per MAC saved). ``unit="channels"``
    removes ``round(fraction × prunable channels)`` channels; ``"macs"`` removes channels until
    ``fraction`` of the MACs is gone, the fair comparison for ``cost_aware``, which removes more
    MACs per channel. BatchNorm statistics are then re-estimated on ``calibration_batches``
    minibatches of ``calibration`` (training data; weights unchanged, no fine-tuning) and the
    network is evaluated on ``held_out``.

    Returns ``{"top1": %, "loss": mean cross-entropy, "channels_removed", "macs_left": fraction of
    the model's MACs}``. ``model`` is left unchanged. Raises :class:`UserError` for a fraction
    outside [0, 1), an unknown unit or no calibration batch.
    """
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"removal_oracle: fraction must be in [0, 1), got {fraction}")
    if unit not in ("channels", "macs"):
        raise UserError(f"removal_oracle: unit must be 'channels' or 'macs', got {unit!r}")
    calibration = list(itertools.islice(calibration, calibration_batches))
    if not calibration:
        raise UserError("removal_oracle: no calibration batches to re-estimate BatchNorm on")
    net = copy.deepcopy(model)
    pruner = StructuredPruner(net, example_inputs, normalize=normalize, cost_aware=cost_aware)
    if unit == "macs" and fraction > 0:
        step = pruner.remove_to_target(group_scores, Target("macs", 1.0 - fraction))
    else:
        step = pruner.remove(group_scores, round(fraction * pruner.channels()))
    recalibrate_bn(net, calibration, batches=len(calibration))
    ev = evaluate(net, held_out)
    return {
        "top1": ev["top1"],
        "loss": ev["loss"],
        "channels_removed": step.channels_removed,
        "macs_left": pruner.fraction("macs"),
    }


def _loss_changes(
    model: nn.Module,
    groups: list[ChannelGroup],
    batches: Iterable[tuple[Tensor, Tensor]],
    train_mode: bool,
    chunk: int,
    channels: Channels | None,
    quiet: bool,
) -> Iterator[tuple[int, dict[str, Tensor]]]:
    """Per minibatch: its size and ``L_{c=0} − L`` (float64, 0 where not measured) per group."""
    net = copy.deepcopy(model)
    net.train(train_mode)
    state = _Replay()
    for m in net.modules():
        if isinstance(m, NORM_TYPES):
            _patch_norm(m, state)
    for name, m in net.named_modules():
        if name:  # every submodule; the model's own call always contains the zeroed gate
            _patch_replay(m, state)
    masks: dict[str, Tensor | None] = {}
    modules = dict(net.named_modules())
    for g in groups:
        for s in g.gates:
            masks.setdefault(s.name, None)
    handles = [
        modules[name].register_forward_hook(_mask_hook(name, masks)) for name in sorted(masks)
    ]
    todo = _channels_to_measure(groups, channels)
    try:
        with torch.no_grad():
            for inputs, targets in tqdm(batches, desc="oracle", disable=quiet, leave=False):
                n = inputs.shape[0]
                state.start(k=1, record=True)
                base = F.cross_entropy(net(inputs), targets, reduction="none").double().mean()
                first_call = {
                    name: calls[0] for name, calls in state.calls_of(modules).items() if calls
                }
                changes = {}
                for g in groups:
                    change = torch.zeros(g.size, dtype=torch.float64)
                    # module calls that end before the group's first gate replay the base pass
                    reuse = min(first_call.get(s.name, 0) for s in g.gates)
                    for start in range(0, len(todo[g.root]), chunk):
                        chans = todo[g.root][start : start + chunk]
                        k = len(chans)
                        state.start(k=k, reuse=reuse)
                        _set_masks(masks, modules, g, chans, n)
                        out = net(inputs.repeat(k, *[1] * (inputs.dim() - 1)))
                        losses = F.cross_entropy(out, targets.repeat(k), reduction="none")
                        change[chans] = losses.view(k, n).double().mean(1) - base
                        for name in masks:
                            masks[name] = None
                    changes[g.root] = change
                yield n, changes
    finally:
        for h in handles:
            h.remove()
        state.outputs.clear()


def _channels_to_measure(
    groups: list[ChannelGroup], channels: Channels | None
) -> dict[str, list[int]]:
    if channels is None:
        return {g.root: list(range(g.size)) for g in groups}
    sizes = {g.root: g.size for g in groups}
    for root, idxs in channels.items():
        if root not in sizes:
            raise UserError(f"oracle: no group {root!r}; groups: {', '.join(sizes)}")
        bad = [i for i in idxs if not 0 <= i < sizes[root]]
        if bad:
            raise UserError(f"oracle: group {root!r} has {sizes[root]} channels, asked for {bad}")
    return {g.root: sorted(set(channels.get(g.root, ()))) for g in groups}


def _unmeasured_nan(values: Tensor, root: str, channels: Channels | None) -> Tensor:
    if channels is None:
        return values
    out = torch.full_like(values, float("nan"))
    idx = list(channels.get(root, ()))
    out[idx] = values[idx]
    return out


class _Replay:
    """Shared state of the patched modules for one forward pass: ``k`` stacked copies of the batch.

    Module calls are numbered in the order they start. The base pass (``record``) keeps each call's
    tensor output and the number of calls nested in it; in a later pass, a call that ended before
    call ``reuse`` started returns its recorded output repeated ``k`` times without running, and
    its nested calls are skipped. Only the outermost finished calls are copied: replaying every
    leaf instead spent a third of the time copying activations nobody used.
    """

    def __init__(self) -> None:
        self.k = 1
        self.call = 0
        self.reuse = 0
        self.record = False
        self.outputs: list[Tensor | None] = []
        self.nested: list[int] = []
        self.order: list[nn.Module] = []

    def start(self, k: int, reuse: int = 0, record: bool = False) -> None:
        self.k, self.reuse, self.record, self.call = k, reuse, record, 0
        if record:
            self.outputs, self.nested, self.order = [], [], []

    def calls_of(self, modules: dict[str, nn.Module]) -> dict[str, list[int]]:
        ids = {id(m): name for name, m in modules.items()}
        out: dict[str, list[int]] = {}
        for i, m in enumerate(self.order):
            out.setdefault(ids[id(m)], []).append(i)
        return out


def _patch_replay(module: nn.Module, state: _Replay) -> None:
    inner = module.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        i = state.call
        state.call += 1
        if state.record:
            state.order.append(module)
            state.outputs.append(None)
            state.nested.append(0)
            out = inner(*args, **kwargs)
            state.nested[i] = state.call - i - 1
            if isinstance(out, Tensor):
                state.outputs[i] = out.clone()  # clone: an in-place op later must not change it
            return out
        cached = state.outputs[i] if i + state.nested[i] < state.reuse else None
        if cached is None:
            return inner(*args, **kwargs)
        state.call += state.nested[i]
        return cached.repeat(state.k, *[1] * (cached.dim() - 1))

    module.forward = forward


def _patch_norm(bn: nn.Module, state: _Replay) -> None:
    """Make ``bn`` normalise each of ``state.k`` stacked copies of the batch with its own statistics
    (train mode), or with the running statistics (eval mode); running statistics are not updated."""

    def forward(x: Tensor) -> Tensor:
        if not bn.training and bn.running_mean is not None:
            # eval mode normalises each example on its own: the copies need nothing special
            return F.batch_norm(
                x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
            )
        k = state.k
        n, c, rest = x.shape[0] // k, x.shape[1], x.shape[2:]
        # copies side by side as k·C channels, so one fused batch_norm gives per-copy statistics
        wide = x.view(k, n, c, *rest).transpose(0, 1).reshape(n, k * c, *rest)
        weight = None if bn.weight is None else bn.weight.repeat(k)
        bias = None if bn.bias is None else bn.bias.repeat(k)
        y = F.batch_norm(wide, None, None, weight, bias, True, 0.0, bn.eps)
        return y.view(n, k, c, *rest).transpose(0, 1).reshape(x.shape)

    bn.forward = forward


def _mask_hook(name: str, masks: dict[str, Tensor | None]) -> Callable:
    def hook(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor | None:
        mask = masks[name]
        if mask is None:
            return None
        shape = [mask.shape[0]] + [1] * (output.dim() - 1)
        shape[channel_dim(module)] = mask.shape[1]
        return output * mask.view(shape)

    return hook


def _set_masks(
    masks: dict[str, Tensor | None],
    modules: dict[str, nn.Module],
    group: ChannelGroup,
    chans: list[int],
    n: int,
) -> None:
    """Copy j of the batch has group channel ``chans[j]`` zeroed at every gate of the group."""
    for s in group.gates:
        width = widths_of(modules[s.name])[0]
        mask = torch.ones(len(chans), n, width)
        pos = {r: i for r, i in zip(s.root_idxs, s.idxs, strict=True)}
        for j, c in enumerate(chans):
            if c in pos:
                mask[j, :, pos[c]] = 0.0
        masks[s.name] = mask.view(len(chans) * n, width)
