"""How good are hard movement's masks on BBC News when the ramp starts? A diagnostic for
``experiments/bbc_prune.py``'s collapsed ``hard-S`` runs.

    python experiments/bbc_movement_scores.py [--seed 0] [--steps 120] [--snapshots 30 120]

From the dense fine-tuned model of ``bbc_prune.py`` (its ``--work`` cache, trained there if
missing), the Trainer runs ``--steps`` more steps with nothing pruned while HardMovement learns
its scores (``score_optimizer`` "adam", as the paper's code, and "sgd", the plain running sum
of −(∂L/∂W)·W), with the weights' learning-rate warm-up and decay as in every pruning run.
At each snapshot step the scores are copied; afterwards each layer of the final dense weights
is pruned per layer to each sparsity by those scores, by |W|, and at random, and the test
accuracy is measured without any further training; for the first snapshot's scores also with
the removed weights moved at random within each row (each column), which keeps how many each
row (column) loses and changes only which. If movement scores rank no better than
random at the start of the ramp, the ramp removes weights the task needs.

Writes ``{--out}/bbc_movement_scores.json`` (with the command) and prints a table.
"""

from __future__ import annotations

import copy
import json
import shlex
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bbc_prune as bp  # noqa: E402

from prunekit.data.packaged import bbc_labelled  # noqa: E402
from prunekit.masks import topk_mask  # noqa: E402
from prunekit.training import Cubic, HardMovement, find_targets  # noqa: E402


def masked_accuracy(model, ranking: dict[str, torch.Tensor], sparsity: float, rows, n,
                    shuffle: int | None = None, gen: torch.Generator | None = None) -> float:
    """Test accuracy with each layer pruned to ``sparsity`` by ``ranking`` (no training).
    ``shuffle`` 1 (or 0): the same number of weights removed from every row (column) as the
    ranking removes, at random places within it: whether the damage lies in which weights of a
    row or column are chosen, or only in how many."""
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for name, layer in find_targets(pruned).items():
            keep = topk_mask(ranking[name], sparsity, "layer")
            if shuffle is not None:
                order = torch.argsort(torch.rand(keep.shape, generator=gen), dim=shuffle)
                keep = torch.gather(keep, shuffle, order)
            layer.weight.mul_(keep)
    return bp.evaluate(pruned, rows, n)[0]


def main() -> None:
    ap = bp.parser()
    ap.description = __doc__.splitlines()[0]
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--snapshots", nargs="+", type=int, default=[30, 120])
    ap.add_argument("--sparsities", nargs="+", type=float, default=[0.1, 0.3, 0.5, 0.9])
    ap.set_defaults(steps=120)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pairs = {split: bbc_labelled(split) for split in ("calib", "eval")}
    classes = sorted({label for _, label in pairs["calib"]})
    tok = bp.load_tokenizer()
    train_rows = bp.encode(tok, pairs["calib"], classes, args.seqlen)
    test_rows = bp.encode(tok, pairs["eval"], classes, args.seqlen)
    dense, _ = bp.finetuned(args.seed, tok, train_rows, test_rows, classes, args)
    out: dict = {"command": shlex.join(["python", *sys.argv]), "rows": []}
    for rule in ("adam", "sgd"):
        model = copy.deepcopy(dense)
        sp = HardMovement(Cubic(0.0, 0.5, start=10**9, end=10**9 + 1), scope="layer",
                          score_lr=args.score_lr, score_optimizer=rule)
        snaps: dict[int, dict[str, torch.Tensor]] = {}
        sp.hooks.append(lambda s: snaps.__setitem__(
            s.step_count, {n: s.scores(n, l).clone() for n, l in s.layers.items()})
            if s.step_count in args.snapshots else None)
        bp.train(model, train_rows, args.steps, args, args.seed, sp)  # squashed: mask all ones
        n = len(classes)
        base = {"|W|": {k: l.weight.detach().abs() for k, l in find_targets(model).items()}}
        gen = torch.Generator().manual_seed(args.seed)
        base["random"] = {k: torch.rand(v.shape, generator=gen) for k, v in base["|W|"].items()}
        rankings = {**({f"{rule} scores @{t}": s for t, s in sorted(snaps.items())}),
                    **(base if rule == "adam" else {})}
        first = f"{rule} scores @{min(snaps)}"
        for label, ranking in rankings.items():
            accs = [masked_accuracy(model, ranking, s, test_rows, n) for s in args.sparsities]
            if label == first:  # the same removed sets, moved at random within rows, columns
                for dim, where in ((1, "rows"), (0, "columns")):
                    shuffled = [masked_accuracy(model, ranking, s, test_rows, n, dim, gen)
                                for s in args.sparsities]
                    out["rows"].append({"ranking": f"{label}, shuffled within {where}",
                                        "accuracy": dict(zip(map(str, args.sparsities),
                                                             shuffled))})
                    print(f"{label}, shuffled within {where}: "
                          + " ".join(f"{a:6.1%}" for a in shuffled), flush=True)
            # how much of the layer's top-(1-s) by |W| the ranking keeps, at 50 %
            overlap = sum(int((topk_mask(ranking[k], 0.5, "layer")
                               & topk_mask(base["|W|"][k], 0.5, "layer")).sum())
                          for k in ranking) / sum(v.numel() for v in ranking.values()) / 0.5
            row = {"ranking": label, "accuracy": dict(zip(map(str, args.sparsities), accs)),
                   "overlap_with_magnitude_at_50": overlap}
            out["rows"].append(row)
            print(f"{label:18s} " + " ".join(f"{a:6.1%}" for a in accs)
                  + f"  overlap with |W| at 50 %: {overlap:.2f}", flush=True)
    path = Path(args.out) / "bbc_movement_scores.json"
    path.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
