"""Movement pruning (Sanh, Wolf & Rush 2020, "Movement Pruning: Adaptive Sparsity by
Fine-Tuning"): the weights that matter for the task are those moving away from zero during
fine-tuning, measured by scores S learned through the straight-through estimator.

Short names: W the dense weight, M the mask, S the scores, W' = W ⊙ M what the forward uses.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import UsageError
from .schedules import Constant, Schedule
from .sparsifier import Masked, Sparsifier

log = logging.getLogger(__name__)


def straight_through_scores(W: Tensor, M: Tensor, S: Tensor) -> Tensor:
    """W ⊙ M in value (exactly: the second term is W · 0), with ∂/∂S = W for every weight, kept
    or pruned (Sanh et al. 2020, Sec. 3, the straight-through estimator)."""
    return W * M.to(W.dtype) + W * (S - S.detach()).to(W.dtype)


def ramped_lambda(lam: float, schedule: Schedule | None, step: int) -> float:
    """λ_t = λ · s_t / s_f: the soft-movement penalty weight at optimizer step ``step`` when it
    is warmed up with a sparsity schedule (s_t = ``schedule.sparsity(step)``, s_f =
    ``schedule.final``); λ itself without a schedule. With ``Cubic(0, s_f, start, end)`` this is
    0 until ``start``, rises as 1 − (1 − (t − start)/(end − start))³ and is λ from ``end`` on:
    the warm-up of Sanh et al. (2020)'s released code, where the regularisation weight is the
    final λ times the cubic threshold schedule's value over its final value."""
    if schedule is None:
        return lam
    return lam * schedule.sparsity(step) / schedule.final


class ScoredMask(Masked):
    """W ↦ W ⊙ M with learned scores S (float32 whatever W's dtype). S is a buffer that requires
    grad: the model's optimizer never sees it (no weight decay); the sparsifier updates it.
    A device or dtype move of the model keeps S a leaf tensor."""

    def __init__(self, weight: Tensor, init: float = 0.0) -> None:
        super().__init__(weight)
        self.register_buffer("scores", torch.full(weight.shape, float(init), device=weight.device)
                             .requires_grad_(True))

    def forward(self, W: Tensor) -> Tensor:
        return straight_through_scores(W, self.mask, self.scores)

    def _apply(self, fn, recurse: bool = True):
        out = super()._apply(fn, recurse)
        if not self.scores.is_leaf:  # .to()/.double() made a differentiable copy
            self.scores = self.scores.detach().float().requires_grad_(True)
        return out


