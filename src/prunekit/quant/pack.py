"""Integer weights in memory: int4 packed two per byte, other widths one code per byte, and a
linear module that computes with them.

Byte layout of packed int4 (``pack_int4``): row-major, byte k of a row holds the codes of
columns 2k (low nibble) and 2k+1 (high nibble); an odd last column leaves the high nibble 0.

:class:`QuantizedLinear` computes y = (x / s) Ŵᵀ + b with Ŵ = scale · (q − zero) (s: AWQ input
scale, if any) using PyTorch's weight-only CPU kernels where they exist:
  - int4, groups of 32/64/128/256 (or per channel with in = one of those), out % 16 == 0:
    ``aten._weight_int4pack_mm_for_cpu``, which computes (q − 8) · scale + z′ per group; our
    zero point z maps to z′ = (8 − z) · scale;
  - int8, symmetric, per channel: ``aten._weight_int8pack_mm`` with the codes shifted to
    signed int8 (q − 128).
``compute_dtype=torch.bfloat16`` runs the int4 kernel on bfloat16 activations and scales (the
kernel's fast path on this project's CPU; float32, the default, is exact to the dequantized
weight but slower there — benchmarks/quant_linear.py measures both).
Anything else — other widths, int8 with groups, a ragged last group, other devices or dtypes —
dequantizes the weight on the fly for each call; the module's ``kernel`` attribute says which
path it takes and a log line says why at construction.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .grid import QuantizedWeight, QuantSpec

log = logging.getLogger(__name__)

INT4_GROUPS = (32, 64, 128, 256)


def pack_int4(codes: Tensor) -> Tensor:
    """uint8 (rows, cols) codes in [0, 15] -> uint8 (rows, ceil(cols / 2)), two per byte."""
    if codes.numel() and int(codes.max()) > 15:
        raise ValueError(f"int4 codes must be in [0, 15], got {int(codes.max())}")
    c = codes.to(torch.uint8)
    if c.shape[1] % 2:
        c = F.pad(c, (0, 1))
    return c[:, 0::2] | (c[:, 1::2] << 4)


def unpack_int4(packed: Tensor, cols: int) -> Tensor:
    """Inverse of :func:`pack_int4`: uint8 (rows, ceil(cols / 2)) -> uint8 (rows, cols)."""
    out = torch.stack((packed & 0x0F, packed >> 4), dim=2).reshape(packed.shape[0], -1)
    return out[:, :cols]


def int4_kernel_reason(spec: QuantSpec, out_features: int, in_features: int) -> str | None:
    """Why PyTorch's CPU int4 kernel cannot run this weight, or None if it can."""
    if spec.bits != 4:
        return f"int{spec.bits}"
    group = spec.group_size(in_features)
    if group not in INT4_GROUPS or in_features % group:
        return f"group {group} of {in_features} inputs (the kernel takes 32/64/128/256, whole)"
    if out_features % 16:
        return f"{out_features} outputs (the kernel needs a multiple of 16)"
    return None


def int8_kernel_reason(spec: QuantSpec) -> str | None:
    if spec.bits != 8:
        return f"int{spec.bits}"
    if not spec.symmetric or spec.group is not None:
        return "int8 kernel takes symmetric per-channel scales only"
    return None


