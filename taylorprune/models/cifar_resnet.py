"""CIFAR-style ResNets (He et al., "Deep Residual Learning", CVPR 2016, section 4.2).

Three stages of BasicBlocks with 16, 32 and 64 channels (times ``width``), ``n = (depth - 2) / 6``
blocks per stage, a 3×3 stem without max-pooling, global average pooling and one Linear classifier.
Depth 20, 32, 56 and 110 are registered as ``resnet20`` … ``resnet110``.

Shortcut: where a block changes shape (the first block of stages 2 and 3) the shortcut is a 1×1
convolution plus BatchNorm ("option B" in the paper), not the parameter-free zero-padding of "option
A". torch-pruning can then couple the shortcut with the residual stream of the stage and remove
those channels; a zero-padded identity cannot be coupled. Option B adds ``C_in·C_out + 2·C_out``
parameters at each of the two projections, so ResNet-20 has 272,474 parameters instead of the
269,722 usually quoted.

The global pool is adaptive, so any input of at least 4×4 pixels works (8×8 digits, 28×28
Fashion-MNIST, 32×32 CIFAR). Module names follow torchvision's ResNet (``conv1``, ``bn1``,
``layer1.0.conv1``, ``layer2.0.downsample.0``, ``fc``).
"""

from __future__ import annotations

from torch import Tensor, nn

from taylorprune.errors import UserError
from taylorprune.models._factory import BUILTIN


class BasicBlock(nn.Module):
    """Two 3×3 conv→BN layers with a residual connection; ReLU after the addition."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """ResNet for small images; input ``(N, in_chans, H, W)``, output logits ``(N, num_classes)``.

    ``depth`` must be ``6n + 2``. ``width`` multiplies the stage widths 16/32/64 (rounded, at least
    1). Raises :class:`UserError` for an invalid depth or width.
    """

    def __init__(
        self, depth: int = 20, num_classes: int = 10, in_chans: int = 3, width: float = 1.0
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise UserError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 56, 110, ...), got {depth}")
        if width <= 0:
            raise UserError(f"CIFAR ResNet width multiplier must be positive, got {width}")
        n = (depth - 2) // 6
        widths = [max(1, round(c * width)) for c in (16, 32, 64)]

        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        in_channels = widths[0]
        stages = []
        for stage, channels in enumerate(widths):
            blocks = []
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(BasicBlock(in_channels, channels, stride))
                in_channels = channels
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def _register(depth: int) -> None:
    def build(*, num_classes: int = 10, in_chans: int = 3, width: float = 1.0) -> CifarResNet:
        return CifarResNet(depth, num_classes=num_classes, in_chans=in_chans, width=width)

    build.__doc__ = f"CIFAR-style ResNet-{depth} (option-B shortcuts); kwargs: ``width``."
    BUILTIN.register(f"resnet{depth}")(build)


for _depth in (20, 32, 44, 56, 110):
    _register(_depth)
