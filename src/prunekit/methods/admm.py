"""SparseGPT refined by ADMM: the layer problem min_Ŵ tr((Ŵ − W) H (Ŵ − W)ᵀ) subject to the
pattern, solved by the alternating direction method of multipliers with a growing penalty
(ALPS, Meng et al. 2024, "ALPS: Improved Optimization for Highly Sparse One-Shot Pruning for
Large Language Models", Alg. 1; the ADMM weight update of Boža 2024, "Fast and Effective Weight
Update for Pruned Large Language Models"), started from SparseGPT's mask and weights, then the
kept weights refitted exactly on the final mask by preconditioned conjugate gradients (ALPS,
Sec. 3.3). The result is never worse than SparseGPT's on the calibration objective: if
it is, SparseGPT's is kept.

Splitting Ŵ = D (D on the pattern), scaled dual U, penalty ρ (Boyd et al. 2011, Sec. 3.1.1):

    Ŵ ← (W H + ρ (D − U)) (H + ρ I)⁻¹        the unconstrained quadratic, in closed form
    D ← P(Ŵ + U)                            projection: the pattern's largest |·| kept
    U ← U + Ŵ − D

ρ starts at ``rho`` · mean(diag H) and grows by ``growth`` every ``every`` iterations, so the
support moves early and freezes late; each step of ρ costs one Cholesky inverse of H + ρI, each
iteration one product with it. H is first shrunk towards its diagonal, H + α·diag(H)
(``diag_damp``; :func:`prunekit.hessian.shrink_to_diagonal`), then damped as in SparseGPT
(λ = rel_damp · mean diag): both pull the result towards the dense weights, which holds up
better on text other than the calibration's (docs/one-shot-pruning.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import UsageError
from ..hessian import Damping, damped_cholesky, shrink_to_diagonal, unit_dead_columns
from ..masks import pattern_mask
from ..patterns import Pattern
from .base import register, setting
from .sparsegpt import DAMP_HELP, SparseGPT, SparseGPTConfig, sparsegpt_prune


def layer_objective(W: Tensor, W_hat: Tensor, H: Tensor) -> float:
    """tr((Ŵ − W) H (Ŵ − W)ᵀ): the layer's output error on the calibration tokens (× N/2)."""
    D = W_hat - W
    return float(((D @ H) * D).sum())


def masked_refit(W: Tensor, H: Tensor, mask: Tensor, start: Tensor, iters: int = 50,
                 tol: float = 1e-10) -> Tensor:
    """argmin over Ŵ with Ŵ = 0 off ``mask`` of tr((Ŵ − W) H (Ŵ − W)ᵀ): every row's kept
    weights solve H_SS ŵ_S = (W H)_S. Preconditioned conjugate gradients (Jacobi, diag H),
    all rows at once, from ``start`` (which must be 0 off the mask)."""
    m = mask.to(W.dtype)
    X = start * m
    R = (W - X) @ H * m  # minus half the gradient, on the support
    inv_diag = 1.0 / torch.diagonal(H).clamp_min(torch.finfo(H.dtype).tiny)
    Z = R * inv_diag
    P = Z.clone()
    rz = (R * Z).sum(1, keepdim=True)
    scale = float((W @ H * W).sum()) or 1.0
    for _ in range(iters):
        AP = P @ H * m
        alpha = rz / (P * AP).sum(1, keepdim=True).clamp_min(torch.finfo(H.dtype).tiny)
        X += alpha * P
        R -= alpha * AP
        if float((R * R * inv_diag).sum()) <= tol * scale:
            break
        Z = R * inv_diag
        rz_new = (R * Z).sum(1, keepdim=True)
        P = Z + (rz_new / rz.clamp_min(torch.finfo(H.dtype).tiny)) * P
        rz = rz_new
    return X * m


