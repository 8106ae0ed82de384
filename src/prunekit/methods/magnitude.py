"""Magnitude pruning: keep the weights of largest |w| (Han et al. 2015, "Learning both Weights
and Connections for Efficient Neural Networks"). Scopes: row, layer, global; and N:M."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..masks import pattern_mask
from ..patterns import Pattern
from .base import LayerCompressor, MethodConfig, register


def magnitude_prune(W: Tensor, pattern: Pattern) -> Tensor:
    """W: (out, in) -> W with the lowest-|w| weights zeroed per ``pattern``."""
    keep = pattern_mask(W.abs(), pattern)  # (out, in)
    return W * keep


@dataclass(frozen=True)
class MagnitudeConfig(MethodConfig):
    pass


@register
class Magnitude(LayerCompressor):
    name = "magnitude"
    config_cls = MagnitudeConfig
    supports_global = True  # resolved into per-layer counts by masks.global_patterns
    description = "|w|; no data needed (calibration only measures the error)"

    def solve(self, W: Tensor, H: Tensor):
        return magnitude_prune(W, self.pattern), None, {}
