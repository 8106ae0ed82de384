"""Hugging Face ``Trainer`` integration: a callback that drives a :class:`Sparsifier`.

    sparsifier = GradualMagnitude(Cubic(0.0, 0.9, start=0, end=1000, frequency=50))
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[SparsifierCallback(sparsifier)])
    trainer.train()
    sparsifier.squash()          # plain weights with permanent zeros, then save_pretrained

The callback prepares the model when training begins (if not prepared already), calls
``step()`` after every optimizer step, and for :class:`SoftMovement` adds the penalty
λ·Σσ(S) to the loss the model returns (a forward hook on the model, active while training),
so nothing else in the training script changes. Masks and scores are buffers of the model and
are saved in the Trainer's checkpoints; the step count is restored from the Trainer's state.
"""

from __future__ import annotations

from torch import nn
from transformers import TrainerCallback

from .sparsifier import SoftMovement, Sparsifier


class SparsifierCallback(TrainerCallback):
    """Run ``sparsifier`` inside ``transformers.Trainer``."""

    def __init__(self, sparsifier: Sparsifier) -> None:
        self.sparsifier = sparsifier
        self._hook = None

    def on_train_begin(self, args, state, control, model: nn.Module | None = None, **kwargs):
        if model is None:
            raise ValueError("the Trainer passed no model to the callback")
        if not self.sparsifier.layers:
            self.sparsifier.prepare(model)
        self.sparsifier.step_count = state.global_step  # resuming from a checkpoint
        optimizer = kwargs.get("optimizer")
        if optimizer is not None and self.sparsifier.optimizer is None:
            self.sparsifier.optimizer = optimizer
        if isinstance(self.sparsifier, SoftMovement) and self._hook is None:
            self._hook = model.register_forward_hook(self._add_penalty)

    def _add_penalty(self, module: nn.Module, _inputs, output):
        if module.training and getattr(output, "loss", None) is not None:
            output["loss"] = output["loss"] + self.sparsifier.penalty()
        return output

    def on_step_end(self, args, state, control, **kwargs):
        self.sparsifier.step()

    def on_train_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
