"""N:M sparse fine-tuning, NVIDIA ASP's recipe (Mishra et al. 2021, "Accelerating Sparse Deep
Neural Networks"): in every m consecutive weights along the input dimension keep the n largest
|W|, then fine-tune with the pattern enforced after every optimizer step."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import PatternError
from ..masks import nm_mask
from ..patterns import NM
from .gmp import magnitude_scores
from .schedules import Constant, OneShot
from .sparsifier import Sparsifier, find_targets


class NMSparsifier(Sparsifier):
    """``recompute=False``: the mask is chosen once, at ``prepare`` (ASP's default: prune the
    trained dense model, then fine-tune with the mask fixed); pruned weights are zero with
    their optimizer state. ``recompute=True``: chosen again from the current dense weights
    every ``frequency`` steps; pruned weights keep their values (so they can return) but their
    optimizer state is zeroed after every step, so stale momentum never moves them. Either
    way the weight the forward pass uses satisfies the pattern after every step."""

    def __init__(self, pattern: NM, recompute: bool = False, frequency: int = 100,
                 skip: Sequence[str] = (), optimizer: torch.optim.Optimizer | None = None) -> None:
        if not isinstance(pattern, NM):
            raise PatternError(f"NMSparsifier needs an N:M pattern such as 2:4, not {pattern}")
        schedule = (Constant(pattern.sparsity, 0, frequency) if recompute
                    else OneShot(pattern.sparsity, 0))
        super().__init__(schedule, "layer", skip, optimizer)
        self.pattern, self.recompute = pattern, recompute
        self.hard_zero = not recompute
        self.zero_state = True

    def prepare(self, model: nn.Module, targets: Sequence[str] | None = None) -> None:
        for name, layer in find_targets(model, self.skip).items():
            if targets is None or name in targets:
                self.pattern.check_fits(layer.weight.shape[1], where=name)
        super().prepare(model, targets)

    def scores(self, name: str, layer: nn.Module) -> Tensor:
        return magnitude_scores(self.dense_weight(layer).detach())

    def _update(self, step: int) -> None:
        with torch.no_grad():
            for n, layer in self.layers.items():
                self._set_mask(n, nm_mask(self.scores(n, layer), self.pattern.n, self.pattern.m))
