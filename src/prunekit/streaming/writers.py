"""Writing a streamed model: each finished block's tensors to a file of its own (a prunekit
checkpoint shard or a dense Hugging Face shard), then the rest of the model and the manifest
or index, assembled and renamed into place."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from ..formats.checkpoint import (check_tensor_format, encode_state, write_parts)
from ..methods.base import LayerResult


BlockWriter = Callable[[nn.Module, str, int, list[LayerResult], Path], dict[str, Any]]


def prunekit_writer(tensor_format: str = "auto") -> BlockWriter:
    """Write a block's tensors as a prunekit checkpoint shard (``prunekit-IIIII.safetensors``,
    each tensor in its smallest exact format); returns its files and manifest entries."""
    check_tensor_format(tensor_format)

    def write(block: nn.Module, prefix: str, index: int, results: list[LayerResult],
              folder: Path) -> dict[str, Any]:
        file = f"prunekit-{index:05d}.safetensors"
        quantized = {r.name: r.quantized for r in results if r.quantized is not None}
        parts, entries = encode_state(block.cpu(), quantized, tensor_format,
                                      {r.name for r in results}, prefix=prefix, file=file)
        return {"files": {file: write_parts(folder, file, parts)}, "entries": entries}

    return write


def hf_writer(n_blocks: int) -> BlockWriter:
    """Write a block's tensors densely as one shard of a Hugging Face checkpoint
    (``model-XXXXX-of-NNNNN.safetensors``; the last shard holds the rest of the model)."""
    def write(block: nn.Module, prefix: str, index: int, _results: list[LayerResult],
              folder: Path) -> dict[str, Any]:
        file = hf_shard(index, n_blocks)
        tensors = {f"{prefix}.{k}": v.detach().cpu().contiguous()
                   for k, v in block.state_dict().items()}
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        return {"files": {file: {"bytes": (folder / file).stat().st_size}},
                "entries": dict.fromkeys(tensors, file)}

    return write


def hf_shard(index: int, n_blocks: int) -> str:
    return f"model-{index + 1:05d}-of-{n_blocks + 1:05d}.safetensors"


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link (instant, no space) where the file system allows one, else a copy; the
    source stays, so a crash before the output is complete loses nothing."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
