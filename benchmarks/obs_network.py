"""Iterative whole-network OBS: seconds to prune the digits MLP to 90 %, against a naive OBS
that re-inverts the Hessian of the remaining weights at every step, measured in one run.

    python benchmarks/obs_network.py [--hidden 128] [--sparsity 0.9] [--repeats 3]

Both versions remove the same weights in the same order (checked). The naive version needs
one inverse of an m × m matrix per removal (m = weights left): days at 9,472 weights, so at
that size one step is timed at each of several m, interpolated (log-log) and summed over every
step of the run. On a small network (hidden 16, 1,184
weights) both run to the end and the ratio is measured outright.

Hessian: empirical Fisher of the cross-entropy on the training split, damped by 1 % of its
mean diagonal (float64).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch import Tensor, nn

from prunekit.curvature import empirical_fisher, prunable_names
from prunekit.hessian import damped_cholesky
from prunekit.masks import prune_count
from prunekit.methods.obs import obs_prune
from prunekit.models.digits import load_digits_split, trained_digits_mlp


def naive_step(w: Tensor, H: Tensor, alive: Tensor) -> int:
    """One OBS removal the textbook way: invert H restricted to the remaining weights."""
    idx = alive.nonzero().squeeze(1)
    Hinv = torch.cholesky_inverse(torch.linalg.cholesky(H[idx][:, idx]))  # (m, m)
    wa = w[idx]
    j = int((wa.square() / torch.diagonal(Hinv)).argmin())
    w[idx] -= Hinv[:, j] * (wa[j] / Hinv[j, j])
    q = int(idx[j])
    w[q] = 0.0
    alive[q] = False
    return q


def naive_obs(w: Tensor, H: Tensor, n_prune: int) -> tuple[Tensor, Tensor]:
    w, alive = w.clone(), torch.ones_like(w, dtype=torch.bool)
    order = [naive_step(w, H, alive) for _ in range(n_prune)]
    return w, torch.tensor(order)


def problem(hidden: int, data) -> tuple[Tensor, Tensor]:
    """(w, H): the trained MLP's weights and their damped empirical Fisher."""
    model, _ = trained_digits_mlp(hidden, data=data)
    names = prunable_names(model)
    F = empirical_fisher(model, nn.CrossEntropyLoss(), data.x_train, data.y_train, names)
    w = torch.cat([dict(model.named_parameters())[n].detach().reshape(-1) for n in names])
    _, damping = damped_cholesky(F, 0.01)
    torch.diagonal(F).add_(damping.absolute)  # H + λI with the damping damped_cholesky chose
    return w, F


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def fitted_naive_seconds(w: Tensor, H: Tensor, n_prune: int) -> tuple[float, str]:
    """Naive total estimated from one timed step at each of several sizes m between n and the
    end, interpolated log-log in m and summed over every step of the run."""
    n = w.numel()
    sizes = sorted({int(n * f) for f in (1.0, 0.75, 0.5, 0.3, 0.1)} | {n - n_prune + 1})
    times = []
    for m in sizes:
        alive = torch.zeros(n, dtype=torch.bool)
        alive[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:m]] = True
        times.append(timed(naive_step, w.clone(), H, alive)[0])
    steps = np.arange(n - n_prune + 1, n + 1)
    per_step = np.exp(np.interp(np.log(steps), np.log(sizes), np.log(times)))
    detail = ", ".join(f"m={m}: {t:.2f} s" for m, t in zip(sizes, times))
    return float(per_step.sum()), f"one step timed at {detail}; log-log interpolation"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--small-hidden", type=int, default=16)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    data = load_digits_split()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float64")

    w, H = problem(args.small_hidden, data)
    k = prune_count(w.numel(), args.sparsity)
    t_fast, res = timed(obs_prune, w, H, k)
    t_naive, (w_naive, order_naive) = timed(naive_obs, w, H, k)
    same = torch.equal(res.order, order_naive)
    print(f"small: n={w.numel()}, remove {k}: fast {t_fast:.2f} s, naive {t_naive:.2f} s, "
          f"ratio {t_naive / t_fast:.0f}x, same order {same}, "
          f"max |Δw| {float((res.w - w_naive).abs().max()):.1e}")

    w, H = problem(args.hidden, data)
    n = w.numel()
    k = prune_count(n, args.sparsity)
    fast = [timed(obs_prune, w, H, k)[0] for _ in range(args.repeats)]
    t_fast = statistics.median(fast)
    t_inv = statistics.median(
        timed(lambda: torch.cholesky_inverse(damped_cholesky(H, 0.0)[0]))[0] for _ in range(2))
    t_naive, how = fitted_naive_seconds(w, H, k)
    print(f"large: n={n}, remove {k} ({args.sparsity:.0%}): fast median {t_fast:.1f} s "
          f"(runs {', '.join(f'{t:.1f}' for t in fast)}; of which the first factor and inverse "
          f"of H ≈ {t_inv:.1f} s); naive ≈ {t_naive:.0f} s "
          f"({t_naive / 3600:.1f} h) [{how}]; ratio ≈ {t_naive / t_fast:.0f}x")


if __name__ == "__main__":
    main()
