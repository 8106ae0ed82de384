"""The one Optimal Brain Surgeon column-sweep core, shared by SparseGPT, exact OBS and GPTQ.

Hassibi & Stork (1993) remove weight q and update the rest by δw = −(w_q/[H⁻¹]_qq) H⁻¹ e_q.
Applied to the columns of a layer in a fixed order, every row shares the same sequence of
inverse Hessians H_{F_j}⁻¹ (F_j = columns not yet processed), whose rows are the rows of the
upper Cholesky factor U of H⁻¹ (Frantar & Alistarh 2023, "SparseGPT", Sec. 3.2, Alg. 1;
Frantar et al. 2022, "GPTQ", Sec. 4, Steps 2-3). For column j with current values w (one per
row) and target value q (0 where pruned, the grid point where quantized):

    err = (w − q) / U_jj,         W[:, k] −= err · U_jk   for all k > j.

The update is applied lazily: inside a block of ``blocksize`` columns rank-1 updates are
confined to a sub-block of ``inner`` columns, the rest of the block receives them as one
matrix product per sub-block, and the columns after the block as one product per block.
Only the arithmetic order changes, not the result.

A :class:`ColumnRule` decides the target values: which weights to prune (a mask chosen every
``period`` columns from the current, already-updated weights) and/or how to quantize.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

from .errors import NumericalError
from .hessian import add_lower_product_


class ColumnRule(Protocol):
    """What the sweep fixes each column to.

    ``begin(j, cols, d)`` is called when ``j % period == 0`` with the current weights of
    columns j..j+period, transposed: cols (period, rows); and d = diag(U)[j:j+period].
    ``fix_(j, w, err)`` fixes column j in place: w (rows,) becomes its target q, and err
    receives w − q (the core then divides it by U_jj).
    ``align``: further periods (a quantization group) at whose starts the rule reads the
    columns of the period from the swept tensor; the blocking keeps those columns current.
    """

    period: int
    align: tuple[int, ...]

    def begin(self, j: int, cols: Tensor, d: Tensor) -> None: ...

    def fix_(self, j: int, w: Tensor, err: Tensor) -> None: ...


def inner_size(blocksize: int, *periods: int, target: int = 16) -> int:
    """The largest sub-block ≤ max(target, step) that divides ``blocksize`` and is a multiple
    of step, the least common multiple of the rule periods shorter than the block (so N:M
    groups and quantization groups never straddle sub-blocks)."""
    step = math.lcm(1, *(p for p in periods if p < blocksize))
    best = step if blocksize % step == 0 else blocksize
    for inner in range(step, min(max(target, step), blocksize) + 1, step):
        if blocksize % inner == 0:
            best = inner
    return best


def _check_blocking(periods: tuple[int, ...], blocksize: int, inner: int) -> None:
    if blocksize % inner:
        raise ValueError(f"blocksize {blocksize} must be a multiple of inner {inner}")
    for period in periods:
        if period % blocksize and inner % period:
            raise ValueError(
                f"rule period {period} must be a multiple of blocksize {blocksize} "
                f"or divide the inner block {inner}"
            )


def obs_sweep_(
    Wt: Tensor, U: Tensor, rule: ColumnRule, blocksize: int = 128, inner: int = 16
) -> Tensor:
    """Sweep the columns of W in order, fixing each by ``rule`` and compensating the rest.

    Wt: (cols, rows) = Wᵀ, contiguous, updated in place. U: (cols, cols) upper with
    H⁻¹ = UᵀU (see :func:`prunekit.hessian.inverse_cholesky_upper`). Returns the OBS loss per
    row, Σ_j err_j² / 2, which is the increase of ½·tr(ΔW H ΔWᵀ) the sweep predicts.
    """
    cols, rows = Wt.shape
    inner = min(inner, blocksize)
    _check_blocking((rule.period, *getattr(rule, "align", ())), blocksize, inner)
    losses = torch.zeros(rows, dtype=Wt.dtype, device=Wt.device)
    Err = torch.empty(blocksize, rows, dtype=Wt.dtype, device=Wt.device)  # (B, rows)
    diag = torch.diagonal(U).tolist()  # Python floats: no tensor per column
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        for s1 in range(i1, i2, inner):
            s2 = min(s1 + inner, i2)
            for j in range(s1, s2):
                if j % rule.period == 0:
                    p2 = min(j + rule.period, cols)
                    rule.begin(j, Wt[j:p2], torch.diagonal(U)[j:p2])
                err = Err[j - i1]
                rule.fix_(j, Wt[j], err)
                err.div_(diag[j])
                if j + 1 < s2:
                    Wt[j + 1 : s2].addr_(U[j, j + 1 : s2], err, alpha=-1.0)
            if s2 < i2:  # sub-block -> rest of block
                Wt[s2:i2].addmm_(U[s1:s2, s2:i2].T, Err[s1 - i1 : s2 - i1], alpha=-1.0)
        B = i2 - i1
        losses.add_(Err[:B].square().sum(0), alpha=0.5)
        if i2 < cols:  # block -> all later columns
            Wt[i2:].addmm_(U[i1:i2, i2:].T, Err[:B], alpha=-1.0)
    return losses


def obs_remove_rows_(W: Tensor, Hinv: Tensor, q: Tensor) -> Tensor:
    """Remove one weight per row by Optimal Brain Surgeon and compensate the rest, in place.

    Hassibi & Stork (1993), Eq. 5: δw = −(w_q / [H⁻¹]_qq) · H⁻¹ e_q, with the loss increase
    δL = w_q² / (2 [H⁻¹]_qq). Each row's H⁻¹ is then downdated to the inverse Hessian of its
    remaining weights in O(n²) (the Schur complement; Frantar et al. 2022, "Optimal Brain
    Compression", Eq. 4): H⁻¹ ← H⁻¹ − H⁻¹ e_q e_qᵀ H⁻¹ / [H⁻¹]_qq, which zeroes row and
    column q (set exactly, so removed weights stay exactly zero).
    W: (B, n); Hinv: (B, n, n), one per row; q: (B,) indices. Returns δL: (B,).
    """
    rows = torch.arange(W.shape[0], device=W.device)
    d = Hinv[rows, q, q]  # (B,)
    wq = W[rows, q]  # (B,)
    col = Hinv[rows, :, q].clone()  # (B, n)
    W.sub_(col * (wq / d)[:, None])
    W[rows, q] = 0.0
    Hinv.sub_(col[:, :, None] * (col / d[:, None])[:, None, :])
    Hinv[rows, q, :] = 0.0
    Hinv[rows, :, q] = 0.0
    return wq.square() / (2.0 * d)


def obs_remove_(w: Tensor, Hinv: Tensor, q: int) -> float:
    """:func:`obs_remove_rows_` for one weight vector w: (n,) with its Hinv: (n, n)."""
    return float(obs_remove_rows_(w[None], Hinv[None], torch.tensor([q], device=w.device))[0])


def obs_remove_set_(w: Tensor, Hinv: Tensor, Q: Tensor) -> float:
    """Remove the weights Q jointly by the multi-weight OBS solution, in place.

    With E the columns of the identity at Q (Kurtic et al. 2022, "The Optimal BERT Surgeon",
    Eq. 2; Frantar et al. 2022, Eq. 7): δw = −H⁻¹E (EᵀH⁻¹E)⁻¹ Eᵀw and
    δL = ½ wᵀE (EᵀH⁻¹E)⁻¹ Eᵀw; then H⁻¹ ← H⁻¹ − H⁻¹E (EᵀH⁻¹E)⁻¹ EᵀH⁻¹.
    w: (n,), Hinv: (n, n), Q: (k,) indices. Returns δL.
    """
    cols = Hinv[:, Q].clone()  # H⁻¹E: (n, k)
    block = cols[Q]  # EᵀH⁻¹E: (k, k)
    coef = torch.linalg.solve(block, w[Q])  # (EᵀH⁻¹E)⁻¹ Eᵀw: (k,)
    loss = 0.5 * float(w[Q] @ coef)
    w.sub_(cols @ coef)
    w[Q] = 0.0
    Hinv.sub_(cols @ torch.linalg.solve(block, cols.T))
    Hinv[Q, :] = 0.0  # zero in exact arithmetic
    Hinv[:, Q] = 0.0
    return loss


def obs_greedy_(w: Tensor, Hinv: Tensor, n_prune: int, refresh: int = 128,
                snapshots: dict[int, Tensor | None] | None = None, overwrite: bool = False
                ) -> tuple[Tensor, Tensor]:
    """Iterative OBS (Hassibi & Stork 1993): remove ``n_prune`` weights one at a time, each the
    least salient δL_q = w_q² / (2 [H⁻¹]_qq) under the current inverse, updating the rest by
    δw = −(w_q / [H⁻¹]_qq) H⁻¹ e_q and H⁻¹ by its O(n²) downdate after every removal.

    The downdates are the ones :func:`obs_remove_` applies, deferred: the current inverse is
    kept as M − Σ_j s_j s_jᵀ with s_j = H⁻¹ e_{q_j} / √[H⁻¹]_{q_j q_j} at step j (each s_j
    computed from M and the earlier s, O(n·j)); M is symmetric and only its lower half is kept
    current. The diagonal, all the saliencies need, is updated exactly in O(n) per removal.
    Every ``refresh`` removals the pending rank-``refresh`` correction is folded into M's lower
    half with matrix products (:func:`prunekit.hessian.add_lower_product_`); once a quarter of
    M's rows belong to removed weights, those rows and columns are dropped, so M shrinks as the
    network does. Same maths as one rank-1 update per removal; the work is about n³/3 flops
    of BLAS-3 products instead of memory-bound rank-1 updates.

    w: (n,) updated in place (removed weights exactly 0); Hinv: (n, n), read only unless
    ``overwrite`` (then it is used as scratch and left undefined: no n × n copy is made).
    snapshots: optional {removal count: None}; each value is set to a copy of w after that many
    removals, 0 included (greedy OBS is nested: one run gives every sparsity on its way).
    A pivot [H⁻¹]_qq that is not positive (H too ill-conditioned for the arithmetic) raises
    :class:`prunekit.errors.NumericalError` rather than spreading NaN.
    Returns (order (n_prune,) original indices in removal order, δL per removal (n_prune,)).
    """
    n = w.numel()
    _check_greedy(n, n_prune, refresh, snapshots, w, Hinv)
    if snapshots is not None and 0 in snapshots:
        snapshots[0] = w.clone()
    active = torch.arange(n, device=w.device)  # original index of each row of M
    M = Hinv if overwrite else Hinv.clone()  # (m, m)
    wa, d = w.clone(), torch.diagonal(Hinv).clone()  # (m,), (m,)
    S = torch.empty(refresh, n, dtype=w.dtype, device=w.device)  # pending s_j: (refresh, m)
    dead = torch.zeros(n, dtype=torch.bool, device=w.device)  # removed, rows still in M
    order = torch.empty(n_prune, dtype=torch.long, device=w.device)
    losses = torch.empty(n_prune, dtype=w.dtype, device=w.device)
    k = n_dead = 0
    for t in range(n_prune):
        q = int((wa.square() / d).masked_fill_(dead, float("inf")).argmin())
        v = torch.cat((M[q, :q], M[q:, q]))  # column q of symmetric M from its lower half
        if k:
            v.addmv_(S[:k].T, S[:k, q], alpha=-1.0)
        v.masked_fill_(dead, 0.0)  # removed weights stay exactly zero
        dq, wq = v[q], wa[q]
        if not float(dq) > 0:
            raise NumericalError(
                f"OBS step {t + 1}: the inverse Hessian's pivot for weight {int(active[q])} is "
                f"{float(dq):.3g} (must be > 0): the Hessian is too ill-conditioned for "
                f"{w.dtype}; raise the damping (--damp) or use float64")
        losses[t], order[t] = wq.square() / (2.0 * dq), active[q]
        wa.sub_(v * (wq / dq))
        wa[q] = 0.0
        S[k] = v / dq.sqrt()
        d.sub_(S[k].square())
        dead[q] = True
        k, n_dead = k + 1, n_dead + 1
        if snapshots is not None and t + 1 in snapshots:
            snapshots[t + 1] = w.new_zeros(n).index_copy_(0, active, wa.masked_fill(dead, 0.0))
        if k == refresh and t + 1 < n_prune:  # fold the pending downdates into M's lower half
            add_lower_product_(M, S, S, alpha=-1.0)  # rows of removed weights change too, but
            k = 0  # they are never read again (v is masked) and are dropped at compaction
            if 4 * n_dead >= len(wa):  # a quarter of M is dead: drop those rows and columns
                keep = (~dead).nonzero().squeeze(1)
                M = M.index_select(0, keep).index_select(1, keep)
                wa, d, active = wa[keep], d[keep], active[keep]
                S, dead, n_dead = S.new_empty(refresh, keep.numel()), dead[keep], 0
    w.zero_()
    w[active] = wa.masked_fill(dead, 0.0)
    return order, losses


def _check_greedy(n: int, n_prune: int, refresh: int, snapshots: dict | None, w: Tensor,
                  Hinv: Tensor) -> None:
    if not 0 <= n_prune <= n:
        raise ValueError(f"n_prune {n_prune} must be in [0, {n}]")
    if refresh < 1:
        raise ValueError(f"refresh {refresh} must be >= 1, e.g. 256")
    if w.dtype != Hinv.dtype or Hinv.shape != (n, n):
        raise ValueError(f"w {tuple(w.shape)} {w.dtype} and Hinv {tuple(Hinv.shape)} "
                         f"{Hinv.dtype} must have the same dtype and sizes n and (n, n)")
    late = sorted(c for c in (snapshots or {}) if not 0 <= c <= n_prune)
    if late:
        raise ValueError(f"snapshot counts {late} are outside [0, n_prune={n_prune}]")
