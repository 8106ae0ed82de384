"""The one Hessian convention of prunekit, and damped Cholesky factorisations of it.

For a linear layer y = W x and the squared reconstruction error summed over calibration tokens,
the layer Hessian is H = 2/N Σ_n x_n x_nᵀ (Frantar & Alistarh 2023, "SparseGPT", Sec. 3;
Hassibi & Stork 1993). N counts tokens, not sequences.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import DataError, NumericalError

log = logging.getLogger(__name__)


class HessianAccumulator:
    """Running H = 2/N Σ x xᵀ over all calibration tokens, in float32 or float64.

    Kept as a running mean (H ← H·N/(N+n) + 2/(N+n) XᵀX) so its scale never depends on how
    many batches were seen. Only the block-lower triangle is accumulated (``block`` rows at a
    time, about half the flops of a full XᵀX for wide layers); :meth:`finalize` mirrors it.
    """

    block = 256

    def __init__(
        self,
        in_features: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        name: str = "layer",
    ) -> None:
        self.in_features = in_features
        self.name = name
        self.H = torch.zeros(in_features, in_features, dtype=dtype, device=device)
        self.n_tokens = 0
        self._final: Tensor | None = None

    def add_batch(self, x: Tensor) -> None:
        """Add calibration inputs x: (..., in_features)."""
        if x.shape[-1] != self.in_features:
            raise DataError(
                f"{self.name}: input has {x.shape[-1]} features, expected {self.in_features}"
            )
        x = x.detach().reshape(-1, self.in_features).to(self.H.device, self.H.dtype)  # (n, c)
        if self._final is not None:
            raise RuntimeError(f"{self.name}: add_batch after finalize()")
        n = x.shape[0]
        total = self.n_tokens + n
        self.H.mul_(self.n_tokens / total)
        x = x * math.sqrt(2.0 / total)  # (n, c)
        c = self.in_features
        for r0 in range(0, c, self.block):
            r1 = min(r0 + self.block, c)
            self.H[r0:r1, :r1].addmm_(x[:, r0:r1].T, x[:, :r1])
        self.n_tokens = total

    def finalize(self) -> Tensor:
        """The Hessian (c, c). Raises :class:`DataError` if no token was seen."""
        if self.n_tokens == 0:
            raise DataError(
                f"{self.name}: no calibration tokens reached this layer: check the calibration "
                "set is not empty and that the layer is used in the forward pass"
            )
        if not bool(torch.isfinite(torch.diagonal(self.H)).all()):  # NaN/Inf in any x_j reach H_jj
            raise NumericalError(
                f"{self.name}: calibration activations contain NaN/Inf: check the weights of "
                "earlier layers and the model dtype (try float32)"
            )
        if self._final is None:
            self._final = torch.tril(self.H) + torch.tril(self.H, -1).T
            self.H = self._final
        return self._final


@dataclass(frozen=True)
class Damping:
    """Damping λ added to diag(H): ``relative`` = λ / mean(diag H); ``tries`` attempts it took."""

    relative: float
    absolute: float
    tries: int


def _recursive_tril_inverse(L: Tensor, leaf: int = 256) -> Tensor:
    """Inverse of a lower-triangular L by 2×2 blocks: [[A,0],[B,C]]⁻¹ = [[A⁻¹,0],[-C⁻¹BA⁻¹,C⁻¹]].

    All the work is in matrix products, which run near peak speed (LAPACK's trtri does not
    parallelise as well on few cores).
    """
    n = L.shape[0]
    if n <= leaf:
        eye = torch.eye(n, dtype=L.dtype, device=L.device)
        return torch.linalg.solve_triangular(L, eye, upper=False)
    h = n // 2
    Ai = _recursive_tril_inverse(L[:h, :h], leaf)
    Ci = _recursive_tril_inverse(L[h:, h:], leaf)
    out = torch.zeros_like(L)
    out[:h, :h] = Ai
    out[h:, h:] = Ci
    out[h:, :h] = -(Ci @ (L[h:, :h] @ Ai))
    return out


def shrink_to_diagonal(H: Tensor, alpha: float) -> Tensor:
    """H + α·diag(H), a new tensor: each input's own second moment damps its column, which
    shrinks H towards its diagonal — (1 + α) times the convex mix (1 − β)·H + β·diag(H) with
    β = α / (1 + α), the shrinkage of a sample covariance towards a diagonal target (Ledoit &
    Wolf 2004; Schäfer & Strimmer 2005, target "D"). The correlations H holds are those of the
    calibration text; shrinking them trusts them less where the model meets other text."""
    out = H.clone()
    torch.diagonal(out).mul_(1.0 + alpha)
    return out


def add_lower_product_(H: Tensor, A: Tensor, B: Tensor, alpha: float = 1.0,
                       block: int = 1024) -> Tensor:
    """H += alpha · AᵀB on the block-lower triangle only (block rows r0:r1, columns :r1), for a
    product known to be symmetric. A, B: (k, n); H: (n, n). About half the flops of the full
    product; entries above the diagonal blocks are left as they were. Returns H."""
    n = H.shape[0]
    for r0 in range(0, n, block):
        r1 = min(r0 + block, n)
        H[r0:r1, :r1].addmm_(A[:, r0:r1].T, B[:, :r1], alpha=alpha)  # (r1-r0, r1)
    return H


def damped_cholesky(
    H: Tensor, rel_damp: float = 0.01, max_tries: int = 6, growth: float = 10.0,
    name: str = "layer", overwrite: bool = False,
) -> tuple[Tensor, Damping]:
    """Lower Cholesky factor of H + λI, escalating λ until H + λI is positive definite.

    λ starts at ``rel_damp · mean(diag H)`` (SparseGPT's relative damping, "percdamp") and is
    multiplied by ``growth`` after each failure. The damping used is returned; if
    ``max_tries`` are not enough a :class:`NumericalError` names the layer and the fix.
    With ``overwrite=True`` the damping is added to H in place (no copy of H is made).
    """
    if not bool(torch.isfinite(H).all()):
        raise NumericalError(f"{name}: the Hessian contains NaN/Inf: check calibration inputs")
    if not rel_damp >= 0:
        raise NumericalError(f"{name}: relative damping {rel_damp!r} must be >= 0, e.g. 0.01")
    mean_diag = float(torch.diagonal(H).mean())
    scale = mean_diag if mean_diag > 0 else 1.0
    Hd = H if overwrite else H.clone()
    rel, added = rel_damp, 0.0
    for attempt in range(1, max_tries + 1):
        lam = rel * scale
        torch.diagonal(Hd).add_(lam - added)
        added = lam
        L, info = torch.linalg.cholesky_ex(Hd)
        if int(info) == 0 and bool(torch.isfinite(torch.diagonal(L)).all()):
            if attempt > 1:
                log.warning("%s: Hessian needed damping %.3g (relative) to factor", name, rel)
            return L, Damping(rel, lam, attempt)
        rel = rel * growth if rel > 0 else 1e-6
    raise NumericalError(
        f"{name}: the Hessian is not positive definite even with relative damping "
        f"{rel / growth:.3g}: use more calibration samples, or raise --damp"
    )


def unit_dead_columns(H: Tensor) -> tuple[Tensor, Tensor]:
    """(H', dead): H with H_jj = 1 where no calibration token activated input j (H_jj = 0, so
    row and column j are zero), and that mask. Such weights cannot change the layer's output
    on the calibration data; the unit pivot makes the factorisation exist without coupling
    them to any other column."""
    dead = torch.diagonal(H) == 0
    if bool(dead.any()):
        H = H.clone()
        H[dead, dead] = 1.0
    return H, dead


def inverse_cholesky_upper(
    H: Tensor, rel_damp: float = 0.01, max_tries: int = 6, name: str = "layer"
) -> tuple[Tensor, Damping]:
    """Upper U with (H + λI)⁻¹ = UᵀU: the factor SparseGPT and GPTQ sweep with.

    Row j of U is the j-th row of the inverse Hessian restricted to the not-yet-processed
    columns, divided by the square root of its diagonal (Frantar & Alistarh 2023, Sec. 3.2).
    Computed from one Cholesky of the reversed matrix: with P the reversal permutation and
    P H P = L̃ L̃ᵀ, U = P L̃⁻¹ P, so one factorisation and one triangular inverse replace the
    usual factor → invert → factor again (about half the flops).
    """
    Hr = torch.flip(H, (0, 1))  # P H P, a fresh copy that may be damped in place
    L, damping = damped_cholesky(Hr, rel_damp, max_tries, name=name, overwrite=True)
    U = torch.flip(_recursive_tril_inverse(L), (0, 1))  # P L̃⁻¹ P
    return U, damping
