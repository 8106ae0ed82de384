"""The evaluation protocol of a pruning run: which held-out texts, how many passages or
windows, and a function that measures a pruned model against the dense one measured once."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ..data import eval_sentences, eval_windows, explicit_split, load_texts
from ..errors import DataError
from ..models.loaders import LoadedModel
from .fidelity import embedding_fidelity, sentence_embeddings
from .perplexity import PerplexityProtocol, perplexity

log = logging.getLogger(__name__)


def evaluation_texts(calib: str, eval_data: str | None = None) -> list[str]:
    """The held-out texts: the ``"eval"`` part of ``eval_data`` (default: of ``calib``).

    A calibration source that names its split (``NAME@train``) uses that split whole, so it
    has no held-out part: evaluating on it needs another source.
    """
    source = eval_data or calib
    if source == calib and explicit_split(calib) is not None:
        raise DataError(
            f"--calib {calib!r} names a split, which calibration uses whole: pass --eval-data "
            "with another split (e.g. NAME@test), or --no-eval"
        )
    try:
        return load_texts(source, "eval")
    except DataError as exc:
        raise DataError(f"{exc}; or skip the evaluation (--no-eval)") from None


def fidelity_passages(texts: Sequence[str], n_texts: int) -> list[str]:
    """Up to ``n_texts`` held-out passages (fewer for a small source; the count is reported)."""
    try:
        passages = eval_sentences(list(texts), n_texts, max_chars=500, at_most=True)
    except DataError as exc:
        raise DataError(f"{exc}; embedding fidelity needs at least 2: give a larger --calib "
                        "source or pass --no-eval") from None
    if len(passages) < n_texts:
        log.warning("only %d held-out passages for embedding fidelity (of %d wanted)",
                    len(passages), n_texts)
    return passages


@contextlib.contextmanager
def on_device(model: nn.Module, device: str | torch.device) -> Iterator[nn.Module]:
    """The whole model on ``device`` for an evaluation, back where it was afterwards."""
    home = next(model.parameters()).device
    model.to(device)
    try:
        yield model
    finally:
        model.to(home)


def prepare_evaluation(
    loaded: LoadedModel, source: str, seqlen: int, device: str | torch.device, n_texts: int = 200,
    texts: Sequence[str] | None = None,
) -> Callable[[nn.Module], dict[str, Any]]:
    """Measure the dense model now; return a function that measures a pruned one against it.

    ``texts``: the source's evaluation texts when the caller has loaded them already.
    """
    texts = list(texts) if texts is not None else evaluation_texts(source)
    tok = loaded.tokenizer
    if loaded.kind == "encoder":
        passages = fidelity_passages(texts, n_texts)
        max_len = min(seqlen, 128)

        def embed(model: nn.Module) -> torch.Tensor:
            with on_device(model, device):
                return sentence_embeddings(model, tok, passages, max_length=max_len, device=device)

        dense = embed(loaded.model)

        def fidelity(pruned: nn.Module) -> dict[str, Any]:
            return dataclasses.asdict(embedding_fidelity(dense, embed(pruned), max_len)) | {"data": source}

        return fidelity
    windows = eval_windows(tok, texts, seqlen, stride=seqlen, max_windows=32)

    def ppl_of(model: nn.Module) -> tuple[float, int]:
        with on_device(model, device):
            return perplexity(model, windows, device)

    dense_ppl, n_tok = ppl_of(loaded.model)
    split = explicit_split(source) or "held-out (validation/test split, or a 10% hash split)"
    protocol = PerplexityProtocol(source, split, seqlen, seqlen, len(windows), n_tok)

    def ppl(pruned: nn.Module) -> dict[str, Any]:
        return {"dense_ppl": dense_ppl, "pruned_ppl": ppl_of(pruned)[0], "protocol": str(protocol)}

    return ppl
