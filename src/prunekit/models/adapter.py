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

# Where a per-input-channel scale of some target layers (AWQ) can be folded into the operation
# that produces their input, by block-relative names: (producer, consumers). Valid only when
# the producer's output feeds exactly these layers: a pre-LN norm (not a post-LN one, whose
# output is also the residual stream), a value projection into the attention output (the
# attention mix is linear per channel), an up projection into the down projection.
SCALE_FOLDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),  # Llama, Qwen2, Mistral
    ("mlp.up_proj", ("mlp.down_proj",)),
    ("self_attn.v_proj", ("self_attn.o_proj",)),
    ("self_attn_layer_norm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("final_layer_norm", ("fc1",)),  # OPT, pre-LN only (do_layer_norm_before)
    ("self_attn.v_proj", ("self_attn.out_proj",)),
    ("ln_1", ("attn.c_attn",)),  # GPT-2
    ("ln_2", ("mlp.c_fc",)),
    ("attention.self.value", ("attention.output.dense",)),  # BERT
)
POST_LN_NORMS = ("self_attn_layer_norm", "final_layer_norm")


class ModelAdapter(Protocol):
    """The only code that knows model families: where the blocks are, what to compress."""

    def block_list(self, model: nn.Module) -> tuple[str, nn.ModuleList]: ...

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]: ...

    def targets(self, block: nn.Module, prefix: str = "") -> dict[str, nn.Module]: ...

    def scale_folds(self, model: nn.Module, block: nn.Module, prefix: str
                    ) -> list[tuple[nn.Module, list[str]]]: ...

    def all_targets(self, model: nn.Module) -> dict[str, nn.Module]: ...


def is_target(module: nn.Module) -> bool:
    """nn.Linear (and subclasses) or transformers' Conv1D (GPT-2)."""
    return isinstance(module, nn.Linear) or (
        type(module).__name__ == "Conv1D" and hasattr(module, "nf")
    )


def _out_features(module: nn.Module) -> int | None:
    """Width of a module's output: a norm's weight, a Linear's rows, a Conv1D's ``nf``."""
    weight = getattr(module, "weight", None)
    if weight is None:
        return None
    if weight.dim() == 1:
        return weight.shape[0]
    if type(module).__name__ == "Conv1D":
        return weight.shape[1]
    return weight.shape[0] if isinstance(module, nn.Linear) else None


def _in_features(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.in_features
    if type(module).__name__ == "Conv1D":
        return module.weight.shape[0]
    return None


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

    def scale_folds(self, model: nn.Module, block: nn.Module, prefix: str
                    ) -> list[tuple[nn.Module, list[str]]]:
        """(producer module, full names of its consumers) in ``block`` where an input scale of
        the consumers can be folded into the producer (see :data:`SCALE_FOLDS`)."""
        post_ln = getattr(getattr(model, "config", None), "do_layer_norm_before", True) is False
        out = []
        for producer, consumers in SCALE_FOLDS:
            if post_ln and producer in POST_LN_NORMS:
                continue
            try:
                prod = block.get_submodule(producer)
                cons = [block.get_submodule(c) for c in consumers]
            except AttributeError:
                continue
            width = _out_features(prod)
            if width is not None and all(_in_features(c) == width for c in cons):
                out.append((prod, [f"{prefix}.{c}" for c in consumers]))
        return out

    def all_targets(self, model: nn.Module) -> dict[str, nn.Module]:
        """Every target layer of the model by full name, in block order."""
        prefix, blocks = self.block_list(model)
        out: dict[str, nn.Module] = {}
        for i, block in enumerate(blocks):
            out.update(self.targets(block, f"{prefix}.{i}"))
        return out


def max_positions(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions"):
        if cfg is not None and isinstance(getattr(cfg, key, None), int):
            return getattr(cfg, key)
    return None
