"""Calibration batches from a text source, with the sequence length checked against the
model's positions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import DataError
from .batches import calibration_batches, document_batches
from .sources import load_texts

#: --calib-protocol choices: how calibration text becomes samples (see data/batches.py)
PROTOCOLS = ("windows", "documents")
#: The protocol "auto" picks for each model kind (docs/one-shot-pruning.md gives the figures)
DEFAULT_PROTOCOL = {"encoder": "windows", "causal": "windows"}


def resolve_protocol(protocol: str, kind: str) -> str:
    """The calibration protocol to use: ``protocol``, or for "auto" the default of the model's
    ``kind`` ("encoder" or "causal")."""
    if protocol == "auto":
        return DEFAULT_PROTOCOL.get(kind, "windows")
    if protocol not in PROTOCOLS:
        raise DataError(f"calibration protocol {protocol!r}: use auto or one of "
                        f"{', '.join(PROTOCOLS)}")
    return protocol


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
    protocol: str = "windows",
) -> list[dict[str, torch.Tensor]]:
    """Tokenised calibration batches of ``samples`` sequences of (at most) ``seqlen`` tokens
    from ``source``: random windows of the token stream (``protocol="windows"``,
    :func:`~prunekit.data.batches.calibration_batches`) or one document per sequence
    (``"documents"``, :func:`~prunekit.data.batches.document_batches`).

    ``texts``: the source's calibration texts when the caller has loaded them already.
    """
    check_seqlen(seqlen, max_positions)
    if protocol not in PROTOCOLS:
        raise DataError(f"calibration protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}")
    texts = list(texts) if texts is not None else load_texts(source, "calib")
    make = calibration_batches if protocol == "windows" else document_batches
    return make(tokenizer, texts, samples, seqlen, batch_size=batch_size, seed=seed)