class HardMovement(Sparsifier):
    """Movement pruning with hard top-k masks (Sec. 3): the straight-through gradient of the
    scores is g_S = (∂L/∂W') ⊙ W; at each schedule update the mask keeps the top-k scores per
    row, layer or globally. Pruned weights keep their dense values and come back when their
    score rises. The schedule must start at sparsity 0: before any step every score is 0 and a
    ranking would be by position.

    score_optimizer: ``"adam"`` (default, as the paper's released code trains the scores:
    each score moves by about ``score_lr`` per step in the direction −g_S consistently
    points, so large weights do not dominate the ranking) or ``"sgd"``: S ← S − score_lr · g_S,
    the plain running sum of −(∂L/∂W)·W of the paper's first-order analysis (lr = 1).

    ``lr_factor`` (an attribute, 1 by default) multiplies ``score_lr`` at every step. The
    paper's code trains scores and weights with one optimizer, so the scores follow the
    weights' learning-rate warm-up and decay: with Adam that weights each step's vote in the
    ranking by the learning rate of that step. Set it to the weights' current learning rate over
    their peak before each ``step()``; :class:`~prunekit.training.hf.SparsifierCallback` does
    so from the Trainer's scheduler.
    """

    hard_zero = False
    parametrization = ScoredMask

    def __init__(self, schedule: Schedule, scope: str = "layer", score_lr: float = 1e-2,
                 score_optimizer: str = "adam", skip: Sequence[str] = (),
                 optimizer: torch.optim.Optimizer | None = None) -> None:
        super().__init__(schedule, scope, skip, optimizer)
        if not score_lr > 0 or score_optimizer not in ("adam", "sgd"):
            raise UsageError(f"score_lr {score_lr!r} must be > 0 and score_optimizer "
                             f"{score_optimizer!r} 'adam' or 'sgd'")
        if schedule.sparsity(0) > 0:
            raise UsageError(
                f"movement scores are all 0 before training: the schedule must start at "
                f"sparsity 0, not {schedule.sparsity(0)} (e.g. Cubic(0.0, final, start=100, ...))")
        self.score_lr, self.score_optimizer = score_lr, score_optimizer
        self.lr_factor = 1.0
        self._score_opt: torch.optim.Optimizer | None = None

    def scores(self, name: str, layer: nn.Module) -> Tensor:
        return self._param(layer).scores.detach()

    def _score_tensors(self) -> list[Tensor]:
        return [self._param(layer).scores for layer in self.layers.values()]

    def _grads_usable(self) -> bool:
        """False (and a warning) when no score got a gradient, or one is NaN/Inf (a skipped
        mixed-precision step): the scores are then left as they are."""
        grads = [S.grad for S in self._score_tensors()]
        if all(g is None for g in grads):
            log.warning("step(): no movement score received a gradient since the last step "
                        "(call step() after loss.backward() and optimizer.step())")
            return False
        if not all(g is None or bool(torch.isfinite(g).all()) for g in grads):
            log.warning("step(): NaN/Inf score gradients (an overflowed fp16 step?): skipped")
            for S in self._score_tensors():
                S.grad = None
            return False
        return True

    def _optimizer(self) -> torch.optim.Optimizer:
        """The score optimizer over the current score tensors (rebuilt, with a warning, if a
        device move of the model replaced them)."""
        current = self._score_tensors()
        if self._score_opt is None or self._score_opt.param_groups[0]["params"][0] is not current[0]:
            if self._score_opt is not None:
                log.warning("the model was moved: the score optimizer restarts")
            cls = torch.optim.Adam if self.score_optimizer == "adam" else torch.optim.SGD
            self._score_opt = cls(current, lr=self.score_lr)
        return self._score_opt

    def _learn(self) -> None:
        if not self._grads_usable():
            return
        opt = self._optimizer()
        for group in opt.param_groups:
            group["lr"] = self.score_lr * self.lr_factor
        opt.step()
        opt.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out["score_optimizer"] = self._optimizer().state_dict()
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if "score_optimizer" in state:
            self._optimizer().load_state_dict(state["score_optimizer"])


