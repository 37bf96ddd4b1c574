"""A fully connected classifier, by default the classic 784-1000-1000-500-200-10 MLP.

Pruning an MLP removes hidden *units* (rows of one weight matrix and the matching columns of the
next), the Linear analogue of removing conv channels. The layers are bias-free by default so that a
unit is exactly its incoming weights, which is what a weight-pruning versus unit-pruning comparison
needs.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from taylorprune.errors import UserError
from taylorprune.models._factory import BUILTIN


class MLP(nn.Module):
    """Flatten, then ``Linear → [BatchNorm1d] → ReLU`` per hidden layer, then a Linear classifier.

    Input ``(N, in_chans, input_size, input_size)`` (or anything with ``in_features`` elements per
    example); output logits ``(N, num_classes)``. Hidden layers are named ``fc1, fc2, …`` (with
    ``bn1, bn2, …`` when ``batchnorm``) and the classifier ``fc``.
    """

    def __init__(
        self,
        in_features: int = 784,
        num_classes: int = 10,
        hidden: Sequence[int] = (1000, 1000, 500, 200),
        bias: bool = False,
        batchnorm: bool = False,
    ) -> None:
        super().__init__()
        if in_features < 1 or any(int(h) < 1 for h in hidden):
            raise UserError(
                f"MLP sizes must be positive, got in_features={in_features}, hidden={hidden}"
            )
        self.flatten = nn.Flatten(1)
        layers: list[tuple[str, nn.Module]] = []
        width = in_features
        for i, h in enumerate(hidden, start=1):
            # With BN after it, a Linear bias is redundant (BN's beta absorbs it).
            layers.append((f"fc{i}", nn.Linear(width, int(h), bias=bias and not batchnorm)))
            if batchnorm:
                layers.append((f"bn{i}", nn.BatchNorm1d(int(h))))
            layers.append((f"relu{i}", nn.ReLU(inplace=True)))
            width = int(h)
        self.hidden = nn.Sequential()
        for name, module in layers:
            self.hidden.add_module(name, module)
        self.fc = nn.Linear(width, num_classes, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.hidden(self.flatten(x)))


@BUILTIN.register("mlp")
def mlp(
    *,
    num_classes: int = 10,
    in_chans: int = 1,
    input_size: int = 28,
    hidden: Sequence[int] = (1000, 1000, 500, 200),
    bias: bool = False,
    batchnorm: bool = False,
) -> MLP:
    """MLP for ``in_chans × input_size × input_size`` inputs; kwargs ``input_size`` (pixels per
    side, default 28), ``hidden``, ``bias`` (default False), ``batchnorm`` (default False)."""
    return MLP(in_chans * input_size * input_size, num_classes, tuple(hidden), bias, batchnorm)
