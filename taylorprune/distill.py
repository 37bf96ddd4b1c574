"""Knowledge distillation from the unpruned baseline as recovery after pruning.

Hinton, Vinyals, Dean 2015 ("Distilling the Knowledge in a Neural Network"): the student's loss is

    (1 − w)·CE(z_s, y) + w·T²·KL(softmax(z_t / T) ‖ softmax(z_s / T))

with the teacher's logits z_t, the student's z_s, weight w and temperature T; the T² keeps the
gradient of the soft part comparable across temperatures. CE is the phase's own loss (label
smoothing included); the KL is summed over classes and averaged over the minibatch.

:class:`Distiller` holds the teacher (eval mode, no gradients, never trained, never wrapped in
DDP) and adds its soft targets to a minibatch's loss; :func:`~taylorprune.train.train_epoch`
calls it inside the same autocast as the student, on inputs in the same memory format, and it
times the teacher's forward passes (``teacher_s``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from taylorprune.errors import UserError

__all__ = ["Distiller", "distillation_loss"]


def distillation_loss(
    student: Tensor,
    teacher: Tensor,
    targets: Tensor,
    *,
    weight: float,
    temperature: float,
    hard_loss: Callable[[Tensor, Tensor], Tensor],
) -> Tensor:
    """``(1 − weight)·hard_loss(student, targets) + weight·T²·KL(softmax(teacher/T) ‖
    softmax(student/T))`` for logits of shape (N, classes); the KL is the batch mean of each
    example's sum over classes (``kl_div(..., reduction="batchmean")``)."""
    hard = hard_loss(student, targets)
    t = float(temperature)
    log_student = F.log_softmax(student.float() / t, dim=1)
    log_teacher = F.log_softmax(teacher.float() / t, dim=1)
    soft = F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean")
    return (1.0 - weight) * hard + weight * t * t * soft


class Distiller:
    """A teacher network and how its soft targets enter the student's loss.

    ``teacher`` runs in eval mode under ``torch.no_grad()``: it is used, never trained. ``weight``
    ∈ [0, 1] is w and ``temperature`` > 0 is T above. ``teacher_s`` accumulates the wall seconds
    of the teacher's forward passes (on CUDA measured with events, read when asked, so that timing
    never stalls the stream).
    """

    def __init__(self, teacher: nn.Module, *, weight: float, temperature: float) -> None:
        if not 0.0 <= weight <= 1.0:
            raise UserError(f"distill: weight must be in [0, 1], got {weight!r}")
        if not temperature > 0.0:
            raise UserError(f"distill: temperature must be > 0, got {temperature!r}")
        self.teacher = teacher.eval()
        self.weight = float(weight)
        self.temperature = float(temperature)
        self._seconds = 0.0
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    @property
    def teacher_s(self) -> float:
        """Seconds spent in the teacher's forward passes so far."""
        for start, end in self._events:
            end.synchronize()
            self._seconds += start.elapsed_time(end) / 1e3
        self._events.clear()
        return self._seconds

    def prepare(self, device: torch.device, channels_last: bool) -> None:
        """Put the teacher where the student trains, in the student's memory format, in eval
        mode."""
        self.teacher.to(device).eval()
        if channels_last:
            self.teacher.to(memory_format=torch.channels_last)

    def loss(
        self,
        outputs: Tensor,
        targets: Tensor,
        inputs: Tensor,
        hard_loss: Callable[[Tensor, Tensor], Tensor],
    ) -> Tensor:
        """The student's loss on a minibatch: its ``outputs`` (logits) for ``inputs``, the
        teacher's logits for the same inputs, ``hard_loss`` on the labels ``targets``."""
        with torch.no_grad():
            logits = self._timed_teacher(inputs)
        return distillation_loss(
            outputs,
            logits,
            targets,
            weight=self.weight,
            temperature=self.temperature,
            hard_loss=hard_loss,
        )

    def _timed_teacher(self, inputs: Tensor) -> Tensor:
        if inputs.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            logits = self.teacher(inputs)
            end.record()
            self._events.append((start, end))
            return logits
        t0 = time.perf_counter()
        logits = self.teacher(inputs)
        self._seconds += time.perf_counter() - t0
        return logits
