"""Non-uniform sparsity across a model's blocks at the same total: OWL, Yin et al. (2024),
"Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce for Pruning LLMs to High
Sparsity", Sec. 3.

A weight is an outlier when its Wanda score A_ij = |W_ij|·‖X_j‖₂ (Sun et al. 2023) exceeds M
times the mean score of its block; the block's layerwise outlier distribution (LOD) D_l is the
fraction of its weights that are outliers. Blocks with more outliers keep more weights: the
densities 1 − S_l are spread linearly in D_l over a range of 2λ and shifted so that their mean
is 1 − S, the target (the blocks of a transformer stack are equal in size, so the total sparsity
is S).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .errors import PatternError


def wanda_scores(W: Tensor, x_norm: Tensor) -> Tensor:
    """A = |W| · ‖X_j‖₂ (Sun et al. 2023, Eq. 1): W (out, in), x_norm (in,)."""
    return W.abs() * x_norm.to(W.dtype)[None, :]


def outlier_ratio(scores: Sequence[Tensor], m: float) -> float:
    """D_l: the fraction of a block's weights (every score matrix of its layers together) whose
    score exceeds ``m`` times the block's mean score (OWL, Sec. 3, "LOD")."""
    total = sum(float(a.double().sum()) for a in scores)
    count = sum(a.numel() for a in scores)
    threshold = m * total / count
    return sum(int((a > threshold).sum()) for a in scores) / count


def owl_sparsities(ratios: Sequence[float], sparsity: float, lam: float) -> list[float]:
    """Per-block sparsities S_l from the outlier ratios D_l: densities
    1 − S_l = 2λ·(D_l − min D)/(max D − min D) + c, with c such that their mean is 1 − S. Equal
    ratios (or λ = 0) give S everywhere. Raises :class:`PatternError` if a block would leave
    [0, 1): lower λ."""
    d = torch.tensor(ratios, dtype=torch.float64)
    spread = float(d.max() - d.min())
    density = (d - d.min()) / spread * 2 * lam if spread > 0 else torch.zeros_like(d)
    density = density - density.mean() + (1 - sparsity)
    out = (1 - density).tolist()
    if min(out) < 0 or max(out) >= 1:
        raise PatternError(f"OWL with λ = {lam} around {sparsity:.0%} gives block sparsities "
                           f"from {min(out):.1%} to {max(out):.1%}, outside [0, 100 %): lower "
                           "--owl-lambda")
    return out
