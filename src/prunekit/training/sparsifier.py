"""Pruning during training: masks (and learned scores) as parametrizations that survive the
optimizer.

``prepare(model)`` registers on every target layer's ``weight`` a parametrization
W ↦ W ⊙ M (``torch.nn.utils.parametrize``), so the forward pass, the gradients and any
optimizer see the masked weight while the dense values stay in ``...original``; ``step()``
after each ``optimizer.step()`` updates the masks as the schedule says; ``squash()`` writes
W ⊙ M into a plain ``weight`` and removes the parametrizations (the forward output does not
change). Masks and scores are buffers of the model, so ``model.state_dict()`` holds them;
:meth:`Sparsifier.state_dict` holds them too, with the step count and the score optimizer,
so training resumes exactly from a checkpoint.

Methods, one file each: :mod:`.gmp` (gradual magnitude, Zhu & Gupta 2017), :mod:`.nm`
(N:M fine-tuning, NVIDIA ASP), :mod:`.movement` (hard and soft movement, Sanh et al. 2020);
here the base class and :class:`FixedMask` (a given mask, for lottery tickets).
"""

from __future__ import annotations

import fnmatch
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..errors import ModelError, PatternError, UsageError
from ..masks import global_prune_counts, topk_mask
from ..models.adapter import HFAdapter, is_target
from .schedules import OneShot, Schedule

# --- the parametrizations ---------------------------------------------------------------------