class QuantizedLinear(nn.Module):
    """A Linear layer whose weight is held as integer codes (see the module docstring).

    Buffers: ``codes`` (int4: packed, two per byte; else one per byte), ``scale`` and ``zero``
    (out, groups), ``input_scale`` (in,) for AWQ when it was not folded, ``bias``.
    """

    def __init__(self, qw: QuantizedWeight, bias: Tensor | None = None, kernel: str = "auto",
                 compute_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if compute_dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"compute_dtype {compute_dtype}: use torch.float32 or torch.bfloat16")
        self.compute_dtype = compute_dtype
        self.out_features, self.in_features = qw.shape
        self.spec = qw.spec
        codes = pack_int4(qw.codes) if qw.spec.bits == 4 else qw.codes.to(torch.uint8).clone()
        self.register_buffer("codes", codes)
        self.register_buffer("scale", qw.scale.float().clone())
        self.register_buffer("zero", qw.zero.float().clone())
        self.register_buffer("input_scale", None if qw.input_scale is None
                             else qw.input_scale.float().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self._packed: Tensor | None = None  # the kernel's own layout, built on first use
        self.kernel = self._choose(kernel)

    @classmethod
    def from_linear(cls, layer: nn.Linear, qw: QuantizedWeight, kernel: str = "auto",
                    compute_dtype: torch.dtype = torch.float32) -> "QuantizedLinear":
        return cls(qw, layer.bias, kernel, compute_dtype)

    def _choose(self, kernel: str) -> str:
        if kernel not in ("auto", "dequant"):
            raise ValueError(f"kernel {kernel!r}: use 'auto' or 'dequant'")
        if kernel == "dequant":
            return "dequant"
        reason = (int4_kernel_reason(self.spec, self.out_features, self.in_features)
                  if self.spec.bits == 4 else int8_kernel_reason(self.spec))
        if reason is None:
            return f"int{self.spec.bits}"
        log.info("%dx%d %s: no PyTorch CPU kernel (%s): dequantizing on the fly",
                 self.out_features, self.in_features, self.spec, reason)
        return "dequant"

    def qweight(self) -> QuantizedWeight:
        """The codes and grids as a :class:`QuantizedWeight`."""
        codes = (unpack_int4(self.codes, self.in_features) if self.spec.bits == 4 else self.codes)
        return QuantizedWeight(codes, self.scale, self.zero, self.spec,
                               input_scale=self.input_scale)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """Ŵ (out, in), the AWQ input scale included."""
        return self.qweight().dequantize(dtype)

    def _kernel_weight(self) -> Tensor:
        if self._packed is None:
            codes = unpack_int4(self.codes, self.in_features)
            if self.kernel == "int4":
                self._packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
                    codes.to(torch.int32), 1)
                # (groups, out, 2): (q − 8)·scale + z′ with z′ = (8 − zero)·scale
                sz = torch.stack((self.scale, (8.0 - self.zero) * self.scale), dim=-1)
                self._scale_zeros = sz.transpose(0, 1).contiguous().to(self.compute_dtype)
            else:
                self._packed = (self.codes.to(torch.int16) - 128).to(torch.int8)
                self._scale_zeros = self.scale[:, 0].contiguous()
        return self._packed

    def forward(self, x: Tensor) -> Tensor:
        if self.input_scale is not None:
            x = x / self.input_scale.to(x.dtype)
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        fast = self.kernel != "dequant" and x.device.type == "cpu" and x.dtype == torch.float32
        if fast and self.kernel == "int4":
            w = self._kernel_weight()
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x2.to(self.compute_dtype).contiguous(), w, self.spec.group_size(self.in_features),
                self._scale_zeros).to(x.dtype)
        elif fast:
            y = torch._weight_int8pack_mm(x2.contiguous(), self._kernel_weight(), self._scale_zeros)
        else:  # x is already divided by the input scale: the grid weight alone
            codes = QuantizedWeight(self.qweight().codes, self.scale, self.zero, self.spec)
            y = x2 @ codes.dequantize(x.dtype).T
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"{self.spec}, kernel={self.kernel}")


def pack_linear_(model: nn.Module, quantized: dict[str, QuantizedWeight],
                 kernel: str = "auto") -> dict[str, str]:
    """Replace each Linear named in ``quantized`` by a :class:`QuantizedLinear` (in place).
    Returns {layer name: kernel path}."""
    paths = {}
    for name, qw in quantized.items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = getattr(parent, attr)
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"{name}: {type(layer).__name__} cannot be packed (nn.Linear only)")
        q = QuantizedLinear(qw, layer.bias, kernel).to(layer.weight.device)
        setattr(parent, attr, q)
        paths[name] = q.kernel
    return paths
