"""Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune"): at every update
of the sparsity schedule (usually :class:`prunekit.training.schedules.Cubic`), keep the
largest |W| among the weights still kept; masks only grow, pruned weights stay zero."""

from __future__ import annotations

from torch import Tensor, nn

from .sparsifier import Sparsifier


def magnitude_scores(W: Tensor) -> Tensor:
    """|W|, the importance GMP ranks by.  (out, in) -> (out, in)."""
    return W.abs()


class GradualMagnitude(Sparsifier):
    """GMP on a schedule; ``scope`` row, layer or global. Pruned weights and their optimizer
    state are zeroed after every step, so they never come back."""

    def scores(self, name: str, layer: nn.Module) -> Tensor:
        return magnitude_scores(self.dense_weight(layer).detach())
