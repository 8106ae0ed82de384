"""The quantized linear layer on CPU against dense float32, measured in one run.

For each weight shape (out × in) and number of tokens, times y = x Wᵀ for:
  - dense float32 (torch.nn.functional.linear): the baseline,
  - int4, groups of 128, through PyTorch's weight-only kernel (aten._weight_int4pack_mm_for_cpu),
  - the same int4 kernel on bfloat16 activations and scales (compute_dtype=torch.bfloat16),
  - int8 per channel through aten._weight_int8pack_mm,
  - int4 dequantized on the fly (the fallback path of layers no kernel takes),
and prints medians of --repeats timed loops with the dense/quantized ratio (> 1: faster than
dense) and the weight bytes of each. Runs interleave the variants so that load on the shared
machine hits them alike.

    python benchmarks/quant_linear.py [--shapes 4096x4096,11008x4096] [--tokens 1,16,256]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from prunekit.quant import QuantSpec, rtn_quantize
from prunekit.quant.pack import QuantizedLinear


def timed(fn, x, inner):
    fn(x)  # warm-up (and the kernels' one-time packing)
    t = time.perf_counter()
    for _ in range(inner):
        fn(x)
    return (time.perf_counter() - t) / inner


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="4096x4096,11008x4096")
    ap.add_argument("--tokens", default="1,16,256")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians of "
          f"{args.repeats}; ratio = dense time / variant time")
    print("| layer | tokens | dense fp32 | int4 g128 kernel | × | int4 kernel, bf16 | × | "
          "int8 channel kernel | × | int4 dequant on the fly | × |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        rows, cols = map(int, shape.split("x"))
        g = torch.Generator().manual_seed(0)
        W = torch.randn(rows, cols, generator=g) / cols ** 0.5
        b = torch.zeros(rows)
        q4 = QuantizedLinear(rtn_quantize(W, QuantSpec(4, 128))[1], b)
        q4b = QuantizedLinear(rtn_quantize(W, QuantSpec(4, 128))[1], b,
                              compute_dtype=torch.bfloat16)
        q8 = QuantizedLinear(rtn_quantize(W, QuantSpec(8, None))[1], b)
        q4d = QuantizedLinear(rtn_quantize(W, QuantSpec(4, 128))[1], b, kernel="dequant")
        assert (q4.kernel, q8.kernel) == ("int4", "int8"), (q4.kernel, q8.kernel)
        variants = {"dense": lambda x: F.linear(x, W, b), "int4": q4, "int4bf": q4b, "int8": q8,
                    "deq": q4d}
        for n in map(int, args.tokens.split(",")):
            x = torch.randn(n, cols, generator=g)
            inner = max(1, int(2e8 // (rows * cols * max(n, 8))))
            times = {k: [] for k in variants}
            with torch.no_grad():
                for _ in range(args.repeats):
                    for k, fn in variants.items():
                        times[k].append(timed(fn, x, inner))
            med = {k: statistics.median(v) for k, v in times.items()}
            cell = lambda k: (f"{med[k] * 1e3:.2f} ms", f"{med['dense'] / med[k]:.2f}")  # noqa: E731
            print(f"| {rows}×{cols} | {n} | {med['dense'] * 1e3:.2f} ms | "
                  f"{' | '.join(' | '.join(cell(k)) for k in ('int4', 'int4bf', 'int8', 'deq'))} |",
                  flush=True)
        b4 = q4.codes.numel() + q4.scale.numel() * 2  # codes + float16 scales
        b8 = q8.codes.numel() + q8.scale.numel() * 2
        print(f"| {rows}×{cols} weight bytes | | {W.numel() * 4:,} | {b4:,} | | {b4:,} | | "
              f"{b8:,} | | {b4:,} | |")


if __name__ == "__main__":
    main()
