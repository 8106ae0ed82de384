"""Calibration and evaluation data: the built-in stdlib corpus, text files, HF datasets.

``load_texts(source, split)`` turns a source string into texts; ``calibration_batches``,
``eval_windows`` and ``eval_sentences`` turn texts into model inputs.
"""

from prunekit.data.batches import (
    calibration_batches,
    eval_sentences,
    eval_windows,
    sliding_windows,
    token_stream,
)
from prunekit.data.corpus import Document, is_eval_key, stdlib_documents, stdlib_split
from prunekit.data.sources import explicit_split, load_texts, parse_dataset_spec

__all__ = [
    "Document",
    "calibration_batches",
    "eval_sentences",
    "eval_windows",
    "explicit_split",
    "is_eval_key",
    "load_texts",
    "parse_dataset_spec",
    "sliding_windows",
    "stdlib_documents",
    "stdlib_split",
    "token_stream",
]
