"""The base checkpoint of the movement method: the pretrained model a fine-tuned model came
from, loaded and matched to the model layer by layer (Sanh et al. 2020 score each weight by how
far it moved from it). Kept beside :mod:`prunekit.methods.movement`, which scores the weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..errors import ModelError, NumericalError, UsageError
from ..formats.load import load_model
from ..models.adapter import HFAdapter, is_target
from ..models.loaders import LoadedModel
from . import get_method
from .base import weight_matrix


def needs_base(method: str) -> bool:
    """True for a method that scores weights against a base checkpoint (``movement``)."""
    return bool(getattr(get_method(method), "needs_base", False))


def check_base(method: str, base: object) -> None:
    """Raise :class:`UsageError` if ``method`` needs a base and has none, or the reverse."""
    if needs_base(method) and base is None:
        raise UsageError(
            f"--method {method} needs --base PRETRAINED (base=): the checkpoint the model was "
            "fine-tuned from (Hugging Face id, local folder or 'minilm'), since it scores the "
            "weights by how they moved in fine-tuning"
        )
    if base is not None and not needs_base(method):
        shown = base if isinstance(base, str) else type(base).__name__
        raise UsageError(
            f"--base {shown} does not apply to --method {method}: base= (--base) is for "
            "method 'movement'; drop it, or use --method movement"
        )


def _base_matrix(base: nn.Module | Mapping[str, torch.Tensor], name: str) -> torch.Tensor | None:
    """The base's (out, in) weight of layer ``name``, or None if it has no such layer."""
    if isinstance(base, nn.Module):
        try:
            layer = base.get_submodule(name)
        except AttributeError:
            return None
        return weight_matrix(layer).detach() if is_target(layer) else None
    W0 = base.get(name)
    return None if W0 is None else W0.detach()


def base_weights(
    model: nn.Module, base: LoadedModel | nn.Module | Mapping[str, torch.Tensor],
    skip: Sequence[str] = (), source: str | None = None,
) -> dict[str, torch.Tensor]:
    """{target layer name: the base's (out, in) weight}, matched by qualified name.

    Raises :class:`ModelError` naming the first target layer the base lacks or has in another
    shape, :class:`NumericalError` for NaN/Inf base weights, and :class:`ModelError` if the
    base holds the very same weights as the model (every movement would be 0). No copies: the
    tensors are the base's own storage.
    """
    if isinstance(base, LoadedModel):
        source, base = source or base.source, base.model
    where = f"--base {source!r}" if source else "the base"
    out, moved = {}, False
    for name, layer in HFAdapter(skip=tuple(skip)).all_targets(model).items():
        W, W0 = weight_matrix(layer), _base_matrix(base, name)
        if W0 is None:
            raise ModelError(
                f"{name}: layer missing from {where}: the base must be the pretrained "
                "checkpoint of the same architecture the model was fine-tuned from"
            )
        if tuple(W0.shape) != tuple(W.shape):
            raise ModelError(
                f"{name}: shape {tuple(W.shape)} (out, in) in the model but "
                f"{tuple(W0.shape)} in {where}: pass the checkpoint this model was fine-tuned from"
            )
        if not bool(torch.isfinite(W0).all()):
            raise NumericalError(
                f"{name}: {where} has NaN/Inf weights: load a healthy checkpoint"
            )
        moved = moved or not torch.equal(W0.to(W.device, W.dtype), W)
        out[name] = W0
    if out and not moved:
        raise ModelError(
            f"{where} holds the same weights as the model in every target layer, so no weight "
            "moved: pass the pretrained checkpoint the model was fine-tuned from"
        )
    return out


def load_base(
    base: str | LoadedModel | nn.Module | Mapping[str, torch.Tensor],
    dtype: torch.dtype = torch.float32,
) -> LoadedModel | nn.Module | Mapping[str, torch.Tensor]:
    """The base as a model: a spec (HF id, local folder, 'minilm') is loaded with the model's
    loader in ``dtype``; anything else is returned as it is. Load errors name --base."""
    if not isinstance(base, str):
        return base
    try:
        return load_model(base, dtype)
    except ModelError as exc:
        raise ModelError(f"--base: {exc}") from None
