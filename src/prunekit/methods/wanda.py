"""Wanda: pruning by weights and activations (Sun et al. 2023, "A Simple and Effective
Pruning Approach for Large Language Models", Eq. 1): score S_ij = |W_ij| · ‖X_j‖₂, compared
within each output row (or per N:M group); no weight update.

‖X_j‖₂ is the norm of input feature j over all N calibration tokens; from the shared Hessian
convention H = 2/N XᵀX it is √(N/2 · H_jj). The per-row ranking is unchanged by the constant
factor, so √diag(H) is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..masks import pattern_mask
from ..patterns import Pattern
from .base import LayerCompressor, MethodConfig, register


def wanda_scores(W: Tensor, H_diag: Tensor) -> Tensor:
    """S = |W| · ‖X_j‖ with ‖X_j‖ ∝ √H_jj.  W: (out, in), H_diag: (in,) -> (out, in)."""
    return W.abs() * torch.sqrt(H_diag.clamp_min(0)).to(W.dtype)[None, :]


def wanda_prune(W: Tensor, H_diag: Tensor, pattern: Pattern) -> Tensor:
    """W with the lowest Wanda scores zeroed per ``pattern`` (row scope is the paper's)."""
    return W * pattern_mask(wanda_scores(W, H_diag), pattern)


@dataclass(frozen=True)
class WandaConfig(MethodConfig):
    pass


@register
class Wanda(LayerCompressor):
    name = "wanda"
    config_cls = WandaConfig
    description = "|w|·‖x‖ per output row; no weight update"

    def solve(self, W: Tensor, H: Tensor):
        return wanda_prune(W, torch.diagonal(H), self.pattern), None, {}
