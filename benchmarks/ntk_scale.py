"""How large an empirical NTK fits: time and peak memory of the traced kernel of an MLP with
about 50k parameters on N digits images, for both implementations, measured in one run.

    python benchmarks/ntk_scale.py [--n 500 2000] [--hidden 256 128]

Peak memory is the process's maximum resident set size (ru_maxrss) after each step, so read
the increase from one line to the next; the implicit method runs on a slice of N (its cost is
N·K vjp+jvp products) and is extrapolated linearly in the number of columns.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from torch import nn

from prunekit.analysis.ntk import implicit_ntk, jacobian_ntk
from prunekit.models.digits import load_digits_split


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[500, 2000])
    ap.add_argument("--hidden", type=int, nargs="+", default=[256, 128])
    ap.add_argument("--implicit-n", type=int, default=100, help="columns timed for implicit")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dims = [64, *args.hidden, 10]
    layers = []
    for a, b in zip(dims, dims[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*layers[:-1])
    params = sum(p.numel() for p in model.parameters())
    data = load_digits_split()
    x_all = torch.cat([data.x_train, data.x_test]).float()
    print(f"MLP {'-'.join(map(str, dims))}: {params:,} parameters, float32, "
          f"{torch.get_num_threads()} threads; start RSS {rss_gib():.2f} GiB")
    for n in args.n:
        x = x_all[:n]
        n = len(x)  # digits has 1,797 images
        t = time.perf_counter()
        K = jacobian_ntk(model, x, trace=True)
        dt = time.perf_counter() - t
        print(f"jacobian  N={n}: traced kernel {tuple(K.shape)} in {dt:.1f} s; "
              f"peak RSS {rss_gib():.2f} GiB (J of N: {n * 10 * params * 4 / 2**30:.2f} GiB)")
        m = min(args.implicit_n, n)
        t = time.perf_counter()
        Ki = implicit_ntk(model, x, x[:m], trace=True)
        dt_i = time.perf_counter() - t
        err = float((Ki - K[:, :m]).abs().max() / K.abs().max())
        print(f"implicit  N={n}: {m} of {n} columns in {dt_i:.1f} s (all: ~{dt_i * n / m:.0f} s); "
              f"peak RSS {rss_gib():.2f} GiB; max rel. difference to jacobian {err:.1e}")


if __name__ == "__main__":
    main()
