"""Find a model's repeated blocks and the layers inside them to compress, generically.

Transformers of every family keep their blocks in one ``nn.ModuleList`` of identical modules
(``encoder.layer`` in BERT, ``model.layers`` in Llama/Qwen2/Mistral, ``decoder.layers`` in
OPT, ``transformer.h`` in GPT-2). The adapter picks the largest such list by parameter count;
embeddings, output heads and poolers lie outside it and are therefore never targets.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from torch import nn

from ..errors import ModelError

TARGET_TYPES = ("Linear", "Conv1D")


class ModelAdapter(Protocol):
    """The only code that knows model families: where the blocks are, what to compress."""

    def block_list(self, model: nn.Module) -> tuple[str, nn.ModuleList]: ...

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]: ...

    def targets(self, block: nn.Module, prefix: str = "") -> dict[str, nn.Module]: ...

    def all_targets(self, model: nn.Module) -> dict[str, nn.Module]: ...


def is_target(module: nn.Module) -> bool:
    """nn.Linear (and subclasses) or transformers' Conv1D (GPT-2)."""
    return isinstance(module, nn.Linear) or (
        type(module).__name__ == "Conv1D" and hasattr(module, "nf")
    )


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass
class HFAdapter:
    """Generic adapter for Hugging Face transformers (and any model with a block list).

    skip: glob patterns over full layer names (``"*.attention.output.dense"``); matching
    layers are left dense.
    """

    skip: Sequence[str] = field(default_factory=tuple)

    def block_list(self, model: nn.Module) -> tuple[str, nn.ModuleList]:
        """(qualified name, ModuleList) of the model's main stack of repeated blocks."""
        best: tuple[int, str, nn.ModuleList] | None = None
        for name, module in model.named_modules():
            if not isinstance(module, nn.ModuleList) or len(module) == 0:
                continue
            if len({type(m) for m in module}) != 1 or not any(
                is_target(m) for m in module[0].modules()
            ):
                continue
            size = _n_params(module)
            if best is None or size > best[0]:
                best = (size, name, module)
        if best is None:
            raise ModelError(
                f"{type(model).__name__}: no list of repeated blocks with Linear layers was "
                "found: prunekit's pipeline needs a transformer-style stack (nn.ModuleList)"
            )
        return best[1], best[2]

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        return list(self.block_list(model)[1])

    def targets(self, block: nn.Module, prefix: str = "") -> dict[str, nn.Module]:
        """Target layers of one block by full name, minus those matching ``skip``."""
        out = {}
        for name, module in block.named_modules():
            full = f"{prefix}.{name}" if prefix else name
            if is_target(module) and not any(fnmatch.fnmatch(full, p) for p in self.skip):
                out[full] = module
        return out

    def all_targets(self, model: nn.Module) -> dict[str, nn.Module]:
        """Every target layer of the model by full name, in block order."""
        prefix, blocks = self.block_list(model)
        out: dict[str, nn.Module] = {}
        for i, block in enumerate(blocks):
            out.update(self.targets(block, f"{prefix}.{i}"))
        return out
