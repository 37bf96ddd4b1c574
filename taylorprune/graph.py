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
        for module in _channel_shuffles(self.dg):
            self._opaque[module] = _SHUFFLE  # the cause, where its mapping also failed
        for module in _uses_of_uncalled_layers(self.dg, model):
            self._opaque.setdefault(module, _UNCALLED)
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
            except _Stop as exc:
                raise UserError(
                    f"cannot group the channels of layer {group.root!r}: {_BUDGET_REASON} of "
                    f"{exc}; add it to ignored_layers, or raise taylorprune.graph.GROUPING_BUDGET"
                ) from None
            except Exception as exc:
                raise UserError(
                    f"cannot group the channels of layer {group.root!r}: {_failure_reason(exc)}; "
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
        self, module: nn.Module, pruner: Any, width: int, meter: _Meter
    ) -> tuple[tp.Group | list, str | None]:
        """torch-pruning's group of all ``width`` output channels of ``module``, and why it must be
        left whole (None if it need not). Where the analysis fails or passes the budget, the
        dependencies found until then stand for the group."""
        try:
            group = self.dg.get_pruning_group(module, pruner.prune_out_channels, list(range(width)))
        except _OverTotal:
            raise
        except _Opaque as exc:
            return meter.partial, str(exc)
        except _OverBudget as exc:
            reason = f"{_BUDGET_REASON} of {exc} (reshapes, slices or permutes multiply it)"
            return meter.partial, reason
        except Exception as exc:  # torch-pruning's analysis fails in this one group
            return meter.partial, _failure_reason(exc)
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
        originals = {n: getattr(tp_index_mapping, n) for n in (*_MAPPINGS, "update_index_mapping")}
        update_all = originals.pop("update_index_mapping")
        opaque = self._opaque

        def tolerant(update: Callable[..., None]) -> Callable[..., None]:
            def mapped(graph: tp.DependencyGraph, node: Any) -> None:
                try:
                    update(graph, node)
                except _Stop:
                    raise
                except Exception as exc:  # torch-pruning's bug in this node only
                    kind = tp.ops.OPTYPE(node.type).name.lower()
                    opaque.setdefault(
                        node.module,
                        f"torch-pruning cannot map its channels through a {kind} "
                        f"({type(exc).__name__}: {_first_line(exc)})",
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
    def _budgeted(self) -> Iterator[_Meter]:
        """Count torch-pruning's work while grouping; past :attr:`budget` raise :class:`_OverBudget`
        inside the grouping of one root (the caller decides) or, past the budget of a whole
        enumeration, :class:`UserError`.

        torch-pruning builds every index as a ``_helpers._HybridIndex`` and every group with
        ``Group.add_dep``, both looked up at call time, so counting stand-ins replace them while we
        enumerate (the originals are always put back). The group being built is kept
        (:attr:`_Meter.partial`): where grouping stops, its dependencies found so far name it.
        """
        original_index = tp_helpers._HybridIndex
        original_add = tp.dependency.Group.add_dep
        budget = self.budget
        meter = _Meter()

        class _Counted(original_index):  # type: ignore[misc, valid-type]
            __slots__ = ()

            def __new__(cls, idx: int, root_idx: int | None) -> _Counted:
                meter.entries += 1
                meter.total += 1
                if meter.total > budget.total_entries:
                    raise _OverTotal(f"{budget.total_entries:,} index entries")
                if meter.entries > budget.index_entries:
                    raise _OverBudget(f"{budget.index_entries:,} index entries")
                return original_index.__new__(cls, idx, root_idx)

        def add_dep(group: tp.Group, dep: Any, idxs: list) -> None:
            if group is not meter.group:
                meter.group, meter.size = group, 0
            reason = self._opaque.get(dep.target.module)
            if reason is not None:  # no further: nothing past it is mapped right
                raise _Opaque(reason)
            meter.size += 1
            if meter.size > budget.group_size:
                raise _OverBudget(f"{budget.group_size:,} dependencies in one group")
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
        except _OverTotal as exc:
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


_SHUFFLE = (
    "its channels pass a channel shuffle (view, transpose, view), which torch-pruning maps as if "
    "the channels kept their order"
)
_UNCALLED = (
    "its channels meet a layer whose weights the forward uses without calling the layer "
    "(F.linear(x, layer.weight)), which torch-pruning cannot see"
)
_BUDGET_REASON = "torch-pruning's dependency analysis passed its budget"
# torch-pruning's index mapping functions, called one graph node at a time.
_MAPPINGS = tuple(
    n for n in dir(tp_index_mapping) if n.startswith("update_") and n != "update_index_mapping"
)


class _Stop(Exception):
    """Raised inside torch-pruning's grouping to stop it."""


class _OverBudget(_Stop):
    """The group being built passed the budget: it is left whole."""


class _OverTotal(_Stop):
    """The enumeration of all groups passed its budget: a UserError."""


class _Opaque(_Stop):
    """The group being built reached a node channels cannot pass safely: it is left whole."""


class _Meter:
    """torch-pruning's work counted by :meth:`ChannelGraph._budgeted`: index entries in all
    (``total``) and for the group being built (``entries``), its dependencies (``size``)."""

    def __init__(self) -> None:
        self.total = 0
        self.entries = 0
        self.size = 0
        self.group: tp.Group | None = None
        self.module: nn.Module | None = None

    def start(self, module: nn.Module) -> None:
        self.module, self.group, self.entries, self.size = module, None, 0, 0

    @property
    def partial(self) -> list:
        """The dependencies of the group being built, as far as it got."""
        return [] if self.group is None else list(self.group.items)


def _channel_shuffles(dg: tp.DependencyGraph) -> list[Any]:
    """The graph nodes (their modules) of every channel shuffle: a reshape that splits a dimension
    in two, a transpose of the two parts, a reshape that merges them again (ShuffleNet's
    ``x.view(b, g, c // g, h, w).transpose(1, 2).reshape(b, c, h, w)``). The channels come out in
    another order, and torch-pruning maps them as if they kept theirs."""
    reshape = tp.ops.OPTYPE.RESHAPE
    found: list[Any] = []
    for node in list(dg.module2node.values()):
        before = _saved_sizes(node.grad_fn) if node.type == reshape else None
        if before is None:
            continue
        for swap in _past_copies(node):
            for merge in _past_copies(swap):
                after = _saved_sizes(merge.grad_fn) if merge.type == reshape else None
                if after is not None and _shuffles(before, swap.grad_fn, after):
                    found += [node.module, swap.module, merge.module]
    return found


def _uses_of_uncalled_layers(dg: tp.DependencyGraph, model: nn.Module) -> list[Any]:
    """The graph nodes (their modules) of operations that use a conv or linear layer's weights
    directly while the layer itself is never called (torchvision's Swin attention runs
    ``F.linear(x, self.qkv.weight)``): torch-pruning sees neither the layer nor that the
    operation's channels depend on it, and prunes around it. A layer inside a module that
    torch-pruning prunes as a whole (``nn.MultiheadAttention``'s ``out_proj``) is seen."""
    in_graph = set(dg.module2node)
    hidden: set[int] = set()
    for name, module in model.named_modules():
        if not isinstance(module, _ROOT_TYPES) or module in in_graph:
            continue
        parts = name.split(".")
        ancestors = (model.get_submodule(".".join(parts[:i])) for i in range(len(parts)))
        if not any(a in in_graph for a in ancestors):
            hidden.update(id(p) for p in module.parameters(recurse=False))
    if not hidden:
        return []
    found = []
    for node in list(dg.module2node.values()):
        frontier = [node.grad_fn] if node.grad_fn is not None else []
        for _ in range(3):  # the op, a transpose of the weight, its leaf
            nxt = []
            for fn in frontier:
                if id(getattr(fn, "variable", None)) in hidden:
                    found.append(node.module)
                    nxt = []
                    break
                nxt += [f for f, _ in getattr(fn, "next_functions", ()) if f is not None]
            frontier = nxt
    return found


def _past_copies(node: Any) -> list[Any]:
    """The nodes that take ``node``'s output, looking through copies (``contiguous``)."""
    out, stack, seen = [], list(node.outputs), set()
    while stack:
        nxt = stack.pop()
        if id(nxt) in seen:
            continue
        seen.add(id(nxt))
        name = nxt.grad_fn.name() if hasattr(nxt.grad_fn, "name") else ""
        if name.startswith("CloneBackward"):
            stack.extend(nxt.outputs)
        else:
            out.append(nxt)
    return out


def _saved_sizes(grad_fn: Any) -> tuple[int, ...] | None:
    """The input shape a reshape's autograd node saved, if it did."""
    for attr in ("_saved_self_sym_sizes", "_saved_self_sizes"):
        sizes = getattr(grad_fn, attr, None)
        if sizes is not None:
            return tuple(int(v) for v in sizes)
    return None


def _shuffles(before: tuple[int, ...], swap: Any, after: tuple[int, ...]) -> bool:
    """Whether a reshape of ``before`` into ``after`` with one dimension split in two, their order
    swapped by ``swap`` (a transpose or permute autograd node), reorders that dimension."""
    n = len(after)
    if len(before) + 1 != n:
        return False
    name = swap.name() if hasattr(swap, "name") else ""
    if name.startswith("TransposeBackward"):
        moved = sorted({int(swap._saved_dim0) % n, int(swap._saved_dim1) % n})
    elif name.startswith("PermuteBackward"):
        dims = [int(d) % n for d in swap._saved_dims]
        moved = [i for i, d in enumerate(dims) if d != i]
        if len(moved) == 2 and dims[moved[0]] != moved[1]:
            return False
    else:
        return False
    if len(moved) != 2 or moved[1] != moved[0] + 1:
        return False
    k = moved[0]
    return (
        after[:k] == before[:k]
        and after[k + 2 :] == before[k + 1 :]
        and after[k] * after[k + 1] == before[k]
        and min(after[k], after[k + 1]) > 1
    )


def _failure_reason(exc: Exception) -> str:
    return (
        f"torch-pruning's dependency analysis fails on it ({type(exc).__name__}: "
        f"{_first_line(exc)})"
    )


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:160] if lines else "no message"


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
