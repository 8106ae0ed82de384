"""Optimal Brain Surgeon on a flat weight vector with its full Hessian (Hassibi & Stork 1993).

Iterative: at each step remove the weight of least saliency δL_q = w_q² / (2 [H⁻¹]_qq) (or the
k least, removed jointly with the multi-weight OBS solution) and update the others; H⁻¹ is
downdated in O(n²) per removal, never re-inverted. The removal steps are the shared core's
:func:`prunekit.obs.obs_remove_` and :func:`prunekit.obs.obs_remove_set_`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..hessian import Damping, damped_cholesky
from ..obs import obs_remove_, obs_remove_set_


@dataclass
class OBSResult:
    """w: pruned weights; order: indices in removal order; losses: predicted δL per step;
    damping: what was added to H before inverting it."""

    w: Tensor
    order: Tensor
    losses: Tensor
    damping: Damping


def obs_saliency(w: Tensor, Hinv: Tensor, removed: Tensor) -> Tensor:
    """δL_q = w_q² / (2 [H⁻¹]_qq); +inf for weights already removed.  (n,) -> (n,)."""
    sal = w.square() / (2.0 * torch.diagonal(Hinv))
    return sal.masked_fill(removed, float("inf"))


def obs_prune(
    w: Tensor, H: Tensor, n_prune: int, k: int = 1, rel_damp: float = 0.0, name: str = "network"
) -> OBSResult:
    """Remove ``n_prune`` weights of ``w`` (n,) by OBS with Hessian ``H`` (n, n), k at a time.

    ``rel_damp`` adds λ = rel_damp · mean(diag H) before inverting (escalated if H is not
    positive definite; the damping used is returned). k > 1 removes the k least salient
    weights of each step jointly (δw = −H⁻¹E (EᵀH⁻¹E)⁻¹ Eᵀw).
    """
    L, damping = damped_cholesky(H, rel_damp, name=name)
    Hinv = torch.cholesky_inverse(L)
    w = w.clone()
    removed = torch.zeros_like(w, dtype=torch.bool)
    order, losses = [], []
    while len(order) < n_prune:
        step = min(k, n_prune - len(order))
        sal = obs_saliency(w, Hinv, removed)
        if step == 1:
            q = int(torch.argmin(sal))
            losses.append(obs_remove_(w, Hinv, q))
            chosen = [q]
        else:
            Q = torch.argsort(sal, stable=True)[:step]
            losses.append(obs_remove_set_(w, Hinv, Q))
            chosen = Q.tolist()
        removed[chosen] = True
        order.extend(chosen)
    return OBSResult(w, torch.tensor(order, dtype=torch.long),
                     torch.tensor(losses, dtype=w.dtype), damping)
