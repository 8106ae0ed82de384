"""Texts -> model inputs: calibration windows, perplexity windows, evaluation passages.

Four protocols, each deterministic for its arguments:

* :func:`calibration_batches`: random fixed-length windows of the concatenated token stream,
  as in GPTQ/SparseGPT calibration (Frantar & Alistarh, 2023, section 5: "128 segments of
  2048 tokens, randomly chosen"). No padding, every sample exactly ``seqlen`` tokens.
* :func:`document_batches`: one document per sample, with its special tokens, padded, as an
  encoder sees text in use.
* :func:`eval_windows`: the sliding-window perplexity protocol of the Hugging Face
  "Perplexity of fixed-length models" guide; with ``stride == seqlen`` it is the
  non-overlapping protocol of the GPTQ/SparseGPT papers (plus a shorter last window).
* :func:`eval_sentences`: leading sentences of held-out documents for embedding fidelity.

Tokenizers are Hugging Face tokenizers (fast ones are much quicker). A tokenizer with both
``cls_token_id`` and ``sep_token_id`` (BERT, RoBERTa, MiniLM) is treated as an encoder:
each calibration sample is ``[CLS] window [SEP]``. Any other tokenizer is treated as a
decoder: a sample is a bare window of token ids.
"""

from __future__ import annotations

import itertools
import logging
import re
from typing import Any

import torch

from prunekit.errors import DataError

logger = logging.getLogger(__name__)

#: Calibration tokenises about this many times ``n_samples * seqlen`` tokens of text (when
#: the corpus has that much), so that random windows rarely overlap.
OVERSAMPLE = 4
#: First guess of characters per token, to pick how much text to tokenise.
_CHARS_PER_TOKEN = 4
#: Label value ignored by the cross-entropy of Hugging Face models.
IGNORE_INDEX = -100
#: Passages shorter than this are not used by :func:`eval_sentences`.
MIN_PASSAGE_CHARS = 40
#: Documents are joined with this string before tokenisation.
DOC_SEPARATOR = "\n\n"


def _encoder_specials(tokenizer: Any) -> tuple[int, int] | None:
    """``(cls_id, sep_id)`` for an encoder-style tokenizer, else None (decoder)."""
    cls_id = getattr(tokenizer, "cls_token_id", None)
    sep_id = getattr(tokenizer, "sep_token_id", None)
    return (cls_id, sep_id) if cls_id is not None and sep_id is not None else None


def _separator_ids(tokenizer: Any) -> list[int]:
    """Token ids put between documents: those of ``"\\n\\n"``, never special tokens for
    encoders; a decoder whose tokenizer drops newlines gets its EOS instead."""
    ids = list(tokenizer(DOC_SEPARATOR, add_special_tokens=False)["input_ids"])
    eos_id = getattr(tokenizer, "eos_token_id", None)
    if not ids and _encoder_specials(tokenizer) is None and eos_id is not None:
        ids = [eos_id]
    return ids


def _chars_prefix(texts: list[str], n_chars: float) -> int:
    """Smallest count k such that ``texts[:k]`` holds at least ``n_chars`` characters."""
    total = 0
    for k, text in enumerate(texts, start=1):
        total += len(text)
        if total >= n_chars:
            return k
    return len(texts)


def token_stream(tokenizer: Any, texts: list[str], min_tokens: int | None = None) -> torch.Tensor:
    """Token ids of ``texts`` joined by the document separator, as one 1-D long tensor.

    Texts are tokenised in order, without special tokens, in batched calls (fast tokenizers
    run them in parallel). With ``min_tokens`` only a prefix of the texts is tokenised: the
    shortest one that gives at least ``min_tokens`` tokens, or all texts if they give fewer.
    """
    separator = _separator_ids(tokenizer)
    pieces: list[list[int]] = []
    n_tokens, start = 0, 0
    while start < len(texts) and (min_tokens is None or n_tokens < min_tokens):
        want = float("inf") if min_tokens is None else (min_tokens - n_tokens) * _CHARS_PER_TOKEN
        stop = start + _chars_prefix(texts[start:], want)
        encoded = tokenizer(
            texts[start:stop], add_special_tokens=False, verbose=False,
            return_attention_mask=False,
        )["input_ids"]
        for ids in encoded:
            if pieces:
                pieces.append(separator)
                n_tokens += len(separator)
            pieces.append(ids)
            n_tokens += len(ids)
        start = stop
    return torch.tensor(list(itertools.chain.from_iterable(pieces)), dtype=torch.long)


def _check_positive(**values: int | None) -> None:
    """Raise DataError naming the first argument that is not a positive integer."""
    for name, value in values.items():
        if value is not None and (not isinstance(value, int) or value < 1):
            raise DataError(f"{name}={value!r} must be a positive integer; pass e.g. {name}=128")


