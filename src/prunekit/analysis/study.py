"""Masks from every source and what their kernels look like, on the small digits networks:
the orchestration shared by ``prunekit ntk`` and ``experiments/ntk_digits.py``.

A mask request is ``METHOD:SPARSITY`` — random, magnitude or snip or ntk (chosen at
initialisation), lottery (iterative magnitude pruning with rewinding to initialisation, 20 %
per round, Frankle & Carbin 2019), obs or obd (whole-network OBS / OBD on the empirical Fisher
of the densely trained network, the mask then put on the initial weights) — or the folder of a
prunekit checkpoint of the same network, whose zeros are the mask.
"""

from __future__ import annotations

from ..curvature import (MAX_DENSE_PARAMS, check_dense_size, empirical_fisher, fisher_diagonal,
                         flat_weights)
from ..errors import ModelError
from ..formats.load import load_checkpoint
from ..masks import prune_count
from ..methods.obd import obd_prune
from ..methods.obs import obs_prune
from ..models.digits import digits_cnn, digits_mlp, parse_small_spec
from ..training.lottery import prune_round

import copy
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import UsageError
from ..models.digits import DigitsData, accuracy, train_classifier
from .kernels import kernel_metrics, kernel_regression
from .masks import (Masks, apply_masks_, magnitude_masks, mask_sparsity, masks_of, ntk_masks,
                    random_masks, snip_masks)
from .ntk import jacobian_ntk

SOURCES = ("random", "magnitude", "snip", "ntk", "lottery", "obs", "obd")
IMP_RATE = 0.2


@dataclass(frozen=True)
class MaskRequest:
    method: str
    sparsity: float | None = None
    path: str | None = None

    @property
    def label(self) -> str:
        return self.path if self.path else f"{self.method} {self.sparsity:.0%}"


def parse_mask(text: str) -> MaskRequest:
    """``METHOD:SPARSITY`` (e.g. ``snip:0.9``, ``lottery:95%``) or a checkpoint folder."""
    if os.path.isdir(text):
        return MaskRequest("checkpoint", None, text)
    method, sep, level = text.partition(":")
    if not sep or method not in SOURCES:
        raise UsageError(f"mask {text!r}: use METHOD:SPARSITY with METHOD one of "
                         f"{', '.join(SOURCES)} (e.g. snip:0.9), or a checkpoint folder")
    try:
        s = float(level[:-1]) / 100 if level.endswith("%") else float(level)
    except ValueError:
        raise UsageError(f"mask {text!r}: sparsity {level!r} is not a number") from None
    if not 0 < s < 1:
        raise UsageError(f"mask {text!r}: sparsity must be in (0, 1)")
    return MaskRequest(method, s)


@dataclass
class Budget:
    """Training of every (masked) network: Adam, ``epochs`` over the training split."""

    epochs: int = 30
    lr: float = 3e-3
    seed: int = 0


def train_masked(init: nn.Module, masks: Masks, data: DigitsData, budget: Budget) -> nn.Module:
    """A copy of ``init`` trained with ``masks`` held: pruned weights start at zero, their
    gradients are masked (so Adam's moments for them stay zero) and they are re-zeroed after
    every step. Works for Linear and Conv weights alike."""
    model = apply_masks_(copy.deepcopy(init), masks)
    params = dict(model.named_parameters())
    handles = [params[n].register_hook(lambda g, m=m: g * m.to(g.dtype))
               for n, m in masks.items()]
    try:
        train_classifier(model, data.x_train, data.y_train, epochs=budget.epochs, lr=budget.lr,
                         seed=budget.seed, after_step=lambda: apply_masks_(model, masks))
    finally:
        for h in handles:
            h.remove()
    return model


def lottery_masks(init: nn.Module, data: DigitsData, levels: list[float], budget: Budget
                  ) -> dict[float, tuple[Masks, float]]:
    """Iterative magnitude pruning with rewinding to initialisation (Frankle & Carbin 2019):
    train with the current masks from the initial weights, remove 20 % of the kept weights of
    each layer by magnitude (:func:`prunekit.training.lottery.prune_round`), repeat. For each
    wanted level, the masks of the round whose sparsity is closest, with that sparsity."""
    rounds = max(math.ceil(math.log(1 - max(levels)) / math.log(1 - IMP_RATE)), 1)
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in masks_of(init).items()}
    history = []
    for _ in range(rounds):
        trained = train_masked(init, masks, data, budget)
        weights = {n: p.detach() for n, p in trained.named_parameters() if n in masks}
        masks = prune_round(weights, masks, IMP_RATE, "layer")
        history.append((masks, mask_sparsity(masks)))
    return {level: min(history, key=lambda h: abs(h[1] - level)) for level in levels}


def second_order_masks(init: nn.Module, data: DigitsData, method: str, levels: list[float],
                       budget: Budget, samples: int = 512) -> dict[float, Masks]:
    """Whole-network OBS/OBD (empirical Fisher, as ``prunekit prune --method obs-network|obd``)
    masks of the densely trained network. One greedy OBS run (or one OBD ranking) to the
    highest level gives every level: the weights removed first are pruned at every level."""
    work = train_masked(init, {}, data, budget).double()
    names = list(masks_of(work))
    w = flat_weights(work, names)
    x, y = data.x_train[:samples].double(), data.y_train[:samples]
    loss_fn = nn.CrossEntropyLoss()
    n_max = prune_count(w.numel(), max(levels))
    if method == "obs":
        check_dense_size(w.numel(), MAX_DENSE_PARAMS)
        H = empirical_fisher(work, loss_fn, x, y, names)
        order = obs_prune(w, H, n_max, rel_damp=0.01).order
    else:
        _, order = obd_prune(w, fisher_diagonal(work, loss_fn, x, y, names), n_max)
    shapes = {n: p.shape for n, p in work.named_parameters() if n in names}
    out = {}
    for level in levels:
        keep = torch.ones(w.numel(), dtype=torch.bool)
        keep[order[: prune_count(w.numel(), level)]] = False
        parts = torch.split(keep, [math.prod(shapes[n]) for n in names])
        out[level] = {n: part.reshape(shapes[n]) for n, part in zip(names, parts)}
    return out


