"""Channel importance criteria: one registered class per criterion.

A criterion turns what the accumulator measured on one minibatch (:class:`GroupBatch`: the gate
gradients of one channel group) into a per-minibatch score, one value per channel of the group. The
accumulator averages these over the minibatches since the last pruning step;
:meth:`Criterion.finalize` runs at ranking time. Criteria that depend only on weights (``needs``
empty) are scored from the current weights by :meth:`Criterion.static_score` instead.

Notation (see ``docs/importance.md``): a gate g_c = 1 multiplies output channel c of a gate module;
L is the minibatch loss (mean over the batch); ``G_c = dL/dg_c = Σ_{n,positions} y·dL/dy`` and its
per-example parts ``G[n, c]``. Coupled gates (one torch-pruning group) are one shared gate: their
gradients are summed per channel *before* any squaring, with no rescaling.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from taylorprune._registry import Registry
from taylorprune.errors import UserError
from taylorprune.importance import defaults

#: What a criterion can ask the accumulator to measure per minibatch.
#: ``grad``: batch gate gradient G (from parameter gradients where exact, else hooks);
#: ``per_example``: per-example gate gradients G[n] (needs hooks);
#: ``weight_grad``: Σ over each filter of (w·dL/dw)²;
#: ``hessian``: diagonal of d²L/dg² by double backprop (needs ``ImportanceAccumulator.backward``);
#: ``param_grad``: every parameter's gradient summed over the window, read at ranking time.
NEEDS = frozenset({"grad", "per_example", "weight_grad", "hessian", "param_grad"})


@dataclass
class GroupBatch:
    """One minibatch's measurements for one channel group (tensors have ``group.size`` channels).

    ``per_example`` holds one ``(N_k, size)`` tensor per backward pass since the last update
    (usually one); ``batch_sizes`` their N_k; ``positions`` is the number of spatial positions per
    channel of the group's gates (H·W for a conv, 1 for a Linear on 2-D input).
    """

    grad: Tensor | None = None
    per_example: list[Tensor] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    positions: int = 1
    weight_grad: Tensor | None = None
    hessian: Tensor | None = None


@dataclass
class Filter:
    """Output channels ``idxs`` of a conv/Linear ``module`` that are the group's channels
    ``root_idxs``."""

    module: nn.Module
    idxs: list[int]
    root_idxs: list[int]


@dataclass
class GroupWeights:
    """The weights behind one group: its conv/Linear filters and its BatchNorm gates, and (when
    the accumulator was given the channel graph) torch-pruning's group of all its channels."""

    size: int
    filters: list[Filter]
    norms: list[Filter]  # BatchNorm gates (``module`` is the BN)
    tp_group: Callable[[], Any] | None = None


class Criterion:
    """Base class: subclasses set ``needs`` and override :meth:`batch_score` or
    :meth:`static_score`."""

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()
    #: static criteria only: draw once per window and keep the draw (``random``)
    per_window: ClassVar[bool] = False
    #: scores need the channel graph the groups come from (``ImportanceAccumulator(graph=...)``)
    needs_graph: ClassVar[bool] = False
    #: the window's score is centred: the mean of :meth:`batch_score` minus the square of the mean
    #: of :meth:`batch_signed` (a variance across minibatches when ``batch_score`` is its square)
    centred: ClassVar[bool] = False

    @property
    def static(self) -> bool:
        """True when scores come from the current weights only (no gradients, no accumulation)."""
        return not self.needs

    @property
    def from_weights(self) -> bool:
        """True when :meth:`static_score` ranks the channels (static criteria, and those that only
        read the window's summed parameter gradients)."""
        return self.needs <= {"param_grad"}

    @property
    def requirements(self) -> frozenset[str]:
        """What must be measured per minibatch (may depend on the instance's options)."""
        return self.needs

    def batch_score(self, batch: GroupBatch) -> Tensor:
        """Per-minibatch score, 1-D with one value per channel of the group."""
        raise NotImplementedError

    def static_score(self, weights: GroupWeights, generator: torch.Generator) -> Tensor:
        """Score from the current weights (criteria with empty ``needs``)."""
        raise NotImplementedError

    def batch_signed(self, batch: GroupBatch) -> Tensor:
        """Centred criteria: the per-minibatch quantity whose mean square is subtracted."""
        raise NotImplementedError

    def finalize(self, scores: Tensor) -> Tensor:
        """Ranking-time transform of a group's mean score (identity unless a criterion needs
        one)."""
        return scores

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


