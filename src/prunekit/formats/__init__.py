"""Compact storage: tensor formats, prunekit checkpoints (save, load, inspect), exports."""

from .checkpoint import (MANIFEST, WEIGHTS, is_checkpoint, read_manifest, read_state,
                         write_checkpoint)
from .tensors import FORMATS, best_encoding, decode, encode

__all__ = ["FORMATS", "MANIFEST", "WEIGHTS", "best_encoding", "decode", "encode",
           "is_checkpoint", "read_manifest", "read_state", "write_checkpoint"]
