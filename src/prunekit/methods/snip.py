"""SNIP (Lee et al. 2019) as a whole-network method: one global ranking of |∂L/∂w · w| on the
calibration batch, no update. The scores are :func:`prunekit.analysis.masks.snip_scores`."""

from __future__ import annotations

from torch import Tensor, nn

from ..analysis.masks import apply_masks_, snip_masks
from ..curvature import LossFn, flat_weights
from .base import NetworkConfig, NetworkMethod, register


@register
class SNIP(NetworkMethod):
    """Connection sensitivity at the current weights."""

    name = "snip"
    config_cls = NetworkConfig
    description = "SNIP: |dL/dw * w| on the calibration batch, one global ranking, no update"

    @classmethod
    def select(cls, model: nn.Module, w: Tensor, names: list[str], x: Tensor, y: Tensor,
               loss_fn: LossFn, sparsity: float, config: NetworkConfig
               ) -> tuple[Tensor, dict, float | None]:
        masks = snip_masks(model, x, y, sparsity, loss_fn)
        return flat_weights(apply_masks_(model, masks), names), {}, None
