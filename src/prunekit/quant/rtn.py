"""Round to nearest (RTN): every weight to the nearest point of its group's grid, with no
compensation — the baseline every other quantizer is measured against."""

from __future__ import annotations

from torch import Tensor

from .grid import QuantizedWeight, QuantSpec, fit, quantize_weight, sparsity_mask


def rtn_quantize(W: Tensor, spec: QuantSpec, keep: Tensor | None = None
                 ) -> tuple[Tensor, QuantizedWeight]:
    """Quantize W (out, in) to ``spec`` by rounding to nearest.

    keep: bool (out, in) mask kept exactly (None: W's own zeros, if any); grids are fitted
    on kept weights only. Returns (Ŵ, codes) with Ŵ = codes dequantized, in W's dtype.
    """
    keep = sparsity_mask(W) if keep is None else keep
    qw = quantize_weight(W, fit(W, spec, keep), keep)
    return qw.dequantize(W.dtype), qw
