"""Whole all-MiniLM-L6-v2 pruned with SparseGPT (and Wanda, magnitude): wall time, peak memory.

Timed from a loaded model and tokenised calibration set (128 samples x 128 tokens by default)
to a pruned model. The baseline in the same run is one dense forward pass of the model over the
same calibration set: sequential pruning needs about two (every block is run once to collect
statistics and once more to feed the next block), so "x forward" shows the overhead beyond the
passes themselves. Peak memory is the process's maximum resident set size.

    python benchmarks/minilm_prune.py [--samples 128] [--seqlen 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import resource
import statistics
import time

import torch

from prunekit.data.calibration import calibration
from prunekit.plan import resolve_pattern
from prunekit.run import prune_model
from prunekit.formats.load import load_model


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", default="sparsegpt,wanda,magnitude")
    ap.add_argument("--pattern", default="0.5")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                    help="precision the model runs in (Hessians stay float32)")
    args = ap.parse_args()
    torch.manual_seed(0)
    loaded = load_model("minilm", getattr(torch, args.dtype))
    batches = calibration(loaded.tokenizer, "stdlib", args.samples, args.seqlen)
    print(f"MiniLM: {sum(p.numel() for p in loaded.model.parameters()):,} parameters; "
          f"calibration {args.samples} x {args.seqlen} tokens; model in {args.dtype}; "
          f"torch {torch.get_num_threads()} threads")
    print(f"peak RSS after load + tokenise: {rss_mib():.0f} MiB")

    def dense_forward():
        with torch.no_grad():
            for b in batches:
                loaded.model(**b)

    def timed(fn):
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    t_fwd = timed(dense_forward)
    print(f"baseline: one dense forward over the calibration set: {t_fwd:.2f} s (median)")
    for method in args.methods.split(","):
        pattern = resolve_pattern(args.pattern, method)  # the method's default scope
        times = []
        for _ in range(args.repeats):
            model = copy.deepcopy(loaded.model)
            t = time.perf_counter()
            prune_model(model, method, pattern, batches)
            times.append(time.perf_counter() - t)
        t = statistics.median(times)
        print(f"{method:>10} {pattern}: {t:.2f} s (median of {args.repeats}; "
              f"min {min(times):.2f}) = {t / t_fwd:.2f} x forward; peak RSS so far {rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
