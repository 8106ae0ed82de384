"""Export to other ecosystems: quantized models to compressed-tensors' ``pack-quantized`` layout
(which transformers, with the compressed-tensors package, and vLLM load).

For every quantized Linear layer ``L`` the safetensors file holds, instead of ``L.weight``:

    L.weight_packed       int32 (out, ⌈in·b/32⌉): the signed codes q − 2^(b−1) offset back to
                          unsigned and packed densely along each row, value i at bits i·b ..
                          i·b + b − 1 of the row's little-endian bit stream (prunekit's own
                          bit stream, read as int32 words)
    L.weight_scale        (out, groups) in the model's dtype (prunekit's scales are float16
                          values, so any float dtype holds them exactly)
    L.weight_shape        int64 [out, in]
    L.weight_zero_point   asymmetric grids only: the signed zero points z − 2^(b−1), packed the
                          same way along the output dimension: int32 (⌈out·b/32⌉, groups)

and ``config.json`` gains a ``quantization_config`` (quant_method "compressed-tensors", format
"pack-quantized", one config group for the quantized layers, the other Linear layers ignored).
Dequantization there is (q_signed − zp_signed) · scale = (code − zero) · scale: the weights
are prunekit's, bit for bit. Pruned weights are stored as their zero code (dense codes).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from ..errors import ModelError
from ..quant.grid import QuantizedWeight
from .tensors import pack_bits

FORMAT = "pack-quantized"


def pack_rows_int32(codes: Tensor, bits: int) -> Tensor:
    """uint8 codes (rows, cols) -> int32 (rows, ⌈cols·bits/32⌉), each row packed densely."""
    rows, cols = codes.shape
    words = math.ceil(cols * bits / 32)
    out = torch.zeros(rows, words * 4, dtype=torch.uint8)
    for r in range(rows):  # one little-endian bit stream per row
        stream = pack_bits(codes[r], bits)
        out[r, : stream.numel()] = stream
    return out.view(torch.int32)


def _scheme(qw: QuantizedWeight) -> dict:
    s = qw.spec
    return {"num_bits": s.bits, "type": "int", "symmetric": s.symmetric,
            "strategy": "channel" if s.group is None else "group", "group_size": s.group,
            "dynamic": False, "actorder": None, "observer": "minmax"}


def export_compressed_tensors(model: nn.Module, quantized: Mapping[str, QuantizedWeight],
                              folder: Path, tokenizer=None) -> dict:
    """Write ``model`` with its quantized layers in compressed-tensors' pack-quantized layout
    to ``folder`` (empty; the caller makes the write atomic). Returns the quantization config.

    Every quantized layer must share one grid (bits, group, symmetry); AWQ input scales must
    have been folded (pack-quantized has no input scale)."""
    if not quantized:
        raise ModelError("nothing to export to compressed-tensors: no layer was quantized "
                         "(a pruned-only model exports with --format hf)")
    schemes = {json.dumps(_scheme(q), sort_keys=True) for q in quantized.values()}
    if len(schemes) > 1:
        raise ModelError(f"compressed-tensors export needs one grid for all layers, found "
                         f"{len(schemes)}: quantize with one --bits/--group/--asym")
    unfolded = [n for n, q in quantized.items() if q.input_scale is not None]
    if unfolded:
        raise ModelError(f"{unfolded[0]}: AWQ input scale not folded into a preceding operation "
                         "(pack-quantized has no input scale): export as a prunekit checkpoint")
    state = {k: v for k, v in model.state_dict().items()}
    seen: dict[int, str] = {}
    tensors: dict[str, Tensor] = {}
    for name, t in state.items():
        if name.endswith(".weight") and name.removesuffix(".weight") in quantized:
            continue
        if t.numel() and t.data_ptr() in seen:  # tied weights: transformers re-ties them
            continue
        seen[t.data_ptr()] = name
        tensors[name] = t.contiguous()
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    for layer, qw in quantized.items():
        module = model.get_submodule(layer)
        if not isinstance(module, nn.Linear):
            raise ModelError(f"{layer}: {type(module).__name__} cannot be exported as "
                             "pack-quantized (nn.Linear only)")
        tensors[f"{layer}.weight_packed"] = pack_rows_int32(qw.codes, qw.spec.bits)
        tensors[f"{layer}.weight_scale"] = qw.scale.to(dtype).contiguous()
        tensors[f"{layer}.weight_shape"] = torch.tensor(list(qw.codes.shape), dtype=torch.int64)
        if not qw.spec.symmetric:
            zp = qw.zero.to(torch.uint8)  # unsigned z, packed along the output dimension
            tensors[f"{layer}.weight_zero_point"] = pack_rows_int32(zp.T.contiguous(),
                                                                    qw.spec.bits).T.contiguous()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    config = {
        "quant_method": "compressed-tensors", "format": FORMAT,
        "quantization_status": "compressed",
        "config_groups": {"group_0": {"targets": ["Linear"],
                                      "weights": _scheme(next(iter(quantized.values()))),
                                      "input_activations": None, "output_activations": None,
                                      "format": FORMAT}},
        "ignore": [n for n in linear if n not in quantized],
    }
    model.config.quantization_config = config
    try:
        model.config.save_pretrained(folder)
    finally:
        del model.config.quantization_config
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return config