def at_init_masks(init: nn.Module, data: DigitsData, method: str, level: float, seed: int,
                  samples: int = 256, top: int = 10) -> Masks:
    x, y = data.x_train[:samples], data.y_train[:samples]
    if method == "random":
        return random_masks(init, level, seed)
    if method == "magnitude":
        return magnitude_masks(init, level)
    if method == "snip":
        return snip_masks(init, x, y, level)
    if method == "ntk":
        return ntk_masks(init, x, level, top=top)
    raise UsageError(f"{method!r} is not chosen at initialisation")


def checkpoint_masks(init: nn.Module, path: str) -> Masks:
    """The zeros of a saved prunekit checkpoint of the same network, as masks."""
    saved = load_checkpoint(path, model=copy.deepcopy(init))
    return masks_of(saved if isinstance(saved, nn.Module) else saved.model)


def masks_for(init: nn.Module, data: DigitsData, requests: list[MaskRequest], budget: Budget,
              top: int = 10, progress: Callable[[str], None] = lambda _s: None
              ) -> list[tuple[MaskRequest, Masks]]:
    """The masks of every request (lottery and OBS/OBD runs shared across levels)."""
    out = []
    by_method: dict[str, list[float]] = {}
    for r in requests:
        if r.method in ("lottery", "obs", "obd"):
            by_method.setdefault(r.method, []).append(r.sparsity)
    shared: dict[str, dict[float, Masks]] = {}
    for method, levels in by_method.items():
        progress(f"{method} masks at {', '.join(f'{s:.0%}' for s in levels)}")
        if method == "lottery":
            shared[method] = {s: m for s, (m, _) in lottery_masks(init, data, levels, budget).items()}
        else:
            shared[method] = second_order_masks(init, data, method, levels, budget)
    for r in requests:
        if r.path:
            out.append((r, checkpoint_masks(init, r.path)))
        elif r.method in shared:
            out.append((r, shared[r.method][r.sparsity]))
        else:
            out.append((r, at_init_masks(init, data, r.method, r.sparsity, budget.seed, top=top)))
    return out


def kernel_study(init: nn.Module, data: DigitsData, masks: list[tuple[str, Masks]], *,
                 samples: int = 300, top: int = 10, budget: Budget | None = None,
                 ) -> list[dict]:
    """For the dense network and every mask: the NTK at initialisation on ``samples`` training
    inputs (traced), its metrics against the dense kernel, the NTK-regression test accuracy,
    and (with a ``budget``) the test accuracy after training the masked network."""
    x, y = data.x_train[:samples], data.y_train[:samples]
    dense = jacobian_ntk(init, x, trace=True)
    rows = []
    for label, m in [("dense", {}), *masks]:
        K = dense if not m else jacobian_ntk(init, x, masks=m, trace=True)
        K_test = jacobian_ntk(init, data.x_test, x, masks=m or None, trace=True)
        pred = kernel_regression(K, K_test, y, 10)
        row = {"mask": label, "sparsity": mask_sparsity(m) if m else 0.0,
               **kernel_metrics(dense, K, top),
               "ntk_regression_accuracy": float((pred == data.y_test).double().mean())}
        if budget is not None:
            row["trained_accuracy"] = accuracy(train_masked(init, m, data, budget),
                                               data.x_test, data.y_test)
        row["spectrum"] = torch.linalg.eigvalsh((K + K.T) / 2).flip(0).clamp_min(0).tolist()
        rows.append(row)
    return rows


def small_network(spec: str, seed: int = 0, generator: torch.Generator | None = None
                  ) -> nn.Module:
    """``digits-mlp[:HIDDEN]`` or ``digits-cnn[:CHANNELS]`` at its seeded initialisation: drawn
    from ``generator``, or from ``torch.Generator().manual_seed(seed)`` (the same weights as
    ``torch.manual_seed(seed)`` and the default initialisation gave); the global RNG is left
    alone."""
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    if spec.split(":", 1)[0] == "digits-cnn":
        _, _, c = spec.partition(":")
        if c and not (c.isdigit() and int(c) > 0):
            raise ModelError(f"model {spec!r}: use digits-cnn[:CHANNELS], e.g. digits-cnn:8")
        return digits_cnn(int(c) if c else 8, generator=g)
    return digits_mlp(parse_small_spec(spec), generator=g)


def rank_correlation(a: list[float], b: list[float]) -> float:
    """Spearman's ρ (average ranks for ties)."""
    def ranks(v: list[float]) -> Tensor:
        t = torch.tensor(v, dtype=torch.float64)
        order = torch.argsort(t)
        r = torch.empty_like(t)
        r[order] = torch.arange(len(v), dtype=torch.float64)
        for value in t.unique():  # average ties
            tie = t == value
            r[tie] = r[tie].mean()
        return r
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / den if den > 0 else 0.0