def calibration_batches(
    tokenizer: Any,
    texts: list[str],
    n_samples: int,
    seqlen: int,
    batch_size: int = 8,
    seed: int = 0,
) -> list[dict[str, torch.Tensor]]:
    """``n_samples`` random windows of exactly ``seqlen`` tokens, in batches of ``batch_size``.

    The GPTQ/SparseGPT calibration protocol: documents, in an order shuffled by ``seed``, are
    tokenised and joined into one stream (only about ``OVERSAMPLE * n_samples * seqlen``
    tokens of it, when the texts have more), and ``n_samples`` window starts are drawn
    uniformly from it with ``torch.Generator().manual_seed(seed)``. For an encoder tokenizer
    a window has ``seqlen - 2`` text tokens between ``[CLS]`` and ``[SEP]``; for a decoder it
    is ``seqlen`` text tokens. Each batch is ``{"input_ids": (b, seqlen) long,
    "attention_mask": (b, seqlen) ones}``; the last batch may be smaller. No padding.
    """
    _check_positive(n_samples=n_samples, seqlen=seqlen, batch_size=batch_size)
    specials = _encoder_specials(tokenizer)
    body = seqlen - (2 if specials else 0)  # text tokens per sample
    if body < 1:
        raise DataError(f"seqlen={seqlen} leaves no room for text between [CLS] and [SEP]; "
                        "use seqlen >= 3")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(texts), generator=generator).tolist()
    stream = token_stream(tokenizer, [texts[i] for i in order], OVERSAMPLE * n_samples * body)
    if stream.numel() < body:
        raise DataError(
            f"the calibration texts have {stream.numel()} tokens, fewer than the {body} that "
            f"one sample of seqlen={seqlen} needs; give more text or lower seqlen"
        )
    starts = torch.randint(0, stream.numel() - body + 1, (n_samples,), generator=generator)
    samples = stream[starts[:, None] + torch.arange(body)[None, :]]  # (n_samples, body)
    if specials:
        cls_col = torch.full((n_samples, 1), specials[0], dtype=torch.long)
        sep_col = torch.full((n_samples, 1), specials[1], dtype=torch.long)
        samples = torch.cat([cls_col, samples, sep_col], dim=1)  # (n_samples, seqlen)
    logger.debug("calibration: %d samples x %d tokens from a stream of %d tokens",
                 n_samples, seqlen, stream.numel())
    return [
        {"input_ids": chunk, "attention_mask": torch.ones_like(chunk)}
        for chunk in samples.split(batch_size)
    ]


def document_batches(
    tokenizer: Any,
    texts: list[str],
    n_samples: int,
    seqlen: int,
    batch_size: int = 8,
    seed: int = 0,
) -> list[dict[str, torch.Tensor]]:
    """``n_samples`` documents, each its own sequence, in batches of ``batch_size``.

    How an encoder meets text in use: one document (a sentence, a passage) per sequence,
    wrapped in the tokenizer's own special tokens (``[CLS] … [SEP]``), never a window cut
    across two documents. Documents, in an order shuffled by ``seed``
    (``torch.randperm``), are tokenised with ``truncation`` to ``seqlen`` tokens; the first
    ``n_samples`` that hold any text are taken, sorted by length (so a batch pads little) and
    padded on the right to the longest of their batch. ``attention_mask`` is 0 on padding,
    which the pipeline leaves out of every statistic. Raises DataError when the texts hold
    fewer than ``n_samples`` documents.
    """
    _check_positive(n_samples=n_samples, seqlen=seqlen, batch_size=batch_size)
    specials = len(tokenizer("")["input_ids"])  # the special tokens of one sequence
    if seqlen <= specials:
        raise DataError(f"seqlen={seqlen} leaves no room for text beside the tokenizer's "
                        f"{specials} special tokens; use seqlen >= {specials + 1}")
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    docs: list[list[int]] = []
    for start in range(0, len(order), 4 * n_samples):
        chunk = [texts[i] for i in order[start:start + 4 * n_samples] if texts[i].strip()]
        if chunk:
            encoded = tokenizer(chunk, truncation=True, max_length=seqlen, verbose=False,
                                return_attention_mask=False)["input_ids"]
            docs += [ids for ids in encoded if len(ids) > specials]
        if len(docs) >= n_samples:
            break
    if len(docs) < n_samples:
        raise DataError(
            f"the calibration texts hold {len(docs)} documents, fewer than the {n_samples} "
            "samples asked for: lower --samples or calibrate on windows "
            "(--calib-protocol windows)")
    docs = sorted(docs[:n_samples], key=len, reverse=True)
    pad = next((t for t in (getattr(tokenizer, "pad_token_id", None),
                            getattr(tokenizer, "eos_token_id", None)) if t is not None), 0)
    batches = []
    for b in range(0, n_samples, batch_size):
        part = docs[b:b + batch_size]
        width = len(part[0])
        ids = torch.full((len(part), width), pad, dtype=torch.long)
        mask = torch.zeros((len(part), width), dtype=torch.long)
        for row, doc in enumerate(part):
            ids[row, :len(doc)] = torch.tensor(doc)
            mask[row, :len(doc)] = 1
        batches.append({"input_ids": ids, "attention_mask": mask})
    logger.debug("calibration: %d documents, %d tokens", n_samples, sum(map(len, docs)))
    return batches


