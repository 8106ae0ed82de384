"""The quantizers as layer methods (``prunekit quantize --method rtn|gptq|awq``), registered
beside the pruning methods with ``kind = "quantize"``. The maths is in :mod:`prunekit.quant`
(``rtn.py``, ``gptq.py``, ``awq.py``); these classes only read their settings and call it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import UsageError
from ..quant.awq import ALPHA_GRID, awq_quantize, awq_search, fold_input_scale_
from ..quant.gptq import gptq_quantize
from ..quant.grid import QuantSpec, sparsity_mask
from ..quant.rtn import rtn_quantize
from .base import LayerCompressor, MethodConfig, register, setting, weight_matrix

SOLVERS = ("rtn", "gptq")


@dataclass(frozen=True)
class QuantizeConfig(MethodConfig):
    """quant: the grid (default int4, groups of 128, symmetric)."""

    quant: QuantSpec | None = QuantSpec()
    quant_method: str = "gptq"  # no flag: a quantizer quantizes in its own way

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.quant is None:
            raise UsageError("a quantizer needs a grid: pass quant=QuantSpec(bits=4, group=128)")


@dataclass(frozen=True)
class GPTQConfig(QuantizeConfig):
    """blocksize: lazy-update block (paper: 128). rel_damp: λ = rel_damp · mean(diag H)
    (paper: 1 %). act_order: columns by decreasing H_jj, with static groups. static_groups:
    grids fitted before the sweep on the original consecutive columns."""

    blocksize: int = setting(128, "--blocksize", "column block size (default 128)",
                             type="positive")
    rel_damp: float = setting(0.01, "--damp", "relative Hessian damping (default 0.01)",
                               type="nonnegative")
    act_order: bool = setting(False, "--act-order", "quantize columns by decreasing activation "
                              "energy (with static groups, so every scale still covers "
                              "consecutive columns)", const=True)
    static_groups: bool = setting(False, "--static-groups", "fit every group's grid before the "
                                  "sweep", const=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.blocksize, int) or self.blocksize < 1:
            raise UsageError(f"--blocksize {self.blocksize!r} must be a positive integer, e.g. 128")
        if not self.rel_damp >= 0:
            raise UsageError(f"--damp {self.rel_damp!r} must be >= 0, e.g. 0.01")

    def gptq_settings(self) -> dict:
        return dict(blocksize=self.blocksize, rel_damp=self.rel_damp, act_order=self.act_order,
                    static_groups=self.static_groups)


@dataclass(frozen=True)
class AWQConfig(GPTQConfig):
    """grid: number of exponents α in [0, 1) searched (paper: 20). solver: how the scaled
    weights are quantized, "rtn" (the paper) or "gptq" (with the GPTQ settings)."""

    grid: int = setting(ALPHA_GRID, "--awq-grid", "exponents searched in [0, 1) (default 20)",
                        type="positive")
    solver: str = setting("rtn", "--awq-solver", "how the scaled weights are quantized "
                          "(default rtn, the paper's)", choices=SOLVERS)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.grid, int) or self.grid < 1:
            raise UsageError(f"--awq-grid {self.grid!r} must be a positive integer, e.g. 20")
        if self.solver not in SOLVERS:
            raise UsageError(f"--awq-solver {self.solver!r}: use one of {', '.join(SOLVERS)}")


class Quantizer(LayerCompressor):
    kind = "quantize"
    config_cls = QuantizeConfig


@register
class RTN(Quantizer):
    name = "rtn"
    description = "round to nearest on the grid (no compensation): the baseline"

    def solve(self, W: Tensor, H: Tensor):
        W_hat, qw = rtn_quantize(W, self.config.quant)
        return W_hat, None, {"quantized": qw}


@register
class GPTQ(Quantizer):
    name = "gptq"
    config_cls = GPTQConfig
    description = "OBS column sweep that compensates rounding errors (Frantar et al. 2022)"

    def solve(self, W: Tensor, H: Tensor):
        cfg = self.config
        W_hat, qw, loss, damping = gptq_quantize(W, H, cfg.quant, name=self.layer_name,
                                                 **cfg.gptq_settings())
        return W_hat, damping, {"obs_loss": float(loss), "quantized": qw}


@register
class AWQ(Quantizer):
    name = "awq"
    config_cls = AWQConfig
    description = "activation-aware input-channel scaling, then RTN or GPTQ (Lin et al. 2023)"
    supports_true_sequential = False  # the scales of a block are searched together

    scale: Tensor | None = None  # the input scale s, searched before any layer is quantized
    alpha: float | None = None
    folded: bool = False  # s folded into the producer: the layer holds W·diag(s), H is rescaled

    @classmethod
    def prepare_block(cls, comps: list[LayerCompressor],
                      folds: list[tuple[nn.Module, list[str]]]) -> None:
        """Search one scale per group of layers sharing an input (on their stacked weights),
        then fold it into the producer of that input where the block allows (Sec. 3.3)."""
        groups: dict[int, list[AWQ]] = {}
        for c in comps:
            groups.setdefault(id(c.hessian), []).append(c)
        for group in groups.values():
            H = group[0].hessian.finalize()
            W = torch.cat([_weight(c, H) for c in group])  # (Σ out, in)
            s, alpha, _ = awq_search(W, H, group[0].config.quant, sparsity_mask(W),
                                     group[0].config.grid)
            for c in group:
                c.scale, c.alpha = s, alpha
        by_name = {c.layer_name: c for c in comps}
        for producer, names in folds:
            members = [by_name.get(n) for n in names]
            if any(m is None for m in members):
                continue
            if sorted(map(id, groups[id(members[0].hessian)])) != sorted(map(id, members)):
                continue  # the input also feeds layers outside the fold
            _fold(producer, members)

    def solve(self, W: Tensor, H: Tensor):
        cfg = self.config
        keep = sparsity_mask(W)
        settings = cfg.gptq_settings() if cfg.solver == "gptq" else {}
        if self.folded:  # W is W·diag(s) and H that of x / s: a plain solve
            if cfg.solver == "gptq":
                W_hat, qw, _, _ = gptq_quantize(W, H, cfg.quant, keep=keep, **settings)
            else:
                W_hat, qw = rtn_quantize(W, cfg.quant, keep)
        else:
            W_hat, qw = awq_quantize(W, H, cfg.quant, self.scale.to(W.dtype), cfg.solver, keep,
                                     **settings)
        return W_hat, None, {"awq_alpha": self.alpha, "awq_folded": self.folded, "quantized": qw}


def _fold(producer: nn.Module, members: list[AWQ]) -> None:
    """x / s comes from ``producer`` from now on: its outputs are divided by s, the members'
    weights multiplied by diag(s), and their shared H becomes diag(s)⁻¹ H diag(s)⁻¹."""
    s = members[0].scale
    fold_input_scale_(producer, s)
    with torch.no_grad():
        for m in members:
            W = weight_matrix(m.layer)
            W.mul_(s.to(W.dtype)[None, :])
            m.folded = True
        H = members[0].hessian.finalize()
        H.div_(s[:, None] * s[None, :])


def _weight(comp: LayerCompressor, H: Tensor) -> Tensor:
    return weight_matrix(comp.layer).to(H.dtype)