CRITERIA: Registry[type[Criterion]] = Registry("importance criterion")

DEFAULT_CRITERION = defaults.CRITERION


def build_criterion(criterion: str | Criterion) -> Criterion:
    """A criterion instance from a registered name (or the instance itself); unknown names are
    :class:`UserError`."""
    if isinstance(criterion, Criterion):
        return criterion
    return CRITERIA.get(criterion)()


@CRITERIA.register("taylor_fo_bn")
class TaylorFOBN(Criterion):
    """Taylor-FO-BN (CVPR'19, the default): ``(G_c)²`` per minibatch, G the batch gate gradient.

    With the gate after an affine BatchNorm ``G_c = γ_c·∂L/∂γ_c + β_c·∂L/∂β_c`` exactly, and after a
    conv/Linear ``G_c = Σ_filter w·∂L/∂w + b_c·∂L/∂b_c``, so no hooks are needed.
    """

    name = "taylor_fo_bn"
    needs = frozenset({"grad"})

    def batch_score(self, batch: GroupBatch) -> Tensor:
        return batch.grad.square()


@CRITERIA.register("taylor_fo_bn_var")
class TaylorFOBNVariance(Criterion):
    """Taylor-FO-BN centred: the variance of the batch gate gradient ``G_c`` across the window's
    minibatches, ``mean(G²) − mean(G)²``.

    ``mean(G²)`` (the paper's score) is ``mean(G)² + var(G)``. ``var(G)`` estimates the empirical
    Fisher of the gate (the per-example gradient variance over the batch size): the curvature that
    predicts the held-out loss change near a minimum. ``mean(G)²`` is the window's systematic
    gradient; on a network trained to its weight-decay equilibrium that is the balance of weight
    decay, ``−λ(γ² + β²)``, which says nothing of the channel (docs/importance.md). Same cost as
    ``taylor_fo_bn``; needs at least two minibatches per window.
    """

    name = "taylor_fo_bn_var"
    needs = frozenset({"grad"})
    centred = True

    def batch_score(self, batch: GroupBatch) -> Tensor:
        return batch.grad.square()

    def batch_signed(self, batch: GroupBatch) -> Tensor:
        return batch.grad


@CRITERIA.register("taylor_fo_bn_fg")
class TaylorFOBNFullGrad(Criterion):
    """ "Full gradient" Taylor-FO-BN: ``Σ_n G[n, c]²``, squaring per example before summing."""

    name = "taylor_fo_bn_fg"
    needs = frozenset({"per_example"})

    def batch_score(self, batch: GroupBatch) -> Tensor:
        return sum(g.square().sum(0) for g in batch.per_example)


@CRITERIA.register("taylor_fo_weight")
class TaylorFOWeight(Criterion):
    """Taylor-FO on weights: ``Σ_{s∈filter c} (w_s·∂L/∂w_s)²`` over the conv/Linear weights and bias
    of every coupled filter of the channel (BatchNorm parameters are not counted)."""

    name = "taylor_fo_weight"
    needs = frozenset({"weight_grad"})

    def batch_score(self, batch: GroupBatch) -> Tensor:
        return batch.weight_grad