def admm_prune(W: Tensor, H: Tensor, pattern: Pattern, start: Tensor, rho: float = 0.1,
               growth: float = 2.0, every: int = 4, iters: int = 20, cg_iters: int = 10,
               rel_damp: float = 0.01, name: str = "layer",
               damping: Damping | None = None) -> tuple[Tensor, Damping, dict]:
    """Prune W (out, in) to ``pattern`` by ADMM from ``start`` (SparseGPT's result, which
    fixes the first support), then refit the kept weights exactly; returns (Ŵ, damping,
    figures: the objective of ``start`` and of the result, how much of the support moved).
    ``damping``: the one the start was computed with (else found from ``rel_damp``)."""
    H, dead = unit_dead_columns(H)
    if damping is None:  # the λ that makes H + λI factor
        _, damping = damped_cholesky(H, rel_damp, name=name)
    Hd = H.clone()
    torch.diagonal(Hd).add_(damping.absolute)
    h = float(torch.diagonal(Hd).mean())
    WH = W @ Hd
    D = start.clone()
    D[:, dead] = 0.0
    mask0 = D != 0
    U = torch.zeros_like(W)
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    for t in range(iters):
        if t % every == 0:  # the penalty steps up: one Cholesky inverse of H + ρI per step
            r = rho * h * growth ** (t // every)
            inv = torch.cholesky_inverse(torch.linalg.cholesky(Hd + r * eye))
        W_hat = (WH + r * (D - U)) @ inv
        V = W_hat + U
        mask = pattern_mask(V.abs(), pattern)
        mask[:, dead] = False
        D = V * mask
        U = V - D  # U + Ŵ − D
    mask = D != 0
    W_new = masked_refit(W, Hd, mask, D, cg_iters)
    before, after = layer_objective(W, start, Hd), layer_objective(W, W_new, Hd)
    moved = float((mask != mask0).sum()) / 2 / max(int(mask0.sum()), 1)
    figures = {"sparsegpt_objective": before, "admm_objective": after,
               "support_moved": round(moved, 4)}
    if after > before:  # never worse than the start on the calibration objective
        return start, damping, {**figures, "kept": "sparsegpt"}
    return W_new, damping, figures


@dataclass(frozen=True)
class ADMMConfig(SparseGPTConfig):
    """SparseGPT's settings (its sweep gives the start; damping 5 % here), ``diag_damp`` α of
    H + α·diag(H), and the ADMM schedule: ``rho`` the first penalty relative to mean(diag H),
    ``iters`` ADMM iterations (the penalty doubles every 4, the refit takes 10 steps)."""

    rel_damp: float = setting(0.05, "--damp", DAMP_HELP, type="nonnegative")
    diag_damp: float = setting(0.2, "--diag-damp", "admm: H + α·diag(H) before the damping, "
                               "which shrinks H towards its diagonal (default 0.2)",
                               type="nonnegative")
    rho: float = setting(0.1, "--admm-rho", "ADMM: first penalty, relative to mean diag H "
                         "(default 0.1)", type="nonnegative")
    iters: int = setting(20, "--admm-iters", "ADMM iterations (default 20)", type="positive")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.rho > 0:
            raise UsageError(f"--admm-rho {self.rho!r} must be > 0, e.g. 0.1")
        if not self.diag_damp >= 0:  # also rejects NaN
            raise UsageError(f"--diag-damp {self.diag_damp!r} must be >= 0, e.g. 0.2")


@register
class ADMM(SparseGPT):
    name = "admm"
    config_cls = ADMMConfig
    description = ("SparseGPT, then ADMM with a growing penalty and an exact refit on the mask "
                   "(ALPS, Meng et al. 2024)")

    def solve(self, W: Tensor, H: Tensor):  # with --bits: GPTQ after, keeping the mask
        cfg = self.config
        H = shrink_to_diagonal(H, cfg.diag_damp)
        start, _, damping = sparsegpt_prune(W, H, self.pattern, cfg.blocksize, cfg.rel_damp,
                                            name=self.layer_name)
        W_new, damping, figures = admm_prune(W, H, self.pattern, start, cfg.rho,
                                             iters=cfg.iters, name=self.layer_name,
                                             damping=damping)
        return W_new, damping, figures
