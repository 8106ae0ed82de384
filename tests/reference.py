"""Naive float64 references written straight from the papers' equations (slow, small layers)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from prunekit.patterns import NM, Pattern


def naive_sparsegpt(W: Tensor, H: Tensor, pattern: Pattern, blocksize: int, rel_damp: float) -> Tensor:
    """SparseGPT as Frantar & Alistarh (2023) state it, with explicit inverses.

    Columns are processed left to right; F_j = {j, ..., c-1}. The pruning of column j updates
    the remaining weights of every row by the OBS formula δ = −(w_j / [H_{F_j}⁻¹]_jj) ·
    H_{F_j}⁻¹[j, :] (Eq. 3 with the row's Hessian H_{F_j}; Hassibi & Stork 1993). The mask of
    each block of ``blocksize`` columns (each group of m for N:M) is chosen when the sweep
    reaches it, by the OBS saliency w_j² / [H_{F_j}⁻¹]_jj of the current weights (Sec. 3.3).
    Unstructured, scope "layer": the block's weights compete across rows (the paper's Alg. 1),
    with the exact cumulative count; scope "row": each row prunes its share of the block.
    """
    W = W.double().clone()
    H = H.double().clone()
    c = H.shape[0]
    r = W.shape[0]
    H += rel_damp * H.diagonal().mean() * torch.eye(c, dtype=H.dtype)
    prune = torch.zeros_like(W, dtype=torch.bool)

    def hinv(j):  # inverse of H restricted to F_j
        return torch.linalg.inv(H[j:, j:])

    period = pattern.m if isinstance(pattern, NM) else blocksize
    for j in range(c):
        Hi = hinv(j)
        if j % period == 0:
            j2 = min(j + period, c)
            d = torch.tensor([hinv(k)[0, 0] for k in range(j, j2)], dtype=W.dtype)
            sal = W[:, j:j2] ** 2 / d  # (r, p)
            if isinstance(pattern, NM):
                idx = torch.argsort(sal, dim=1, stable=True)[:, : pattern.m - pattern.n]
                prune[:, j:j2].scatter_(1, idx, True)
            elif pattern.scope == "row":
                s = pattern.sparsity
                cnt = math.floor(j2 * s + 1e-9) - math.floor(j * s + 1e-9)
                idx = torch.argsort(sal, dim=1, stable=True)[:, :cnt]
                prune[:, j:j2].scatter_(1, idx, True)
            else:
                s = pattern.sparsity
                cnt = math.floor(r * j2 * s + 1e-9) - math.floor(r * j * s + 1e-9)
                order = torch.argsort(sal.T.reshape(-1), stable=True)[:cnt]  # column-major
                pm = torch.zeros(sal.numel(), dtype=torch.bool)
                pm[order] = True
                prune[:, j:j2] = pm.reshape(j2 - j, r).T
        w = W[:, j].clone()
        q = torch.where(prune[:, j], torch.zeros_like(w), w)
        W[:, j:] -= ((w - q) / Hi[0, 0])[:, None] * Hi[0, :][None, :]
        W[:, j] = q
    return W


def naive_gptq(W: Tensor, H: Tensor, spec, rel_damp: float, keep: Tensor | None = None,
               act_order: bool = False, static_groups: bool = False) -> Tensor:
    """GPTQ as Frantar et al. (2022) state it (Alg. 1 without lazy batches), with explicit
    inverses: each column j (in order, or by decreasing H_jj with act-order) is set to its grid
    point q_j and the remaining columns F get δ = −((w_j − q_j) / [H_F⁻¹]_jj) · H_F⁻¹[j, :].
    Group grids are fitted from the current weights when the sweep reaches a group's first
    column; per-channel, static or act-order grids from the original weight. Pruned weights
    (keep False) are set to 0 and never count towards a grid.
    """
    from prunekit.quant.grid import fake_quantize, fit, fit_rows

    W = W.double().clone()
    H = H.double().clone()
    rows, c = W.shape
    keep = torch.ones_like(W, dtype=torch.bool) if keep is None else keep
    H += rel_damp * H.diagonal().mean() * torch.eye(c, dtype=H.dtype)
    g = c if spec.group is None else spec.group
    static = spec.group is None or static_groups or act_order
    params = fit(W, spec, keep) if static else None
    order = (torch.argsort(H.diagonal(), descending=True, stable=True) if act_order
             else torch.arange(c))
    scale = zero = None
    for t in range(c):
        j = int(order[t])
        F = order[t:]
        Hi = torch.linalg.inv(H[F][:, F])
        if static:
            scale, zero = params.scale[:, j // g], params.zero[:, j // g]
        elif j % g == 0:
            scale, zero = fit_rows(W[:, j : j + g], spec, keep[:, j : j + g])
        w = W[:, j].clone()
        q = torch.where(keep[:, j], fake_quantize(w, scale, zero, spec.maxq), torch.zeros_like(w))
        W[:, F] -= ((w - q) / Hi[0, 0])[:, None] * Hi[0, :][None, :]
        W[:, j] = q
    return W


def masked_least_squares(W: Tensor, H: Tensor, mask: Tensor) -> Tensor:
    """Each row's kept weights solving min (ŵ − w)ᵀ H (ŵ − w) with ŵ = 0 off the mask, by a
    direct solve of H_SS ŵ_S = (H w)_S row by row (float64)."""
    out = torch.zeros_like(W)
    for r in range(W.shape[0]):
        S = mask[r].nonzero().flatten()
        out[r, S] = torch.linalg.solve(H[S][:, S], (H @ W[r])[S])
    return out


def best_nm_support(W: Tensor, H: Tensor, n: int, m: int) -> float:
    """The lowest layer objective tr((Ŵ − W) H (Ŵ − W)ᵀ) over every N:M support (each row
    independently, every choice of its groups enumerated): the exact optimum of a tiny layer."""
    import itertools

    groups = W.shape[1] // m
    choices = list(itertools.combinations(range(m), n))
    best = 0.0
    for r in range(W.shape[0]):
        row_best = float("inf")
        for pick in itertools.product(choices, repeat=groups):
            mask = torch.zeros(1, W.shape[1], dtype=torch.bool)
            for g, keep in enumerate(pick):
                mask[0, [g * m + k for k in keep]] = True
            w = masked_least_squares(W[r:r + 1], H, mask)
            d = w - W[r:r + 1]
            row_best = min(row_best, float((d @ H * d).sum()))
        best += row_best
    return best
