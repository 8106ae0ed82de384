"""Faster sparse layers where the hardware allows: PyTorch's semi-structured (2:4) sparse
tensors on CUDA, opt-in at load time (``prunekit.load(DIR, device="cuda",
semi_structured=True)``); on the CPU, Linear layers of at least the measured
:data:`CPU_SPARSE_MIN_SPARSITY` as CSR matrices (``prunekit.load(DIR, cpu_sparse=True)``);
every other layer stays dense.

torch.sparse.to_sparse_semi_structured compresses a 2:4 fp16/bf16 weight to its kept values
and metadata for the sparse tensor cores of NVIDIA GPUs from Ampere on (cuSPARSELt or CUTLASS);
F.linear then dispatches to the sparse kernel.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn
from torch.sparse import to_sparse_semi_structured

from ..errors import ModelError, UsageError

log = logging.getLogger(__name__)

SEMI_STRUCTURED_DTYPES = (torch.float16, torch.bfloat16)
MIN_ROWS, MIN_COLS = 32, 64  # the smallest shapes the CUTLASS kernels take (multiples of these)

#: The smallest sparsity at which PyTorch's CSR matmul beat dense float32 on this project's
#: CPU machine for every token count measured (1, 16, 256) on both 4096×4096 and 11008×4096:
#: 95 % (1.7–3.3× and 2.1–14×); at 90 % it still lost at 1 token (0.52×, 0.70×), at 70–80 %
#: mostly (benchmarks/sparse_cpu.py, 2026-11-29, docs/formats.md). BSR with 16 × 16 blocks of an
#: unstructured mask never won.
CPU_SPARSE_MIN_SPARSITY = 0.95


class CSRLinear(nn.Module):
    """y = x Wᵀ + b with W held as a CSR tensor (``torch.sparse_csr``): y = (W @ xᵀ)ᵀ. Not
    bit-identical to the dense matmul (another summation order)."""

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.weight = nn.Parameter(layer.weight.detach().to_sparse_csr(), requires_grad=False)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach(),
                                                                 requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = (self.weight @ x.reshape(-1, self.in_features).T).T
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)


def to_cpu_sparse_(model: nn.Module, min_sparsity: float = CPU_SPARSE_MIN_SPARSITY) -> list[str]:
    """Replace the CPU Linear layers at least ``min_sparsity`` sparse (the measured threshold by
    default) by :class:`CSRLinear`, in place. Returns their names."""
    done = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or module.weight.device.type != "cpu":
            continue
        W = module.weight.detach()
        if float((W == 0).sum()) / W.numel() < min_sparsity:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            setattr(parent, attr, CSRLinear(module))
        done.append(name)
    log.info("%d layers use CSR sparse matmul (>= %.0f%% sparse)", len(done), 100 * min_sparsity)
    return done


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
