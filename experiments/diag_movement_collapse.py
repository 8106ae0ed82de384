"""Diagnosis: why does a movement-chosen mask wreck MiniLM when a random one does not?

Trains ``--steps`` steps with HardMovement scores learning but nothing pruned (the schedule
starts later), then, on a fixed batch of training data, compares the loss with three masks of
the same per-layer sparsity: movement (lowest scores), random, magnitude. Prints how the
movement-pruned set is spread over rows and columns of each layer, ties among the scores,
and the per-dimension magnitude of the residual stream before and after masking.

    python experiments/diag_movement_collapse.py --steps 40 --seqlen 32 --sparsity 0.1
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch

from prunekit.data.tasks import stdlib_family_task
from prunekit.masks import topk_mask
from prunekit.training import Cubic, HardMovement

spec = importlib.util.spec_from_file_location(
    "exp", Path(__file__).with_name("minilm_finetune_prune.py"))
exp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(exp)


def loss_with(model, sp, masks, batch, y):
    with torch.no_grad():
        for n, m in masks.items():
            sp._set_mask(n, m)
        out = model(**batch, labels=y, output_hidden_states=True)
    return float(out.loss), out.hidden_states


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--seqlen", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--sparsity", type=float, default=0.1)
    ap.add_argument("--score-optimizer", default="adam")
    ap.add_argument("--score-lr", type=float, default=1e-2)
    args = ap.parse_args()
    torch.set_num_threads(2)
    task = stdlib_family_task()
    _, model, enc, y, opt = exp.model_and_optimizer(task, args.seqlen, 0)
    sp = HardMovement(Cubic(0.0, 0.9, start=10_000, end=20_000, frequency=5), scope="layer",
                      score_lr=args.score_lr, score_optimizer=args.score_optimizer)
    sp.prepare(model)
    g = torch.Generator().manual_seed(0)
    for step in range(args.steps):
        idx = torch.randint(0, len(y), (args.batch,), generator=g)
        out = model(**{k: v[idx] for k, v in enc.items()}, labels=y[idx])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        sp.step()
        if step % 10 == 0:
            print(f"step {step} loss {float(out.loss):.3f}", flush=True)
    model.eval()
    ev = torch.arange(0, len(y), max(1, len(y) // 128))[:128]
    batch = {k: v[ev] for k, v in enc.items()}
    s = args.sparsity
    names = list(sp.layers)
    W = {n: sp.dense_weight(sp.layers[n]).detach() for n in names}
    S = {n: sp.scores(n, sp.layers[n]).float() for n in names}
    gen = torch.Generator().manual_seed(1)
    masks = {
        "dense": {n: torch.ones_like(W[n], dtype=torch.bool) for n in names},
        "movement": {n: topk_mask(S[n], s, "layer") for n in names},
        "random": {n: topk_mask(torch.rand(W[n].shape, generator=gen), s, "layer")
                   for n in names},
        "magnitude": {n: topk_mask(W[n].abs(), s, "layer") for n in names},
        "movement-row": {n: topk_mask(S[n], s, "row") for n in names},
    }
    masks["movement-highest"] = {n: topk_mask(-S[n], s, "layer") for n in names}
    masks["movement-|S|"] = {n: topk_mask(S[n].abs(), s, "layer") for n in names}
    for kind in ("query", "key", "value", "attention.output", "intermediate", "output.dense"):
        masks[f"mov-only-{kind}"] = {
            n: masks["movement"][n] if (kind in n and not (kind == "output.dense"
                                                        and "attention" in n))
            else masks["dense"][n] for n in names}
    for f in (0.01, 0.03):
        masks[f"movement-{f}"] = {n: topk_mask(S[n], f, "layer") for n in names}
        masks[f"random-{f}"] = {n: topk_mask(torch.rand(W[n].shape, generator=gen), f, "layer")
                                for n in names}
    hidden = {}
    for kind, m in masks.items():
        loss, hs = loss_with(model, sp, m, batch, y[ev])
        hidden[kind] = hs
        print(f"{kind:20s} sparsity {s:.2f}: loss {loss:.3f}")
    # mean-shift diagnosis: inputs of every target (dense model), then the pruned part's
    # output split into its token-mean and the rest
    xs = {}
    hooks = [sp.layers[n].register_forward_hook(
        lambda mod, inp, out, n=n: xs.__setitem__(n, inp[0].detach().reshape(-1, inp[0].shape[-1])))
        for n in names]
    loss_with(model, sp, masks["dense"], batch, y[ev])
    for h in hooks:
        h.remove()
    print("\nper layer: pruned part's output (X (W*(1-M))^T), |token-mean| and rms of the rest, "
          "relative to rms of the dense output")
    for n in names:
        full = xs[n] @ W[n].T
        ref = full.pow(2).mean().sqrt()
        line = f"{n[-40:]:40s}"
        for kind in ("movement", "random", "movement-highest"):
            d = xs[n] @ (W[n] * (~masks[kind][n])).T  # (tokens, out)
            mu = d.mean(0)
            line += (f" {kind[:8]} mean {float(mu.pow(2).mean().sqrt() / ref):.3f} "
                     f"rest {float((d - mu).pow(2).mean().sqrt() / ref):.3f}")
        print(line)
    # bias compensation: add the pruned part's token-mean output to each bias
    bias0 = {n: sp.layers[n].bias.detach().clone() for n in names}
    for kind in ("movement", "random"):
        with torch.no_grad():
            for n in names:
                d = xs[n] @ (W[n] * (~masks[kind][n])).T
                sp.layers[n].bias.add_(d.mean(0))
        loss, _ = loss_with(model, sp, masks[kind], batch, y[ev])
        print(f"{kind} + bias compensation: loss {loss:.3f}")
        with torch.no_grad():
            for n in names:
                sp.layers[n].bias.copy_(bias0[n])
    print("\nper layer: score ties at the threshold, distinct scores; pruned set over rows/cols "
          "(max/mean fraction), |w| pruned / mean |w|, mean score")
    for n in names:
        m = masks["movement"][n]
        pr = (~m).float()
        row, col = pr.mean(1), pr.mean(0)
        thr = S[n][~m].max()
        ties = int((S[n] == thr).sum())
        wr = float(W[n].abs()[~m].mean() / W[n].abs().mean())
        print(f"{n[-40:]:40s} ties {ties:7d} distinct {S[n].unique().numel():8d} "
              f"row max {row.max():.2f} mean {row.mean():.2f} col max {col.max():.2f} "
              f"argmaxcol {int(col.argmax())} |w|ratio {wr:.2f} S range "
              f"[{S[n].min():.3f},{S[n].max():.3f}]")
    print("\nresidual stream per-dimension mean |h| (top 5 dims) by layer")
    for li in (1, 3, 6):
        for kind in ("dense", "movement", "random"):
            h = hidden[kind][li].abs().mean((0, 1))
            top = h.topk(5)
            print(f"layer {li} {kind:9s} mean {h.mean():.3f} top dims "
                  f"{top.indices.tolist()} vals {[round(v, 2) for v in top.values.tolist()]}")


if __name__ == "__main__":
    main()
