"""Masks for the weights of a small network, chosen before training, as compared by the NTK
experiment: random, magnitude at initialisation, SNIP, and an NTK-preserving criterion.

Masks are {parameter name: bool tensor, True = kept} over the Linear/Conv weights
(:func:`prunekit.curvature.prunable_names`); biases are always kept.

  random     uniformly random, the same sparsity in every layer
  magnitude  |w| at initialisation, per layer
  snip       Lee et al. (2019), "SNIP: Single-shot Network Pruning based on Connection
             Sensitivity": s = |∂L/∂w ⊙ w| on one batch of labelled data, one global ranking
  ntk        keep the weights that carry the dense kernel's top eigenspace (below)

NTK-preserving criterion. With Θ = Σ_k J_k J_kᵀ the NTK traced over outputs on n inputs and U
its top-r eigenvectors, the Jacobian with its pruned columns removed keeps
tr(Uᵀ J diag(m) Jᵀ U) = Σ_{p kept} s_p of the top-eigenspace energy tr(Uᵀ Θ U) = Σ_r λ_r, with
s_p = Σ_k ‖Uᵀ J_k[:, p]‖² the energy parameter p puts into that subspace (plus the biases'
share). The sum is separable over parameters, so keeping the weights of largest s_p keeps the
most of it exactly — to first order for the pruned network, whose Jacobian also moves because
its pruned weights become zero. That top eigenspace is what lottery tickets are said to
preserve. The ranking is per layer by default (a global one can
prune a whole layer away). With ``rounds`` > 1 the sparsity is reached geometrically and s_p
is recomputed at the masked weights each round (as IMP recomputes |w|).
"""

from __future__ import annotations

from .kernels import top_eigenvectors

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from ..curvature import prunable_names
from ..errors import UsageError
from ..masks import global_prune_counts, topk_mask

Masks = dict[str, Tensor]
CRITERIA = ("random", "magnitude", "snip", "ntk")


def masks_from_scores(scores: dict[str, Tensor], sparsity: float, scope: str = "global") -> Masks:
    """Keep-masks pruning the lowest ``sparsity`` of the scores, per layer or globally."""
    if not 0 <= sparsity < 1:
        raise UsageError(f"sparsity {sparsity!r} must be in [0, 1), e.g. 0.9")
    if scope == "global":
        counts = global_prune_counts(scores, sparsity)
        return {n: topk_mask(s, counts[n] / s.numel(), "layer") for n, s in scores.items()}
    if scope == "layer":
        return {n: topk_mask(s, sparsity, "layer") for n, s in scores.items()}
    raise UsageError(f"scope {scope!r}: use 'layer' or 'global'")


def _weights(model: nn.Module) -> dict[str, Tensor]:
    params = dict(model.named_parameters())
    names = prunable_names(model)
    if not names:
        raise UsageError(f"{type(model).__name__} has no Linear/Conv weights to mask")
    return {n: params[n].detach() for n in names}


def random_masks(model: nn.Module, sparsity: float, seed: int = 0) -> Masks:
    g = torch.Generator().manual_seed(seed)
    scores = {n: torch.rand(w.shape, generator=g) for n, w in _weights(model).items()}
    return masks_from_scores(scores, sparsity, "layer")


def magnitude_masks(model: nn.Module, sparsity: float, scope: str = "layer") -> Masks:
    return masks_from_scores({n: w.abs().float() for n, w in _weights(model).items()},
                             sparsity, scope)


def snip_scores(model: nn.Module, x: Tensor, y: Tensor,
                loss_fn: nn.Module | None = None) -> dict[str, Tensor]:
    """|∂L/∂w ⊙ w| for every prunable weight on the batch (x, y) (Lee et al. 2019, Eq. 6)."""
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    weights = _weights(model)
    params = {n: p.detach().requires_grad_(n in weights) for n, p in model.named_parameters()}
    loss = loss_fn(functional_call(model, params, (x,)), y)
    grads = torch.autograd.grad(loss, [params[n] for n in weights])
    return {n: (g * weights[n]).abs().float() for n, g in zip(weights, grads)}


def snip_masks(model: nn.Module, x: Tensor, y: Tensor, sparsity: float,
               loss_fn: nn.Module | None = None) -> Masks:
    return masks_from_scores(snip_scores(model, x, y, loss_fn), sparsity, "global")


def ntk_scores(model: nn.Module, x: Tensor, masks: Masks | None = None, top: int = 10
               ) -> dict[str, Tensor]:
    """s_p = Σ_k ‖Uᵀ J_k[:, p]‖² with U the top-``top`` eigenvectors of the traced NTK on x, at
    the masked weights (pruned weights score 0: their Jacobian columns are masked)."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    weights = _weights(model)
    masks = masks or {}
    for n, m in masks.items():
        params[n] = params[n] * m.to(params[n].dtype)
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def single(p: dict[str, Tensor], xi: Tensor) -> Tensor:
        return functional_call(model, (p, buffers), (xi[None],))[0]  # (K,)

    J = vmap(jacrev(single), in_dims=(None, 0))(params, x)  # name -> (N, K, *shape), biases too
    J = {n: (j * masks[n].to(j.dtype)[None, None] if n in masks else j) for n, j in J.items()}
    theta = sum(torch.einsum("ak...,bk...->ab", j, j) for j in J.values())  # traced (N, N)
    if not 1 <= top <= theta.shape[0]:
        raise UsageError(f"top {top} eigenvectors: must be in [1, {theta.shape[0]}] (samples)")
    U = top_eigenvectors(theta, top)  # (N, r)
    return {n: torch.einsum("nr,nk...->rk...", U, J[n]).square().sum((0, 1))
            for n in weights}


def ntk_masks(model: nn.Module, x: Tensor, sparsity: float, top: int = 10, rounds: int = 1,
              scope: str = "layer") -> Masks:
    """Keep-masks by the NTK-preserving criterion, in ``rounds`` geometric steps. Ranked per
    layer by default: one global ranking can empty a whole layer whose scores are on a smaller
    scale (layer collapse, Tanaka et al. 2020), which zeroes the kernel."""
    if rounds < 1:
        raise UsageError(f"rounds {rounds!r} must be >= 1")
    masks: Masks = {}
    for r in range(1, rounds + 1):
        level = 1.0 - (1.0 - sparsity) ** (r / rounds)
        scores = ntk_scores(model, x, masks, top)
        scores = {n: s.masked_fill(~masks[n], -1.0) if n in masks else s for n, s in scores.items()}
        masks = masks_from_scores(scores, level, scope)
    return masks


def apply_masks_(model: nn.Module, masks: Masks) -> nn.Module:
    """Zero the pruned weights of ``model`` in place."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, m in masks.items():
            params[n].mul_(m.to(params[n].dtype))
    return model


def masks_of(model: nn.Module) -> Masks:
    """The masks a pruned model carries: its non-zero prunable weights."""
    return {n: w != 0 for n, w in _weights(model).items()}


def mask_sparsity(masks: Masks) -> float:
    total = sum(m.numel() for m in masks.values())
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / total if total else 0.0