@CRITERIA.register("taylor_so")
class TaylorSO(Criterion):
    """Second-order Taylor: ``(−G_c + ½·H_cc)²``, the squared predicted loss change when g_c → 0.

    ``hessian`` picks the estimate of H_cc = d²L/dg_c²:

    * ``"fisher"`` (default, scales to ResNet-50): diagonal empirical Fisher of the per-example gate
      gradients, ``H_cc ≈ N·Σ_n G[n, c]²`` (L is a mean over N examples, so example n's own gradient
      is ``N·G[n, c]`` and the Fisher is their mean square). Costs the per-example hooks only.
    * ``"hutchinson"``: ``E_z[z ⊙ Hz]`` with ``probes`` Rademacher vectors per minibatch; one double
      backward per probe. Needs ``ImportanceAccumulator.backward(loss)``.
    * ``"exact"``: one double backward per channel (small models only, to validate the estimates).
      Needs ``ImportanceAccumulator.backward(loss)``.

    For coupled gates H is the second derivative in the shared gate (within-group cross terms
    included).
    """

    name = "taylor_so"
    HESSIANS: ClassVar[tuple[str, ...]] = ("fisher", "hutchinson", "exact")

    def __init__(self, hessian: str = "fisher", probes: int = 1) -> None:
        if hessian not in self.HESSIANS:
            choices = ", ".join(self.HESSIANS)
            raise UserError(f"taylor_so: unknown hessian estimate {hessian!r}; choices: {choices}")
        if probes < 1:
            raise UserError(f"taylor_so: probes must be at least 1, got {probes}")
        self.hessian = hessian
        self.probes = probes

    @property
    def requirements(self) -> frozenset[str]:
        if self.hessian == "fisher":
            return frozenset({"grad", "per_example"})
        return frozenset({"grad", "hessian"})

    needs = frozenset({"grad", "per_example"})

    def hessian_diag(self, batch: GroupBatch) -> Tensor:
        """The H_cc estimate used for this minibatch."""
        if self.hessian == "fisher":
            return sum(
                n * g.square().sum(0)
                for n, g in zip(batch.batch_sizes, batch.per_example, strict=False)
            )
        return batch.hessian

    def batch_score(self, batch: GroupBatch) -> Tensor:
        return (0.5 * self.hessian_diag(batch) - batch.grad).square()

    def __repr__(self) -> str:
        return f"TaylorSO(hessian={self.hessian!r}, probes={self.probes})"


@CRITERIA.register("taylor_act")
class TaylorAct(Criterion):
    """ICLR'17 Taylor criterion: ``mean_n |(1/M)·G[n, c]|`` (M positions per channel), then divided
    by the L2 norm of the group's scores at ranking time so that groups can be ranked together."""

    name = "taylor_act"
    needs = frozenset({"per_example"})

    def batch_score(self, batch: GroupBatch) -> Tensor:
        per_example = torch.cat(batch.per_example)
        return per_example.abs().mean(0) / batch.positions

    def finalize(self, scores: Tensor) -> Tensor:
        norm = scores.norm()
        return scores / norm if norm > 0 else scores


def _filter_sum(weights: GroupWeights, fn) -> Tensor:
    """Σ over every coupled filter of ``fn(weight)`` reduced over all but the output dimension."""
    out = torch.zeros(weights.size, dtype=torch.float64)
    for f in weights.filters:
        w = f.module.weight.detach()
        per_channel = fn(w[f.idxs].double()).flatten(1).sum(1).cpu()  # scores live on the CPU
        out.index_add_(0, torch.tensor(f.root_idxs), per_channel)
    return out.float()


@CRITERIA.register("l1_norm")
class L1Norm(Criterion):
    """Li et al. 2017: ``Σ|w|`` over the filter (kernel weights, no bias), summed over coupled
    filters."""

    name = "l1_norm"

    def static_score(self, weights: GroupWeights, generator: torch.Generator) -> Tensor:
        return _filter_sum(weights, torch.abs)


@CRITERIA.register("l2_norm")
class L2Norm(Criterion):
    """``Σw²`` over the filter (kernel weights, no bias), summed over coupled filters."""

    name = "l2_norm"

    def static_score(self, weights: GroupWeights, generator: torch.Generator) -> Tensor:
        return _filter_sum(weights, torch.square)


@CRITERIA.register("bn_scale")
class BNScale(Criterion):
    """Network slimming: ``|γ_c|``, summed over coupled BatchNorm gates. Groups without a BatchNorm
    gate (e.g. the classifier) score +inf: this baseline never prunes them."""

    name = "bn_scale"

    def static_score(self, weights: GroupWeights, generator: torch.Generator) -> Tensor:
        if not weights.norms:
            return torch.full((weights.size,), float("inf"))
        out = torch.zeros(weights.size)
        for f in weights.norms:
            gamma = f.module.weight
            vals = (
                torch.ones(len(f.idxs)) if gamma is None else gamma.detach()[f.idxs].abs().float()
            )
            out.index_add_(0, torch.tensor(f.root_idxs), vals.cpu())
        return out


@CRITERIA.register("random")
class Random(Criterion):
    """Uniform random scores in [0, 1), drawn from the accumulator's seeded generator once per
    window."""

    name = "random"
    per_window = True

    def static_score(self, weights: GroupWeights, generator: torch.Generator) -> Tensor:
        return torch.rand(weights.size, generator=generator)
