"""GPTQ on one layer given its Hessian: prunekit against baselines measured in the same run.

For each weight shape (out × in), int4 with groups of 128 (and per channel with --channel):
  - prunekit's gptq_quantize (the shared OBS core: lazy sub-blocks, Cholesky rows of H⁻¹),
  - a textbook GPTQ written in this script (the arithmetic of the reference implementation
    and of llm-compressor: factor, invert, factor again; per column a rank-1 update of the
    row-major block; grids fitted at each group's first column),
  - llm-compressor's own GPTQ when ``--llmcompressor FILE`` names a Python file defining
    ``llmc_gptq(W, H, bits, group) -> Ŵ`` (run under an environment that has llmcompressor),
and prints medians of --repeats runs, the ratios, and each result's relative output error
‖(W − Ŵ)X‖² / ‖WX‖² (from H) next to round-to-nearest's.

    python benchmarks/gptq_layer.py [--shapes 512x2048,4096x4096] [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib.util

import torch

from prunekit.methods.base import relative_error
from prunekit.quant import QuantSpec, gptq_quantize, rtn_quantize
from prunekit.quant.grid import fake_quantize, fit_rows
from sparsegpt_layer import median_time, textbook_hinv  # benchmarks/ is on sys.path as a script


def textbook_gptq(W, H, spec, blocksize=128, rel_damp=0.01):
    """Baseline: GPTQ as commonly implemented (not prunekit's code path)."""
    W = W.clone()
    rows, cols = W.shape
    Hinv = textbook_hinv(H, rel_damp)
    g = spec.group_size(cols)
    scale = zero = None
    if spec.group is None:
        scale, zero = fit_rows(W, spec)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w = W1[:, i]
            d = Hinv1[i, i]
            if spec.group is not None and (i1 + i) % g == 0:  # as the reference: from W
                scale, zero = fit_rows(W[:, i1 + i : i1 + i + g], spec)
            q = fake_quantize(w, scale, zero, spec.maxq)
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W


def layer(rows, cols, n_tokens=None, seed=0):
    """A weight and the Hessian of correlated inputs of uneven scales."""
    g = torch.Generator().manual_seed(seed)
    n_tokens = n_tokens or 2 * cols
    mix = torch.randn(cols, cols // 8, generator=g) / (cols // 8) ** 0.5
    X = torch.randn(n_tokens, cols // 8, generator=g) @ mix.T + 0.3 * torch.randn(n_tokens, cols, generator=g)
    X = X * torch.logspace(-0.5, 0.5, cols)[torch.randperm(cols, generator=g)]
    H = 2.0 / n_tokens * X.T @ X
    W = torch.randn(rows, cols, generator=g) / cols ** 0.5
    return W, H


def load_llmc(path):
    spec = importlib.util.spec_from_file_location("llmc_call", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.llmc_gptq


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="512x2048,4096x4096")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--channel", action="store_true", help="also per-channel int4")
    ap.add_argument("--llmcompressor", metavar="FILE",
                    help="file defining llmc_gptq(W, H, bits, group) (llmcompressor installed)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    llmc = load_llmc(args.llmcompressor) if args.llmcompressor else None
    specs = [QuantSpec(4, 128)] + ([QuantSpec(4, None)] if args.channel else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians of "
          f"{args.repeats}; errors are ‖(W−Ŵ)X‖²/‖WX‖² from H")
    header = "| layer | grid | prunekit | textbook | × faster | llm-compressor | × faster | err prunekit | err textbook | err llmc | err RTN |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for shape in args.shapes.split(","):
        rows, cols = map(int, shape.split("x"))
        W, H = layer(rows, cols)
        for spec in specs:
            t_ours, ours = median_time(lambda: gptq_quantize(W, H, spec)[0], args.repeats)
            t_text, text = median_time(lambda: textbook_gptq(W, H, spec), args.repeats)
            e_rtn = relative_error(W, rtn_quantize(W, spec)[0], H)
            row = [f"{rows}×{cols}", str(spec), f"{t_ours:.2f} s", f"{t_text:.2f} s",
                   f"{t_text / t_ours:.1f}"]
            if llmc is not None:
                t_llmc, ref = median_time(lambda: llmc(W, H, spec.bits, spec.group), args.repeats)
                row += [f"{t_llmc:.2f} s", f"{t_llmc / t_ours:.1f}"]
                e_llmc = f"{relative_error(W, ref.to(W.dtype), H):.5f}"
            else:
                row += ["—", "—"]
                e_llmc = "—"
            row += [f"{relative_error(W, ours, H):.5f}", f"{relative_error(W, text, H):.5f}",
                    e_llmc, f"{e_rtn:.5f}"]
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
