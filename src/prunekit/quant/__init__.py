"""Quantization: integer grids, RTN, GPTQ (on the shared OBS core), AWQ, integer packing.

Every quantizer keeps a sparsity mask exactly: pruned weights get the zero point, which
dequantizes to exactly 0, and never count towards a grid.
"""

from __future__ import annotations

from torch import Tensor

from ..errors import UsageError
from .grid import (QuantParams, QuantSpec, QuantizedWeight, dequantize, fake_quantize, fit,
                   parse_group, quantize_weight, sparsity_mask)
from .gptq import gptq_quantize
from .rtn import rtn_quantize

AFTER_PRUNING = ("gptq", "rtn")


def quantize_kept(W: Tensor, H: Tensor, spec: QuantSpec, method: str = "gptq", *,
                  blocksize: int = 128, rel_damp: float = 0.01, name: str = "layer"
                  ) -> tuple[Tensor, QuantizedWeight, float | None]:
    """Quantize a pruned weight W (out, in) keeping its zeros exactly: GPTQ (compensating
    into kept weights only) or RTN. Returns (Ŵ, codes, relative damping or None)."""
    if method == "rtn":
        W_hat, qw = rtn_quantize(W, spec)
        return W_hat, qw, None
    if method == "gptq":
        W_hat, qw, _, damping = gptq_quantize(W, H, spec, blocksize=blocksize,
                                              rel_damp=rel_damp, name=name)
        return W_hat, qw, damping.relative
    raise UsageError(f"--quant-method {method!r}: use one of {', '.join(AFTER_PRUNING)}")


__all__ = [
    "AFTER_PRUNING", "QuantParams", "QuantSpec", "QuantizedWeight", "dequantize", "fake_quantize",
    "fit", "gptq_quantize", "parse_group", "quantize_kept", "quantize_weight", "rtn_quantize",
    "sparsity_mask",
]
