"""Checks that need the model (but not yet the calibration data): finite weights, --skip globs
that match, N:M patterns that fit every target layer, and the method's own check of its
pattern and settings. Run once, before the slow steps."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import torch
from torch import nn

from .data.calibration import check_seqlen
from .errors import NumericalError, UsageError
from .methods.base import weight_matrix
from .models.adapter import HFAdapter, max_positions
from .patterns import NM, Pattern
from .plan import Plan


def check_weights_finite(model: nn.Module) -> None:
    """Raise :class:`NumericalError` naming the first parameter with NaN/Inf values.

    Checked before any work, so the error names the weight at fault rather than the first
    layer whose calibration activations it poisons.
    """
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.is_floating_point() and not bool(torch.isfinite(param).all()):
                bad = int((~torch.isfinite(param)).sum())
                raise NumericalError(
                    f"{name}: {bad} of {param.numel()} weights are NaN/Inf: the checkpoint is "
                    "corrupt or was saved after a diverged run; load a healthy checkpoint"
                )


def check_pattern_fits(model: nn.Module, pattern: Pattern, skip: Sequence[str] = ()) -> None:
    """Raise :class:`PatternError` now if an N:M pattern does not fit a target layer."""
    if not isinstance(pattern, NM):
        return
    for name, layer in HFAdapter(skip=tuple(skip)).all_targets(model).items():
        pattern.check_fits(weight_matrix(layer).shape[1], where=name)


def check_skips(model: nn.Module, skip: Sequence[str]) -> None:
    """Raise :class:`UsageError` for a --skip glob that matches no target layer (a typo would
    otherwise prune everything)."""
    names = list(HFAdapter().all_targets(model))
    for glob in skip:
        if not any(fnmatch.fnmatch(n, glob) for n in names):
            raise UsageError(
                f"--skip {glob!r} matches no target layer: target names look like {names[0]!r}"
            )


def preflight(model: nn.Module, plan: Plan, skip: Sequence[str] = ()) -> None:
    """Checks that need only the model: finite weights, --skip globs that match, an N:M
    pattern that fits, and the method's own check of pattern and settings."""
    check_weights_finite(model)
    check_skips(model, skip)
    check_pattern_fits(model, plan.pattern, skip)
    plan.cls.check(plan.pattern, plan.config)


def check_skeleton(skeleton: nn.Module, plan: Plan, seqlen: int, skip: Sequence[str]) -> None:
    """:func:`preflight` for a model without weights (a streamed skeleton): everything but
    the weights' values, and the sequence length against its positions."""
    check_seqlen(seqlen, max_positions(skeleton))
    check_skips(skeleton, skip)
    if plan.pattern is not None:
        check_pattern_fits(skeleton, plan.pattern, skip)
        plan.cls.check(plan.pattern, plan.config)
