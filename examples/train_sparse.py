"""Pruning while training, in a plain PyTorch loop: gradual magnitude pruning of an MLP on
scikit-learn's digits to 90 % sparsity with the cubic schedule, then squash and check.

    python examples/train_sparse.py [--method gmp|hard-movement|soft-movement|2:4]
"""

import argparse

import torch
from torch import nn

from prunekit.models.digits import accuracy, digits_mlp, load_digits_split
from prunekit.patterns import NM
from prunekit.training import Cubic, GradualMagnitude, HardMovement, NMSparsifier, SoftMovement


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="gmp", choices=("gmp", "hard-movement", "soft-movement", "2:4"))
    ap.add_argument("--steps", type=int, default=600)
    args = ap.parse_args()
    torch.manual_seed(0)
    data = load_digits_split(dtype=torch.float32)
    model = digits_mlp(128, dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    schedule = Cubic(initial=0.0, final_sparsity=0.9, start=50, end=450, frequency=25)
    sparsifier = {
        "gmp": lambda: GradualMagnitude(schedule, scope="layer", optimizer=opt),
        "hard-movement": lambda: HardMovement(schedule, scope="layer"),
        "soft-movement": lambda: SoftMovement(lam=2e-4, score_lr=2e-2),
        "2:4": lambda: NMSparsifier(NM(2, 4), optimizer=opt),
    }[args.method]()
    sparsifier.prepare(model)  # masks attach as parametrizations of every Linear weight
    g = torch.Generator().manual_seed(0)
    for step in range(args.steps):
        idx = torch.randint(0, len(data.y_train), (64,), generator=g)
        loss = nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        if isinstance(sparsifier, SoftMovement):
            loss = loss + sparsifier.penalty()  # the one line soft movement needs
        opt.zero_grad()
        loss.backward()
        opt.step()
        sparsifier.step()  # after optimizer.step(): schedule, masks, scores
        if step % 100 == 0:
            print(f"step {step:4d} loss {loss.item():.3f} sparsity {sparsifier.sparsity():.1%}")
    sparsifier.squash()  # weights now hold the zeros; parametrizations removed
    zeros = sum(int((m.weight == 0).sum()) for m in model if isinstance(m, nn.Linear))
    total = sum(m.weight.numel() for m in model if isinstance(m, nn.Linear))
    print(f"{args.method}: {zeros / total:.1%} of {total} weights zero; test accuracy "
          f"{accuracy(model, data.x_test, data.y_test):.1%}")


if __name__ == "__main__":
    main()
