"""Channel groups and gates, read off torch-pruning's dependency graph.

torch-pruning couples every layer whose channels must be removed together into a *group* (the
residual stream of a ResNet stage is one group: the downsample BN and every block's last BN). For
Taylor scoring we need, per group, the *gates*: the modules on whose output a channel's importance
is measured. A gate is the BatchNorm of a conv→BN pair, otherwise the conv or Linear whose output
channels are pruned.

Within a group, channel ``root_idxs[k]`` of the group's root is channel ``idxs[k]`` of each member;
for ResNets both are ``0..C-1``, after a concatenation they differ. :class:`GateSlice` keeps both so
that scores can be summed across coupled gates per physical channel.

A group torch-pruning cannot analyse is *left whole* (:class:`LeftWhole`) and the others are still
returned: its index mapping fails or its grouping passes the :class:`GroupingBudget` (torchvision's
Swin), or its channels pass a channel shuffle (ShuffleNet), which torch-pruning maps as if the
channels kept their order (three of ShuffleNetV2's sixteen shuffles make it divide by zero, the
others it maps wrong without a sound)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import _helpers as tp_helpers
from torch_pruning.dependency import index_mapping as tp_index_mapping

from taylorprune._graph_checks import (
    BUDGET_REASON,
    MAPPINGS,
    SHUFFLE_REASON,
    UNCALLED_REASON,
    Meter,
    Opaque,
    OverBudget,
    OverTotal,
    Stop,
    channel_shuffles,
    failure_reason,
    first_line,
    uses_of_uncalled_layers,
)
from taylorprune.errors import UserError

# Module types whose output channels can carry a gate. A conv followed by its BN hands the gate to
# the BN.
_NORM_TYPES: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_ROOT_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class GroupingBudget:
    """Limits on torch-pruning's work while it groups channels; past them a group is left whole
    (:class:`LeftWhole`), or the grouping stops with a clear error, instead of a hang.

    ``index_entries``: channel-index entries created for one group. Largest measured: VGG-16 at
    224 px 151 k (its last conv, through the flatten), DenseNet-201 60 k, ResNet-50 2 k; Swin's
    window reshapes multiply them without end in its last stage's group (1 M in about 2.5 s; the
    whole swin_t ran out of memory after 10 M in 40 s). ``group_size``: dependencies gathered
    into one group. Largest measured: ViT-B/16 972, ConvNeXt-B 658, DenseNet-201 396; timm's ReXNet
    grows one group without end, each addition scanning the whole group (27 k after 90 s).
    ``total_entries``: index entries in one enumeration of all groups; past it grouping stops
    with :class:`UserError` (whole torchvision and timm CNNs need at most a few hundred thousand).
    """

    index_entries: int = 1_000_000
    group_size: int = 20_000
    total_entries: int = 8_000_000


GROUPING_BUDGET = GroupingBudget()


@dataclass(frozen=True)
class LeftWhole:
    """A group kept at its full width: ``layers`` are the layers whose output width it sets (in
    model order; the first is where it starts, and the layer to put in ``ignored_layers`` to keep it
    by hand; where the analysis stopped early, the ones found until then); ``reason`` says why in
    one line."""

    layers: tuple[str, ...]
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """As the report holds it: ``{"layers": [...], "reason": "..."}``."""
        return {"layers": list(self.layers), "reason": self.reason}


@dataclass(frozen=True)
class GateSlice:
    """The channels ``idxs`` of gate ``name`` that are the group root's channels ``root_idxs``."""

    name: str
    idxs: tuple[int, ...]
    root_idxs: tuple[int, ...]


@dataclass(frozen=True)
class ChannelGroup:
    """Coupled channels removed together; ``size`` channels indexed like the root's output."""

    root: str
    size: int
    gates: tuple[GateSlice, ...]
    members: tuple[str, ...]  # every module whose output channels this group prunes

    @property
    def gate_names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.gates)


