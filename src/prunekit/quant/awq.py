"""AWQ (Lin et al. 2023, "AWQ: Activation-aware Weight Quantization for LLM Compression and
Acceleration"): scale up the input channels that carry large activations before quantizing,
so their weights lose less to rounding, and divide the activations by the same scale.

For a layer y = W x the output is unchanged by Wx = (W diag(s)) (diag(s)⁻¹ x); quantizing
W diag(s) instead of W protects the columns with large s. The scale is s = s_X^α with s_X the
per-channel activation magnitude and α chosen on a grid of [0, 1) to minimise the output error
(Sec. 3.2, Eq. 4-5)

    ‖X Wᵀ − (X diag(s)⁻¹) Q(W diag(s))ᵀ‖²  =  N/2 · tr(ΔW H ΔWᵀ),   ΔW = W − Q(W diag(s)) diag(s)⁻¹,

computed from the layer Hessian H = 2/N XᵀX, which prunekit accumulates anyway; s_X is the
root mean square √(H_jj / 2) of each input channel (the paper averages |x|). α = 0 is plain
RTN, so the chosen scale is never worse than RTN on the calibration data. Layers that share
their input (q/k/v) search one scale together, so it can be folded into the operation that
produces that input (a norm, or the previous linear layer's output rows; Sec. 3.3) where the
architecture allows; elsewhere the quantized layer keeps diag(s)⁻¹ as an input scale.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .grid import QuantizedWeight, QuantSpec
from .gptq import gptq_quantize
from .rtn import rtn_quantize

ALPHA_GRID = 20


def activation_scale(H: Tensor) -> Tensor:
    """s_X: the root mean square of each input channel, √(H_jj / 2), from H = 2/N XᵀX (in,).
    Channels no token activated get the smallest positive magnitude (their weights do not
    affect the output)."""
    sx = torch.diagonal(H).clamp_min(0.0).div(2.0).sqrt()
    positive = sx[sx > 0]
    floor = float(positive.min()) if positive.numel() else 1.0
    return sx.clamp_min(floor)


def scales_for(sx: Tensor, alpha: float) -> Tensor:
    """s = s_X^α, normalised so that max(s)·min(s) = 1 (as the reference implementation)."""
    s = sx.pow(alpha)
    return s / (s.max() * s.min()).sqrt()


def _rtn_error(W: Tensor, H: Tensor, spec: QuantSpec, keep: Tensor | None, s: Tensor) -> float:
    D = W - rtn_quantize(W * s, spec, keep)[0] / s  # W − Q(W diag(s)) diag(s)⁻¹
    return float(((D @ H) * D).sum())


def awq_search(W: Tensor, H: Tensor, spec: QuantSpec, keep: Tensor | None = None,
               grid: int = ALPHA_GRID) -> tuple[Tensor, float, list[float]]:
    """The AWQ input scale s (in,) of W (out, in) — or of the stacked weights of layers sharing
    one input — given their H. Returns (s, α, the error tr(ΔW H ΔWᵀ) at each α of the grid)."""
    sx = activation_scale(H)
    errors = [_rtn_error(W, H, spec, keep, scales_for(sx, i / grid)) for i in range(grid)]
    best = min(range(grid), key=errors.__getitem__)
    return scales_for(sx, best / grid), best / grid, errors


def awq_quantize(W: Tensor, H: Tensor, spec: QuantSpec, s: Tensor, solver: str = "rtn",
                 keep: Tensor | None = None, **gptq_settings) -> tuple[Tensor, QuantizedWeight]:
    """Quantize W (out, in) with the AWQ input scale s (in,): Q(W diag(s)) by RTN or by GPTQ
    (whose Hessian of the scaled inputs x/s is diag(s)⁻¹ H diag(s)⁻¹). Returns (Ŵ, codes) with
    Ŵ = Q(W diag(s)) diag(s)⁻¹ and ``codes.input_scale`` = s. ``keep``: the mask kept exactly."""
    Ws = W * s
    if solver == "gptq":
        Hs = H / (s[:, None] * s[None, :])
        _, qw, _, _ = gptq_quantize(Ws, Hs, spec, keep=keep, **gptq_settings)
    else:
        _, qw = rtn_quantize(Ws, spec, keep)
    qw.input_scale = s
    return qw.dequantize(W.dtype), qw


def fold_input_scale_(producer: nn.Module, s: Tensor) -> None:
    """Divide the output channels of ``producer`` by s (in place): a norm's weight and bias,
    or a linear layer's output rows and bias, so that the consumers' inputs become x / s."""
    weight = producer.weight
    bias = getattr(producer, "bias", None)
    with torch.no_grad():
        if weight.dim() == 1:  # LayerNorm / RMSNorm: y = γ ⊙ norm(x) + β
            weight.div_(s.to(weight.dtype))
        elif type(producer).__name__ == "Conv1D":  # (in, out): output channels are columns
            weight.div_(s.to(weight.dtype)[None, :])
        else:  # Linear (out, in): output channels are rows
            weight.div_(s.to(weight.dtype)[:, None])
        if bias is not None:
            bias.div_(s.to(bias.dtype))
