"""Hugging Face ``Trainer`` integration: a callback that drives a :class:`Sparsifier`.

    sparsifier = GradualMagnitude(Cubic(0.0, 0.9, start=0, end=1000, frequency=50))
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[SparsifierCallback(sparsifier)])
    trainer.train()
    sparsifier.squash()          # plain weights with permanent zeros, then save_pretrained

The callback prepares the model when training begins (if not prepared already), calls
``step()`` after every optimizer step, and for :class:`SoftMovement` adds the gradient of the
penalty λ·Σσ(S) once per optimizer step (whatever the gradient accumulation), so nothing else
in the training script changes; the loss the Trainer logs is the task loss alone.

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
from transformers import TrainerCallback

from ..errors import UsageError
from .movement import SoftMovement
from .sparsifier import Sparsifier

STATE_FILE = "prunekit_sparsifier.pt"


class SparsifierCallback(TrainerCallback):
    """Run ``sparsifier`` inside ``transformers.Trainer``."""

    def __init__(self, sparsifier: Sparsifier) -> None:
        self.sparsifier = sparsifier

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
