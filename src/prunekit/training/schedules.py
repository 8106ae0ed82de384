"""Sparsity schedules for pruning during training: which sparsity at which optimizer step, and
at which steps the masks are updated.

* :class:`Cubic`: Zhu & Gupta (2017), "To prune, or not to prune", Eq. 1:
  s_t = s_f + (s_i − s_f) · (1 − (t − t_0) / (t_1 − t_0))³ for t_0 ≤ t ≤ t_1, updated every
  Δt steps; s_i before t_0 and s_f after t_1. Prunes fast early, when many weights are
  redundant, and slowly near the end. ``power`` replaces the exponent 3 (1: a linear ramp,
  which removes 3 times less per step at the start).
* :class:`Constant`: one sparsity from ``start`` on, masks updated every ``frequency`` steps.
* :class:`OneShot`: the final sparsity at one step, masks never changed afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError


def _check_sparsity(value: float, name: str) -> None:
    if not 0 <= value < 1:
        raise UsageError(f"{name} {value!r} must be in [0, 1), e.g. 0.9")


@dataclass(frozen=True)
class Schedule:
    """Base: ``sparsity(step)`` and ``updates(step)``; steps count optimizer steps from 0."""

    def sparsity(self, step: int) -> float:
        raise NotImplementedError

    def updates(self, step: int) -> bool:
        """Whether the masks are recomputed after optimizer step ``step``."""
        raise NotImplementedError

    @property
    def final(self) -> float:
        raise NotImplementedError


@dataclass(frozen=True)
class Cubic(Schedule):
    """s_i → s_f over steps [start, end], masks updated every ``frequency`` steps."""

    initial: float = 0.0
    final_sparsity: float = 0.9
    start: int = 0
    end: int = 1000
    frequency: int = 100
    power: float = 3.0

    def __post_init__(self) -> None:
        if not self.power > 0:
            raise UsageError(f"schedule power {self.power!r} must be > 0 (3: cubic, 1: linear)")
        _check_sparsity(self.initial, "initial sparsity")
        _check_sparsity(self.final_sparsity, "final sparsity")
        if self.initial > self.final_sparsity:
            raise UsageError(f"initial sparsity {self.initial} is above the final "
                             f"{self.final_sparsity}: masks only grow")
        if not 0 <= self.start < self.end:
            raise UsageError(f"schedule start {self.start} must be >= 0 and before end {self.end}")
        if self.frequency < 1:
            raise UsageError(f"schedule frequency {self.frequency} must be >= 1")

    @classmethod
    def phases(cls, final: float, steps: int, warmup: int, cooldown: int,
               initial: float = 0.0, frequency: int = 1, power: float = 3.0) -> Cubic:
        """The three phases of Sanh et al. (2020)'s released code, over a run of ``steps``
        optimizer steps: ``warmup`` steps at ``initial`` (dense: the scores learn, nothing is
        pruned), the cubic ramp to ``final``, and ``cooldown`` steps at ``final`` (the masks
        settle while the weights recover). That code counts both in multiples of the
        learning-rate warm-up (1 and 2 of them in its example commands)."""
        if warmup < 0 or cooldown < 0 or warmup + cooldown >= steps:
            raise UsageError(f"warm-up {warmup} and cool-down {cooldown} steps must be >= 0 "
                             f"and leave some of the {steps} steps for the ramp")
        return cls(initial, final, start=warmup, end=steps - cooldown, frequency=frequency,
                   power=power)

    @property
    def final(self) -> float:
        return self.final_sparsity

    def sparsity(self, step: int) -> float:
        t = min(max(step, self.start), self.end)
        frac = (t - self.start) / (self.end - self.start)
        return (self.final_sparsity
                + (self.initial - self.final_sparsity) * (1.0 - frac) ** self.power)

    def updates(self, step: int) -> bool:
        if step < self.start or step > self.end:
            return False
        return (step - self.start) % self.frequency == 0 or step == self.end


@dataclass(frozen=True)
class Constant(Schedule):
    """``sparsity`` from step ``start`` on, masks recomputed every ``frequency`` steps."""

    value: float = 0.5
    start: int = 0
    frequency: int = 1

    def __post_init__(self) -> None:
        _check_sparsity(self.value, "sparsity")
        if self.start < 0 or self.frequency < 1:
            raise UsageError(f"start {self.start} must be >= 0 and frequency "
                             f"{self.frequency} >= 1")

    @property
    def final(self) -> float:
        return self.value

    def sparsity(self, step: int) -> float:
        return self.value if step >= self.start else 0.0

    def updates(self, step: int) -> bool:
        return step >= self.start and (step - self.start) % self.frequency == 0


@dataclass(frozen=True)
class OneShot(Schedule):
    """Prune to ``value`` once, after optimizer step ``at``; the mask is fixed afterwards."""

    value: float = 0.5
    at: int = 0

    def __post_init__(self) -> None:
        _check_sparsity(self.value, "sparsity")
        if self.at < 0:
            raise UsageError(f"one-shot step {self.at} must be >= 0")

    @property
    def final(self) -> float:
        return self.value

    def sparsity(self, step: int) -> float:
        return self.value if step >= self.at else 0.0

    def updates(self, step: int) -> bool:
        return step == self.at
