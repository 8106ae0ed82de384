"""The model as a skeleton on the meta device (no parameter storage), the layout of its
tensors in the checkpoint, reading a block's weights in and dropping them, and the estimate
of the peak memory a streamed run needs."""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from ..errors import ModelError
from ..methods.base import weight_matrix
from ..models.adapter import HFAdapter, ModelAdapter
from .source import SafetensorsSource


def empty_model(path: str, kind: str, dtype: torch.dtype) -> nn.Module:
    """The Hugging Face model of ``path`` (``kind``: "causal" or "encoder") with every
    parameter on the meta device (no storage is ever allocated for them) and its buffers
    (rotary frequencies, position ids) computed on the CPU, as transformers itself builds a
    model before loading a checkpoint into it."""
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    auto = AutoModelForCausalLM if kind == "causal" else AutoModel
    with torch.device("meta"):
        model = auto.from_config(config, dtype=dtype)
    compute_buffers_(model)
    return model.eval()


def compute_buffers_(model: nn.Module) -> None:
    """Give a meta-built model's buffers CPU storage and fill them by the model's own weight
    initialisation (which, on meta parameters, costs nothing)."""
    for module in model.modules():
        for name, buf in module._buffers.items():
            if buf is not None and buf.device.type == "meta":
                module._buffers[name] = torch.empty_like(buf, device="cpu")
    initialize = getattr(model, "initialize_weights", None) or getattr(model, "init_weights", None)
    if initialize is None:
        raise ModelError(f"{type(model).__name__} has no initialize_weights: streaming builds "
                         "Hugging Face models only")
    with torch.no_grad():
        initialize()
    left = [n for n, p in model.named_parameters() if p.device.type != "meta"]
    if left:  # an initialisation that allocated parameters would defeat streaming
        raise ModelError(f"{type(model).__name__}: initialising the model allocated {left[:3]}")


@dataclass(frozen=True)
class Layout:
    """Where every tensor of the model comes from and goes: ``source`` {model name: name in
    the checkpoint}, ``tied`` {model name: the name it shares storage with}, and the
    persistent buffers that are not in the checkpoint (kept as the model computed them)."""

    source: dict[str, str]
    tied: dict[str, str]
    computed: tuple[str, ...]


def layout(model: nn.Module, source: SafetensorsSource) -> Layout:
    """Match the model's parameters and persistent buffers to the checkpoint's names (as is,
    or with the base model's prefix added or removed, as transformers does)."""
    prefix = getattr(model, "base_model_prefix", "")
    first: dict[int, str] = {}
    tied: dict[str, str] = {}
    names: list[str] = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            tied[name] = first[id(p)]
        else:
            first[id(p)] = name
            names.append(name)
    found, computed, missing = {}, [], []
    buffers = [n for n, _ in _persistent_buffers(model)]
    for name in names + buffers:
        candidates = [name, f"{prefix}.{name}", name.removeprefix(f"{prefix}.")]
        hit = next((c for c in candidates if c in source), None)
        if hit is not None:
            found[name] = hit
        elif name in buffers:
            computed.append(name)
        else:
            missing.append(name)
    if missing:
        raise ModelError(
            f"{source.folder}: the checkpoint has no tensor for {missing[:3]} "
            f"({len(missing)} missing): is it the checkpoint of this config's model?"
        )
    _check_layout(model, source, found)
    return Layout(found, tied, tuple(computed))


def _check_layout(model: nn.Module, source: SafetensorsSource, found: dict[str, str]) -> None:
    """Every tensor's shape as the config says, and no tensor of a block left unread."""
    shapes = {n: t.shape for n, t in (*model.named_parameters(), *_persistent_buffers(model))}
    for name, stored in found.items():
        if tuple(shapes[name]) != source.shape(stored):
            raise ModelError(f"{source.folder}: {stored} is {list(source.shape(stored))} in the "
                             f"checkpoint, {list(shapes[name])} in the model its config builds")
    prefix = getattr(model, "base_model_prefix", "")
    blocks = HFAdapter().block_list(model)[0].removeprefix(f"{prefix}.")
    used = set(found.values())
    unread = sorted(n for n in source.file_of if n not in used and f".{blocks}." in f".{n}")
    if unread:
        raise ModelError(f"{source.folder}: the checkpoint has block tensors the model lacks, "
                         f"{unread[:3]} ({len(unread)} in all): is it the checkpoint of this "
                         "config's model?")


