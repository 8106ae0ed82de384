"""Knowledge distillation from a dense teacher while a student is pruned (Hinton, Vinyals &
Dean 2015, "Distilling the Knowledge in a Neural Network"; used by Sanh, Wolf & Rush 2020 for
their best movement-pruning results, with temperature 2)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import UsageError


def check_distillation(temperature: float, alpha: float = 0.5) -> None:
    """Refuse a temperature that is not positive or a weight outside [0, 1]."""
    if not temperature > 0:
        raise UsageError(f"temperature {temperature!r} must be > 0")
    if not 0 <= alpha <= 1:
        raise UsageError(f"distillation weight alpha {alpha!r} must be in [0, 1]")


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor,
                      temperature: float = 2.0) -> Tensor:
    """T² · KL(softmax(t/T) ‖ softmax(s/T)), averaged over the rows (every position of every
    sequence for token logits). The T² keeps the gradient's scale independent of T (Hinton et
    al. 2015, Sec. 2). Logits (..., classes); the teacher's get no gradient."""
    if student_logits.shape != teacher_logits.shape:
        raise UsageError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ: the teacher must share the "
                         "student's head")
    check_distillation(temperature)
    classes = student_logits.shape[-1]
    log_s = torch.log_softmax(student_logits.reshape(-1, classes).float() / temperature, -1)
    log_t = torch.log_softmax(teacher_logits.detach().reshape(-1, classes).float() / temperature,
                              -1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)  # (rows,)
    return temperature ** 2 * kl.mean()


def distilled(task_loss: Tensor, student_logits: Tensor, teacher_logits: Tensor,
              alpha: float = 0.5, temperature: float = 2.0) -> Tensor:
    """(1 − α) · task loss + α · :func:`distillation_loss` (α = 0.5, T = 2: the defaults of
    Sanh et al. 2020's released code)."""
    check_distillation(temperature, alpha)
    return (1 - alpha) * task_loss + alpha * distillation_loss(student_logits, teacher_logits,
                                                               temperature)
