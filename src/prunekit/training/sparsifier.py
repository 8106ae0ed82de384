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

Methods (one class each): :class:`GradualMagnitude` (Zhu & Gupta 2017), :class:`NMSparsifier`
(NVIDIA ASP, Mishra et al. 2021), :class:`HardMovement` and :class:`SoftMovement` (Sanh, Wolf
& Rush 2020), and :class:`FixedMask` (a given mask, for lottery tickets).
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
from ..masks import global_prune_counts, nm_mask, topk_mask
from ..models.adapter import HFAdapter, is_target
from ..patterns import NM, Pattern, Unstructured
from .schedules import Constant, OneShot, Schedule

# --- the parametrizations ---------------------------------------------------------------------


class Masked(nn.Module):
    """W ↦ W ⊙ M with a boolean mask buffer (True = keep)."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", torch.ones_like(weight, dtype=torch.bool))

    def forward(self, W: Tensor) -> Tensor:
        return W * self.mask


class ScoredMask(Masked):
    """W ↦ W ⊙ M with learned scores S and the straight-through estimator: the forward value is
    W ⊙ M, and ∂L/∂S = ∂L/∂W' ⊙ W for every weight, kept or pruned (Sanh et al. 2020, Eq. 3),
    so a pruned weight whose score grows comes back. S is a buffer that requires grad: the
    model's optimizer never sees it (no weight decay); the sparsifier updates it."""

    def __init__(self, weight: Tensor, init: float = 0.0) -> None:
        super().__init__(weight)
        self.register_buffer("scores", torch.full_like(weight, init).requires_grad_(True))

    def forward(self, W: Tensor) -> Tensor:
        S = self.scores
        return W * (self.mask.to(W.dtype) + S - S.detach())


def straight_through_scores(W: Tensor, M: Tensor, S: Tensor) -> Tensor:
    """The value W ⊙ M with gradient ∂/∂S = W (pure function form of :class:`ScoredMask`)."""
    return W * (M.to(W.dtype) + S - S.detach())


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

    #: hard masks zero the dense weights they prune (no weight comes back)
    hard_zero: bool = True
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
        if self.hard_zero:
            self._zero_pruned()
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

    def _zero_pruned(self) -> None:
        """Zero pruned dense weights and their optimizer state (hard masks only)."""
        with torch.no_grad():
            for layer in self.layers.values():
                W, keep = self.dense_weight(layer), self._param(layer).mask
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


# --- gradual magnitude ------------------------------------------------------------------------


class GradualMagnitude(Sparsifier):
    """Gradual magnitude pruning (Zhu & Gupta 2017): at each schedule update keep the largest
    |W| among the weights still kept, so masks only grow."""

    def scores(self, name: str, layer: nn.Module) -> Tensor:
        return self.dense_weight(layer).detach().abs()


# --- N:M sparse fine-tuning -------------------------------------------------------------------


class NMSparsifier(Sparsifier):
    """N:M sparse fine-tuning, NVIDIA ASP's recipe (Mishra et al. 2021): in every m consecutive
    weights along the input dimension keep the n largest |W|. ``recompute=False``: the mask is
    chosen once, at ``prepare`` (ASP's default: prune the trained dense model, then fine-tune
    with the mask fixed); ``recompute=True``: chosen again from the current dense weights every
    ``frequency`` steps (pruned weights keep their values so that they can return).
    Pruned weights get no gradient (the parametrization), their optimizer state is zeroed, and
    the pattern holds after every step."""

    def __init__(self, pattern: NM, recompute: bool = False, frequency: int = 100,
                 skip: Sequence[str] = (), optimizer: torch.optim.Optimizer | None = None) -> None:
        if not isinstance(pattern, NM):
            raise PatternError(f"NMSparsifier needs an N:M pattern such as 2:4, not {pattern}")
        schedule = Constant(pattern.sparsity, 0, frequency) if recompute else OneShot(pattern.sparsity, 0)
        super().__init__(schedule, "layer", skip, optimizer)
        self.pattern, self.recompute = pattern, recompute
        self.hard_zero = not recompute

    def prepare(self, model: nn.Module, targets: Sequence[str] | None = None) -> None:
        for name, layer in find_targets(model, self.skip).items():
            if targets is None or name in targets:
                self.pattern.check_fits(layer.weight.shape[1], where=name)
        super().prepare(model, targets)

    def scores(self, name: str, layer: nn.Module) -> Tensor:
        return self.dense_weight(layer).detach().abs()

    def _update(self, step: int) -> None:
        with torch.no_grad():
            for n, layer in self.layers.items():
                self._set_mask(n, nm_mask(self.scores(n, layer), self.pattern.n, self.pattern.m))