class SoftMovement(HardMovement):
    """Soft movement pruning (Sec. 3): M = 1[σ(S) > τ] with the straight-through estimator,
    and the penalty λ·Σσ(S) (:meth:`penalty`) added to the loss, so the sparsity follows from
    λ rather than a schedule. Scores start at ``init`` (σ(init) > τ: everything kept) and are
    learned by Adam at ``score_lr``; masks are recomputed after every step.

    threshold: τ, a number, or a :class:`Schedule` whose value at step t is τ_t: the paper's
    code ramps τ from 0 to its final value (0.1 in its example, scores from 0) on the cubic
    schedule, so that nothing is pruned before the ramp starts (σ(S) > 0 always), then pass the
    same schedule as ``lam_schedule``.

    penalty: ``"sum"`` (default): λ_t · Σ σ(S) over every scored weight; ``"mean"``: λ_t times
    the mean over the layers of each layer's mean σ(S), the normalisation of the paper's code,
    whose λ is then on its scale (400 in its SQuAD example): "sum" with λ is "mean" with λ
    times the number of scored weights when the layers are of one size.

    lam_schedule: optional warm-up of λ. The penalty at optimizer step t (the number of
    ``step()`` calls so far) is weighted by λ_t = λ · s_t / s_f (:func:`ramped_lambda`), s_t
    the schedule's sparsity at t and s_f its final one: with ``Cubic(0.0, s_f, start, end)`` no
    penalty before ``start``, the full λ from ``end`` on, a cubic rise in between (s_f itself
    only sets the scale and cancels). This follows Sanh et al. (2020)'s reference
    implementation, which warms the regularisation weight up with its cubic threshold
    schedule rather than applying the final λ from the first step (and ramps τ itself:
    pass the same schedule as ``threshold``). The schedules are part of the configuration: the
    sparsifier's :meth:`state_dict` records λ and the schedule, and loading a checkpoint made
    with others is an error, so a resumed run follows the same λ_t.
    """

    def __init__(self, lam: float, threshold: float | Schedule = 0.5, init: float = 1.0,
                 score_lr: float = 1e-2, skip: Sequence[str] = (),
                 lam_schedule: Schedule | None = None, penalty: str = "sum") -> None:
        super().__init__(Constant(0.0, 0, 1), "layer", score_lr, "adam", skip)
        final_tau = threshold.final if isinstance(threshold, Schedule) else threshold
        if not lam >= 0 or not 0 < final_tau < 1:
            raise UsageError(f"lambda {lam!r} must be >= 0 and threshold {threshold!r} in (0, 1)")
        if penalty not in ("sum", "mean"):
            raise UsageError(f"penalty {penalty!r} is unknown: use 'sum' or 'mean'")
        if lam_schedule is not None:
            if not isinstance(lam_schedule, Schedule):
                raise UsageError(f"lam_schedule must be a Schedule (e.g. Cubic(0.0, 0.9, start, "
                                 f"end)), not {type(lam_schedule).__name__}")
            if not lam_schedule.final > 0:
                raise UsageError(f"lam_schedule {lam_schedule} ends at sparsity "
                                 f"{lam_schedule.final}: λ_t = λ·s_t/s_f needs s_f > 0")
        self.lam, self.threshold, self.init = lam, threshold, init
        self.lam_schedule, self.penalty_kind = lam_schedule, penalty

    def _make_param(self, weight: Tensor) -> Masked:
        return ScoredMask(weight.detach(), self.init)

    def current_lambda(self) -> float:
        """λ_t for the coming optimizer step (t = the number of ``step()`` calls so far)."""
        return ramped_lambda(self.lam, self.lam_schedule, self.step_count)

    def current_threshold(self, step: int | None = None) -> float:
        """τ_t at ``step`` (default: the steps taken so far)."""
        t = self.step_count if step is None else step
        return self.threshold.sparsity(t) if isinstance(self.threshold, Schedule) \
            else self.threshold

    def penalty(self) -> Tensor:
        """λ_t · Σ σ(S) over every scored weight (``penalty="mean"``: λ_t · the mean over
        layers of each layer's mean σ(S)): add it to the loss before ``backward`` (λ_t = λ
        without ``lam_schedule``; 0 times the sum, still differentiable, before the ramp
        starts)."""
        self._require_prepared()
        scores = self._score_tensors()
        if self.penalty_kind == "mean":
            total = sum(torch.sigmoid(S).mean() for S in scores) / len(scores)
        else:
            total = sum(torch.sigmoid(S).sum() for S in scores)
        return self.current_lambda() * total

    def _update(self, step: int) -> None:
        tau = self.current_threshold(step)
        with torch.no_grad():
            for n, layer in self.layers.items():
                self._set_mask(n, torch.sigmoid(self._param(layer).scores) > tau)

    def _penalty_config(self) -> dict[str, Any]:
        return {"lam": self.lam, "lam_schedule": _schedule_config(self.lam_schedule),
                "threshold": (_schedule_config(self.threshold)
                              if isinstance(self.threshold, Schedule) else self.threshold),
                "penalty": self.penalty_kind}

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out["penalty"] = self._penalty_config()
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = state.get("penalty")  # absent in checkpoints from before the λ warm-up
        mine = self._penalty_config()  # keys added later are compared where the file has them
        if saved is not None and any(saved[k] != mine.get(k) for k in saved):
            raise UsageError(f"the checkpoint was trained with penalty {saved}, this "
                             f"sparsifier has {mine}: construct SoftMovement with the same lam, "
                             "lam_schedule, threshold and penalty to resume identically")
        super().load_state_dict(state)


def _schedule_config(schedule: Schedule | None) -> dict[str, Any] | None:
    """A schedule as plain data (its type and fields), for checkpoints."""
    if schedule is None:
        return None
    fields = dataclasses.asdict(schedule) if dataclasses.is_dataclass(schedule) else {}
    return {"type": type(schedule).__name__, **fields}