def sliding_windows(n_tokens: int, seqlen: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows ``(begin, end, n_target)`` of the sliding-window perplexity protocol.

    Window k covers tokens ``[begin, end)`` with ``begin = k * stride`` and
    ``end = min(begin + seqlen, n_tokens)``; only its last ``n_target = end - previous_end``
    tokens are scored, the rest is context already scored by an earlier window. Every token
    is scored exactly once; the windows stop at the first one that reaches the end.
    """
    windows, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + seqlen, n_tokens)
        windows.append((begin, end, end - prev_end))
        prev_end = end
        if end == n_tokens:
            break
    return windows


def eval_windows(
    tokenizer: Any,
    texts: list[str],
    seqlen: int,
    stride: int,
    max_windows: int | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Perplexity windows over the evaluation texts, one dict of ``(1, n)`` tensors each.

    Protocol (Hugging Face "Perplexity of fixed-length models"): the texts are joined with
    ``"\\n\\n"`` and tokenised as one string with the tokenizer's default special tokens
    (a Llama BOS at the start, nothing for GPT-2), as the GPTQ/SparseGPT evaluation does.
    The stream is cut by :func:`sliding_windows`: windows of ``seqlen`` tokens starting every
    ``stride`` tokens (``stride == seqlen``: disjoint windows). ``labels`` equal
    ``input_ids`` except that tokens already scored by the previous window are ``-100``, so
    each token is scored once, with up to ``seqlen - stride`` tokens of context. The last
    window may be shorter than ``seqlen``. Perplexity is
    ``exp(sum of token NLLs / number of scored tokens)``; a causal LM shifts labels inside,
    so the stream's first token is never scored. ``max_windows`` keeps the first windows only.
    """
    _check_positive(seqlen=seqlen, stride=stride, max_windows=max_windows)
    if stride > seqlen:
        raise DataError(
            f"stride={stride} > seqlen={seqlen} would skip tokens; use stride <= seqlen"
        )
    add_special = _encoder_specials(tokenizer) is None
    ids = tokenizer(DOC_SEPARATOR.join(texts), add_special_tokens=add_special, verbose=False,
                    return_attention_mask=False)["input_ids"]
    stream = torch.tensor(ids, dtype=torch.long)
    if stream.numel() < 2:
        raise DataError(f"the evaluation texts have {stream.numel()} tokens; perplexity needs "
                        "at least 2, give more evaluation text")
    windows = sliding_windows(stream.numel(), seqlen, stride)[:max_windows]
    batches = []
    for begin, end, n_target in windows:
        input_ids = stream[begin:end].unsqueeze(0)  # (1, end - begin)
        labels = input_ids.clone()
        labels[:, : end - begin - n_target] = IGNORE_INDEX
        batches.append({"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                        "labels": labels})
    return batches


def leading_passage(text: str, max_chars: int) -> str:
    """The first sentences of ``text`` that fit in ``max_chars`` characters.

    Whitespace is collapsed to single spaces; sentences end at ``.``, ``!`` or ``?`` followed
    by a space. A first sentence longer than ``max_chars`` is cut at the last word boundary.
    """
    flat = " ".join(text.split())
    passage = ""
    for sentence in re.split(r"(?<=[.!?])\s+", flat):
        candidate = f"{passage} {sentence}" if passage else sentence
        if len(candidate) > max_chars:
            break
        passage = candidate
    if not passage:
        passage = flat[: max_chars + 1].rsplit(" ", 1)[0][:max_chars]
    return passage


def eval_sentences(
    texts: list[str], n: int, max_chars: int = 500, seed: int = 0, at_most: bool = False
) -> list[str]:
    """``n`` distinct passages for embedding fidelity: leading sentences of documents.

    Documents are visited in an order shuffled by ``seed`` (``torch.randperm``); each gives
    :func:`leading_passage` (at most ``max_chars`` characters), kept when it has at least
    ``MIN_PASSAGE_CHARS`` characters and was not seen before. Deterministic for the
    arguments. Raises DataError when the texts hold fewer than ``n`` such passages, unless
    ``at_most`` (then all there are, at least 2).
    """
    _check_positive(n=n, max_chars=max_chars)
    generator = torch.Generator().manual_seed(seed)
    passages: list[str] = []
    seen: set[str] = set()
    for i in torch.randperm(len(texts), generator=generator).tolist():
        passage = leading_passage(texts[i], max_chars)
        if len(passage) >= MIN_PASSAGE_CHARS and passage not in seen:
            seen.add(passage)
            passages.append(passage)
            if len(passages) == n:
                return passages
    if at_most and len(passages) >= 2:
        return passages
    raise DataError(
        f"n={n} passages asked but the {len(texts)} texts give only {len(passages)} distinct "
        f"passages of {MIN_PASSAGE_CHARS}..{max_chars} characters; lower n or give more texts"
    )
