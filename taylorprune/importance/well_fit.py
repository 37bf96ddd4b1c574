"""Scoring a network that fits its training data: the switch to the per-example criterion.

On a network trained to (nearly) 100% training accuracy, the regime of a pretrained network
fine-tuned on a small dataset, the mean minibatch gradient that ``taylor_fo_bn`` squares carries
little of what removing a channel costs, and the per-example squares (``taylor_fo_bn_fg``) rank the
held-out loss change best: on the narrow digits CNN of docs/importance.md ("Well-fit networks"),
Spearman 0.83 against 0.93 in eval mode, and level or ahead end to end on both well-fit networks
measured there. So a run whose criterion is ``taylor_fo_bn`` first reads the baseline's top-1 on
training images (no augmentation, BatchNorm on its running statistics); at or above
``importance.well_fit_top1`` it scores with ``taylor_fo_bn_fg`` instead, and the report says so.
The quality study's Fashion-MNIST networks read 94.8% and 95.5% there, so its choice of default
is not touched by the switch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from taylorprune.importance import defaults
from taylorprune.train import evaluate

#: The criterion the switch applies to, and the one it switches to.
SWITCHES_FROM = "taylor_fo_bn"
SWITCHES_TO = defaults.WELL_FIT_CRITERION


@dataclass(frozen=True)
class WellFit:
    """The reading and the decision: ``top1`` (%) on ``images`` training images, the
    ``threshold`` it was held to, and the ``criterion`` that scores the channels."""

    top1: float
    images: int
    threshold: float
    criterion: str

    @property
    def switched(self) -> bool:
        return self.criterion == SWITCHES_TO

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "switched": self.switched}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WellFit:
        return cls(d["top1"], d["images"], d["threshold"], d["criterion"])

    def describe(self) -> str:
        """One line for the user."""
        if self.switched:
            return (
                f"the baseline fits its training data (top-1 {self.top1:.2f}% on {self.images} "
                f"training images, at least {self.threshold:g}%): channels are scored with "
                f"{SWITCHES_TO}, which ranks a well-fit network's channels best "
                "(importance.well_fit_top1: null keeps taylor_fo_bn)"
            )
        return (
            f"training top-1 {self.top1:.2f}% on {self.images} images, under "
            f"{self.threshold:g}%: channels are scored with {self.criterion}"
        )


def decide(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    criterion: str,
    threshold: float | None,
    device: torch.device,
) -> WellFit | None:
    """What scores ``model``'s channels: ``criterion``, or :data:`SWITCHES_TO` when it is
    :data:`SWITCHES_FROM` and the model's top-1 on ``batches`` (training images) is at least
    ``threshold``. None when there is nothing to decide (another criterion, or no threshold): the
    batches are then not read."""
    if threshold is None or criterion != SWITCHES_FROM:
        return None
    batches = list(batches)
    images = sum(len(targets) for _, targets in batches)
    # every rank reads the same images, so the counts evaluate adds up across ranks keep the ratio
    top1 = evaluate(model, batches, device=device)["top1"] if images else 0.0
    chosen = SWITCHES_TO if images and top1 >= threshold else criterion
    return WellFit(top1, images, float(threshold), chosen)
