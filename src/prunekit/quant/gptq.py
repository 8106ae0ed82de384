"""GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers", Alg. 1): quantize the columns of a layer in order, each to its grid
point, and compensate the error into the columns not yet quantized by the OBS update — the
shared core :func:`prunekit.obs.obs_sweep_` with its lazy batch updates (Sec. 4, Step 2) and
the Cholesky rows of H⁻¹ (Step 3); this module only says what each column becomes.

Options, as in the paper and its reference code:
  - group grids fitted when the sweep reaches a group's first column, from the current
    (already compensated) weights; per-channel grids from the whole weight before the sweep;
  - activation order ("act-order"): columns swept by decreasing H_jj. With groups it uses
    static groups: every grid is fitted on the original weight's groups of consecutive columns
    before the sweep, so each stored scale still belongs to consecutive input columns;
  - a sparsity mask is kept exactly: pruned weights are fixed to 0 (their compensation is
    passed on to later kept weights) and never count towards a grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import UsageError
from ..hessian import Damping, inverse_cholesky_upper, unit_dead_columns
from ..obs import inner_size, obs_sweep_
from .grid import QuantParams, QuantSpec, QuantizedWeight, fake_quantize, fit, fit_rows
from .grid import quantize_weight, sparsity_mask


class ColumnQuantizer:
    """Fixes one column at a time to its grid inside an OBS sweep.

    Wt: the swept (cols, rows) tensor. ``static``: grids fitted before the sweep, with
    ``col_group[j]`` the group of swept column j; otherwise each group's grid is fitted from
    Wt when the sweep reaches its first column.
    """

    def __init__(self, spec: QuantSpec, Wt: Tensor, static: QuantParams | None = None,
                 col_group: Tensor | None = None) -> None:
        cols, rows = Wt.shape
        self.spec, self.Wt, self.g = spec, Wt, spec.group_size(cols)
        self.static = static is not None
        if static is not None:
            self.params = static
            self.col_group = (torch.arange(cols) // self.g if col_group is None
                              else col_group).tolist()
        else:
            n = spec.groups(cols)
            self.params = QuantParams(Wt.new_empty(rows, n), Wt.new_empty(rows, n), spec)
        self.scale_t = self.params.scale.T.contiguous()  # (groups, rows): one row per grid
        self.zero_t = self.params.zero.T.contiguous()

    @property
    def align(self) -> tuple[int, ...]:
        """Periods whose columns must be current when read: dynamic groups."""
        return () if self.static else (self.g,)

    def quantize(self, j: int, w: Tensor, group_keep: Tensor | None = None) -> Tensor:
        """Column j's weights w (rows,) on their grid. At a dynamic group's first column the
        grid is fitted from Wt[j:j+g] and ``group_keep`` (g, rows) if the mask is known."""
        if self.static:
            k = self.col_group[j]
        else:
            k = j // self.g
            if j % self.g == 0:
                cols = self.Wt[j : j + self.g].T  # (rows, g), current values
                keep = None if group_keep is None else group_keep.T
                self.scale_t[k], self.zero_t[k] = fit_rows(cols, self.spec, keep)
        return fake_quantize(w, self.scale_t[k], self.zero_t[k], self.spec.maxq)

    def result(self) -> QuantParams:
        return QuantParams(self.scale_t.T.contiguous(), self.zero_t.T.contiguous(), self.spec)


class QuantRule:
    """OBS column rule of GPTQ: each column to its grid; pruned weights (``keep_t`` False)
    to exactly 0."""

    def __init__(self, quantizer: ColumnQuantizer, keep_t: Tensor | None, blocksize: int) -> None:
        self.quantizer, self.period, self.align = quantizer, blocksize, quantizer.align
        self.keep_t = keep_t  # (cols, rows) bool or None
        self.keep_f = None if keep_t is None else keep_t.to(quantizer.Wt.dtype)

    def begin(self, j: int, cols: Tensor, d: Tensor) -> None:
        pass

    def fix_(self, j: int, w: Tensor, err: Tensor) -> None:
        group_keep = None if self.keep_t is None else self.keep_t[j : j + self.quantizer.g]
        q = self.quantizer.quantize(j, w, group_keep)
        if self.keep_f is not None:
            q.mul_(self.keep_f[j])
        torch.sub(w, q, out=err)
        w.copy_(q)


def gptq_quantize(
    W: Tensor, H: Tensor, spec: QuantSpec, *, blocksize: int = 128, rel_damp: float = 0.01,
    act_order: bool = False, static_groups: bool = False, keep: Tensor | None = None,
    name: str = "layer",
) -> tuple[Tensor, QuantizedWeight, Tensor, Damping]:
    """Quantize W (out, in) with GPTQ given H = 2/N XᵀX (in, in).

    keep: bool (out, in) sparsity mask to keep exactly (None: W's own zeros, if any).
    Returns (Ŵ, codes, loss, damping): the dequantized weight (out, in), its
    :class:`QuantizedWeight`, the OBS loss Σ err²/2 the sweep predicts, and the damping used.
    """
    rows, cols = W.shape
    keep = sparsity_mask(W) if keep is None else keep
    H, _ = unit_dead_columns(H)  # unactivated inputs: rounded to nearest, no compensation
    static = spec.group is None or static_groups or act_order
    params = fit(W.to(H.dtype), spec, keep) if static else None  # on the original columns
    perm = torch.argsort(torch.diagonal(H), descending=True, stable=True) if act_order else None
    if perm is not None:
        W, H = W[:, perm], H[perm][:, perm]
    U, damping = inverse_cholesky_upper(H, rel_damp, name=name)
    Wt = torch.empty(cols, rows, dtype=H.dtype, device=H.device)
    Wt.copy_(W.T)  # (in, out): column j of W is the contiguous row Wt[j]
    keep_t = None if keep is None else (keep if perm is None else keep[:, perm]).T.contiguous()
    col_group = None if perm is None else perm // spec.group_size(cols)
    quantizer = ColumnQuantizer(spec, Wt, params, col_group)
    rule = QuantRule(quantizer, keep_t, blocksize)
    inner = inner_size(blocksize, rule.period, *rule.align)
    losses = obs_sweep_(Wt, U, rule, blocksize=blocksize, inner=inner)
    W_hat = Wt.T if perm is None else Wt.T[:, torch.argsort(perm)]
    qw = quantize_weight(W_hat, quantizer.result(), keep)
    return W_hat, qw, losses.sum(), damping


@dataclass(frozen=True)
class GPTQSettings:
    """blocksize: lazy-update block (paper: 128). rel_damp: λ = rel_damp · mean(diag H)
    (paper: 1 %). act_order: sweep by decreasing H_jj (static groups). static_groups: grids
    fitted before the sweep on consecutive columns."""

    blocksize: int = 128
    rel_damp: float = 0.01
    act_order: bool = False
    static_groups: bool = False

    def check(self) -> None:
        if not isinstance(self.blocksize, int) or self.blocksize < 1:
            raise UsageError(f"--blocksize {self.blocksize!r} must be a positive integer, e.g. 128")
        if not self.rel_damp >= 0:
            raise UsageError(f"--damp {self.rel_damp!r} must be >= 0, e.g. 0.01")
