"""Compact storage formats of one weight tensor: what is stored, bit for bit (docs/formats.md).

Every format encodes a tensor into named parts (plain tensors that a safetensors file holds)
plus a small JSON-able description, and decodes them back to the very same dense tensor:

  dense          values: the tensor as it is.
  bitmask        values: the non-zeros in row-major order; mask: one bit per position.
  nm             values: exactly n per group of m consecutive weights of a row (rows, cols·n/m);
                 positions: each value's index in its group, ⌈log2 m⌉ bits (2 bits for 2:4).
  quant          codes: b-bit integer codes of every weight; scale: float16 (rows, groups);
                 zero: uint8 zero points (asymmetric grids only); input_scale: float32 (AWQ).
  quant-bitmask  codes of the kept weights only, the bitmask of positions, scale, zero.
  quant-nm       codes of the n kept weights per group of m, their positions, scale, zero.

Bit streams (codes, positions, masks) are little-endian: value i of width w occupies bits
i·w .. i·w + w − 1 of the stream, and stream bit k is bit k mod 8 of byte ⌊k / 8⌋ (so int4
codes pack two per byte, low nibble first). Every weight is 2-D (out, in) here; a 1-D tensor
is stored dense.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ModelError
from ..quant.grid import QuantizedWeight, QuantParams, QuantSpec

FORMATS = ("dense", "bitmask", "nm", "quant", "quant-bitmask", "quant-nm")
NM_PATTERNS = ((2, 4), (1, 4), (4, 8), (1, 2))  # tried in this order when detecting N:M


def pack_bits(values: Tensor, width: int) -> Tensor:
    """Integers in [0, 2^width) (any shape) -> uint8 little-endian bit stream."""
    if not 1 <= width <= 8:
        raise ValueError(f"bit width {width} must be in [1, 8]")
    v = values.reshape(-1).to(torch.uint8)
    if width == 8:
        return v.clone()
    shifts = torch.arange(width, dtype=torch.uint8, device=v.device)
    bits = ((v[:, None] >> shifts) & 1).reshape(-1)  # (count·width,)
    pad = (-bits.numel()) % 8
    if pad:
        bits = torch.cat([bits, bits.new_zeros(pad)])
    weights = torch.arange(8, dtype=torch.uint8, device=v.device)
    return (bits.reshape(-1, 8) << weights).sum(1, dtype=torch.uint8)


def unpack_bits(stream: Tensor, width: int, count: int) -> Tensor:
    """Inverse of :func:`pack_bits`: the first ``count`` values (uint8, 1-D)."""
    if width == 8:
        return stream[:count].clone()
    bits = ((stream[:, None] >> torch.arange(8, dtype=torch.uint8, device=stream.device)) & 1)
    bits = bits.reshape(-1)[: count * width].reshape(count, width)
    shifts = torch.arange(width, dtype=torch.uint8, device=stream.device)
    return (bits << shifts).sum(1, dtype=torch.uint8)


def position_width(m: int) -> int:
    return max(1, math.ceil(math.log2(m)))


def detect_nm(W: Tensor) -> tuple[int, int] | None:
    """The first N:M pattern of :data:`NM_PATTERNS` that every row of W (out, in) satisfies."""
    if W.dim() != 2:
        return None
    rows, cols = W.shape
    if W.numel() == 0:
        return None
    for n, m in NM_PATTERNS:
        if cols % m == 0 and int((W.reshape(rows, cols // m, m) != 0).sum(-1).max()) <= n:
            return n, m
    return None


def _nm_positions(nonzero: Tensor, n: int, m: int) -> Tensor:
    """(rows, groups, n) sorted indices in each group of m: its non-zeros, then the first zeros."""
    rows, cols = nonzero.shape
    g = nonzero.reshape(rows, cols // m, m)
    rank = (~g).to(torch.int16) * m + torch.arange(m, dtype=torch.int16, device=g.device)
    return torch.sort(torch.argsort(rank, dim=-1)[..., :n], dim=-1).values


@dataclass
class Encoded:
    """One tensor in one format: its parts and the description the manifest keeps."""

    format: str
    parts: dict[str, Tensor]
    meta: dict

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.parts.values())


def _grid_meta(qw: QuantizedWeight) -> dict:
    s = qw.spec
    return {"bits": s.bits, "group": s.group, "symmetric": s.symmetric, "clip": s.clip}


def _grid_parts(qw: QuantizedWeight) -> dict[str, Tensor]:
    parts = {"scale": qw.scale.to(torch.float16)}
    if not qw.spec.symmetric:
        parts["zero"] = qw.zero.to(torch.uint8)
    if qw.input_scale is not None:
        parts["input_scale"] = qw.input_scale.to(torch.float32)
    return parts


def encode(W: Tensor, fmt: str, qw: QuantizedWeight | None = None,
           nm: tuple[int, int] | None = None) -> Encoded:
    """W (out, in) in format ``fmt``; quantized formats need its codes ``qw``, N:M formats the
    pattern ``nm`` (n, m) that W satisfies."""
    W = W.detach()
    if fmt == "dense" or W.dim() != 2:
        return Encoded("dense", {"values": W.contiguous()}, {})
    rows, cols = W.shape
    if fmt == "bitmask":
        mask = W != 0
        return Encoded(fmt, {"values": W[mask], "mask": pack_bits(mask, 1)}, {})
    if fmt == "nm":
        n, m = nm
        pos = _nm_positions(W != 0, n, m)  # (rows, groups, n)
        values = torch.gather(W.reshape(rows, cols // m, m), 2, pos).reshape(rows, -1)
        return Encoded(fmt, {"values": values, "positions": pack_bits(pos, position_width(m))},
                       {"n": n, "m": m})
    if qw is None:
        raise ValueError(f"format {fmt!r} needs the weight's quantization codes")
    bits = qw.spec.bits
    if fmt == "quant":
        return Encoded(fmt, {"codes": pack_bits(qw.codes, bits), **_grid_parts(qw)}, _grid_meta(qw))
    if fmt == "quant-bitmask":
        keep = qw.keep if qw.keep is not None else W != 0
        return Encoded(fmt, {"codes": pack_bits(qw.codes[keep], bits), "mask": pack_bits(keep, 1),
                             **_grid_parts(qw)}, _grid_meta(qw))
    if fmt == "quant-nm":
        n, m = nm
        keep = qw.keep if qw.keep is not None else W != 0
        pos = _nm_positions(keep, n, m)
        codes = torch.gather(qw.codes.reshape(rows, cols // m, m), 2, pos)
        return Encoded(fmt, {"codes": pack_bits(codes, bits),
                             "positions": pack_bits(pos, position_width(m)), **_grid_parts(qw)},
                       {**_grid_meta(qw), "n": n, "m": m})
    raise ValueError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")


def decode(enc: Encoded, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """The dense tensor ``enc`` stands for. Raises :class:`ModelError` on parts that do not fit
    ``shape`` (a corrupt or foreign checkpoint)."""
    p, fmt, numel = enc.parts, enc.format, math.prod(shape)
    try:
        if fmt == "dense":
            return p["values"].to(dtype).reshape(shape)
        rows, cols = shape
        if fmt == "bitmask":
            mask = unpack_bits(p["mask"], 1, numel).bool().reshape(shape)
            out = torch.zeros(shape, dtype=dtype)
            out[mask] = p["values"].to(dtype)
            return out
        if fmt == "nm":
            n, m = enc.meta["n"], enc.meta["m"]
            pos = _positions(p, rows, cols, n, m)
            out = torch.zeros(rows, cols // m, m, dtype=dtype)
            out.scatter_(2, pos, p["values"].to(dtype).reshape(rows, cols // m, n))
            return out.reshape(shape)
        spec = QuantSpec(enc.meta["bits"], enc.meta["group"], enc.meta["symmetric"],
                         enc.meta["clip"])
        scale = p["scale"].float()
        zero = (p["zero"].float() if "zero" in p
                else torch.full_like(scale, float(2 ** (spec.bits - 1))))
        codes = torch.zeros(rows, cols, dtype=torch.uint8)
        keep = None
        if fmt == "quant":
            codes = unpack_bits(p["codes"], spec.bits, numel).reshape(shape)
        elif fmt == "quant-bitmask":
            keep = unpack_bits(p["mask"], 1, numel).bool().reshape(shape)
            codes[keep] = unpack_bits(p["codes"], spec.bits, int(keep.sum()))
        elif fmt == "quant-nm":
            n, m = enc.meta["n"], enc.meta["m"]
            pos = _positions(p, rows, cols, n, m)
            kept = unpack_bits(p["codes"], spec.bits, rows * cols // m * n)
            codes = codes.reshape(rows, cols // m, m).scatter_(2, pos, kept.reshape(rows, -1, n))
            codes = codes.reshape(shape)
            keep = torch.zeros(rows, cols // m, m, dtype=torch.bool).scatter_(2, pos, True)
            keep = keep.reshape(shape)
        else:
            raise ModelError(f"unknown tensor format {fmt!r}")
        if keep is not None:  # the codes of pruned weights are not stored: put the zero point
            zeros = QuantParams(scale, zero, spec).zero_codes(tuple(shape))
            codes = torch.where(keep, codes, zeros.to(torch.uint8))
        qw = QuantizedWeight(codes, scale, zero, spec, keep=keep,
                             input_scale=p["input_scale"].float() if "input_scale" in p else None)
        return qw.dequantize(dtype)
    except (RuntimeError, IndexError, KeyError, ValueError) as exc:
        raise ModelError(f"tensor parts do not decode to shape {tuple(shape)} as {fmt!r}: "
                         f"{exc}") from None


def _positions(p: dict[str, Tensor], rows: int, cols: int, n: int, m: int) -> Tensor:
    count = rows * (cols // m) * n
    pos = unpack_bits(p["positions"], position_width(m), count).long()
    if count and int(pos.max()) >= m:
        raise ModelError(f"N:M positions out of range (>= m={m})")
    return pos.reshape(rows, cols // m, n)


def candidates(W: Tensor, qw: QuantizedWeight | None) -> list[tuple[str, tuple[int, int] | None]]:
    """The formats that can hold W (with its codes, if quantized): (format, N:M pattern)."""
    if W.dim() != 2:
        return [("dense", None)]
    nm = detect_nm(W)
    out: list[tuple[str, tuple[int, int] | None]] = [("dense", None), ("bitmask", None)]
    if nm is not None:
        out.append(("nm", nm))
    if qw is not None and tuple(qw.codes.shape) == tuple(W.shape):
        out += [("quant", None), ("quant-bitmask", None)]
        keep_nm = detect_nm(qw.keep.float()) if qw.keep is not None else nm
        if keep_nm is not None:
            out.append(("quant-nm", keep_nm))
    return out


def best_encoding(W: Tensor, qw: QuantizedWeight | None = None, only: str | None = None) -> Encoded:
    """The smallest format that gives W back bit for bit (``only``: that format, if valid).
    A quantized format is valid only if its codes still decode to W exactly (weights changed
    after quantization fall back to a float format)."""
    best = None
    for fmt, nm in candidates(W, qw):
        if only is not None and fmt != only:
            continue
        enc = encode(W, fmt, qw, nm)
        # ties go to the N:M layout (2:4's 2-bit positions cost what a bitmask does, and it is
        # the layout sparse kernels read)
        if best is not None and (enc.nbytes > best.nbytes or
                                 (enc.nbytes == best.nbytes and "nm" not in fmt)):
            continue
        if fmt != "dense" and not torch.equal(decode(enc, tuple(W.shape), W.dtype), W):
            continue
        best = enc
    if best is None:
        valid = ", ".join(f for f, _ in candidates(W, qw))
        raise ValueError(f"format {only!r} cannot hold this tensor exactly: valid are {valid}")
    return best