class Masked(nn.Module):
    """W ↦ W ⊙ M with a boolean mask buffer (True = keep)."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", torch.ones_like(weight, dtype=torch.bool))

    def forward(self, W: Tensor) -> Tensor:
        return W * self.mask


# --- the base class ---------------------------------------------------------------------------


def find_targets(model: nn.Module, skip: Sequence[str] = ()) -> dict[str, nn.Module]:
    """The Linear layers to sparsify: those in the model's stack of blocks when it has one
    (a transformer: embeddings and heads stay dense), else every Linear of the model."""
    adapter = HFAdapter(skip=tuple(skip))
    try:
        found = adapter.all_targets(model)
    except ModelError:  # no stack of blocks: a plain network, every Linear
        found = {n: m for n, m in model.named_modules()
                 if is_target(m) and not any(fnmatch.fnmatch(n, p) for p in skip)}
    if not found:
        raise UsageError(f"{type(model).__name__} has no Linear layers to sparsify")
    return found


class Sparsifier(ABC):
    """Training-time pruning: ``prepare`` → (train; ``step`` after each optimizer step) →
    ``squash``.

    schedule: the sparsity at each step (:mod:`prunekit.training.schedules`).
    scope: 'row', 'layer' or 'global' — where weights compete for the schedule's sparsity.
    optimizer: optional; its state (momentum, Adam moments) is zeroed where a hard mask prunes,
    so a pruned weight is not moved by stale momentum.
    """

    #: hard masks zero the dense weights they prune, with their optimizer state (no weight
    #: comes back); zero_state alone zeroes only the optimizer state of pruned weights
    hard_zero: bool = True
    zero_state: bool = False
    parametrization: type[Masked] = Masked

    def __init__(self, schedule: Schedule, scope: str = "layer", skip: Sequence[str] = (),
                 optimizer: torch.optim.Optimizer | None = None) -> None:
        if scope not in ("row", "layer", "global"):
            raise PatternError(f"scope {scope!r} is unknown: use row, layer or global")
        self.schedule, self.scope, self.skip = schedule, scope, tuple(skip)
        self.optimizer = optimizer
        self.layers: dict[str, nn.Module] = {}
        self.step_count = 0
        #: called with the sparsifier at the end of every step() (e.g. to record a state)
        self.hooks: list[Callable[[Sparsifier], None]] = []

    # -- lifecycle --
    def prepare(self, model: nn.Module, targets: Sequence[str] | None = None) -> None:
        """Attach the parametrizations; prune to the schedule's sparsity at step 0."""
        if self.layers:
            raise UsageError("prepare() was called already: one Sparsifier per model")
        found = find_targets(model, self.skip)
        if targets is not None:
            missing = sorted(set(targets) - set(found))
            if missing:
                raise UsageError(f"targets {missing} are not Linear layers of the model")
            found = {n: found[n] for n in targets}
        for name, layer in found.items():
            if not isinstance(layer, nn.Linear):
                raise UsageError(f"{name}: {type(layer).__name__} layers are not supported by the "
                                 "training sparsifiers yet (only nn.Linear); skip it")
            if parametrize.is_parametrized(layer, "weight"):
                raise UsageError(f"{name}: its weight is parametrized already (another "
                                 "sparsifier?): squash that one first")
        for name, layer in found.items():
            parametrize.register_parametrization(layer, "weight", self._make_param(layer.weight))
            self.layers[name] = layer
        if self.schedule.updates(0) or self.schedule.sparsity(0) > 0:
            self._update(0)

    def _make_param(self, weight: Tensor) -> Masked:
        return self.parametrization(weight.detach())

    def step(self) -> None:
        """Call after ``optimizer.step()``: update masks when the schedule says so."""
        self._require_prepared()
        self.step_count += 1
        self._learn()
        if self.schedule.updates(self.step_count):
            self._update(self.step_count)
        if self.hard_zero or self.zero_state:
            self._zero_pruned(weights=self.hard_zero)
        for hook in self.hooks:
            hook(self)

    def squash(self) -> dict[str, Tensor]:
        """Make the zeros permanent: ``weight`` becomes W ⊙ M, parametrizations are removed.
        Returns the final masks by layer name."""
        self._require_prepared()
        masks = self.masks()
        with torch.no_grad():
            for layer in self.layers.values():
                parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
        self.layers = {}
        return masks

    # -- what subclasses define --
    @abstractmethod
    def scores(self, name: str, layer: nn.Module) -> Tensor:
        """Importance of each weight (larger = keep), (out, in)."""

    def _learn(self) -> None:
        """Per-step score learning (movement); nothing for magnitude."""

    # -- masks --
    def _update(self, step: int) -> None:
        """Recompute every mask for the schedule's sparsity at ``step``."""
        target = self.schedule.sparsity(step)
        with torch.no_grad():
            scores = {n: self._ranked(n, layer) for n, layer in self.layers.items()}
            if self.scope == "global":
                counts = global_prune_counts(scores, target)
                per = {n: counts[n] / scores[n].numel() for n in scores}
                new = {n: topk_mask(s, per[n], "layer") for n, s in scores.items()}
            else:
                new = {n: topk_mask(s, target, self.scope) for n, s in scores.items()}
            for n, mask in new.items():
                self._set_mask(n, mask)

    def _ranked(self, name: str, layer: nn.Module) -> Tensor:
        """The scores used for ranking; hard masks never revive a pruned weight."""
        s = self.scores(name, layer).float()
        if self.hard_zero:
            s = s.masked_fill(~self._param(layer).mask, float("-inf"))
        return s

    def _set_mask(self, name: str, mask: Tensor) -> None:
        self._param(self.layers[name]).mask.copy_(mask)

    @staticmethod
    def _param(layer: nn.Module) -> Masked:
        return layer.parametrizations.weight[0]

    @staticmethod
    def dense_weight(layer: nn.Module) -> Tensor:
        """The dense values under the mask (the parametrization's ``original``)."""
        return layer.parametrizations.weight.original

    def masks(self) -> dict[str, Tensor]:
        return {n: self._param(layer).mask.clone() for n, layer in self.layers.items()}

    def _zero_pruned(self, weights: bool = True) -> None:
        """Zero the optimizer state of pruned weights, and (``weights``) their dense values."""
        with torch.no_grad():
            for layer in self.layers.values():
                W, keep = self.dense_weight(layer), self._param(layer).mask
                if weights:
                    W.masked_fill_(~keep, 0.0)
                state = self.optimizer.state.get(W, {}) if self.optimizer is not None else {}
                for value in state.values():
                    if isinstance(value, Tensor) and value.shape == W.shape:
                        value.masked_fill_(~keep, 0.0)

    def _require_prepared(self) -> None:
        if not self.layers:
            raise UsageError("call prepare(model) first (or the sparsifier was squashed)")

    # -- checkpoints --
    def state_dict(self) -> dict[str, Any]:
        """Step count, masks and scores by layer, and the score optimizer's state if any."""
        out: dict[str, Any] = {"step": self.step_count, "masks": self.masks()}
        scored = {n: self._param(l).scores.detach().clone() for n, l in self.layers.items()
                  if hasattr(self._param(l), "scores")}
        if scored:
            out["scores"] = scored
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` after ``prepare`` on the same architecture."""
        self._require_prepared()
        if set(state["masks"]) != set(self.layers):
            raise UsageError(f"checkpoint masks are for layers {sorted(state['masks'])[:3]}..., "
                             f"not this model's {sorted(self.layers)[:3]}...")
        self.step_count = int(state["step"])
        with torch.no_grad():
            for n, mask in state["masks"].items():
                self._set_mask(n, mask)
            for n, s in state.get("scores", {}).items():
                self._param(self.layers[n]).scores.copy_(s)

    def sparsity(self) -> float:
        """Fraction of masked weights over all target layers."""
        masks = self.masks().values()
        return sum(int((~m).sum()) for m in masks) / max(sum(m.numel() for m in masks), 1)


# --- a given mask -----------------------------------------------------------------------------


class FixedMask(Sparsifier):
    """Train with given masks held fixed (lottery-ticket rounds, or a mask from a one-shot
    method): pruned weights stay exactly zero, with their optimizer state."""

    def __init__(self, masks: Mapping[str, Tensor], optimizer: torch.optim.Optimizer | None = None
                 ) -> None:
        super().__init__(OneShot(0.0, 0), "layer", (), optimizer)
        self.given = dict(masks)

    def prepare(self, model: nn.Module, targets: Sequence[str] | None = None) -> None:
        super().prepare(model, list(self.given) if targets is None else targets)
        with torch.no_grad():
            for n in self.layers:
                self._set_mask(n, self.given[n])
        self._zero_pruned()

    def scores(self, name: str, layer: nn.Module) -> Tensor:
        return self._param(layer).mask.float()

    def _update(self, step: int) -> None:
        """Masks are given, never recomputed."""
