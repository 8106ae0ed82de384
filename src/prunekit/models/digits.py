"""A small real network for the exact second-order methods: an MLP on scikit-learn's bundled
handwritten digits (UCI optical digits, 1,797 images of 8 × 8 pixels, 10 classes; Alpaydin &
Kaynak 1998), trained in seconds on a CPU.

The default 64 → 128 → 10 ReLU network has 9,472 weights (plus 138 biases), small enough for a
dense Hessian of every weight. The split, the initialisation and the training of the built-in
network are seeded, each from its own ``torch.Generator`` (the global RNG is neither seeded nor
drawn from): the same spec gives the same network on every machine with the same torch build.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import DataError, ModelError

N_CLASSES = 10
N_PIXELS = 64


@dataclass(frozen=True)
class DigitsData:
    """Train and test split: x (N, 64) pixels scaled to [0, 1], y (N,) class labels."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def load_digits_split(test_fraction: float = 0.25, seed: int = 0,
                      dtype: torch.dtype = torch.float64) -> DigitsData:
    """The digits data set split by class-stratified random sampling (``seed``)."""
    try:
        from sklearn.datasets import load_digits  # optional: prunekit[digits]
    except ImportError:
        raise DataError(
            "the digits data set ships with scikit-learn: pip install scikit-learn"
        ) from None
    x_np, y_np = load_digits(return_X_y=True)
    x = torch.as_tensor(x_np, dtype=dtype) / 16.0
    y = torch.as_tensor(y_np, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    test = torch.zeros(len(y), dtype=torch.bool)
    for c in range(N_CLASSES):  # stratified: the same fraction of every class
        idx = (y == c).nonzero().squeeze(1)
        pick = idx[torch.randperm(len(idx), generator=g)[: round(len(idx) * test_fraction)]]
        test[pick] = True
    return DigitsData(x[~test], y[~test], x[test], y[test])


def default_init_(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Initialise every Linear and Conv layer of ``model`` in place as their own
    ``reset_parameters`` does (weight: Kaiming uniform with a = √5, i.e. U(±1/√fan_in); bias:
    U(±1/√fan_in)), drawing from ``generator`` instead of the global RNG. Layers are visited in
    ``model.modules()`` order, weight before bias, which is the order in which constructing a
    :class:`~torch.nn.Sequential` of them draws: with ``torch.Generator().manual_seed(s)`` the
    result is bit-identical to ``torch.manual_seed(s)`` followed by the construction (at the
    same dtype)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                if m.bias is not None:
                    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(m.weight)
                    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                    nn.init.uniform_(m.bias, -bound, bound, generator=generator)
    return model


def _build(make: Callable[[], nn.Module], dtype: torch.dtype,
           generator: torch.Generator | None) -> nn.Module:
    """``make()`` cast to ``dtype``; with a ``generator`` the layers are built on the meta
    device (no draws from the global RNG) and initialised from ``generator`` at the default
    dtype before the cast, as the plain construction would be."""
    if generator is None:
        return make().to(dtype)
    with torch.device("meta"):
        model = make()
    return default_init_(model.to_empty(device="cpu"), generator).to(dtype)


def digits_mlp(hidden: int = 128, dtype: torch.dtype = torch.float64,
               generator: torch.Generator | None = None) -> nn.Sequential:
    """64 → hidden → 10 with a ReLU; weights of the two Linear layers are the prunable ones.
    Initialised from ``generator`` when given (see :func:`default_init_`), otherwise by
    PyTorch's default initialisation from the global RNG."""
    return _build(lambda: nn.Sequential(nn.Linear(N_PIXELS, hidden), nn.ReLU(),
                                        nn.Linear(hidden, N_CLASSES)), dtype, generator)


def train_classifier(model: nn.Module, x: Tensor, y: Tensor, epochs: int = 60,
                     batch_size: int = 128, lr: float = 3e-3, weight_decay: float = 1e-4,
                     seed: int = 0, after_step=None) -> nn.Module:
    """Adam on cross-entropy, seeded mini-batches; returns the model in eval mode.
    ``after_step()`` runs after every optimizer step (a sparsifier's ``step``)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), batch_size):
            b = perm[i : i + batch_size]
            opt.zero_grad()
            loss_fn(model(x[b]), y[b]).backward()
            opt.step()
            if after_step is not None:
                after_step()
    return model.eval()


def digits_cnn(channels: int = 8, dtype: torch.dtype = torch.float64,
               generator: torch.Generator | None = None) -> nn.Sequential:
    """A small CNN on the 8 × 8 images: two 3 × 3 convolutions (1 → c → 2c, padding 1, ReLU)
    and a Linear classifier; its Conv and Linear weights are the prunable ones. Initialised
    from ``generator`` when given (see :func:`default_init_`), otherwise from the global RNG."""
    return _build(lambda: nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
        nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(2 * channels * 64, N_CLASSES)), dtype, generator)


def parse_small_spec(spec: str) -> int:
    """The hidden width of ``digits-mlp[:HIDDEN]`` (default 128)."""
    name, _, hidden = spec.partition(":")
    if name != "digits-mlp" or (hidden and not (hidden.isdigit() and int(hidden) > 0)):
        raise ModelError(f"model {spec!r}: the built-in small model is digits-mlp[:HIDDEN], "
                         "e.g. digits-mlp or digits-mlp:32")
    return int(hidden) if hidden else 128


def trained_digits_mlp(hidden: int = 128, seed: int = 0, data: DigitsData | None = None,
                       generator: torch.Generator | None = None
                       ) -> tuple[nn.Sequential, DigitsData]:
    """The built-in ``digits-mlp``: :func:`digits_mlp` trained on the training split.
    ``seed`` seeds the split (unless ``data`` is given), the initialisation (unless
    ``generator`` is given: then the initial weights are drawn from it) and the batch order,
    each from its own generator; the global RNG is left alone."""
    data = data or load_digits_split(seed=seed)
    init = generator if generator is not None else torch.Generator().manual_seed(seed)
    model = digits_mlp(hidden, dtype=data.x_train.dtype, generator=init)
    return train_classifier(model, data.x_train, data.y_train, seed=seed), data


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Fraction of samples whose arg-max logit is the label."""
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).double().mean())
