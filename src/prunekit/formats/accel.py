"""Faster sparse layers where the hardware allows: PyTorch's semi-structured (2:4) sparse
tensors on CUDA, opt-in at load time (``prunekit.load(DIR, device="cuda",
semi_structured=True)``). On the CPU the weights stay dense: ``benchmarks/sparse_cpu.py``
measures PyTorch's CSR and BSR matmul against dense, and the figures in docs/formats.md decide
whether a sparse CPU path is worth it (see :data:`CPU_SPARSE_MIN_SPARSITY`).

torch.sparse.to_sparse_semi_structured compresses a 2:4 fp16/bf16 weight to its kept values
and metadata for the sparse tensor cores of NVIDIA GPUs from Ampere on (cuSPARSELt or CUTLASS);
F.linear then dispatches to the sparse kernel.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..errors import ModelError, UsageError

log = logging.getLogger(__name__)

SEMI_STRUCTURED_DTYPES = (torch.float16, torch.bfloat16)
MIN_ROWS, MIN_COLS = 32, 64  # the smallest shapes the CUTLASS kernels take (multiples of these)

#: The sparsity from which a CSR matmul beat dense float32 on this project's CPU machine for
#: every token count measured; None: it never did in 70-95 % (docs/formats.md, measured with
#: benchmarks/sparse_cpu.py), so CPU layers stay dense.
CPU_SPARSE_MIN_SPARSITY: float | None = None


def two_four_linears(model: nn.Module) -> list[str]:
    """Names of the nn.Linear layers whose weight is 2:4 sparse and fits the kernels' shapes."""
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        W = module.weight.detach()
        rows, cols = W.shape
        if rows % MIN_ROWS or cols % MIN_COLS:
            continue
        if int((W.reshape(rows, cols // 4, 4) != 0).sum(-1).max()) <= 2:
            out.append(name)
    return out


def to_semi_structured_(model: nn.Module, layers: list[str] | None = None) -> list[str]:
    """Replace the weights of 2:4 Linear layers (default: all that fit) by semi-structured
    sparse tensors, in place. The model must be on a CUDA device in float16 or bfloat16.
    Returns the converted layer names."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        raise UsageError(f"semi-structured 2:4 sparsity runs on CUDA GPUs (Ampere or newer); the "
                         f"model is on {device}: load with device='cuda', or leave it dense")
    layers = two_four_linears(model) if layers is None else layers
    from torch.sparse import to_sparse_semi_structured

    for name in layers:
        module = model.get_submodule(name)
        if module.weight.dtype not in SEMI_STRUCTURED_DTYPES:
            raise UsageError(f"{name}: semi-structured sparsity needs float16 or bfloat16 "
                             f"weights, not {module.weight.dtype}: load with dtype='float16'")
        try:
            module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach()),
                                         requires_grad=False)
        except (RuntimeError, ValueError) as exc:
            raise ModelError(f"{name}: PyTorch cannot make this weight semi-structured: {exc}") from None
    log.info("%d layers use 2:4 semi-structured sparse kernels", len(layers))
    return layers
