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
from ..hessian import Damping, inverse_cholesky_upper
from ..masks import keep_all_but_lowest, keep_all_but_lowest_in_columns, prune_count
from ..obs import inner_size, obs_sweep_
from ..patterns import NM, Pattern, Unstructured
from .base import LayerCompressor, MethodConfig, register


class SaliencyPruneRule:
    """OBS column rule that prunes by saliency (w/U_jj)², chosen from the current weights.

    Unstructured: at each block start, prune the block's share of the target count (per row
    for ``scope="row"``, across rows for ``"layer"``), so the total count is exact.
    N:M: every m columns, prune the m−n lowest in each row.
    """

    def __init__(self, pattern: Pattern, cols: int, rows: int, blocksize: int) -> None:
        if isinstance(pattern, Unstructured) and pattern.scope == "global":
            raise PatternError("SparseGPT has no global scope: use row or layer")
        self.pattern = pattern
        self.rows = rows
        self.period = pattern.m if isinstance(pattern, NM) else blocksize
        self.j0 = 0
        self.keep = self.drop = torch.empty(0)

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

    def fix_(self, j: int, w: Tensor, err: Tensor) -> None:
        torch.mul(w, self.drop[j - self.j0], out=err)  # w − q, with q = w · keep
        w.mul_(self.keep[j - self.j0])


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
    rows, cols = W.shape
    if isinstance(pattern, NM) and blocksize % pattern.m:
        raise PatternError(f"blocksize {blocksize} must be a multiple of m={pattern.m}")
    dead = torch.diagonal(H) == 0
    if bool(dead.any()):
        H = H.clone()
        H[dead, dead] = 1.0
    U, damping = inverse_cholesky_upper(H, rel_damp, name=name)
    Wt = torch.empty(cols, rows, dtype=H.dtype, device=H.device)  # (in, out), never W's storage
    Wt.copy_(W.T)  # column j of W is the contiguous row Wt[j]
    Wt[dead] = 0.0
    rule = SaliencyPruneRule(pattern, cols, rows, blocksize)
    losses = obs_sweep_(Wt, U, rule, blocksize=blocksize, inner=inner_size(blocksize, rule.period))
    return Wt.T, losses.sum(), damping  # (out, in) view: the caller copies it into the layer


@dataclass(frozen=True)
class SparseGPTConfig(MethodConfig):
    """blocksize: columns per lazy-update block and adaptive-mask block (paper: 128).
    rel_damp: damping λ = rel_damp · mean(diag H) (paper: 1 %)."""

    blocksize: int = 128
    rel_damp: float = 0.01

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
                f"{pattern}: use --blocksize {max(pattern.m, config.blocksize // pattern.m * pattern.m)}"
            )

    def solve(self, W: Tensor, H: Tensor):
        cfg = self.config
        W_new, loss, damping = sparsegpt_prune(
            W, H, self.pattern, cfg.blocksize, cfg.rel_damp, name=self.layer_name
        )
        return W_new, damping, {"obs_loss": float(loss)}
