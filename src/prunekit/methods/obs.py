"""Optimal Brain Surgeon, exact: on a flat weight vector with its full Hessian (Hassibi & Stork
1993), and layer-wise, row by row, with the layer Hessian (Optimal Brain Compression).

Iterative: at each step remove the weight of least saliency δL_q = w_q² / (2 [H⁻¹]_qq) (or the
k least, removed jointly with the multi-weight OBS solution) and update the others; H⁻¹ is
downdated in O(n²) per removal, never re-inverted. The removal steps are the shared core's
:func:`prunekit.obs.obs_greedy_` (one at a time), :func:`prunekit.obs.obs_remove_set_`
(k at a time) and :func:`prunekit.obs.obs_remove_rows_` (layer-wise, a batch of rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import PatternError, UsageError
from ..hessian import Damping, damped_cholesky
from ..masks import prune_count
from ..obs import obs_greedy_, obs_remove_rows_, obs_remove_set_
from ..patterns import NM, Pattern, Unstructured
from .base import LayerCompressor, MethodConfig, register, setting


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
    w: Tensor, H: Tensor, n_prune: int, k: int = 1, rel_damp: float = 0.0, name: str = "network",
    refresh: int = 128, snapshots: dict[int, Tensor] | None = None,
) -> OBSResult:
    """Remove ``n_prune`` weights of ``w`` (n,) by OBS with Hessian ``H`` (n, n), k at a time.

    ``rel_damp`` adds λ = rel_damp · mean(diag H) before inverting (escalated if H is not
    positive definite; the damping used is returned). k = 1 is the iterative OBS of Hassibi &
    Stork (:func:`prunekit.obs.obs_greedy_`, downdates folded in every ``refresh`` removals).
    k > 1 removes the k least salient weights of each step jointly
    (δw = −H⁻¹E (EᵀH⁻¹E)⁻¹ Eᵀw, :func:`obs_prune_sets_`). ``snapshots`` (k = 1): see
    :func:`prunekit.obs.obs_greedy_`.
    """
    L, damping = damped_cholesky(H, rel_damp, name=name)
    Hinv = torch.cholesky_inverse(L)
    del L
    w = w.to(Hinv.dtype, copy=True)
    if k == 1:
        order, losses = obs_greedy_(w, Hinv, n_prune, refresh=refresh, snapshots=snapshots,
                                    overwrite=True)
    elif snapshots is not None:
        raise ValueError("snapshots are for one-at-a-time OBS (k = 1)")
    else:
        order, losses = obs_prune_sets_(w, Hinv, n_prune, k)
    return OBSResult(w, order, losses, damping)


def obs_prune_sets_(w: Tensor, Hinv: Tensor, n_prune: int, k: int) -> tuple[Tensor, Tensor]:
    """The batched variant: each step removes the k least salient weights jointly with the
    multi-weight OBS solution (the last step fewer). w (n,) and Hinv (n, n) are updated in
    place. Returns (order (n_prune,), δL per step)."""
    if k < 1:
        raise ValueError(f"k {k} must be >= 1")
    removed = torch.zeros_like(w, dtype=torch.bool)
    order, losses = [], []
    while len(order) < n_prune:
        step = min(k, n_prune - len(order))
        Q = torch.argsort(obs_saliency(w, Hinv, removed), stable=True)[:step]
        losses.append(obs_remove_set_(w, Hinv, Q))
        removed[Q] = True
        order.extend(Q.tolist())
    return torch.tensor(order, dtype=torch.long), torch.tensor(losses, dtype=w.dtype)


# --- layer-wise exact OBS (Optimal Brain Compression) ---------------------------------------


def _removable(removed: Tensor, pattern: Pattern) -> Tensor:
    """Which weights may still go: not removed, and (N:M) in a group with fewer than m−n gone."""
    if not isinstance(pattern, NM):
        return ~removed
    B, n = removed.shape
    gone = removed.reshape(B, n // pattern.m, pattern.m).sum(-1, keepdim=True)  # (B, g, 1)
    full = (gone >= pattern.m - pattern.n).expand(-1, -1, pattern.m).reshape(B, n)
    return ~removed & ~full


def exact_obs_prune(
    W: Tensor, H: Tensor, pattern: Pattern, rel_damp: float = 0.01, row_batch: int = 32,
    name: str = "layer",
) -> tuple[Tensor, Tensor, Damping]:
    """Layer-wise exact OBS (Frantar, Singh & Alistarh 2022, "Optimal Brain Compression",
    Alg. 1): each row of W (out, in) is pruned greedily, one weight at a time, each removal
    the exact OBS step for the layer loss with Hessian H = 2/N XᵀX, with that row's inverse
    Hessian downdated after every removal. Rows are independent and run in batches.

    Unstructured (row scope): every row loses floor(in · sparsity) weights. N:M: a row's
    choice is restricted to groups that still have more than n weights.
    Returns (Ŵ, total predicted loss Σ δL, damping).
    """
    rows, cols = W.shape
    n_prune = prune_count(cols, pattern.sparsity)  # per row; exact for N:M as cols % m == 0
    L, damping = damped_cholesky(H, rel_damp, name=name)
    Hinv0 = torch.cholesky_inverse(L)  # (in, in)
    out = W.to(H.dtype, copy=True)
    total = torch.zeros((), dtype=H.dtype, device=H.device)
    for r0 in range(0, rows, row_batch):
        Wb = out[r0 : r0 + row_batch]  # view: pruned in place
        Hinv = Hinv0.expand(Wb.shape[0], cols, cols).clone()  # (B, in, in)
        removed = torch.zeros_like(Wb, dtype=torch.bool)
        for _ in range(n_prune):
            sal = Wb.square() / (2.0 * torch.diagonal(Hinv, dim1=1, dim2=2))
            q = sal.masked_fill(~_removable(removed, pattern), float("inf")).argmin(1)  # (B,)
            total += obs_remove_rows_(Wb, Hinv, q).sum()
            removed[torch.arange(Wb.shape[0]), q] = True
    return out, total, damping


@dataclass(frozen=True)
class ExactOBSConfig(MethodConfig):
    """rel_damp: λ = rel_damp · mean(diag H). row_batch: rows pruned together (memory:
    row_batch · in² numbers)."""

    rel_damp: float = setting(0.01, "--damp", "relative Hessian damping (default 0.01)",
                               type="nonnegative")
    row_batch: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.rel_damp >= 0:
            raise UsageError(f"--damp {self.rel_damp!r} must be >= 0, e.g. 0.01")
        if self.row_batch < 1:
            raise UsageError(f"row_batch {self.row_batch!r} must be >= 1")


@register
class ExactOBS(LayerCompressor):
    name = "obs"
    config_cls = ExactOBSConfig
    description = "layer-wise exact OBS (OBC): per row, one weight at a time; slow, the reference"

    @classmethod
    def check(cls, pattern: Pattern, config: MethodConfig) -> None:
        if isinstance(pattern, Unstructured) and pattern.scope != "row":
            raise PatternError(
                f"method 'obs' prunes each row on its own: use --scope row (not {pattern.scope})"
            )

    def solve(self, W: Tensor, H: Tensor):
        cfg = self.config
        W_new, loss, damping = exact_obs_prune(W, H, self.pattern, cfg.rel_damp, cfg.row_batch,
                                               name=self.layer_name)
        return W_new, damping, {"obs_loss": float(loss)}
