"""Calibration batches from a text source, with the sequence length checked against the
model's positions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import DataError
from .batches import calibration_batches
from .sources import load_texts


def check_seqlen(seqlen: int, max_positions: int | None) -> None:
    """Raise :class:`DataError` if ``seqlen`` is longer than the model's position table."""
    if max_positions is not None and seqlen > max_positions:
        raise DataError(
            f"--seqlen {seqlen} is longer than the model's {max_positions} positions: "
            f"use --seqlen {max_positions} or less"
        )


def calibration(
    tokenizer: Any, source: str, samples: int, seqlen: int, batch_size: int = 8, seed: int = 0,
    max_positions: int | None = None, texts: Sequence[str] | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Tokenised calibration batches of ``samples`` × ``seqlen`` tokens from ``source``.

    ``texts``: the source's calibration texts when the caller has loaded them already.
    """
    check_seqlen(seqlen, max_positions)
    texts = list(texts) if texts is not None else load_texts(source, "calib")
    return calibration_batches(tokenizer, texts, samples, seqlen, batch_size=batch_size, seed=seed)