# --- movement pruning -------------------------------------------------------------------------


class HardMovement(Sparsifier):
    """Movement pruning with hard top-k masks (Sanh, Wolf & Rush 2020, Sec. 3): scores S start
    at 0 and accumulate S ← S − lr · ∂L/∂W' ⊙ W after every step (the straight-through
    gradient; lr = 1 is the plain sum of −(∂L/∂W)·W of the paper's first-order view); at each
    schedule update the mask keeps the top-k scores per row, layer or globally. Pruned weights
    keep their dense values and come back when their score rises."""

    hard_zero = False
    parametrization = ScoredMask

    def __init__(self, schedule: Schedule, scope: str = "layer", score_lr: float = 1.0,
                 skip: Sequence[str] = (), optimizer: torch.optim.Optimizer | None = None) -> None:
        super().__init__(schedule, scope, skip, optimizer)
        if not score_lr > 0:
            raise UsageError(f"score_lr {score_lr!r} must be > 0")
        self.score_lr = score_lr

    def scores(self, name: str, layer: nn.Module) -> Tensor:
        return self._param(layer).scores.detach()

    def _learn(self) -> None:
        with torch.no_grad():
            for layer in self.layers.values():
                S = self._param(layer).scores
                if S.grad is not None:
                    S.sub_(S.grad, alpha=self.score_lr)
                    S.grad = None


class SoftMovement(HardMovement):
    """Soft movement pruning (Sanh et al. 2020, Sec. 3): M = 1[σ(S) > τ] with the
    straight-through estimator, and the penalty λ·Σσ(S) (:meth:`penalty`) added to the loss,
    so the sparsity follows from λ rather than a schedule. Scores start at ``init`` (σ(init) >
    τ: everything kept) and are learned by Adam at ``score_lr``; masks are recomputed after
    every step."""

    def __init__(self, lam: float, threshold: float = 0.5, init: float = 1.0,
                 score_lr: float = 1e-2, skip: Sequence[str] = ()) -> None:
        super().__init__(Constant(0.0, 0, 1), "layer", score_lr, skip)
        if not lam >= 0 or not 0 < threshold < 1:
            raise UsageError(f"lambda {lam!r} must be >= 0 and threshold {threshold!r} in (0, 1)")
        self.lam, self.threshold, self.init = lam, threshold, init
        self._score_opt: torch.optim.Optimizer | None = None

    def _make_param(self, weight: Tensor) -> Masked:
        return ScoredMask(weight.detach(), self.init)

    def prepare(self, model: nn.Module, targets: Sequence[str] | None = None) -> None:
        super().prepare(model, targets)
        self._score_opt = torch.optim.Adam(
            [self._param(l).scores for l in self.layers.values()], lr=self.score_lr)

    def penalty(self) -> Tensor:
        """λ · Σ σ(S) over every scored weight: add it to the loss before ``backward``."""
        self._require_prepared()
        return self.lam * sum(torch.sigmoid(self._param(l).scores).sum()
                              for l in self.layers.values())

    def _learn(self) -> None:
        assert self._score_opt is not None
        self._score_opt.step()
        self._score_opt.zero_grad(set_to_none=True)

    def _update(self, step: int) -> None:
        with torch.no_grad():
            for n, layer in self.layers.items():
                self._set_mask(n, torch.sigmoid(self._param(layer).scores) > self.threshold)

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        if self._score_opt is not None:
            out["score_optimizer"] = self._score_opt.state_dict()
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if "score_optimizer" in state and self._score_opt is not None:
            self._score_opt.load_state_dict(state["score_optimizer"])


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
            for n, mask in self.given.items():
                self._set_mask(n, mask)
        self._zero_pruned()

    def scores(self, name: str, layer: nn.Module) -> Tensor:
        return self._param(layer).mask.float()

    def _update(self, step: int) -> None:
        """Masks are given, never recomputed."""
