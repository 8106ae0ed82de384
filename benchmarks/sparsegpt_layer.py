"""SparseGPT on one layer given its Hessian: seconds, GFLOP/s, and the arithmetic floor.

For each weight shape (out × in) and pattern, in one process:
  - torch.matmul speed on this machine (the yardstick),
  - the floor: one Cholesky-and-inverse of H (≈ c³ flops) plus the updates (≈ r·c² flops) at
    that matmul speed,
  - prunekit's sparsegpt_prune,
  - a textbook SparseGPT written in this script as the baseline (factor, invert, factor again
    with torch.linalg; rank-1 update of the row-major block per column; mask by full sort),
    i.e. the arithmetic of the reference implementation and of llm-compressor,
and prints medians of --repeats runs, ratios, and both reconstruction errors. The machine is
shared and noisy, so the matmul yardstick is re-measured right before every timed run and the
"x floor" column is the median of the per-run ratios.

    python benchmarks/sparsegpt_layer.py [--shapes 4096x4096,1024x4096,4096x11008] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from prunekit.masks import prune_count
from prunekit.methods.base import relative_error
from prunekit.methods.sparsegpt import sparsegpt_prune
from prunekit.patterns import NM, Unstructured, parse_pattern


def textbook_hinv(H, rel_damp=0.01):
    """The baselines' upper Cholesky factor of (H + λI)⁻¹: factor, invert, factor again."""
    H = H.clone()
    H.diagonal().add_(rel_damp * H.diagonal().mean())
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)


def textbook_sparsegpt(W, H, pattern, blocksize=128, rel_damp=0.01):
    """Baseline: the algorithm as commonly implemented (not prunekit's code path)."""
    W = W.clone()
    rows, cols = W.shape
    Hinv = textbook_hinv(H, rel_damp)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if isinstance(pattern, NM):
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        else:
            tmp = W1**2 / torch.diag(Hinv1).reshape(1, -1) ** 2
            k = prune_count(rows * i2, pattern.sparsity) - prune_count(rows * i1, pattern.sparsity)
            thresh = torch.sort(tmp.flatten())[0][k - 1] if k > 0 else -1.0
            mask1 = tmp <= thresh
        for i in range(i2 - i1):
            w = W1[:, i]
            d = Hinv1[i, i]
            if isinstance(pattern, NM) and i % pattern.m == 0:
                tmp = W1[:, i : i + pattern.m] ** 2 / torch.diag(Hinv1)[i : i + pattern.m].reshape(1, -1) ** 2
                idx = torch.topk(tmp, pattern.m - pattern.n, dim=1, largest=False)[1]
                mask1.scatter_(1, i + idx, True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W


def median_time(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def matmul_gflops(n=4096, repeats=3):
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t, _ = median_time(lambda: a @ b, repeats)
    return 2 * n**3 / t / 1e9


def timed_against_floor(fn, flops, repeats):
    """Median seconds of ``fn``, median of (seconds / floor) with the floor re-measured each run."""
    times, ratios, out = [], [], None
    for _ in range(repeats):
        floor = flops / (matmul_gflops(repeats=1) * 1e9)
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
        ratios.append(times[-1] / floor)
    return statistics.median(times), statistics.median(ratios), out


def layer_hessian(cols, n_tokens=2048, seed=0):
    """H = 2/N XᵀX from tokens with correlated features of varied scale (a shared low-rank part)."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-0.5, 0.5, cols)[torch.randperm(cols, generator=g)]
    shared = torch.randn(n_tokens, 64, generator=g) @ torch.randn(64, cols, generator=g) / 8
    X = (torch.randn(n_tokens, cols, generator=g) + shared) * scales
    return 2.0 / n_tokens * X.T @ X


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="4096x4096,1024x4096,4096x11008")
    ap.add_argument("--patterns", default="0.5,2:4")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    gf = matmul_gflops()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"matmul 4096^3 fp32: {gf:.1f} GFLOP/s")
    print(f"{'shape':>11} {'pattern':>8} {'ours s':>7} {'GF/s':>6} {'floor s':>7} {'x floor':>7} "
          f"{'base s':>7} {'speedup':>7} {'err ours':>9} {'err base':>9}")
    for shape in args.shapes.split(","):
        rows, cols = map(int, shape.split("x"))
        H = layer_hessian(cols)
        W = torch.randn(rows, cols, generator=torch.Generator().manual_seed(1))
        flops = cols**3 + rows * cols**2
        floor = flops / (gf * 1e9)
        for text in args.patterns.split(","):
            pattern = parse_pattern(text, scope="layer")
            t_ours, x_floor, (W_ours, _, _) = timed_against_floor(
                lambda: sparsegpt_prune(W, H, pattern), flops, args.repeats)
            e_ours = relative_error(W, W_ours, H)
            if args.no_baseline:
                t_base, e_base = math.nan, math.nan
            else:
                t_base, W_base = median_time(lambda: textbook_sparsegpt(W, H, pattern), 1)
                e_base = relative_error(W, W_base, H)
            print(f"{shape:>11} {text:>8} {t_ours:7.2f} {flops / t_ours / 1e9:6.1f} {floor:7.2f} "
                  f"{x_floor:7.2f} {t_base:7.2f} {t_base / t_ours:7.2f} "
                  f"{e_ours:9.5f} {e_base:9.5f}")


if __name__ == "__main__":
    main()
