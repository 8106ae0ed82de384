"""SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately
Pruned in One-Shot", Alg. 1): OBS reconstruction with the Cholesky factor of the inverse
Hessian, lazy batch updates over column blocks, adaptive mask selection per block of
``blocksize`` columns (or per group of m columns for N:M), relative damping.

The column sweep is the shared OBS core, :func:`prunekit.obs.obs_sweep_`; this module only
says which weights to prune: those of lowest OBS saliency w_j² / [H_{F_j}⁻¹]_jj = (w_j / U_jj)²
(Sec. 3.3, "Adaptive Mask Selection").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import PatternError, UsageError
from ..hessian import Damping, inverse_cholesky_upper, unit_dead_columns
from ..masks import keep_all_but_lowest, keep_all_but_lowest_in_columns, prune_count
from ..obs import inner_size, obs_sweep_
from ..quant.gptq import ColumnQuantizer
from ..quant.grid import QuantizedWeight, QuantSpec, fit, quantize_weight
from ..patterns import NM, Pattern, Unstructured
from .base import LayerCompressor, MethodConfig, register, setting


class SaliencyPruneRule:
    """OBS column rule that prunes by saliency (w/U_jj)², chosen from the current weights.

    Unstructured: at each block start, prune the block's share of the target count (per row
    for ``scope="row"``, across rows for ``"layer"``), so the total count is exact.
    N:M: every m columns, prune the m−n lowest in each row.
    ``quantizer`` (joint mode, SparseGPT Sec. 3.5): kept weights are fixed to their grid
    point in the same sweep, so the error of both is compensated together.
    """

    def __init__(self, pattern: Pattern, cols: int, rows: int, blocksize: int,
                 quantizer: ColumnQuantizer | None = None) -> None:
        if isinstance(pattern, Unstructured) and pattern.scope == "global":
            raise PatternError("SparseGPT has no global scope: use row or layer")
        self.pattern = pattern
        self.rows = rows
        self.period = pattern.m if isinstance(pattern, NM) else blocksize
        self.j0 = 0
        self.keep = self.drop = torch.empty(0)
        self.quantizer = quantizer
        self.align = () if quantizer is None else quantizer.align
        self.mask_t = None if quantizer is None else torch.ones(
            cols, rows, dtype=torch.bool, device=quantizer.Wt.device)  # the chosen mask, (in, out)

    def _count(self, j: int, p: int) -> int:
        s, scope = self.pattern.sparsity, self.pattern.scope
        per = self.rows if scope == "layer" else 1
        return prune_count(per * (j + p), s) - prune_count(per * j, s)

    def begin(self, j: int, cols: Tensor, d: Tensor) -> None:
        scores = (cols / d[:, None]).square_()  # (p, rows): saliency (w / U_jj)²
        p = cols.shape[0]
        if isinstance(self.pattern, NM):  # the m−n lowest of each row's group of m columns
            keep = keep_all_but_lowest_in_columns(scores, self.pattern.m - self.pattern.n)
            self.drop = (~keep).to(cols.dtype)
        elif self.pattern.scope == "row":
            keep = keep_all_but_lowest(scores.T, self._count(j, p)).T
            self.drop = (~keep).to(cols.dtype)
        else:  # across all rows of the block, in column-major order for ties
            keep = keep_all_but_lowest(scores.reshape(1, -1), self._count(j, p))
            self.drop = (~keep).reshape(scores.shape).to(cols.dtype)
        self.j0 = j
        self.keep = 1.0 - self.drop  # (p, rows), 1.0 = kept
        if self.mask_t is not None:
            self.mask_t[j : j + p] = self.drop == 0

    def fix_(self, j: int, w: Tensor, err: Tensor) -> None:
        i = j - self.j0
        if self.quantizer is None:
            torch.mul(w, self.drop[i], out=err)  # w − q, with q = w · keep
            w.mul_(self.keep[i])
            return
        g = self.quantizer.g  # a group's grid counts only kept weights when its mask is known
        group_keep = self.keep[i : i + g] > 0 if i + g <= self.keep.shape[0] else None
        q = self.quantizer.quantize(j, w, group_keep).mul_(self.keep[i])
        torch.sub(w, q, out=err)
        w.copy_(q)


def sparsegpt_prune(
    W: Tensor, H: Tensor, pattern: Pattern, blocksize: int = 128, rel_damp: float = 0.01,
    name: str = "layer",
) -> tuple[Tensor, Tensor, Damping]:
    """Prune W (out, in) to ``pattern`` with SparseGPT given H = 2/N XᵀX (in, in).

    Returns (Ŵ, loss, damping): the pruned weight, the OBS loss Σ_rows Σ_j err²/2 the sweep
    predicts, and the damping used. Columns that no token activated (H_jj = 0) cannot change
    the layer's output on the calibration data: their weights are zeroed (they count towards the
    sparsity and are chosen first) and H_jj = 1 so that the factorisation exists.
    """
    W_hat, _, loss, damping = _sweep(W, H, pattern, blocksize, rel_damp, name, None)
    return W_hat, loss, damping


def sparsegpt_quantize(
    W: Tensor, H: Tensor, pattern: Pattern, quant: QuantSpec, blocksize: int = 128,
    rel_damp: float = 0.01, name: str = "layer",
) -> tuple[Tensor, QuantizedWeight, Tensor, Damping]:
    """Joint SparseGPT pruning and quantization in one sweep (SparseGPT, Sec. 3.5): every
    column is pruned by the adaptive mask and its kept weights rounded to the ``quant`` grid
    (fitted per group when the sweep reaches it, from kept weights), and the joint error is
    compensated into later columns. Returns (Ŵ, codes, loss, damping); Ŵ keeps the mask."""
    return _sweep(W, H, pattern, blocksize, rel_damp, name, quant)


def _sweep(W: Tensor, H: Tensor, pattern: Pattern, blocksize: int, rel_damp: float, name: str,
           quant: QuantSpec | None) -> tuple[Tensor, QuantizedWeight | None, Tensor, Damping]:
    rows, cols = W.shape
    if isinstance(pattern, NM) and blocksize % pattern.m:
        raise PatternError(f"blocksize {blocksize} must be a multiple of m={pattern.m}")
    H, dead = unit_dead_columns(H)
    U, damping = inverse_cholesky_upper(H, rel_damp, name=name)
    Wt = torch.empty(cols, rows, dtype=H.dtype, device=H.device)  # (in, out), never W's storage
    Wt.copy_(W.T)  # column j of W is the contiguous row Wt[j]
    Wt[dead] = 0.0
    quantizer = None
    if quant is not None:  # per-channel grids: fitted before the sweep, from all weights
        static = fit(Wt.T, quant) if quant.group is None else None
        quantizer = ColumnQuantizer(quant, Wt, static)
    rule = SaliencyPruneRule(pattern, cols, rows, blocksize, quantizer)
    inner = inner_size(blocksize, rule.period, *rule.align)
    losses = obs_sweep_(Wt, U, rule, blocksize=blocksize, inner=inner)
    W_hat = Wt.T  # (out, in) view: the caller copies it into the layer
    qw = None if quantizer is None else quantize_weight(W_hat, quantizer.result(), rule.mask_t.T)
    return W_hat, qw, losses.sum(), damping


#: the help of --damp, shared by the configs that set it (admm with another default)
DAMP_HELP = "relative Hessian damping (default 0.01; 0.05 for admm)"


@dataclass(frozen=True)
class SparseGPTConfig(MethodConfig):
    """blocksize: columns per lazy-update block and adaptive-mask block (paper: 128).
    rel_damp: damping λ = rel_damp · mean(diag H) (paper: 1 %).
    joint: with ``quant`` and quant_method "gptq", quantize in the pruning sweep itself
    (paper Sec. 3.5); False: prune the layer, then GPTQ it keeping the mask (two-step)."""

    blocksize: int = setting(128, "--blocksize", "column block size (default 128)",
                             type="positive")
    rel_damp: float = setting(0.01, "--damp", DAMP_HELP, type="nonnegative")
    joint: bool = setting(True, "--two-step", "with --bits: prune each layer, then GPTQ it "
                          "keeping the mask, instead of quantizing inside the pruning sweep",
                          const=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.blocksize, int) or self.blocksize < 1:
            raise UsageError(f"--blocksize {self.blocksize!r} must be a positive integer, e.g. 128")
        if not self.rel_damp >= 0:  # also rejects NaN
            raise UsageError(f"--damp {self.rel_damp!r} must be >= 0, e.g. 0.01")


@register
class SparseGPT(LayerCompressor):
    name = "sparsegpt"
    config_cls = SparseGPTConfig
    default_scope = "layer"  # the paper's adaptive mask: each block's weights compete across rows
    description = "OBS reconstruction with inverse-Hessian Cholesky, lazy blocks, adaptive mask"

    @classmethod
    def check(cls, pattern: Pattern, config: SparseGPTConfig) -> None:
        if isinstance(pattern, NM) and config.blocksize % pattern.m:
            raise PatternError(
                f"--blocksize {config.blocksize} is not a multiple of m={pattern.m} of pattern "
                f"{pattern}: use --blocksize "
                f"{max(pattern.m, config.blocksize // pattern.m * pattern.m)}"
            )

    def solve(self, W: Tensor, H: Tensor):
        cfg = self.config
        if cfg.quant is not None and cfg.joint and cfg.quant_method == "gptq":
            W_new, qw, loss, damping = sparsegpt_quantize(
                W, H, self.pattern, cfg.quant, cfg.blocksize, cfg.rel_damp, name=self.layer_name)
            return W_new, damping, {"obs_loss": float(loss), "quantized": qw}
        W_new, loss, damping = sparsegpt_prune(
            W, H, self.pattern, cfg.blocksize, cfg.rel_damp, name=self.layer_name
        )
        return W_new, damping, {"obs_loss": float(loss)}
