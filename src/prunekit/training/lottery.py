"""Lottery tickets (Frankle & Carbin 2019, "The Lottery Ticket Hypothesis"; rewinding to an
early iteration: Frankle et al. 2020, "Linear Mode Connectivity and the Lottery Ticket
Hypothesis"): iterative magnitude pruning over r rounds, each round training with the current
mask, pruning a fraction p of the weights still kept (per layer or globally), and rewinding
the kept weights to their values at initialisation or at iteration k.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import UsageError
from ..masks import global_prune_counts, topk_mask
from .sparsifier import FixedMask, find_targets

#: train(model, sparsifier, round, start_step) trains ``model`` in place; it must call
#: ``sparsifier.step()`` after every optimizer step (that keeps pruned weights at zero and lets
#: the ticket record the rewind point). start_step is 0 in round 0 and k in later rounds when
#: rewinding to iteration k: continue the learning-rate schedule and data order from there
#: (Frankle et al. 2020 train from k to T).
TrainFn = Callable[[nn.Module, FixedMask, int, int], None]


@dataclass
class Ticket:
    """masks[r]: the masks after round r (name -> bool (out, in)); sparsity[r] their overall
    sparsity; state: the ticket — the model's state dict with the kept weights rewound and the
    pruned ones zero; rewind: 'init' or the iteration k rewound to."""

    masks: list[dict[str, Tensor]]
    sparsity: list[float]
    state: dict[str, Tensor]
    rewind: str | int


def _weights(model: nn.Module, names: list[str]) -> dict[str, Tensor]:
    layers = find_targets(model)
    return {n: layers[n].weight.detach().clone() for n in names}


def prune_round(weights: dict[str, Tensor], masks: dict[str, Tensor], rate: float,
                scope: str = "layer") -> dict[str, Tensor]:
    """One IMP step: remove a fraction ``rate`` of the weights each mask still keeps, smallest
    |w| first (per layer, or one global ranking). Masks only shrink."""
    scores = {n: weights[n].abs().float().masked_fill(~masks[n], float("-inf")) for n in weights}
    kept = {n: int(masks[n].sum()) for n in masks}
    if scope == "global":
        total = sum(m.numel() for m in masks.values())
        target = 1.0 - (1.0 - rate) * sum(kept.values()) / total
        counts = global_prune_counts(scores, target)
        return {n: topk_mask(s, counts[n] / s.numel(), "layer") for n, s in scores.items()}
    return {n: topk_mask(s, 1.0 - (1.0 - rate) * kept[n] / s.numel(), "layer")
            for n, s in scores.items()}


def plain_state(model: nn.Module) -> dict[str, Tensor]:
    """The model's state dict as it will be without parametrizations: the dense values under
    each mask as ``weight``, masks and scores left out."""
    out = {}
    for key, value in model.state_dict().items():
        if ".parametrizations.weight.original" in key:
            out[key.replace(".parametrizations.weight.original", ".weight")] = value.clone()
        elif ".parametrizations." not in key:
            out[key] = value.clone()
    return out


def find_ticket(model: nn.Module, train: TrainFn, rounds: int, rate: float = 0.2,
                rewind: str | int = "init", scope: str = "layer") -> Ticket:
    """Iterative magnitude pruning with rewinding; ``model`` ends as the ticket (masked,
    rewound, parametrizations squashed). After r rounds the sparsity is 1 − (1 − rate)^r.

    rewind: 'init' (the weights ``model`` has now) or k: the weights after k optimizer steps
    of round 0 (recorded when ``train`` calls ``sparsifier.step()`` for the k-th time).
    """
    if rounds < 1 or not 0 < rate < 1:
        raise UsageError(f"rounds {rounds} must be >= 1 and rate {rate} in (0, 1)")
    if scope not in ("layer", "global"):
        raise UsageError(f"scope {scope!r}: use layer or global")
    if not (rewind == "init" or (isinstance(rewind, int) and rewind >= 0)):
        raise UsageError(f"rewind {rewind!r}: use 'init' or an iteration k >= 0")
    names = list(find_targets(model))
    recorded: dict[str, Tensor] = plain_state(model) if rewind in ("init", 0) else {}
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in _weights(model, names).items()}
    history, levels = [], []
    for r in range(rounds):
        sp = FixedMask(masks)
        sp.prepare(model)
        if not recorded:
            sp.hooks.append(lambda s: recorded.update(plain_state(model))
                            if s.step_count == rewind else None)
        train(model, sp, r, 0 if r == 0 or rewind == "init" else int(rewind))
        sp.squash()
        if not recorded:
            raise UsageError(f"round 0 made fewer than {rewind} optimizer steps (sparsifier."
                             f"step() calls): cannot rewind to iteration {rewind}")
        masks = prune_round(_weights(model, names), masks, rate, scope)
        history.append({n: m.clone() for n, m in masks.items()})
        levels.append(sum(int((~m).sum()) for m in masks.values())
                      / sum(m.numel() for m in masks.values()))
        model.load_state_dict(recorded)  # rewind everything (weights, biases, norms)
    _apply_masks(model, masks)
    return Ticket(history, levels, copy.deepcopy(model.state_dict()), rewind)


def _apply_masks(model: nn.Module, masks: dict[str, Tensor]) -> None:
    layers = find_targets(model)
    with torch.no_grad():
        for n, m in masks.items():
            layers[n].weight.mul_(m)
