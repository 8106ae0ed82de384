"""Optimal Brain Damage (LeCun, Denker & Solla 1990): prune by the diagonal second-order
saliency s_q = H_qq · w_q² / 2 (their Eq. 6, at a minimum of the loss), with no weight update.

Works on any flat weight vector and the diagonal of any Hessian approximation of it (exact,
Gauss–Newton, empirical Fisher).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..curvature import CURVATURES, MAX_DENSE_PARAMS, LossFn, curvature_diagonal
from ..errors import UsageError
from ..masks import prune_count
from .base import NetworkConfig, NetworkMethod, register, setting


def obd_saliency(w: Tensor, H_diag: Tensor) -> Tensor:
    """s = H_qq · w_q² / 2 for every weight.  w, H_diag: (n,) -> (n,)."""
    return 0.5 * H_diag * w.square()


def obd_prune(w: Tensor, H_diag: Tensor, n_prune: int) -> tuple[Tensor, Tensor]:
    """Zero the ``n_prune`` weights of smallest OBD saliency (ties: lowest index first).

    Returns (pruned copy of w, indices removed in order of increasing saliency).
    """
    order = torch.argsort(obd_saliency(w, H_diag), stable=True)[:n_prune]
    out = w.clone()
    out[order] = 0.0
    return out, order


@dataclass(frozen=True)
class CurvatureConfig(NetworkConfig):
    """curvature: 'fisher' (empirical Fisher), 'gauss-newton' or 'exact' (Hessian of the loss).
    max_params: the largest network given a dense n × n curvature."""

    curvature: str = setting("fisher", "--curvature", "curvature of the task loss: empirical "
                             "'fisher' (default), 'gauss-newton', or the 'exact' Hessian",
                             choices=tuple(CURVATURES))
    max_params: int = setting(MAX_DENSE_PARAMS, "--max-params", "largest network given a dense "
                              "n x n curvature (default 20000: 3 GiB in float64)",
                              type="positive")

    def __post_init__(self) -> None:
        if self.curvature not in CURVATURES:
            raise UsageError(f"--curvature {self.curvature!r}: use one of {', '.join(CURVATURES)}")
        if self.max_params < 1:
            raise UsageError(f"--max-params {self.max_params!r} must be >= 1")


@register
class OBD(NetworkMethod):
    """Whole-network OBD: the diagonal of the chosen curvature, no update."""

    name = "obd"
    config_cls = CurvatureConfig
    description = "whole-network OBD: diagonal curvature of the task loss, no update (small models)"

    @classmethod
    def dense(cls, config: CurvatureConfig) -> bool:
        return config.curvature != "fisher"  # the Fisher's diagonal needs no dense matrix

    @classmethod
    def select(cls, model: nn.Module, w: Tensor, names: list[str], x: Tensor, y: Tensor,
               loss_fn: LossFn, sparsity: float, config: CurvatureConfig
               ) -> tuple[Tensor, dict, float | None]:
        diag = curvature_diagonal(model, loss_fn, x, y, names, config.curvature,
                                  config.max_params)
        w_new, order = obd_prune(w, diag, prune_count(w.numel(), sparsity))
        return w_new, {"predicted_loss": float(0.5 * (diag[order] * w[order].square()).sum())}, None
