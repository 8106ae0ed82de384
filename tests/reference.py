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
