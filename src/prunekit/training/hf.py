"""Hugging Face ``Trainer`` integration: a callback that drives a :class:`Sparsifier`.

    sparsifier = GradualMagnitude(Cubic(0.0, 0.9, start=0, end=1000, frequency=50))
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[SparsifierCallback(sparsifier)])
    trainer.train()
    sparsifier.squash()          # plain weights with permanent zeros, then save_pretrained

The callback prepares the model when training begins (if not prepared already), calls
``step()`` after every optimizer step, and for :class:`SoftMovement` adds the gradient of the
penalty λ·Σσ(S) once per optimizer step (whatever the gradient accumulation), so nothing else
in the training script changes; the loss the Trainer logs is the task loss alone. Movement
scores learn at ``score_lr`` times the weights' current learning rate over its peak, so they
follow the Trainer's warm-up and decay as in Sanh et al. (2020)'s code (``scores_follow_lr``).

:class:`DistillTrainer` adds distillation from a dense ``teacher`` (the fine-tuned model
before pruning): (1 − α)·task loss + α·T²·KL on the logits at temperature T.

Resuming: the Trainer loads a checkpoint into the model before any callback runs, and the
checkpoint's keys are those of the parametrized model. So call ``sparsifier.prepare(model)``
before building the Trainer when resuming; the callback then restores the sparsifier's own
state (step count, score optimizer) from ``prunekit_sparsifier.pt``, which it writes into
every checkpoint folder. Resuming with an unprepared sparsifier is refused.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from ..errors import UsageError
from .distill import check_distillation, distilled
from .movement import HardMovement, SoftMovement
from .sparsifier import Sparsifier

STATE_FILE = "prunekit_sparsifier.pt"


class SparsifierCallback(TrainerCallback):
    """Run ``sparsifier`` inside ``transformers.Trainer``."""

    def __init__(self, sparsifier: Sparsifier, scores_follow_lr: bool = True) -> None:
        self.sparsifier = sparsifier
        self.scores_follow_lr = scores_follow_lr

    def on_train_begin(self, args, state, control, model: nn.Module | None = None, **kwargs):
        if model is None:
            raise UsageError("the Trainer passed no model to the callback")
        if state.global_step > 0:  # resuming from a checkpoint
            if not self.sparsifier.layers:
                raise UsageError("resuming a sparse run: call sparsifier.prepare(model) before "
                                 "building the Trainer, so the checkpoint's masks load")
            path = _latest_state(args.output_dir, state.global_step)
            if path is not None:
                self.sparsifier.load_state_dict(torch.load(path, weights_only=False))
            self.sparsifier.step_count = state.global_step
        elif not self.sparsifier.layers:
            self.sparsifier.prepare(model)
        optimizer = kwargs.get("optimizer")
        if optimizer is not None and self.sparsifier.optimizer is None:
            self.sparsifier.optimizer = optimizer

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        """The learning rate the weights were just updated with, over its peak, scales the
        movement scores' step (before the scheduler moves on)."""
        if self.scores_follow_lr and isinstance(self.sparsifier, HardMovement) and optimizer:
            group = optimizer.param_groups[0]
            peak = group.get("initial_lr", group["lr"])
            self.sparsifier.lr_factor = group["lr"] / peak if peak else 1.0

    def on_step_end(self, args, state, control, **kwargs):
        if isinstance(self.sparsifier, SoftMovement):
            self.sparsifier.penalty().backward()  # ∂(λΣσ(S))/∂S, once per optimizer step
        self.sparsifier.step()

    def on_save(self, args, state, control, **kwargs):
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(folder):
            torch.save(self.sparsifier.state_dict(), os.path.join(folder, STATE_FILE))


def _latest_state(output_dir: str, step: int) -> str | None:
    path = os.path.join(output_dir, f"checkpoint-{step}", STATE_FILE)
    return path if os.path.exists(path) else None


class DistillTrainer(Trainer):
    """A ``Trainer`` whose loss is (1 − ``alpha``) · the model's task loss + ``alpha`` · T² ·
    KL(teacher ‖ student) on the logits at ``temperature`` T (:func:`~prunekit.training.distill.
    distilled`; Sanh et al. 2020 distil from the dense fine-tuned model, T = 2, α = 0.5). The
    teacher runs in eval mode without gradients on the same inputs (labels removed)."""

    loss_is_scaled_for_ga = False  # a per-batch mean, like the model's own loss

    def __init__(self, *args, teacher: nn.Module, temperature: float = 2.0, alpha: float = 0.5,
                 **kwargs) -> None:
        check_distillation(temperature, alpha)
        super().__init__(*args, **kwargs)
        self.teacher = teacher.to(self.args.device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.temperature, self.alpha = temperature, alpha

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "labels" not in inputs:
            raise UsageError("distillation needs the task loss: the batches have no 'labels'")
        outputs = model(**inputs)
        with torch.no_grad():
            teacher = self.teacher(**{k: v for k, v in inputs.items() if k != "labels"})
        loss = distilled(outputs.loss, outputs.logits, teacher.logits, self.alpha,
                         self.temperature)
        return (loss, outputs) if return_outputs else loss
