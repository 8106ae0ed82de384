"""Whole-network Optimal Brain Surgeon (Hassibi & Stork 1993): every weight of a small network
ranked on the full curvature of the task loss, the kept weights updated by each removal's
OBS step. The solve is :func:`prunekit.methods.obs.obs_prune`, shared with layer-wise OBS."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..curvature import CURVATURES, LossFn
from ..errors import NumericalError, UsageError
from ..masks import prune_count
from .base import NetworkMethod, register, setting
from .obd import CurvatureConfig
from .obs import obs_prune


@dataclass(frozen=True)
class OBSNetworkConfig(CurvatureConfig):
    """rel_damp: λ = rel_damp · mean(diag H) added before inverting. k: weights removed
    jointly per step (1 = the classic one at a time)."""

    rel_damp: float = setting(0.01, "--damp", "relative damping of the curvature (default "
                              "0.01)", type="nonnegative")
    k: int = setting(1, "--obs-k", "weights removed jointly per step (default 1, the classic "
                     "one-at-a-time OBS)", type="positive")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.rel_damp >= 0:
            raise UsageError(f"--damp {self.rel_damp!r} must be >= 0, e.g. 0.01")
        if self.k < 1:
            raise UsageError(f"--obs-k {self.k!r} must be >= 1")


@register
class OBSNetwork(NetworkMethod):
    """Whole-network OBS on the dense curvature of the chosen kind."""

    name = "obs-network"
    config_cls = OBSNetworkConfig
    description = ("whole-network OBS: full curvature of the task loss, updates the weights it "
                   "keeps (small models)")

    @classmethod
    def dense(cls, config: OBSNetworkConfig) -> bool:
        return True

    @classmethod
    def select(cls, model: nn.Module, w: Tensor, names: list[str], x: Tensor, y: Tensor,
               loss_fn: LossFn, sparsity: float, config: OBSNetworkConfig
               ) -> tuple[Tensor, dict, float | None]:
        H = CURVATURES[config.curvature](model, loss_fn, x, y, names,
                                         max_params=config.max_params)
        try:
            res = obs_prune(w, H, prune_count(w.numel(), sparsity), k=config.k,
                            rel_damp=config.rel_damp, name=type(model).__name__)
        except NumericalError as exc:
            raise NumericalError(
                f"{exc}. The {config.curvature} curvature of this network could not be used: an "
                "exact Hessian away from a minimum is indefinite (use --curvature fisher or "
                "gauss-newton, which are positive semi-definite, or a larger --damp)") from None
        extra = {"predicted_loss": float(res.losses.sum()), "damping_tries": res.damping.tries}
        return res.w, extra, res.damping.relative
