"""Accuracy without retraining vs sparsity on the digits MLP: magnitude, OBD, OBS (exact
Hessian), OBS (empirical Fisher), layer-wise exact OBS and SparseGPT.

    python experiments/digits_obs.py [--seeds 0 1 2] [--hidden 128] [--out docs]

Writes docs/experiments/digits_obs.md (tables and settings), docs/experiments/digits_obs.json
(every number) and docs/img/digits_obs.png (the plot). Needs scikit-learn and matplotlib
(``pip install -e ".[experiments]"``). About 10 minutes on 2 CPU cores for 3 seeds.

Protocol: for each seed, the 64-128-10 ReLU MLP is trained on the stratified 75 % training
split (1,347 images); every method sees only that split (labels for the whole-network
curvatures, inputs for the layer-wise methods) and is scored on the 450 held-out test images.
All 9,472 weights of both Linear layers are prunable; biases are kept. Whole-network methods
rank all weights together (global sparsity); layer-wise exact OBS prunes the same fraction of
every output row, SparseGPT the same fraction of every layer (its adaptive per-block mask).
Greedy OBS and OBD are nested, so one run of each gives every sparsity level.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from prunekit.curvature import empirical_fisher, loss_hessian, prunable_names
from prunekit.masks import prune_count
from prunekit.methods.obd import obd_prune
from prunekit.methods.obs import obs_prune
from prunekit.models.digits import accuracy, load_digits_split, trained_digits_mlp
from prunekit.curvature import flat_weights, write_flat_
from prunekit.network import prune_layers
from prunekit.patterns import Unstructured

LEVELS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
METHODS = ["magnitude", "OBD (exact diag)", "OBD (Fisher diag)", "OBS (exact Hessian)", "OBS (Fisher)",
           "layer-wise exact OBS", "SparseGPT"]
REL_DAMP = 0.01


def scored(model: nn.Module, names: list[str], w: torch.Tensor, data) -> float:
    """Test accuracy of ``model`` with its prunable weights set to ``w`` (model left as is)."""
    m = copy.deepcopy(model)
    write_flat_(m, names, w)
    return accuracy(m, data.x_test, data.y_test)


def nested_runs(model, names, w, data, H_exact, F) -> tuple[dict, dict]:
    """magnitude, OBD and the two OBS at every level from one ranking / one greedy run each."""
    n = w.numel()
    counts = {lv: prune_count(n, lv) for lv in LEVELS}
    acc, info = {}, {}
    t = time.perf_counter()
    order = torch.argsort(w.abs(), stable=True)
    acc["magnitude"] = [scored(model, names, w.index_fill(0, order[:c], 0.0), data)
                        for c in counts.values()]
    info["magnitude"] = {"seconds": time.perf_counter() - t}
    for label, H in (("OBD (exact diag)", H_exact), ("OBD (Fisher diag)", F)):
        t = time.perf_counter()
        _, order = obd_prune(w, torch.diagonal(H), n)
        acc[label] = [scored(model, names, w.index_fill(0, order[:c], 0.0), data)
                      for c in counts.values()]
        info[label] = {"seconds": time.perf_counter() - t,
                       "negative_diagonal": int((torch.diagonal(H) < 0).sum())}
    for label, H in (("OBS (exact Hessian)", H_exact), ("OBS (Fisher)", F)):
        t = time.perf_counter()
        snaps = {c: None for c in counts.values()}
        res = obs_prune(w, H, max(counts.values()), rel_damp=REL_DAMP, snapshots=snaps)
        acc[label] = [scored(model, names, snaps[c], data) for c in counts.values()]
        info[label] = {"seconds": time.perf_counter() - t,
                       "damping_relative": res.damping.relative, "damping_tries": res.damping.tries}
    return acc, info


def layerwise_runs(model, data) -> tuple[dict, dict]:
    acc, info = {}, {}
    for label, method, scope in (("layer-wise exact OBS", "obs", "row"),
                                 ("SparseGPT", "sparsegpt", "layer")):
        t = time.perf_counter()
        acc[label] = []
        for lv in LEVELS:
            m = copy.deepcopy(model)
            prune_layers(m, method, Unstructured(lv, scope), data.x_train)
            acc[label].append(accuracy(m, data.x_test, data.y_test))
        info[label] = {"seconds": time.perf_counter() - t}
    return acc, info


def one_seed(seed: int, hidden: int) -> dict:
    data = load_digits_split(seed=seed)
    model, _ = trained_digits_mlp(hidden, seed=seed, data=data)
    names = prunable_names(model)
    w = flat_weights(model, names)
    loss = nn.CrossEntropyLoss()
    t = time.perf_counter()
    H_exact = loss_hessian(model, loss, data.x_train, data.y_train, names)
    t_h = time.perf_counter() - t
    t = time.perf_counter()
    F = empirical_fisher(model, loss, data.x_train, data.y_train, names)
    t_f = time.perf_counter() - t
    eig = torch.linalg.eigvalsh(H_exact)
    acc, info = nested_runs(model, names, w, data, H_exact, F)
    acc2, info2 = layerwise_runs(model, data)
    return {
        "seed": seed, "dense_accuracy": accuracy(model, data.x_test, data.y_test),
        "n_weights": w.numel(), "accuracy": acc | acc2, "info": info | info2,
        "hessian_seconds": t_h, "fisher_seconds": t_f,
        "hessian_eigs": {"min": float(eig[0]), "max": float(eig[-1]),
                         "negative": int((eig < 0).sum()),
                         "mean_diag": float(torch.diagonal(H_exact).mean())},
    }


def table(runs: list[dict]) -> str:
    head = "| method | " + " | ".join(f"{lv:.0%}" for lv in LEVELS) + " |"
    lines = [head, "|" + "---|" * (len(LEVELS) + 1)]
    dense = [r["dense_accuracy"] for r in runs]
    lines.append(f"| dense: {statistics.mean(dense):.1%} | " + " | ".join("" for _ in LEVELS) + " |")
    for m in METHODS:
        cells = []
        for i in range(len(LEVELS)):
            vals = [100 * r["accuracy"][m][i] for r in runs]
            sd = f" ± {statistics.stdev(vals):.1f}" if len(vals) > 1 else ""
            cells.append(f"{statistics.mean(vals):.1f}{sd}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    xs = [100 * lv for lv in LEVELS]
    for m in METHODS:
        per = [[100 * r["accuracy"][m][i] for r in runs] for i in range(len(LEVELS))]
        mean = [statistics.mean(v) for v in per]
        ax.plot(xs, mean, marker="o", ms=3, label=m)
        ax.fill_between(xs, [min(v) for v in per], [max(v) for v in per], alpha=0.15)
    ax.axhline(100 * statistics.mean(r["dense_accuracy"] for r in runs), color="k", ls=":",
               lw=1, label="dense")
    ax.set_xlabel("sparsity of the 9,472 weights (%)")
    ax.set_ylabel("test accuracy, no retraining (%)")
    ax.set_title(f"digits MLP 64-128-10, mean of {len(runs)} seeds (band: min-max)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--out", default="docs")
    args = ap.parse_args()
    out = Path(args.out)
    (out / "experiments").mkdir(parents=True, exist_ok=True)
    (out / "img").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runs = []
    for seed in args.seeds:
        runs.append(one_seed(seed, args.hidden))
        print(f"seed {seed} done ({time.perf_counter() - start:.0f} s)", flush=True)
    (out / "experiments" / "digits_obs.json").write_text(json.dumps(
        {"levels": LEVELS, "rel_damp": REL_DAMP, "torch": torch.__version__, "runs": runs},
        indent=1) + "\n")
    plot(runs, out / "img" / "digits_obs.png")
    tab = table(runs)
    secs = {m: statistics.median(r["info"][m]["seconds"] for r in runs) for m in METHODS}
    damp = [(r["info"]["OBS (exact Hessian)"]["damping_relative"],
             r["info"]["OBS (Fisher)"]["damping_relative"]) for r in runs]
    eigs = [r["hessian_eigs"] for r in runs]
    text = "\n".join([
        "# Digits MLP: accuracy vs sparsity without retraining (generated)",
        "",
        f"Generated by `python experiments/digits_obs.py --seeds {' '.join(map(str, args.seeds))}` "
        f"(torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{time.perf_counter() - start:.0f} s). Discussion: [../second-order.md](../second-order.md).",
        "",
        "Test accuracy (%) on the 450 held-out images, mean ± standard deviation over seeds:",
        "",
        tab,
        "",
        "![accuracy vs sparsity](../img/digits_obs.png)",
        "",
        f"- Damping used (relative to mean diag, requested {REL_DAMP}): exact Hessian "
        + ", ".join(f"{a:g}" for a, _ in damp) + "; Fisher " + ", ".join(f"{b:g}" for _, b in damp),
        "- Exact Hessian spectrum per seed (min, max eigenvalue, negative eigenvalues, negative "
        "diagonal entries, mean diagonal): "
        + "; ".join(f"{e['min']:.2e}, {e['max']:.2e}, {e['negative']}, {r['info']['OBD (exact diag)']['negative_diagonal']}, "
                    f"{e['mean_diag']:.2e}" for e, r in zip(eigs, runs)),
        "- Median seconds per seed (all levels): "
        + ", ".join(f"{m} {s:.1f}" for m, s in secs.items())
        + f"; exact Hessian {statistics.median(r['hessian_seconds'] for r in runs):.1f}, "
        f"Fisher {statistics.median(r['fisher_seconds'] for r in runs):.1f}",
        "",
    ])
    (out / "experiments" / "digits_obs.md").write_text(text)
    print(tab)


if __name__ == "__main__":
    main()
