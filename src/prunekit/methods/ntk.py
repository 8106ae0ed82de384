"""NTK-preserving pruning as a whole-network method: keep the weights that carry the top
eigenspace of the dense network's empirical NTK on the calibration inputs, in ``rounds``
geometric steps, no update. The criterion is :func:`prunekit.analysis.masks.ntk_masks`."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..analysis.masks import apply_masks_, ntk_masks
from ..curvature import LossFn, flat_weights
from ..errors import UsageError
from .base import NetworkConfig, NetworkMethod, register, setting


@dataclass(frozen=True)
class NTKConfig(NetworkConfig):
    """top: eigenvectors of the dense kernel to preserve. rounds: geometric pruning rounds,
    the scores recomputed in each."""

    top: int = setting(10, "--ntk-top", "eigenvectors of the dense kernel to preserve "
                       "(default 10)", type="positive")
    rounds: int = setting(1, "--ntk-rounds", "geometric pruning rounds, scores recomputed each "
                          "(default 1)", type="positive")

    def __post_init__(self) -> None:
        if self.top < 1 or self.rounds < 1:
            raise UsageError(f"--ntk-top {self.top!r} and --ntk-rounds {self.rounds!r} must be "
                             ">= 1")


@register
class NTKPreserving(NetworkMethod):
    """The weights that carry the dense NTK's top eigenspace."""

    name = "ntk"
    config_cls = NTKConfig
    description = ("keeps the weights carrying the dense NTK's top eigenspace (--ntk-top r), no "
                   "update")

    @classmethod
    def select(cls, model: nn.Module, w: Tensor, names: list[str], x: Tensor, y: Tensor,
               loss_fn: LossFn, sparsity: float, config: NTKConfig
               ) -> tuple[Tensor, dict, float | None]:
        masks = ntk_masks(model, x, sparsity, top=min(config.top, len(x)), rounds=config.rounds)
        return (flat_weights(apply_masks_(model, masks), names),
                {"top": config.top, "rounds": config.rounds}, None)
