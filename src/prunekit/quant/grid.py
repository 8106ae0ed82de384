"""Integer quantization grids: the one quantize/dequantize implementation of prunekit.

A b-bit grid maps a weight x of a group (a row of the layer, or ``group`` consecutive input
columns of one row) to an integer code q in [0, 2^b − 1] and back:

    q = clamp(round(x / s) + z, 0, 2^b − 1),        x̂ = s · (q − z)

with scale s > 0 and integer zero point z (Jacob et al. 2018, "Quantization and Training of
Neural Networks for Efficient Integer-Arithmetic-Only Inference", Eq. 1). Symmetric grids fix
z = 2^(b−1) and s = 2·max|x| / (2^b − 1), so all 2^b levels are used and the extremes ±max|x|
land half a step from a level (the convention of GPTQ's reference and of compressed-tensors);
asymmetric grids span [min(x, 0), max(x, 0)] with s = (max − min) / (2^b − 1), z = round(−min/s).
Either way z is an integer in range, so x = 0 is exactly representable (q = z gives x̂ = 0):
pruned weights stay exactly zero, and the error of an unclipped weight is at most s/2.

Scales are rounded up to float16 when fitted, so a checkpoint that stores them in float16
dequantizes to the very same weights. Error-minimising clipping (``clip="mse"``) shrinks the
range by factors 1, 0.98, ..., 0.5 and keeps, per group, the one of least squared error
(as the grid search of Frantar et al. 2022, "GPTQ", and Lin et al. 2023, "AWQ", Sec. 3.3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import UsageError

BITS = (2, 3, 4, 8)
CLIPS = ("minmax", "mse")
SHRINKS = tuple(1.0 - 0.02 * i for i in range(26))  # 1.00 .. 0.50
SCALE_MIN = 2.0 ** -24  # the smallest float16 subnormal: scales never round to 0


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize a layer's weight.

    bits: 2, 3, 4 or 8. group: input columns sharing one scale (32, 64, 128, ...) or None for
    one scale per output channel. symmetric: zero point fixed at 2^(bits−1). clip: "minmax"
    (the group's range) or "mse" (error-minimising shrink of the range).
    """

    bits: int = 4
    group: int | None = 128
    symmetric: bool = True
    clip: str = "minmax"

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise UsageError(f"--bits {self.bits!r} is not supported: use one of {BITS}")
        if self.group is not None and (not isinstance(self.group, int) or self.group < 1):
            raise UsageError(f"--group {self.group!r} must be a positive integer such as 128, "
                             "or 'channel' for one scale per output channel")
        if self.clip not in CLIPS:
            raise UsageError(f"--clip {self.clip!r} is not supported: use one of {CLIPS}")

    @property
    def maxq(self) -> int:
        return 2 ** self.bits - 1

    def groups(self, cols: int) -> int:
        """Number of scale groups along ``cols`` input columns (the last may be shorter)."""
        return 1 if self.group is None else -(-cols // self.group)

    def group_size(self, cols: int) -> int:
        return cols if self.group is None else self.group

    def bits_per_weight(self, cols: int) -> float:
        """Storage per weight: the code plus its share of a float16 scale (and, asymmetric,
        of a ``bits``-bit zero point)."""
        extra = 16 + (0 if self.symmetric else self.bits)
        return self.bits + extra * self.groups(cols) / cols

    def __str__(self) -> str:
        group = "channel" if self.group is None else f"g{self.group}"
        kind = "sym" if self.symmetric else "asym"
        clip = "" if self.clip == "minmax" else " mse-clip"
        return f"int{self.bits} {group} {kind}{clip}"


def parse_group(text: str | int | None) -> int | None:
    """``--group``: a positive integer, or 'channel' / 0 / -1 for per-output-channel scales."""
    if text is None or str(text).lower() in ("channel", "0", "-1", "none"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"--group {text!r} must be an integer such as 128 or 'channel'") from None
    if value < 1:
        raise UsageError(f"--group {text!r} must be positive (or 'channel')")
    return value


def codes(x: Tensor, scale: Tensor, zero: Tensor, maxq: int) -> Tensor:
    """Integer codes (as floats) of x on the grid (scale, zero), broadcasting (x has the full
    shape). In place after the division: one allocation, as the GPTQ sweep calls it per column."""
    q = torch.div(x, scale)
    q.round_()  # half to even
    q.add_(zero)
    return q.clamp_(0, maxq)


def dequantize(q: Tensor, scale: Tensor, zero: Tensor) -> Tensor:
    """x̂ = scale · (q − zero), broadcasting (q has the full shape); q = zero gives exactly 0."""
    return torch.sub(q, zero).mul_(scale)


def fake_quantize(x: Tensor, scale: Tensor, zero: Tensor, maxq: int) -> Tensor:
    """x rounded to the nearest grid point of (scale, zero), as a float tensor."""
    return dequantize(codes(x, scale, zero, maxq), scale, zero)


def _range_params(lo: Tensor, hi: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor]:
    """Scale and zero of a grid spanning [lo, hi] (which contain 0), rounded to float16."""
    if spec.symmetric:
        amax = torch.maximum(-lo, hi)
        scale = _half_up(2.0 * amax / spec.maxq)
        zero = torch.full_like(scale, float(2 ** (spec.bits - 1)))
    else:
        scale = _half_up((hi - lo) / spec.maxq)
        zero = torch.clamp(torch.round(-lo / scale), 0, spec.maxq)
    return scale, zero


def _half_up(scale: Tensor) -> Tensor:
    """The smallest float16 value >= scale (and >= SCALE_MIN), so the rounded grid still
    spans the range and the error bound s/2 holds for the stored scale."""
    scale = scale.clamp_min(SCALE_MIN)
    half = scale.half()
    low = half.to(scale.dtype) < scale
    half = torch.where(low, torch.nextafter(half, half.new_tensor(float("inf"))), half)
    return half.to(scale.dtype)


def fit_rows(x: Tensor, spec: QuantSpec, keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Scale and zero of one grid per row of x: (rows, n) -> (rows,), (rows,).

    Only kept entries (``keep``: bool (rows, n)) count towards the range and the clipping
    error: pruned weights are zero whatever the grid.
    """
    big = torch.finfo(x.dtype).max
    lo = (x if keep is None else x.masked_fill(~keep, big)).amin(1).clamp_max(0.0)
    hi = (x if keep is None else x.masked_fill(~keep, -big)).amax(1).clamp_min(0.0)
    scale, zero = _range_params(lo, hi, spec)
    if spec.clip == "minmax":
        return scale, zero
    best = _clip_error(x, scale, zero, spec, keep)
    for shrink in SHRINKS[1:]:
        s, z = _range_params(lo * shrink, hi * shrink, spec)
        err = _clip_error(x, s, z, spec, keep)
        better = err < best
        scale, zero, best = (torch.where(better, s, scale), torch.where(better, z, zero),
                             torch.minimum(err, best))
    return scale, zero


def _clip_error(x: Tensor, scale: Tensor, zero: Tensor, spec: QuantSpec,
                keep: Tensor | None) -> Tensor:
    d = (fake_quantize(x, scale[:, None], zero[:, None], spec.maxq) - x).square_()  # (rows, n)
    return (d if keep is None else d * keep).sum(1)


@dataclass
class QuantParams:
    """Grids of a (rows, cols) weight: scale and zero per row and group, (rows, groups)."""

    scale: Tensor
    zero: Tensor
    spec: QuantSpec

    def columns(self, cols: int) -> tuple[Tensor, Tensor]:
        """Scale and zero expanded to every column: (rows, cols) each."""
        g = self.spec.group_size(cols)
        idx = torch.arange(cols, device=self.scale.device) // g
        return self.scale[:, idx], self.zero[:, idx]

    def apply(self, f, W: Tensor) -> Tensor:
        """f(W, scale, zero) with the grids broadcast over each group's columns: a (rows,
        groups, g) view when the groups are whole, else expanded columns. W: (rows, cols)."""
        rows, cols = W.shape
        g = self.spec.group_size(cols)
        if cols % g == 0:
            out = f(W.reshape(rows, cols // g, g), self.scale[:, :, None], self.zero[:, :, None])
            return out.reshape(rows, cols)
        scale, zero = self.columns(cols)
        return f(W, scale, zero)

    def zero_codes(self, shape: tuple[int, int]) -> Tensor:
        """The zero point of every entry's grid, (rows, cols): the code of an exact 0."""
        like = self.zero.new_empty(shape)
        return self.apply(lambda x, s, z: z.expand_as(x), like)


def fit(W: Tensor, spec: QuantSpec, keep: Tensor | None = None) -> QuantParams:
    """Grids of every row and group of W (rows, cols) from its current values (kept ones)."""
    rows, cols = W.shape
    g, n = spec.group_size(cols), spec.groups(cols)
    scale = W.new_empty(rows, n)
    zero = W.new_empty(rows, n)
    full = cols // g
    if full:  # all whole groups at once: (rows·full, g)
        x = W[:, : full * g].reshape(rows * full, g)
        k = None if keep is None else keep[:, : full * g].reshape(rows * full, g)
        s, z = fit_rows(x, spec, k)
        scale[:, :full], zero[:, :full] = s.view(rows, full), z.view(rows, full)
    if full < n:  # a shorter last group
        k = None if keep is None else keep[:, full * g :]
        scale[:, full], zero[:, full] = fit_rows(W[:, full * g :], spec, k)
    return QuantParams(scale, zero, spec)


@dataclass
class QuantizedWeight:
    """A quantized (out, in) weight: integer codes, their grids, the sparsity mask it keeps,
    and (AWQ) a per-input-channel scale s with Ŵ = dequantize(codes) / s.

    codes: uint8 (out, in); scale, zero: float32 (out, groups); keep: bool (out, in) or None
    for dense; input_scale: (in,) or None.
    """

    codes: Tensor
    scale: Tensor
    zero: Tensor
    spec: QuantSpec
    keep: Tensor | None = None
    input_scale: Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)  # type: ignore[return-value]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The dense weight Ŵ (out, in) these codes stand for."""
        params = QuantParams(self.scale, self.zero, self.spec)
        W = params.apply(dequantize, self.codes.to(self.scale.dtype))
        if self.input_scale is not None:
            W = W / self.input_scale.to(W.dtype)
        return W.to(dtype)

    def bits_per_weight(self) -> float:
        return self.spec.bits_per_weight(self.codes.shape[1])


def quantize_weight(W: Tensor, params: QuantParams, keep: Tensor | None = None,
                    input_scale: Tensor | None = None) -> QuantizedWeight:
    """Codes of W on ``params`` (W already on the grid after GPTQ: the codes are exact);
    pruned entries (``keep`` False) get the zero point, so they dequantize to exactly 0."""
    maxq = params.spec.maxq
    q = params.apply(lambda x, s, z: codes(x, s, z, maxq), W.to(params.scale.dtype))
    if keep is not None:  # the zero point: exactly 0 after dequantization
        q = torch.where(keep, q, params.zero_codes(tuple(q.shape)))
    return QuantizedWeight(q.to(torch.uint8), params.scale, params.zero, params.spec,
                           keep=keep, input_scale=input_scale)


def sparsity_mask(W: Tensor) -> Tensor | None:
    """The mask a quantizer keeps: W's non-zeros, or None when W has no zero at all."""
    keep = W != 0
    return None if bool(keep.all()) else keep
