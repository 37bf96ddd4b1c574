"""What a run has learnt so far: the figures of each stage, the pruning steps, per-epoch metrics,
timings. Checkpoints carry it (as plain data) and ``report.json`` is assembled from it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from taylorprune.measure import count


@dataclass(frozen=True)
class Stage:
    """A model's size (MACs and parameters at batch 1) and accuracy on the validation set (%)."""

    macs: int
    params: int
    top1: float
    top5: float | None
    loss: float

    @classmethod
    def measure(cls, model: nn.Module, example: torch.Tensor, evaluation: dict[str, Any]) -> Stage:
        """Count ``model`` (moved to the CPU, where it stays) and keep ``evaluation``'s figures."""
        macs, params = count(model.cpu(), example)
        top5 = evaluation.get("top5")
        return cls(
            macs=int(macs),
            params=int(params),
            top1=float(evaluation["top1"]),
            top5=None if top5 is None else float(top5),
            loss=float(evaluation["loss"]),
        )


@dataclass
class RunRecord:
    """``steps`` are the report's step entries; ``target`` is ``{"reached", "stopped_short",
    "channels_kept"}`` once pruning is done; ``metrics`` the rows of ``metrics.csv``."""

    baseline: Stage | None = None
    pruned: Stage | None = None
    finetuned: Stage | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    target: dict[str, Any] | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    # A latency target's settings, table and every trial (LatencyPlanner.summary()).
    latency: dict[str, Any] | None = None
    # The training top-1 the criterion was chosen on (WellFit.as_dict()); None: no reading.
    well_fit: dict[str, Any] | None = None

    def add_time(self, key: str, seconds: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + seconds

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunRecord:
        stages = {
            k: None if d[k] is None else Stage(**d[k]) for k in ("baseline", "pruned", "finetuned")
        }
        return cls(
            **stages,
            steps=list(d["steps"]),
            target=d["target"],
            metrics=list(d["metrics"]),
            timings=dict(d["timings"]),
            latency=d.get("latency"),
            well_fit=d.get("well_fit"),
        )
