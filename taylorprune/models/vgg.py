"""A small VGG-style plain CNN (no skip connections): the simplest case for channel pruning."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from taylorprune.errors import UserError
from taylorprune.models._factory import BUILTIN

# Channels per 3×3 conv; "M" is a 2×2 max-pool.
DEFAULT_CFG: tuple[int | str, ...] = (32, 32, "M", 64, 64, "M", 128, 128, "M")


class VGGSmall(nn.Module):
    """``conv3×3 → BN → ReLU`` stacks with max-pools, global average pool, one Linear classifier.

    Input ``(N, in_chans, H, W)`` with H, W at least ``2**pools``; output ``(N, num_classes)``.
    Convs are ``features.<i>`` in a Sequential; the classifier is ``fc``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        cfg: Sequence[int | str] = DEFAULT_CFG,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        if width <= 0:
            raise UserError(f"vgg_small width multiplier must be positive, got {width}")
        layers: list[nn.Module] = []
        channels = in_chans
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            if not isinstance(item, int) or item < 1:
                raise UserError(f"vgg_small cfg entries must be positive ints or 'M', got {item!r}")
            out = max(1, round(item * width))
            layers += [
                nn.Conv2d(channels, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            channels = out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.avgpool(self.features(x)).flatten(1))


@BUILTIN.register("vgg_small")
def vgg_small(
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    cfg: Sequence[int | str] = DEFAULT_CFG,
    width: float = 1.0,
) -> VGGSmall:
    """Small VGG-style CNN; kwargs ``cfg`` (channels per conv, ``"M"`` = max-pool) and ``width``."""
    return VGGSmall(num_classes, in_chans, tuple(cfg), width)
