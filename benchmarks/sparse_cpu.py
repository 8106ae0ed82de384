"""Unstructured sparse matmul on CPU against dense float32, measured in one run.

For each weight shape (out × in), sparsity (70–95 %) and token count, times y = x Wᵀ with:
  - dense float32 (torch.nn.functional.linear): the baseline,
  - W as a CSR tensor (torch.sparse_csr_tensor): y = (W_csr @ xᵀ)ᵀ,
  - W as a BSR tensor with blocks of --block (the same unstructured mask, so most blocks are
    stored partly filled),
and prints medians of --repeats interleaved timings as ratios dense/sparse (> 1: sparse is
faster). The smallest sparsity at which CSR beats dense for every token count of a shape is the
measured threshold ``prunekit.formats.cpu_sparse`` may use.

    python benchmarks/sparse_cpu.py [--shapes 4096x4096,11008x4096] [--sparsities 0.7,0.8,0.9,0.95]
"""

from __future__ import annotations

import argparse
import statistics
import time

import warnings

import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
warnings.filterwarnings("ignore", message="Sparse BSR tensor support is in beta")


def timed(fn, inner):
    fn()
    t = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t) / inner


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="4096x4096,11008x4096")
    ap.add_argument("--sparsities", default="0.7,0.8,0.9,0.95")
    ap.add_argument("--tokens", default="1,16,256")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--block", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians of "
          f"{args.repeats}; ratio = dense time / sparse time (> 1: sparse faster)")
    print("| layer | sparsity | tokens | dense | CSR | × | BSR | × |")
    print("|---|---|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for shape in args.shapes.split(","):
        rows, cols = map(int, shape.split("x"))
        W0 = torch.randn(rows, cols, generator=g)
        for s in map(float, args.sparsities.split(",")):
            W = W0 * (torch.rand(rows, cols, generator=g) >= s)
            csr = W.to_sparse_csr()
            bsr = W.to_sparse_bsr((args.block, args.block))
            for n in map(int, args.tokens.split(",")):
                x = torch.randn(n, cols, generator=g)
                xt = x.T.contiguous()
                variants = {"dense": lambda: F.linear(x, W), "csr": lambda: (csr @ xt).T,
                            "bsr": lambda: (bsr @ xt).T}
                ref = variants["dense"]()
                for k in ("csr", "bsr"):
                    assert torch.allclose(variants[k](), ref, rtol=1e-4, atol=1e-3), k
                inner = max(1, int(1e8 // (rows * cols * max(n, 4))))
                times = {k: [] for k in variants}
                for _ in range(args.repeats):
                    for k, fn in variants.items():
                        times[k].append(timed(fn, inner))
                med = {k: statistics.median(v) for k, v in times.items()}
                print(f"| {rows}×{cols} | {s:.0%} | {n} | {med['dense'] * 1e3:.2f} ms | "
                      f"{med['csr'] * 1e3:.2f} ms | {med['dense'] / med['csr']:.2f} | "
                      f"{med['bsr'] * 1e3:.2f} ms | {med['dense'] / med['bsr']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
