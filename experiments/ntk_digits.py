"""Which masks preserve the NTK, and does that predict how well they train? An MLP and a small
CNN on scikit-learn's digits, masks at 50–98 % sparsity from random, magnitude at
initialisation, SNIP, lottery tickets (IMP with rewinding to initialisation), whole-network
OBS, and prunekit's NTK-preserving criterion; several seeds.

    python experiments/ntk_digits.py [--seeds 0 1 2] [--levels 0.5 0.7 0.9 0.95 0.98]
                                     [--epochs 20] [--samples 300] [--out docs]

For every (network, seed, method, sparsity): the traced empirical NTK at initialisation on
``--samples`` training images, masked (J ⊙ m at θ ⊙ m), against the dense one — effective rank,
participation ratio, CKA, relative Frobenius distance, overlap of the top-10 eigenspaces, NTK
kernel-regression test accuracy — and the test accuracy after training the masked network from
its initial weights for ``--epochs`` epochs of Adam (the same budget for every mask). Then,
per network: mean ± std over seeds, whether lottery tickets keep the dense top eigenspace
better than random masks at each sparsity, and Spearman's ρ between each kernel metric and the
trained accuracy over all masked points. Writes docs/experiments/ntk_digits.{md,json} and
docs/img/ntk_digits_{spectra,overlap}.png. Needs scikit-learn and matplotlib. Each finished
(network, seed) is kept in docs/experiments/ntk_digits.partial.jsonl until the end, so an
interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from prunekit.analysis.study import Budget, MaskRequest, kernel_study, masks_for, rank_correlation
from prunekit.models.digits import digits_cnn, digits_mlp, load_digits_split

METHODS = ["random", "magnitude", "snip", "ntk", "lottery", "obs"]
METRICS = ["effective_rank", "participation_ratio", "cka", "relative_distance", "top10_overlap",
           "ntk_regression_accuracy"]
NETWORKS = {"mlp 64-128-10": lambda: digits_mlp(128), "cnn 1-8-16 conv3 + fc": lambda: digits_cnn(8)}


def run(args, partial: Path) -> list[dict]:
    """Every (network, seed); each finished pair is appended to ``partial`` (JSON lines), and
    pairs already there are reused, so an interrupted run continues where it stopped."""
    rows = [json.loads(line) for line in partial.read_text().splitlines()] if partial.exists() else []
    done = {(r["network"], r["seed"]) for r in rows}
    data = load_digits_split(seed=0)
    for net, make in NETWORKS.items():
        for seed in args.seeds:
            if (net, seed) in done:
                continue
            t = time.perf_counter()
            torch.manual_seed(seed)
            init = make()
            budget = Budget(epochs=args.epochs, seed=seed)
            requests = [MaskRequest(m, s) for m in METHODS for s in args.levels]
            masks = masks_for(init, data, requests, budget, progress=lambda s: print("  ", s))
            study = kernel_study(init, data, [(f"{r.method}|{r.sparsity}", m) for r, m in masks],
                                 samples=args.samples, budget=budget)
            new = []
            for row in study:
                method, _, level = row["mask"].partition("|")
                new.append({"network": net, "seed": seed, "method": method,
                            "target": float(level) if level else 0.0,
                            "seconds": time.perf_counter() - t, **row})
            with partial.open("a") as f:
                f.writelines(json.dumps(r) + "\n" for r in new)
            rows += new
            print(f"{net} seed {seed}: {time.perf_counter() - t:.0f} s", flush=True)
    return [r for r in rows if r["seed"] in args.seeds]


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def tables(rows: list[dict], levels: list[float]) -> list[str]:
    out = []
    for net in NETWORKS:
        mine = [r for r in rows if r["network"] == net]
        dense = [r for r in mine if r["method"] == "dense"]
        out += [f"### {net}", "",
                f"Dense: trained accuracy {mean_std([r['trained_accuracy'] for r in dense])}, "
                f"NTK regression {mean_std([r['ntk_regression_accuracy'] for r in dense])}, "
                f"effective rank {mean_std([r['effective_rank'] for r in dense])}.", "",
                "| method | sparsity | trained acc. | top-10 overlap | CKA | rel. distance | "
                "eff. rank | NTK-regr. acc. |", "|---|---|---|---|---|---|---|---|"]
        for m in METHODS:
            for s in levels:
                pts = [r for r in mine if r["method"] == m and r["target"] == s]
                if not pts:
                    continue
                out.append(f"| {m} | {statistics.mean(r['sparsity'] for r in pts):.1%} | "
                           + " | ".join(mean_std([r[k] for r in pts]) for k in
                                        ("trained_accuracy", "top10_overlap", "cka",
                                         "relative_distance", "effective_rank",
                                         "ntk_regression_accuracy")) + " |")
        masked = [r for r in mine if r["method"] != "dense"]
        out += ["", "Spearman's ρ between each kernel metric (at initialisation) and the trained "
                f"accuracy, over all {len(masked)} masked points:", "",
                "| metric | ρ |", "|---|---|"]
        acc = [r["trained_accuracy"] for r in masked]
        out += [f"| {k} | {rank_correlation([r[k] for r in masked], acc):+.2f} |" for k in METRICS]
        out += ["", "Lottery ticket against random mask, top-10 eigenspace overlap (mean over "
                "seeds) and trained accuracy:", "", "| sparsity | LT overlap | random overlap | "
                "LT acc. | random acc. |", "|---|---|---|---|---|"]
        for s in levels:
            lt = [r for r in mine if r["method"] == "lottery" and r["target"] == s]
            rnd = [r for r in mine if r["method"] == "random" and r["target"] == s]
            if lt and rnd:
                out.append(f"| {s:.0%} | {statistics.mean(r['top10_overlap'] for r in lt):.3f} | "
                           f"{statistics.mean(r['top10_overlap'] for r in rnd):.3f} | "
                           f"{statistics.mean(r['trained_accuracy'] for r in lt):.3f} | "
                           f"{statistics.mean(r['trained_accuracy'] for r in rnd):.3f} |")
        out.append("")
    return out


def plots(rows: list[dict], levels: list[float], img: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(NETWORKS), figsize=(6 * len(NETWORKS), 4))
    for ax, net in zip(axes, NETWORKS):
        for m in METHODS:
            pts = [[statistics.mean(r["top10_overlap"] for r in rows if r["network"] == net
                                    and r["method"] == m and r["target"] == s), s] for s in levels]
            ax.plot([p[1] for p in pts], [p[0] for p in pts], marker="o", label=m)
        ax.set(title=net, xlabel="sparsity", ylabel="top-10 eigenspace overlap with dense NTK")
        ax.legend()
    fig.tight_layout()
    fig.savefig(img / "ntk_digits_overlap.png", dpi=110)
    fig, axes = plt.subplots(1, len(NETWORKS), figsize=(6 * len(NETWORKS), 4))
    level = levels[len(levels) // 2]
    for ax, net in zip(axes, NETWORKS):
        seed = min(r["seed"] for r in rows if r["network"] == net)
        for r in rows:
            if r["network"] == net and r["seed"] == seed and r["target"] in (0.0, level):
                spec = torch.tensor(r["spectrum"])
                ax.semilogy((spec / spec.sum()).clamp_min(1e-12)[:100], label=r["method"])
        ax.set(title=f"{net}: NTK spectra at {level:.0%} (seed {seed})", xlabel="index",
               ylabel="eigenvalue / trace")
        ax.legend()
    fig.tight_layout()
    fig.savefig(img / "ntk_digits_spectra.png", dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--levels", type=float, nargs="+", default=[0.5, 0.7, 0.9, 0.95, 0.98])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--out", default="docs")
    args = ap.parse_args()
    torch.set_num_threads(2)
    out, img = Path(args.out) / "experiments", Path(args.out) / "img"
    out.mkdir(parents=True, exist_ok=True)
    img.mkdir(parents=True, exist_ok=True)
    partial = out / "ntk_digits.partial.jsonl"
    rows = run(args, partial)
    (out / "ntk_digits.json").write_text(json.dumps(
        {"settings": vars(args), "rows": [{k: v for k, v in r.items() if k != "spectrum"}
                                          for r in rows]}, indent=1) + "\n")
    plots(rows, args.levels, img)
    head = [f"# NTK of pruned networks on digits", "",
            f"`python experiments/ntk_digits.py --seeds {' '.join(map(str, args.seeds))} --levels "
            f"{' '.join(map(str, args.levels))} --epochs {args.epochs} --samples {args.samples}` "
            f"({sum({(r['network'], r['seed']): r['seconds'] for r in rows}.values()):.0f} s on "
            "2 shared CPU cores). Kernels at initialisation on "
            f"{args.samples} training images; accuracies on the 450 test images; mean ± std over "
            f"{len(args.seeds)} seeds.", "",
            "![overlap](../img/ntk_digits_overlap.png)", "", "![spectra](../img/ntk_digits_spectra.png)", ""]
    (out / "ntk_digits.md").write_text("\n".join(head + tables(rows, args.levels)) + "\n")
    partial.unlink()


if __name__ == "__main__":
    main()
