"""Loading: a prunekit checkpoint rebuilt bit for bit, and any model spec (a prunekit
checkpoint folder, a Hugging Face id or folder, or 'minilm') through one function."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from transformers import AutoTokenizer

from ..models.loaders import LoadedModel, load_pretrained, resolve_model
from .accel import to_cpu_sparse_, to_semi_structured_
from .checkpoint import MANIFEST, build_model, load_state_into, read_manifest, read_state


def load_checkpoint(path: str | os.PathLike, model: nn.Module | None = None,
                    dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
                    semi_structured: bool = False, cpu_sparse: bool = False,
                    ) -> LoadedModel | nn.Module:
    """Rebuild a model saved by prunekit (see :func:`prunekit.load`, which checks the
    arguments): a :class:`LoadedModel` for a Hugging Face model, with its tokenizer, or the
    module for a plain one (``model``: an instance to load into)."""
    folder = Path(path).expanduser()
    manifest = read_manifest(folder)
    state = read_state(folder, manifest)
    module = load_state_into(build_model(folder, manifest, model), state)
    if dtype is not None:
        module.to(dtype)
    module.to(device)
    if semi_structured:
        to_semi_structured_(module)
    if cpu_sparse:
        to_cpu_sparse_(module)
    if manifest["model"].get("kind") != "hf" or model is not None:
        return module
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError):
        tokenizer = None
    return LoadedModel(model=module, tokenizer=tokenizer, source=str(path),
                       kind=manifest["model"].get("task", "encoder"))


def load_model(spec: str, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load ``spec`` on the CPU in ``dtype``: a prunekit checkpoint folder (rebuilt), or a
    Hugging Face id, local folder or 'minilm' (:func:`prunekit.models.loaders.load_pretrained`)."""
    path, local = resolve_model(spec)
    if local and os.path.isfile(os.path.join(path, MANIFEST)):
        loaded = load_checkpoint(path)
        loaded.model.to(dtype)
        loaded.source = spec
        return loaded
    return load_pretrained(spec, dtype)
