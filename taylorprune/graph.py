"""Channel groups and gates, read off torch-pruning's dependency graph.

torch-pruning couples every layer whose channels must be removed together into a *group* (the
residual stream of a ResNet stage is one group: the downsample BN and every block's last BN). For
Taylor scoring we need, per group, the *gates*: the modules on whose output a channel's importance
is measured. A gate is the BatchNorm of a conv→BN pair, otherwise the conv or Linear whose output
channels are pruned.

Within a group, channel ``root_idxs[k]`` of the group's root is channel ``idxs[k]`` of each member;
for ResNets both are ``0..C-1``, after a concatenation they differ. :class:`GateSlice` keeps both so
that scores can be summed across coupled gates per physical channel."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import _helpers as tp_helpers

from taylorprune.errors import UserError

# Module types whose output channels can carry a gate. A conv followed by its BN hands the gate to
# the BN.
_NORM_TYPES: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_ROOT_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class GroupingBudget:
    """Limits on torch-pruning's work while it groups channels once (one ``groups()`` or
    ``tp_group()`` call); past either, grouping stops with a clear error instead of a hang.

    ``index_entries``: channel-index entries created in all. Measured for whole models: ResNet-50
    12 k, VGG-16 at 224 px 164 k, DenseNet-201 222 k; Swin's window reshapes multiply them without
    end (torchvision swin_t: 10 M in 40 s, then out of memory).
    ``group_size``: dependencies gathered into one group. Largest measured: ViT-B/16 972, ConvNeXt-B
    658, DenseNet-201 396; timm's ReXNet grows one group without end, each addition scanning the
    whole group (27 k after 90 s).
    """

    index_entries: int = 4_000_000
    group_size: int = 20_000


GROUPING_BUDGET = GroupingBudget()


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

    Grouping stops with :class:`UserError` once torch-pruning's work passes ``budget`` (default
    :data:`GROUPING_BUDGET`): models whose reshapes make its analysis explode get one line naming
    the layer instead of a hang.

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
        modules = dict(model.named_modules())
        self.ignored = _resolve_patterns(modules, ignored_layers, "ignored_layers")
        self.include = None if include is None else list(include)
        if self.include is not None:
            _resolve_patterns(modules, self.include, "include")

        was_training = model.training
        requires = {p: p.requires_grad for p in model.parameters()}
        for p in model.parameters():
            p.requires_grad_(True)
        try:
            self.dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
        except Exception as exc:  # torch-pruning raises bare exceptions for unsupported graphs
            raise UserError(f"cannot trace model for pruning: {type(exc).__name__}: {exc}") from exc
        finally:
            for p, r in requires.items():
                p.requires_grad_(r)
            model.train(was_training)

    # -- groups ------------------------------------------------------------------------------------
    def groups(self) -> list[ChannelGroup]:
        """Every prunable group of the model as it is now (after any removals)."""
        ignored = [self._module(n) for n in self.ignored]
        out = []
        with self._budgeted():
            groups = self.dg.get_all_groups(ignored_layers=ignored, root_module_types=_ROOT_TYPES)
            for group in groups:
                cg = self._to_channel_group(group)
                if cg is None:
                    continue
                if self.include is not None and not any(
                    re.fullmatch(p, cg.root) for p in self.include
                ):
                    continue
                out.append(cg)
        return out

    def tp_group(self, group: ChannelGroup, root_idxs: Sequence[int]) -> tp.Group:
        """torch-pruning's group that removes channels ``root_idxs`` of ``group``'s root."""
        root = self._module(group.root)
        fn = self.dg.get_pruner_of_module(root).prune_out_channels
        with self._budgeted():
            return self.dg.get_pruning_group(root, fn, idxs=list(root_idxs))

    # -- internals ---------------------------------------------------------------------------------
    def _module(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    @contextmanager
    def _budgeted(self) -> Iterator[None]:
        """Count torch-pruning's work while grouping; past :attr:`budget` raise UserError.

        torch-pruning builds every index as a ``_helpers._HybridIndex`` and every group with
        ``Group.add_dep``, both looked up at call time, so counting stand-ins replace them while we
        enumerate (the originals are always put back). The layer being grouped is recorded from
        the graph's own calls, for the message and to count each group's size on its own.
        """
        original_index = tp_helpers._HybridIndex
        original_add = tp.dependency.Group.add_dep
        budget = self.budget
        entries = 0
        size = 0
        current: list[nn.Module] = []

        class _Counted(original_index):  # type: ignore[misc, valid-type]
            __slots__ = ()

            def __new__(cls, idx: int, root_idx: int | None) -> _Counted:
                nonlocal entries
                entries += 1
                if entries > budget.index_entries:
                    raise _OverBudget(f"{budget.index_entries:,} index entries")
                return original_index.__new__(cls, idx, root_idx)

        def add_dep(group: tp.Group, dep: object, idxs: list) -> None:
            nonlocal size
            size += 1
            if size > budget.group_size:
                raise _OverBudget(f"{budget.group_size:,} dependencies in one group")
            original_add(group, dep, idxs)

        get_group = self.dg.get_pruning_group

        def recording(module: nn.Module, *args, **kwargs) -> tp.Group:
            nonlocal size
            current[:] = [module]
            size = 0
            return get_group(module, *args, **kwargs)

        tp_helpers._HybridIndex = _Counted
        tp.dependency.Group.add_dep = add_dep
        self.dg.get_pruning_group = recording
        try:
            yield
        except _OverBudget as exc:
            layer = self.names.get(current[0], "?") if current else "?"
            raise UserError(
                f"cannot group the channels of {type(self.model).__name__}: torch-pruning's "
                f"dependency analysis passed its budget of {exc} at layer {layer!r} (reshapes, "
                "slices or permutes multiply its work); add that layer to ignored_layers, or raise "
                "taylorprune.graph.GROUPING_BUDGET to wait longer"
            ) from None
        finally:
            tp_helpers._HybridIndex = original_index
            tp.dependency.Group.add_dep = original_add
            del self.dg.get_pruning_group

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


class _OverBudget(Exception):
    """Raised inside torch-pruning's enumeration to stop it; turned into a UserError."""


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
