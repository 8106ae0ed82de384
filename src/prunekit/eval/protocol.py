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
from ..data.packaged import bbc_labelled
from ..data.sources import held_out_description
from ..errors import DataError, UsageError
from ..models.loaders import LoadedModel
from .fidelity import embedding_fidelity, sentence_embeddings
from .perplexity import PerplexityProtocol, perplexity
from .probe import probe_accuracy

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
    protocol = PerplexityProtocol(source, held_out_description(source), seqlen, seqlen,
                                  len(windows), n_tok)

    def ppl(pruned: nn.Module) -> dict[str, Any]:
        return {"dense_ppl": dense_ppl, "pruned_ppl": ppl_of(pruned)[0], "protocol": str(protocol)}

    return ppl


#: Labelled tasks for ``eval_task``: {name: (training, test) examples}.
TASKS = {"bbc": lambda: (bbc_labelled("calib"), bbc_labelled("eval"))}


def check_task(task: str | None) -> None:
    """Raise :class:`UsageError` for an ``eval_task`` that is not a known task."""
    if task is not None and task not in TASKS:
        raise UsageError(f"--eval-task {task!r}: use one of {', '.join(TASKS)}")


def prepare_task(loaded: LoadedModel, task: str, device: str | torch.device,
                 max_length: int = 128) -> Callable[[nn.Module], dict[str, Any]]:
    """Probe the dense encoder now on ``task`` (a linear probe on its frozen mean-pooled
    embeddings, :mod:`prunekit.eval.probe`); return a function that probes a pruned one."""
    if loaded.kind != "encoder":
        raise UsageError(f"--eval-task {task} probes an encoder's sentence embeddings; "
                         f"{loaded.source!r} is a causal LM, judged by perplexity")
    train, test = TASKS[task]()
    names = sorted({label for _, label in train + test})
    y_train = torch.tensor([names.index(label) for _, label in train])
    y_test = torch.tensor([names.index(label) for _, label in test])

    def accuracy(model: nn.Module) -> float:
        with on_device(model, device):
            x = sentence_embeddings(model, loaded.tokenizer, [t for t, _ in train + test],
                                    max_length=max_length, device=device)
        return probe_accuracy(x[:len(train)], y_train, x[len(train):], y_test, len(names))

    dense = accuracy(loaded.model)

    def probe(pruned: nn.Module) -> dict[str, Any]:
        return {"task": task, "dense_probe_accuracy": dense, "probe_accuracy": accuracy(pruned),
                "probe_train": len(train), "probe_test": len(test), "probe_classes": len(names),
                "probe_max_length": max_length}

    return probe
