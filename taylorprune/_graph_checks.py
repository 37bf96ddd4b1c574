"""What torch-pruning's dependency analysis cannot be trusted with, found before grouping: channel
shuffles (whose new channel order it maps as the old) and layers whose weights the forward uses
without calling the layer (which it cannot see); and the signals that stop a grouping that runs
away or reaches such a place, so that the group is left whole instead.
"""

from __future__ import annotations

from typing import Any

import torch_pruning as tp
from torch import nn
from torch_pruning.dependency import index_mapping as tp_index_mapping

#: Module types that own output channels (what a layer is, to the checks below).
_ROOT_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

SHUFFLE_REASON = (
    "its channels pass a channel shuffle (view, transpose, view), which torch-pruning maps as if "
    "the channels kept their order"
)
UNCALLED_REASON = (
    "its channels meet a layer whose weights the forward uses without calling the layer "
    "(F.linear(x, layer.weight)), which torch-pruning cannot see"
)
BUDGET_REASON = "torch-pruning's dependency analysis passed its budget"
# torch-pruning's index mapping functions, called one graph node at a time.
MAPPINGS = tuple(
    n for n in dir(tp_index_mapping) if n.startswith("update_") and n != "update_index_mapping"
)


class Stop(Exception):
    """Raised inside torch-pruning's grouping to stop it."""


class OverBudget(Stop):
    """The group being built passed the budget: it is left whole."""


class OverTotal(Stop):
    """The enumeration of all groups passed its budget: a UserError."""


class Opaque(Stop):
    """The group being built reached a node channels cannot pass safely: it is left whole."""


class Meter:
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


def channel_shuffles(dg: tp.DependencyGraph) -> list[Any]:
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


def uses_of_uncalled_layers(dg: tp.DependencyGraph, model: nn.Module) -> list[Any]:
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


def failure_reason(exc: Exception) -> str:
    return (
        f"torch-pruning's dependency analysis fails on it ({type(exc).__name__}: "
        f"{first_line(exc)})"
    )


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:160] if lines else "no message"