class ChannelGraph:
    """torch-pruning's dependency graph of ``model`` plus the gate view of its groups.

    Build it once per model: torch-pruning updates the graph in place as channels are removed, and
    :meth:`groups` re-reads the current widths. ``ignored_layers`` (module names) keep their output
    channels; ``include`` (regular expressions on module names) restricts pruning to groups whose
    root matches one of them. A pattern that matches no module raises :class:`UserError`.

    A group torch-pruning cannot analyse (its index mapping fails, its channels pass a channel
    shuffle, or its grouping passes ``budget``, default :data:`GROUPING_BUDGET`) is left out of
    :meth:`groups` and listed in :attr:`left_whole`; the rest of the model is grouped as usual. Only
    a model that cannot be traced at all, or whose grouping passes the budget for the whole model,
    raises :class:`UserError`, in one line.

    Building the graph runs one forward pass and leaves the model in the mode it was found in
    (torch-pruning itself switches to eval mode). Parameters must require grad while it is built, or
    torch-pruning silently finds nothing; we switch it on for the build and restore it.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor | Sequence[torch.Tensor],
        ignored_layers: Iterable[str] = (),
        include: Iterable[str] | None = None,
        budget: GroupingBudget | None = None,
    ) -> None:
        self.model = model
        self.budget = GROUPING_BUDGET if budget is None else budget
        self.names = {m: n for n, m in model.named_modules()}
        self.order = {n: i for i, n in enumerate(self.names.values())}
        modules = dict(model.named_modules())
        self.ignored = _resolve_patterns(modules, ignored_layers, "ignored_layers")
        self.include = None if include is None else list(include)
        if self.include is not None:
            _resolve_patterns(modules, self.include, "include")
        # Graph nodes channels cannot pass with their order known: node module -> reason.
        self._opaque: dict[Any, str] = {}
        self._left: list[LeftWhole] = []
        self._left_members: set[nn.Module] = set()  # output-pruned modules of those groups
        self._mapped_widths: tuple | None = None  # parameter shapes the index mapping is for
        self._mapping = False

        was_training = model.training
        requires = {p: p.requires_grad for p in model.parameters()}
        for p in model.parameters():
            p.requires_grad_(True)
        try:
            with self._mapped():
                self.dg = tp.DependencyGraph().build_dependency(
                    model, example_inputs=example_inputs
                )
        except Exception as exc:  # torch-pruning raises bare exceptions for unsupported graphs
            raise UserError(f"cannot trace model for pruning: {type(exc).__name__}: {exc}") from exc
        finally:
            for p, r in requires.items():
                p.requires_grad_(r)
            model.train(was_training)
        for module in channel_shuffles(self.dg):
            self._opaque[module] = SHUFFLE_REASON  # the cause, where its mapping also failed
        for module in uses_of_uncalled_layers(self.dg, model):
            self._opaque.setdefault(module, UNCALLED_REASON)
        # torch-pruning maps indices anew on every grouping (a replayed pruning history included):
        # a mapping that failed once would fail again, and unchanged widths need no new mapping.
        traced = self.dg.get_pruning_group

        def get_pruning_group(module: nn.Module, *args: Any, **kwargs: Any) -> tp.Group:
            with self._mapped():
                return traced(module, *args, **kwargs)

        self.dg.get_pruning_group = get_pruning_group

    # -- groups ------------------------------------------------------------------------------------
    def groups(self) -> list[ChannelGroup]:
        """Every prunable group of the model as it is now (after any removals); groups that cannot
        be analysed are left out and added to :attr:`left_whole`."""
        ignored = {self._module(n) for n in self.ignored}
        ignored.update(m for m in self.dg.IGNORED_LAYERS_IN_TRACING if isinstance(m, nn.Module))
        visited: set[nn.Module] = set(self._left_members)
        out = []
        with self._budgeted() as meter:
            for module in list(self.dg.module2node):
                if module in visited or module in ignored or not isinstance(module, _ROOT_TYPES):
                    continue
                pruner = self.dg.get_pruner_of_module(module)
                width = None if pruner is None else pruner.get_out_channels(module)
                if width is None:
                    continue
                group, reason = self._group_of(module, pruner, width, meter)
                members = [module, *self._out_pruned(group)]
                visited.update(members)
                if any(m in ignored for m in members) or not self._included(module):
                    continue
                if reason is not None:
                    self._leave_whole(members, reason)
                    continue
                cg = self._to_channel_group(group)
                if cg is not None:
                    out.append(cg)
        return out

    @property
    def left_whole(self) -> list[LeftWhole]:
        """Groups :meth:`groups` leaves out, in model order of their first layer: those that
        torch-pruning cannot analyse safely, and those given to :meth:`leave_whole`."""
        return sorted(self._left, key=lambda lw: self.order[lw.layers[0]])

    def leave_whole(self, group: ChannelGroup, reason: str) -> None:
        """Leave ``group`` out of :meth:`groups` from now on, listed in :attr:`left_whole`."""
        self._leave_whole([self._module(n) for n in group.members], reason)

    def tp_group(self, group: ChannelGroup, root_idxs: Sequence[int]) -> tp.Group:
        """torch-pruning's group that removes channels ``root_idxs`` of ``group``'s root."""
        root = self._module(group.root)
        fn = self.dg.get_pruner_of_module(root).prune_out_channels
        with self._budgeted():
            try:
                return self.dg.get_pruning_group(root, fn, idxs=list(root_idxs))
            except Stop as exc:
                raise UserError(
                    f"cannot group the channels of layer {group.root!r}: {BUDGET_REASON} of "
                    f"{exc}; add it to ignored_layers, or raise taylorprune.graph.GROUPING_BUDGET"
                ) from None
            except Exception as exc:
                raise UserError(
                    f"cannot group the channels of layer {group.root!r}: {failure_reason(exc)}; "
                    "add it to ignored_layers"
                ) from exc

    # -- internals ---------------------------------------------------------------------------------
    def _module(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    def _out_pruned(self, group: tp.Group | list) -> list[nn.Module]:
        """The modules whose output channels ``group`` (or a part of one) prunes."""
        return [
            item.dep.target.module
            for item in group
            if self.dg.is_out_channel_pruning_fn(item.dep.handler)
        ]

    def _group_of(
        self, module: nn.Module, pruner: Any, width: int, meter: Meter
    ) -> tuple[tp.Group | list, str | None]:
        """torch-pruning's group of all ``width`` output channels of ``module``, and why it must be
        left whole (None if it need not). Where the analysis fails or passes the budget, the
        dependencies found until then stand for the group."""
        try:
            group = self.dg.get_pruning_group(module, pruner.prune_out_channels, list(range(width)))
        except OverTotal:
            raise
        except Opaque as exc:
            return meter.partial, str(exc)
        except OverBudget as exc:
            reason = f"{BUDGET_REASON} of {exc} (reshapes, slices or permutes multiply it)"
            return meter.partial, reason
        except Exception as exc:  # torch-pruning's analysis fails in this one group
            return meter.partial, failure_reason(exc)
        return group, None

    def _included(self, module: nn.Module) -> bool:
        name = self.names.get(module, "")
        return self.include is None or any(re.fullmatch(p, name) for p in self.include)

    def _leave_whole(self, members: list[nn.Module], reason: str) -> None:
        """Record the group of output-pruned ``members`` as left whole; later enumerations skip
        them without grouping them again. A group met again from another root (where the analysis
        stopped early) is merged into its first record."""
        self._left_members.update(members)
        names = {
            self.names[m]
            for m in members
            if m in self.names and isinstance(m, _NORM_TYPES + _ROOT_TYPES)
        }
        if not names:
            return
        same = [lw for lw in self._left if names & set(lw.layers)]
        for lw in same:
            self._left.remove(lw)
            names.update(lw.layers)
        layers = tuple(sorted(names, key=self.order.__getitem__))
        self._left.append(LeftWhole(layers, same[0].reason if same else reason))

    @contextmanager
    def _mapped(self) -> Iterator[None]:
        """torch-pruning's index mapping, node by node and only when widths changed.

        A node whose mapping raises is recorded in :attr:`_opaque` (a group through it is left
        whole) and the other nodes are still mapped: torch-pruning itself stops at the first
        failure, and the whole graph with it. torch-pruning maps the whole graph again before every
        grouping, which costs most of the grouping time in models with many reshapes (Swin: 1 s
        per group); the mapping depends on the widths only, so it is redone only when a parameter
        shape changed. The originals are put back on leaving.
        """
        if self._mapping:
            yield
            return
        originals = {n: getattr(tp_index_mapping, n) for n in (*MAPPINGS, "update_index_mapping")}
        update_all = originals.pop("update_index_mapping")
        opaque = self._opaque

        def tolerant(update: Callable[..., None]) -> Callable[..., None]:
            def mapped(graph: tp.DependencyGraph, node: Any) -> None:
                try:
                    update(graph, node)
                except Stop:
                    raise
                except Exception as exc:  # torch-pruning's bug in this node only
                    kind = tp.ops.OPTYPE(node.type).name.lower()
                    opaque.setdefault(
                        node.module,
                        f"torch-pruning cannot map its channels through a {kind} "
                        f"({type(exc).__name__}: {first_line(exc)})",
                    )

            return mapped

        def update_if_changed(graph: tp.DependencyGraph) -> None:
            widths = tuple(tuple(p.shape) for p in self.model.parameters())
            if widths != self._mapped_widths:
                update_all(graph)
                self._mapped_widths = widths

        for name, update in originals.items():
            setattr(tp_index_mapping, name, tolerant(update))
        tp_index_mapping.update_index_mapping = update_if_changed
        self._mapping = True
        try:
            yield
        finally:
            self._mapping = False
            tp_index_mapping.update_index_mapping = update_all
            for name, update in originals.items():
                setattr(tp_index_mapping, name, update)

    @contextmanager
    def _budgeted(self) -> Iterator[Meter]:
        """Count torch-pruning's work while grouping; past :attr:`budget` raise :class:`OverBudget`
        inside the grouping of one root (the caller decides) or, past the budget of a whole
        enumeration, :class:`UserError`.

        torch-pruning builds every index as a ``_helpers._HybridIndex`` and every group with
        ``Group.add_dep``, both looked up at call time, so counting stand-ins replace them while we
        enumerate (the originals are always put back). The group being built is kept
        (:attr:`Meter.partial`): where grouping stops, its dependencies found so far name it.
        """
        original_index = tp_helpers._HybridIndex
        original_add = tp.dependency.Group.add_dep
        budget = self.budget
        meter = Meter()

        class _Counted(original_index):  # type: ignore[misc, valid-type]
            __slots__ = ()

            def __new__(cls, idx: int, root_idx: int | None) -> _Counted:
                meter.entries += 1
                meter.total += 1
                if meter.total > budget.total_entries:
                    raise OverTotal(f"{budget.total_entries:,} index entries")
                if meter.entries > budget.index_entries:
                    raise OverBudget(f"{budget.index_entries:,} index entries")
                return original_index.__new__(cls, idx, root_idx)

        def add_dep(group: tp.Group, dep: Any, idxs: list) -> None:
            if group is not meter.group:
                meter.group, meter.size = group, 0
            reason = self._opaque.get(dep.target.module)
            if reason is not None:  # no further: nothing past it is mapped right
                raise Opaque(reason)
            meter.size += 1
            if meter.size > budget.group_size:
                raise OverBudget(f"{budget.group_size:,} dependencies in one group")
            original_add(group, dep, idxs)

        get_group = self.dg.get_pruning_group

        def recording(module: nn.Module, *args: Any, **kwargs: Any) -> tp.Group:
            meter.start(module)
            return get_group(module, *args, **kwargs)

        tp_helpers._HybridIndex = _Counted
        tp.dependency.Group.add_dep = add_dep
        self.dg.get_pruning_group = recording
        try:
            yield meter
        except OverTotal as exc:
            layer = self.names.get(meter.module, "?")
            raise UserError(
                f"cannot group the channels of {type(self.model).__name__}: torch-pruning's "
                f"dependency analysis passed its budget of {exc} for the whole model at layer "
                f"{layer!r} (reshapes, slices or permutes multiply its work); add that layer to "
                "ignored_layers, or raise taylorprune.graph.GROUPING_BUDGET to wait longer"
            ) from None
        finally:
            tp_helpers._HybridIndex = original_index
            tp.dependency.Group.add_dep = original_add
            self.dg.get_pruning_group = get_group

    def _to_channel_group(self, group: tp.Group) -> ChannelGroup | None:
        out_pruned: dict[str, tuple[nn.Module, list[int], list[int]]] = {}
        for item in group:
            dep = item.dep
            module = dep.target.module
            name = self.names.get(module)
            if name is None or not self.dg.is_out_channel_pruning_fn(dep.handler):
                continue
            if not isinstance(module, _NORM_TYPES + _ROOT_TYPES):
                continue
            out_pruned[name] = (module, list(item.idxs), list(item.root_idxs))
        if not out_pruned:
            return None
        root_item = group[0]
        root = self.names[root_item.dep.target.module]
        size = len(root_item.idxs)
        gates = []
        for name, (module, idxs, root_idxs) in out_pruned.items():
            if isinstance(module, _ROOT_TYPES) and self._feeds_norm_in(module, out_pruned):
                continue  # its BN carries the gate
            gates.append(GateSlice(name, tuple(idxs), tuple(root_idxs)))
        gates.sort(key=lambda g: g.name)
        return ChannelGroup(root, size, tuple(gates), tuple(sorted(out_pruned)))

    def _feeds_norm_in(self, module: nn.Module, out_pruned: dict) -> bool:
        node = self.dg.module2node.get(module)
        if node is None:
            return False
        for nxt in node.outputs:
            if isinstance(nxt.module, _NORM_TYPES) and self.names.get(nxt.module) in out_pruned:
                return True
        return False


def _resolve_patterns(
    modules: dict[str, nn.Module], patterns: Iterable[str], what: str
) -> list[str]:
    """Module names matched by ``patterns`` (exact names or regular expressions, full match)."""
    matched: list[str] = []
    for pattern in patterns:
        try:
            rx = re.compile(pattern)
        except re.error as exc:
            raise UserError(f"{what}: invalid pattern {pattern!r}: {exc}") from None
        hits = [n for n in modules if n and (n == pattern or rx.fullmatch(n))]
        if not hits:
            raise UserError(f"{what}: pattern {pattern!r} matches no module of the model")
        matched.extend(h for h in hits if h not in matched)
    return matched


def describe_left_whole(left: Sequence[LeftWhole], most: int = 6) -> str:
    """One line naming the groups left whole by their first layer, grouped by reason: at most
    ``most`` names per reason, then how many more."""
    by_reason: dict[str, list[str]] = {}
    for lw in left:
        by_reason.setdefault(lw.reason, []).append(lw.layers[0])
    parts = []
    for reason, firsts in by_reason.items():
        names = ", ".join(repr(n) for n in firsts[:most])
        more = f" and {len(firsts) - most} more" if len(firsts) > most else ""
        parts.append(f"{names}{more} ({reason})")
    return "; ".join(parts)
