"""Pure mask maths: which weights to keep, given scores and a pattern.

Masks are boolean tensors, ``True`` = keep. Scores are "importance": larger is kept. All
functions are deterministic: ties are broken by position (a stable sort), never at random.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from .errors import PatternError
from .patterns import NM, Pattern, Unstructured


def prune_count(numel: int, sparsity: float) -> int:
    """Number of weights to remove from ``numel`` at ``sparsity`` (rounded down)."""
    return int(math.floor(numel * sparsity + 1e-9))


def kth_smallest(x: Tensor, k: int, sample: int = 4096) -> Tensor:
    """The k-th smallest value (1-based) of a long 1-D ``x``, exactly.

    A strided sample brackets the value; only the elements inside the bracket are searched.
    If the bracket misses (it cannot for well-mixed data, but nothing is assumed), the full
    selection runs instead.
    """
    n = x.numel()
    picks = torch.sort(x[:: max(1, n // sample)]).values  # (≈sample,)
    at, spread = k / n * picks.numel(), 4 * math.sqrt(picks.numel())
    lo = picks[max(int(at - spread), 0)]
    hi = picks[min(int(at + spread), picks.numel() - 1)]
    below = int((x < lo).sum())
    inside = x[(x >= lo) & (x <= hi)]
    if below < k <= below + inside.numel():
        return torch.kthvalue(inside, k - below).values
    return torch.kthvalue(x, k).values


def keep_all_but_lowest(scores: Tensor, n_prune: int) -> Tensor:
    """Keep mask over the last dim of ``scores`` (..., k) that drops the ``n_prune`` lowest.

    Uses a selection (k-th value) rather than a sort; ties at the threshold are pruned in
    order of position, so exactly ``n_prune`` are dropped in every row.
    """
    k = scores.shape[-1]
    if n_prune <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    if n_prune >= k:
        return torch.zeros_like(scores, dtype=torch.bool)
    if scores.numel() == k and k >= 1 << 16:  # one long row (a layer): bracket, then select
        thr = kth_smallest(scores.reshape(-1), n_prune).reshape([1] * scores.dim())
    else:
        thr = torch.kthvalue(scores, n_prune, dim=-1, keepdim=True).values  # (..., 1)
    below = scores < thr
    tied = scores == thr
    room = n_prune - below.sum(-1, keepdim=True)  # ties still to prune, >= 1
    if bool((tied.sum(-1, keepdim=True) == room).all()):  # usual case: every tie goes
        return ~(below | tied)
    return ~(below | (tied & (torch.cumsum(tied, dim=-1) <= room)))


def keep_all_but_lowest_in_columns(scores: Tensor, n_prune: int) -> Tensor:
    """Like :func:`keep_all_but_lowest` along dim 0 of a short (k, n) tensor (an N:M group laid
    out as k contiguous rows): ranks by all pairwise comparisons, ties by position."""
    k = scores.shape[0]
    earlier = torch.ones(k, k, dtype=torch.bool, device=scores.device).tril(-1)[:, :, None]
    s_i, s_j = scores[:, None], scores[None, :]  # (k, 1, n), (1, k, n)
    rank = ((s_j < s_i) | ((s_j == s_i) & earlier)).sum(1)  # (k, n): place in the order
    return rank >= n_prune


def topk_mask(scores: Tensor, sparsity: float, scope: str = "row") -> Tensor:
    """Unstructured keep-mask: prune the lowest ``sparsity`` fraction per row or per layer.

    scores: (out, in) -- or any shape for ``scope="layer"``. ``scope="row"`` removes
    ``floor(in * sparsity)`` weights from every row (the comparison group of Wanda,
    Sun et al. 2023, Sec. 3); ``"layer"`` removes ``floor(numel * sparsity)`` in the tensor.
    """
    if scope == "row":
        rows = scores.reshape(scores.shape[0], -1)  # (out, in)
        return keep_all_but_lowest(rows, prune_count(rows.shape[1], sparsity)).reshape(
            scores.shape
        )
    if scope in ("layer", "global"):
        flat = scores.reshape(1, -1)
        return keep_all_but_lowest(flat, prune_count(flat.shape[1], sparsity)).reshape(
            scores.shape
        )
    raise PatternError(f"scope {scope!r} is unknown: use row, layer or global")


def nm_mask(scores: Tensor, n: int, m: int) -> Tensor:
    """N:M keep-mask: in every ``m`` consecutive scores along the last dim keep the ``n`` largest.

    scores: (out, in) with ``in % m == 0`` (Mishra et al. 2021, "Accelerating Sparse Deep
    Neural Networks"; 2:4 keeps 2 of every 4).
    """
    out, cols = scores.shape[0], scores.shape[-1]
    if cols % m:
        raise PatternError(f"{cols} input columns are not divisible by m={m} of pattern {n}:{m}")
    groups = scores.reshape(out, cols // m, m)  # (out, in/m, m)
    return keep_all_but_lowest(groups, m - n).reshape(scores.shape)


def pattern_mask(scores: Tensor, pattern: Pattern) -> Tensor:
    """Keep-mask for one layer's (out, in) scores under ``pattern``."""
    if isinstance(pattern, NM):
        return nm_mask(scores, pattern.n, pattern.m)
    return topk_mask(scores, pattern.sparsity, pattern.scope)


def _ordered_int(scores: Tensor) -> Tensor:
    """float32 -> int32 with the same order (IEEE-754 bits, negative values flipped)."""
    bits = scores.detach().float().contiguous().view(torch.int32)
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def global_prune_counts(scores: Mapping[str, Tensor], sparsity: float) -> dict[str, int]:
    """Per-tensor prune counts for one global ranking of all ``scores`` (global magnitude).

    The ``floor(total * sparsity)`` lowest scores over all tensors are removed; ties at the
    threshold are taken in tensor order. The threshold is found by bisection on the scores'
    ordered bit patterns (32 passes over the tensors), so no copy of all scores is ever
    concatenated or sorted: ``scores`` may be a lazy mapping that computes each tensor on access.
    """
    names = list(scores)
    total = sum(scores[k].numel() for k in names)
    n_prune = prune_count(total, sparsity)
    if n_prune == 0:
        return {k: 0 for k in names}

    def count(op) -> int:
        return sum(int(op(_ordered_int(scores[k])).sum()) for k in names)

    lo, hi = -(2**31), 2**31 - 1
    while lo < hi:  # smallest t with #(score <= t) >= n_prune
        mid = (lo + hi) // 2
        if count(lambda o: o <= mid) >= n_prune:
            hi = mid
        else:
            lo = mid + 1
    counts, ties_left = {}, n_prune - count(lambda o: o < lo)
    for k in names:
        o = _ordered_int(scores[k])
        take = min(int((o == lo).sum()), ties_left)
        counts[k], ties_left = int((o < lo).sum()) + take, ties_left - take
    return counts


def global_patterns(scores: Mapping[str, Tensor], sparsity: float) -> dict[str, Unstructured]:
    """Resolve a global sparsity into exact per-layer ``Unstructured(s_l, "layer")`` patterns."""
    counts = global_prune_counts(scores, sparsity)
    return {k: Unstructured(counts[k] / scores[k].numel(), "layer") for k in counts}


def satisfies(weight: Tensor, pattern: Pattern) -> bool:
    """Does ``weight`` (out, in) satisfy ``pattern``? Unstructured: at least the target zeros."""
    nonzero = weight != 0
    if isinstance(pattern, NM):
        if weight.shape[-1] % pattern.m:
            return False
        groups = nonzero.reshape(weight.shape[0], -1, pattern.m)
        return bool((groups.sum(-1) <= pattern.n).all())
    if pattern.scope == "row":
        need = prune_count(weight.shape[-1], pattern.sparsity)
        return bool(((~nonzero).sum(-1) >= need).all())
    return int((~nonzero).sum()) >= prune_count(weight.numel(), pattern.sparsity)


def sparsity(tensor: Tensor) -> float:
    """Fraction of exact zeros in ``tensor``."""
    return float((tensor == 0).sum()) / max(tensor.numel(), 1)
