"""Perplexity of a causal language model with an explicit protocol.

The evaluation token stream (the held-out split of the data source) is cut into windows of
``seqlen`` tokens that start every ``stride`` tokens; each token is scored once, by the first
window in which it is not in the overlap with the previous window (the sliding-window protocol
of the Hugging Face perplexity guide; ``stride == seqlen`` gives the non-overlapping protocol of
the GPTQ/SparseGPT papers). Perplexity = exp(total NLL / number of scored tokens).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class PerplexityProtocol:
    data: str
    split: str
    seqlen: int
    stride: int
    n_windows: int
    n_tokens: int

    def __str__(self) -> str:
        return (
            f"data={self.data} split={self.split} seqlen={self.seqlen} stride={self.stride} "
            f"windows={self.n_windows} scored_tokens={self.n_tokens}"
        )


def perplexity(
    model: nn.Module, windows: Sequence[dict[str, Tensor]], device: torch.device | str = "cpu"
) -> tuple[float, int]:
    """(perplexity, scored tokens) over windows with ``input_ids`` and ``labels`` (-100 = skip)."""
    total_nll, total = 0.0, 0
    with torch.no_grad():
        for w in windows:
            ids = w["input_ids"].to(device)
            labels = w["labels"].to(device)
            logits = model(input_ids=ids).logits.float()  # (b, s, vocab)
            shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
            shift_labels = labels[:, 1:].reshape(-1)
            nll = torch.nn.functional.cross_entropy(
                shift_logits, shift_labels, ignore_index=-100, reduction="sum"
            )
            total_nll += float(nll)
            total += int((shift_labels != -100).sum())
    return (math.exp(total_nll / total) if total else float("nan")), total
