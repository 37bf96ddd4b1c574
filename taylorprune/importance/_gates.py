"""Measuring gate gradients without gate parameters.

A gate g_c = 1 on output channel c of a module never exists as a parameter; its gradients are read
off what autograd computes anyway:

* batch gate gradient ``G_c = Σ y·dL/dy`` from parameter gradients (:func:`param_gate_grad`): exact
  for an affine BatchNorm (``γ·∂L/∂γ + β·∂L/∂β``) and for a conv/Linear (``Σ_filter w·∂L/∂w +
  b·∂L/∂b``), since the output is linear in those parameters; free after ``loss.backward()``;
* per-example gate gradients ``G[n, c]`` from hooks (:class:`PerExampleHooks`);
* second derivatives from explicit gate multipliers inserted by forward hooks
  (:class:`GateMultipliers`), which is the only way to double-backprop through a gate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

logger = logging.getLogger("taylorprune")

NORM_TYPES: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
FILTER_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def channel_dim(module: nn.Module) -> int:
    """Dimension of the output that indexes channels: last for Linear, 1 otherwise."""
    return -1 if isinstance(module, nn.Linear) else 1


def positions(module: nn.Module, output: Tensor) -> int:
    """Number of values per example and channel in ``output`` (H·W for a 2-D conv)."""
    return output[0].numel() // output.shape[channel_dim(module)]


def supports_param_grad(module: nn.Module) -> bool:
    """Whether :func:`param_gate_grad` is exact for ``module`` (its parameters get gradients)."""
    if isinstance(module, NORM_TYPES):
        return module.affine and module.weight.requires_grad and module.bias.requires_grad
    if isinstance(module, FILTER_TYPES):
        bias_ok = module.bias is None or module.bias.requires_grad
        return module.weight.requires_grad and bias_ok
    return False


def param_gate_grad(module: nn.Module) -> Tensor:
    """Batch gate gradient per output channel from the parameter gradients left by ``backward``.

    Exact because the output is linear in these parameters (see the module docstring). A missing
    ``.grad`` (the module took no part in the loss) counts as zero.
    """
    weight, bias = module.weight, module.bias
    out = _dot_per_channel(weight)
    if bias is not None and bias.grad is not None:
        out = out + bias.detach() * bias.grad
    return out


def _dot_per_channel(p: Tensor) -> Tensor:
    if p.grad is None:
        return torch.zeros(p.shape[0], dtype=p.dtype, device=p.device)
    return (p.detach() * p.grad).reshape(p.shape[0], -1).sum(1)


def weight_grad_terms(module: nn.Module) -> Tensor:
    """``Σ_{s∈filter c} (w_s·∂L/∂w_s)²`` per output channel of a conv/Linear, bias included."""
    terms = []
    for p in (module.weight, module.bias):
        if p is None:
            continue
        if p.grad is None:
            terms.append(torch.zeros(p.shape[0], dtype=p.dtype, device=p.device))
        else:
            terms.append((p.detach() * p.grad).square().reshape(p.shape[0], -1).sum(1))
    return sum(terms)


class PerExampleHooks:
    """Per-example gate gradients ``G[n, c] = Σ_positions y·dL/dy`` of each gate module's output.

    A forward hook registers a tensor hook on the output; the tensor hook fires with dL/dy during
    backward and appends the ``(N, C)`` result to ``pending[name]`` (one entry per backward pass).

    Memory: nothing is stored on this object between forward and backward. What the tensor hook
    needs lives in its closure, owned by the autograd graph and freed with it. For a BatchNorm the
    closure holds the BN *input* x, which BN saves for its own backward anyway, and recomputes ``Σ
    dy·y = γ·invstd·(Σ dy·x − μ·Σ dy) + β·Σ dy`` with the statistics the forward used (batch
    statistics in training mode, running statistics in eval mode). In training mode the batch
    statistics are read off the running-statistics update (a pre-hook keeps the old running values:
    C numbers), so no extra pass over x is needed; a BN without running statistics gets them from
    two per-example reductions in backward. Holding x instead of y also makes
    it immune to in-place ops after the BN (``ReLU(inplace=True)``, ``out += identity``): a tensor
    hook registered before an in-place op receives the gradient of the original value. For a
    conv/Linear gate the closure holds the output itself; if an in-place op then changes it, the
    result is exact only for a ReLU (``dy`` is zero wherever ReLU changed ``y``), and a warning is
    logged once.
    """

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.pending: dict[str, list[Tensor]] = {name: [] for name in modules}
        self.positions: dict[str, int] = {}
        self._warned = False
        self._before: dict[str, tuple[Tensor, Tensor, Tensor | None]] = {}
        self._handles: list[RemovableHandle] = [
            m.register_forward_hook(partial(self._forward, name)) for name, m in modules.items()
        ]
        self._handles += [
            m.register_forward_pre_hook(partial(self._keep_running, name))
            for name, m in modules.items()
            if isinstance(m, NORM_TYPES)
        ]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def clear(self) -> None:
        for v in self.pending.values():
            v.clear()

    def _keep_running(self, name: str, module: nn.Module, _inputs: tuple) -> None:
        if module.training and module.running_mean is not None and torch.is_grad_enabled():
            tracked = module.num_batches_tracked
            self._before[name] = (
                module.running_mean.detach().clone(),
                module.running_var.detach().clone(),
                None if tracked is None else tracked.detach().clone(),
            )

    def _forward(self, name: str, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        before = self._before.pop(name, None)
        if not (torch.is_grad_enabled() and isinstance(output, Tensor) and output.requires_grad):
            return
        self.positions[name] = positions(module, output)
        if isinstance(module, NORM_TYPES):
            stats = None if before is None else _batch_stats(module, inputs[0], before)
            hook = _bn_hook(module, inputs[0], stats)
        else:
            hook = _output_hook(module, output.detach(), output._version, self._warn_inplace)
        output.register_hook(partial(self._record, name, hook))

    def _record(self, name: str, hook: Callable[[Tensor], Tensor], dy: Tensor) -> None:
        with torch.no_grad():
            self.pending[name].append(hook(dy).float())

    def _warn_inplace(self, module: nn.Module) -> None:
        if not self._warned:
            self._warned = True
            logger.warning(
                "output of gate %s was modified in place after the gate; per-example scores "
                "there are exact only if the in-place op is a ReLU",
                type(module).__name__,
            )


def _per_example_dot(a: Tensor, b: Tensor, dim: int) -> Tensor:
    """``Σ_positions a·b`` per example and channel, as ``(N, C)``."""
    if dim == -1:
        a = a.reshape(a.shape[0], -1, a.shape[-1])
        b = b.reshape(b.shape[0], -1, b.shape[-1])
        return torch.einsum("npc,npc->nc", a, b)
    a = a.reshape(a.shape[0], a.shape[1], -1)
    b = b.reshape(b.shape[0], b.shape[1], -1)
    return torch.einsum("ncp,ncp->nc", a, b)


def _per_example_sum(a: Tensor, dim: int) -> Tensor:
    if dim == -1:
        return a.reshape(a.shape[0], -1, a.shape[-1]).sum(1)
    return a.reshape(a.shape[0], a.shape[1], -1).sum(2)


def _batch_stats(
    bn: nn.Module, x: Tensor, before: tuple[Tensor, Tensor, Tensor | None]
) -> tuple[Tensor, Tensor] | None:
    """The (biased) batch variance and mean a training-mode BN just used, solved from its update
    ``new = (1 - f)·old + f·batch`` of the running statistics (running_var holds the unbiased
    variance). None when the update cannot be inverted (no update, or a factor of 0)."""
    old_mean, old_var, old_tracked = before
    if bn.momentum is not None:
        f = float(bn.momentum)
    elif bn.num_batches_tracked is not None:
        f = 1.0 / float(bn.num_batches_tracked.item())  # cumulative average
    else:
        return None
    if f <= 0 or (old_tracked is not None and bn.num_batches_tracked.item() == old_tracked.item()):
        return None
    n = x.numel() // x.shape[1]
    mean = (bn.running_mean.detach() - (1 - f) * old_mean) / f
    unbiased = (bn.running_var.detach() - (1 - f) * old_var) / f
    var = unbiased * ((n - 1) / n) if n > 1 else unbiased
    return var.clamp_min(0), mean


def _bn_hook(
    bn: nn.Module, x: Tensor, stats: tuple[Tensor, Tensor] | None = None
) -> Callable[[Tensor], Tensor]:
    batch_stats = bn.training or bn.running_mean is None
    if not batch_stats:
        var, mean = bn.running_var.detach().clone(), bn.running_mean.detach().clone()
    elif stats is not None:
        var, mean = stats
    else:
        var = mean = None  # computed from x in backward, with per-example reductions
    eps = bn.eps
    weight = None if bn.weight is None else bn.weight.detach()
    bias = None if bn.bias is None else bn.bias.detach()

    def hook(dy: Tensor) -> Tensor:
        xd = x.detach()
        if var is None:
            # one pass for Σx and one for Σx², cheaper than var_mean over the whole tensor
            count = xd.numel() // xd.shape[1]
            m = _per_example_sum(xd, 1).sum(0) / count
            v = (_per_example_dot(xd, xd, 1).sum(0) / count - m * m).clamp_min(0)
        else:
            v, m = var, mean
        invstd = torch.rsqrt(v + eps)
        s0 = _per_example_sum(dy, 1)
        s1 = _per_example_dot(dy, xd, 1)
        xhat_dy = (s1 - m * s0) * invstd  # Σ dy·x̂ per example and channel
        out = xhat_dy if weight is None else xhat_dy * weight
        return out if bias is None else out + s0 * bias

    return hook


def _output_hook(
    module: nn.Module, y: Tensor, version: int, warn: Callable[[nn.Module], None]
) -> Callable[[Tensor], Tensor]:
    dim = channel_dim(module)

    def hook(dy: Tensor) -> Tensor:
        if y._version != version:
            warn(module)
        return _per_example_dot(dy, y, dim)

    return hook


class GateMultipliers:
    """Explicit gates for double backprop: each gate module's output is multiplied by a ones vector.

    One leaf tensor per group (``gates[root]``, length ``group.size``) is shared by all of the
    group's gate modules, so its gradient is the shared gate's gradient and its Hessian includes the
    coupled cross terms. ``layout[name]`` lists ``(root, idxs, root_idxs)`` for the slices on module
    ``name``; channels of a module outside every slice get a constant 1.
    """

    def __init__(
        self,
        modules: dict[str, nn.Module],
        layout: dict[str, list[tuple[str, list[int], list[int]]]],
        sizes: dict[str, int],
    ) -> None:
        self.gates = {root: torch.ones(size, requires_grad=True) for root, size in sizes.items()}
        self._layout = layout
        self._handles = [
            m.register_forward_hook(partial(self._forward, name)) for name, m in modules.items()
        ]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _forward(self, name: str, module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        if not torch.is_grad_enabled():
            return output
        dim = channel_dim(module)
        channels = output.shape[dim]
        mult = torch.ones(channels, dtype=output.dtype, device=output.device)
        for root, idxs, root_idxs in self._layout[name]:
            gate = self.gates[root].to(device=output.device, dtype=output.dtype)
            mult = mult.index_put((torch.tensor(idxs, device=output.device),), gate[root_idxs])
        shape = [1] * output.dim()
        shape[dim] = channels
        return output * mult.view(shape)


def gate_hessian_diagonal(
    loss: Tensor, gates: Sequence[Tensor], criterion: Any, generator: torch.Generator
) -> tuple[list[Tensor], list[Tensor]]:
    """Per gate tensor: dL/dg (kept in the graph) and the diagonal of d²L/dg², exactly (one double
    backward per channel, ``criterion.hessian == "exact"``) or by ``criterion.probes`` Rademacher
    probes (Hutchinson: ``E_z[z ⊙ Hz]``)."""
    grads = list(torch.autograd.grad(loss, list(gates), create_graph=True, allow_unused=True))
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, gates, strict=False)]
    hess = [torch.zeros(t.numel()) for t in gates]
    if criterion.hessian == "exact":
        for i, (g, t) in enumerate(zip(grads, gates, strict=False)):
            if not g.requires_grad:
                continue
            for c in range(t.numel()):
                (row,) = torch.autograd.grad(g[c], t, retain_graph=True, allow_unused=True)
                hess[i][c] = 0.0 if row is None else row[c].item()
        return grads, hess
    live = [i for i, g in enumerate(grads) if g.requires_grad]
    for _ in range(criterion.probes):
        z = [
            torch.randint(0, 2, (gates[i].numel(),), generator=generator).float() * 2 - 1
            for i in live
        ]
        dot = sum((grads[i] * zi).sum() for i, zi in zip(live, z, strict=False))
        hz = torch.autograd.grad(
            dot, [gates[i] for i in live], retain_graph=True, allow_unused=True
        )
        for i, zi, h in zip(live, z, hz, strict=False):
            if h is not None:
                hess[i] += zi * h.detach() / criterion.probes
    return grads, hess