def _persistent_buffers(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    for mod_name, module in model.named_modules():
        for name, buf in module.named_buffers(recurse=False):
            if buf is not None and name not in module._non_persistent_buffers_set:
                yield (f"{mod_name}.{name}" if mod_name else name), buf


def materialize_(model: nn.Module, names: Sequence[str], source: SafetensorsSource,
                 plan: Layout, dtype: torch.dtype, device: torch.device) -> None:
    """Read the parameters ``names`` of ``model`` from the checkpoint onto ``device``."""
    for name in names:
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        t = source.read(plan.source[name], dtype).to(device)
        if attr in owner._parameters:
            owner._parameters[attr] = nn.Parameter(t, requires_grad=False)
        else:
            owner._buffers[attr] = t


def release_(module: nn.Module) -> None:
    """Drop the storage of every parameter of ``module`` (back to the meta device)."""
    for sub in module.modules():
        for attr, p in sub._parameters.items():
            if p is not None and p.device.type != "meta":
                sub._parameters[attr] = nn.Parameter(p.detach().to("meta"), requires_grad=False)


def parameter_names(model: nn.Module, prefix: str, plan: Layout) -> list[str]:
    """Names of the checkpoint tensors under ``prefix`` (a module's qualified name)."""
    head = f"{prefix}." if prefix else ""
    return [n for n in plan.source if n.startswith(head)]


def return_freed_memory() -> bool:
    """Make glibc serve every allocation of 1 MiB or more with a mapping of its own, returned
    to the system when freed (``mallopt(M_MMAP_THRESHOLD, 1 MiB)``, which also stops glibc
    from raising that threshold as blocks are freed). Otherwise the freed solver temporaries
    and activations of each block stay in the heap, and the process's memory creeps above
    the estimate; measured in docs/experiments/streaming_memory.md. For the whole process:
    the command line calls it for ``--stream``; the environment variable
    ``MALLOC_MMAP_THRESHOLD_`` does the same before a process starts. True if it applied
    (glibc on Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # another C library (musl)
        return False
    m_mmap_threshold = -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 1 << 20))


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes the streamed run holds at its peak, by part (the Python runtime not included)."""

    weights: int  # the largest block's parameters, in the compute dtype
    statistics: int  # one block's Hessians (one per target layer: an upper bound)
    solver: int  # the largest layer's solve: weight copies and H⁻¹ factors
    activations: int  # one calibration batch through one block
    capture: int  # the modules before the first block (embeddings), during the capture only
    checkpoint: int  # bytes of the checkpoint on disk, for comparison

    @property
    def total(self) -> int:
        capture = self.capture + self.weights + self.activations
        blocks = self.weights + self.statistics + max(self.solver, self.activations)
        return max(capture, blocks)


def estimate_memory(model: nn.Module, adapter: ModelAdapter, source: SafetensorsSource,
                    batch_size: int, seqlen: int, dtype: torch.dtype,
                    hessian_dtype: torch.dtype) -> MemoryEstimate:
    """What :func:`stream_prune` will hold at once, from the skeleton's shapes alone."""
    item, hitem = dtype.itemsize, hessian_dtype.itemsize
    list_name, blocks = adapter.block_list(model)
    weights = max(sum(p.numel() for p in b.parameters()) for b in blocks) * item
    targets = [weight_matrix(m).shape for m in adapter.targets(blocks[0]).values()]
    stats = sum(c * c for _, c in targets) * hitem
    solver = max(3 * r * c + 3 * c * c for r, c in targets) * hitem if targets else 0
    config = getattr(model, "config", None)
    hidden = getattr(config, "hidden_size", None) or max(c for _, c in targets)
    widest = max(max(r, c) for r, c in targets)
    heads = getattr(config, "num_attention_heads", 1) or 1
    tokens = batch_size * seqlen
    activations = (tokens * (6 * hidden + 4 * widest) + 2 * batch_size * heads * seqlen * seqlen
                   ) * item
    in_blocks = {id(p) for p in blocks.parameters()}
    base = getattr(model, "base_model", model)
    capture = sum(p.numel() for p in base.parameters() if id(p) not in in_blocks) * item
    return MemoryEstimate(weights, stats, solver, activations, capture, source.nbytes())
