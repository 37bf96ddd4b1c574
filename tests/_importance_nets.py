"""Tiny nets with an explicit gated forward, the independent reference for importance tests.

``forward(x, gates)`` multiplies each gate position by ``gates[key]``: shape ``(C,)`` for one gate
shared by the batch, ``(N, C)`` for per-example gates. Coupled positions use the same key.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn


def gate(y: Tensor, g: Tensor | None) -> Tensor:
    if g is None:
        return y
    shape = list(g.shape) + [1] * (y.dim() - g.dim() - (1 if g.dim() == 1 else 0))
    if g.dim() == 1:
        shape = [1, *shape]
    return y * g.view(shape)


class Plain(nn.Module):
    """conv→BN→ReLU(inplace), conv with bias (no BN)→ReLU, pool, Linear."""

    # gate module name -> key in ``gates``; filters (conv/Linear weights) behind each key
    GATES: ClassVar[dict] = {"bn1": "bn1", "conv2": "conv2", "fc": "fc"}
    FILTERS: ClassVar[dict] = {"bn1": ["conv1"], "conv2": ["conv2"], "fc": ["fc"]}
    POSITIONS: ClassVar[dict] = {"bn1": 16, "conv2": 16, "fc": 1}

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(3)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor, gates: dict[str, Tensor] | None = None) -> Tensor:
        g = gates or {}
        x = self.relu1(gate(self.bn1(self.conv1(x)), g.get("bn1")))
        x = self.relu2(gate(self.conv2(x), g.get("conv2")))
        x = self.pool(x).flatten(1)
        return gate(self.fc(x), g.get("fc"))


class Res(nn.Module):
    """A stem and one basic residual block: bn0 and bn2 share the residual stream's channels.
    The block adds the identity in place (as torchvision's blocks do)."""

    GATES: ClassVar[dict] = {"bn0": "stream", "bn2": "stream", "bn1": "bn1", "fc": "fc"}
    FILTERS: ClassVar[dict] = {"stream": ["conv0", "conv2"], "bn1": ["conv1"], "fc": ["fc"]}
    POSITIONS: ClassVar[dict] = {"stream": 16, "bn1": 16, "fc": 1}

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(2, 3, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(3)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 3, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(3)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 3)

    def forward(self, x: Tensor, gates: dict[str, Tensor] | None = None) -> Tensor:
        g = gates or {}
        identity = self.relu(gate(self.bn0(self.conv0(x)), g.get("stream")))
        out = self.relu(gate(self.bn1(self.conv1(identity)), g.get("bn1")))
        out = gate(self.bn2(self.conv2(out)), g.get("stream"))
        out += identity
        out = self.relu(out)
        return gate(self.fc(self.pool(out).flatten(1)), g.get("fc"))


class MLP(nn.Module):
    """Linear units without BN: the gate sits on each Linear's output ."""

    GATES: ClassVar[dict] = {"fc1": "fc1", "fc2": "fc2"}
    FILTERS: ClassVar[dict] = {"fc1": ["fc1"], "fc2": ["fc2"]}
    POSITIONS: ClassVar[dict] = {"fc1": 1, "fc2": 1}

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 6)
        # not in place: torch-pruning 1.6 loses the fc1 group behind an in-place ReLU
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x: Tensor, gates: dict[str, Tensor] | None = None) -> Tensor:
        g = gates or {}
        x = self.relu(gate(self.fc1(x), g.get("fc1")))
        return gate(self.fc2(x), g.get("fc2"))


def make(cls: type[nn.Module], seed: int = 0) -> nn.Module:
    """A random-init net with non-trivial BN affine parameters and running statistics."""
    torch.manual_seed(seed)
    net = cls()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return net


def batches(cls: type[nn.Module], n: int = 2, size: int = 5, seed: int = 1) -> list:
    gen = torch.Generator().manual_seed(seed)
    shape = (size, 5) if cls is MLP else (size, 2, 4, 4)
    return [
        (torch.randn(shape, generator=gen), torch.randint(0, 3, (size,), generator=gen))
        for _ in range(n)
    ]
