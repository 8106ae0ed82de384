"""2:4 semi-structured sparse Linear layers on an NVIDIA GPU against dense, in one run.

For LLM layer shapes (out × in: 4096×4096, 4096×11008, 11008×4096), 1 to 4096 tokens, float16
and bfloat16: y = F.linear(x, W) with W dense and with W = to_sparse_semi_structured(W_2:4)
(PyTorch picks cuSPARSELt or CUTLASS), CUDA-event timed, medians of --repeats, printed as the
ratio sparse/dense time (< 1: sparse faster). Needs a CUDA GPU of compute capability >= 8.0.

    python benchmarks/semi_structured.py [--tokens 1,16,128,512,2048,4096] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
import torch.nn.functional as F

SHAPES = ((4096, 4096), (4096, 11008), (11008, 4096))


def cuda_time(fn, repeats, inner=10):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times)


def two_four(W):
    rows, cols = W.shape
    g = W.reshape(rows, cols // 4, 4)
    keep = torch.zeros_like(g, dtype=torch.bool).scatter_(2, g.abs().topk(2, dim=2).indices, True)
    return (g * keep).reshape(rows, cols)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default="1,16,128,512,2048,4096")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--backend", choices=("auto", "cusparselt", "cutlass"), default="auto")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("semi_structured.py needs a CUDA GPU (compute capability >= 8.0); none here")
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    if args.backend != "auto":
        SparseSemiStructuredTensor._FORCE_CUTLASS = args.backend == "cutlass"
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}; medians of "
          f"{args.repeats}; ratio = sparse time / dense time (< 1: 2:4 faster)")
    print("| layer (out × in) | dtype | tokens | dense ms | 2:4 ms | ratio | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    for dtype in (torch.float16, torch.bfloat16):
        for rows, cols in SHAPES:
            W = two_four(torch.randn(rows, cols, device="cuda", dtype=dtype) / cols ** 0.5)
            Ws = to_sparse_semi_structured(W)
            for n in map(int, args.tokens.split(",")):
                x = torch.randn(n, cols, device="cuda", dtype=dtype)
                diff = float((F.linear(x, Ws) - F.linear(x, W)).abs().max())
                t_dense = cuda_time(lambda: F.linear(x, W), args.repeats)
                t_sparse = cuda_time(lambda: F.linear(x, Ws), args.repeats)
                print(f"| {rows}×{cols} | {str(dtype)[6:]} | {n} | {t_dense:.4f} | "
                      f"{t_sparse:.4f} | {t_sparse / t_dense:.2f} | {diff:.2e} |", flush=True)


if __name__ == "__main__":
    main()
