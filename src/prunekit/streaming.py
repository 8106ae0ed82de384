"""Prune a Hugging Face checkpoint larger than memory, one block at a time.

The model is built as a skeleton whose parameters live on PyTorch's ``meta`` device (no
memory; buffers such as rotary frequencies are computed for real). Its safetensors files,
sharded or not, are memory-mapped. Then, as in SparseGPT's sequential scheme (Frantar &
Alistarh 2023, Sec. 4), for each block: its weights are read, its statistics gathered from
the calibration activations, its layers compressed, its outputs (the next block's inputs)
computed, and its compressed tensors written to their own file; then its weights are dropped.
Activations live on disk between blocks, one batch in memory at a time, so the peak is about
one block, its statistics and solver workspace, and one batch (:func:`estimate_memory`).

Every finished block is recorded in a work folder beside the output (``.NAME.partial``): its
tensors, the next block's inputs and ``state.json``. An interrupted or crashed run leaves the
output untouched, and the same command resumes after the last finished block. The finished
folder is renamed into place at the end, and the work folder removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .errors import ModelError, UsageError
from .methods.base import LayerCompressor, LayerResult, weight_matrix
from .models.adapter import ModelAdapter
from .pipeline import (
    BlockInput, Progress, _hidden_of, block_outputs, capture_block_inputs, compress_block,
    gather_statistics,
)

if TYPE_CHECKING:
    from .distributed import Group

log = logging.getLogger(__name__)

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
STATE = "state.json"
STATE_VERSION = 1


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}


class _MappedFile:
    """One safetensors file mapped read-only and shared (``mmap.ACCESS_READ``): its pages
    belong to the page cache, not to the process's private memory, so a memory limit on the
    process (RLIMIT_DATA, a cgroup's anonymous memory) does not count the checkpoint. Layout:
    8-byte little-endian header length, a JSON header {name: dtype, shape, data_offsets},
    then the data."""

    def __init__(self, path: Path) -> None:
        import mmap

        try:
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(n))
                self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise ModelError(f"{path}: not a readable safetensors file ({exc})") from None
        header.pop("__metadata__", None)
        self.header, self.start, self.path = header, 8 + n, path

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def read(self, name: str) -> Tensor:
        """A private copy of tensor ``name`` (the mapping itself is never written)."""
        info = self.header[name]
        dtype = SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ModelError(f"{self.path}: {name} has dtype {info['dtype']}, which prunekit "
                             f"does not read (supported: {', '.join(SAFETENSORS_DTYPES)})")
        begin, end = (self.start + o for o in info["data_offsets"])
        shape = info["shape"]
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise ModelError(f"{self.path}: {name} holds {end - begin} bytes, not {shape} "
                             f"{info['dtype']}: the file is corrupt")
        out = torch.empty(shape, dtype=dtype)
        if out.numel():
            with warnings.catch_warnings():  # a view of the read-only map, copied at once
                warnings.simplefilter("ignore", UserWarning)
                view = torch.frombuffer(self.map, dtype=dtype, count=out.numel(), offset=begin)
            out.copy_(view.view(shape))
            del view
            self._unmap_pages(begin, end)
        return out

    def _unmap_pages(self, begin: int, end: int) -> None:
        """Drop the pages just read from this process's resident set: they stay in the page
        cache (a shared read-only map), but no longer count as the process's memory."""
        import mmap

        if hasattr(mmap, "MADV_DONTNEED"):  # Linux and most Unixes
            first = begin - begin % mmap.PAGESIZE
            self.map.madvise(mmap.MADV_DONTNEED, first, end - first)


class SafetensorsSource:
    """The safetensors files of a Hugging Face checkpoint folder (one file or a sharded index),
    memory-mapped; tensors are read one at a time."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        if (self.folder / INDEX).is_file():
            try:
                weight_map = json.loads((self.folder / INDEX).read_text())["weight_map"]
            except (OSError, ValueError, KeyError) as exc:
                raise ModelError(f"{self.folder / INDEX}: unreadable index ({exc})") from None
        elif (self.folder / SINGLE).is_file():
            weight_map = None
        else:
            raise ModelError(
                f"{str(self.folder)!r} has no {SINGLE} or {INDEX}: streaming reads safetensors "
                "checkpoints; convert it once with model.save_pretrained(folder) (safetensors "
                "is the default), or prune it in memory without --stream"
            )
        files = sorted(set(weight_map.values())) if weight_map else [SINGLE]
        self._files = {f: _MappedFile(self.folder / f) for f in files}
        self.file_of = weight_map or dict.fromkeys(self._files[SINGLE].header, SINGLE)
        for name, f in self.file_of.items():
            if name not in self._files[f].header:
                raise ModelError(f"{self.folder / INDEX} puts {name} in {f}, which does not "
                                 "hold it: the checkpoint is incomplete")

    def __contains__(self, name: str) -> bool:
        return name in self.file_of

    def read(self, name: str, dtype: torch.dtype | None = None) -> Tensor:
        """Tensor ``name`` as a new CPU tensor (floating point ones converted to ``dtype``)."""
        t = self._files[self.file_of[name]].read(name)
        return t.to(dtype) if dtype is not None and t.dtype.is_floating_point else t

    def shape(self, name: str) -> tuple[int, ...]:
        return self._files[self.file_of[name]].shape(name)

    def nbytes(self) -> int:
        """Bytes of the checkpoint's safetensors files."""
        return sum((self.folder / f).stat().st_size for f in self._files)


def empty_model(path: str, kind: str, dtype: torch.dtype) -> nn.Module:
    """The Hugging Face model of ``path`` (``kind``: "causal" or "encoder") with every
    parameter on the meta device (no storage is ever allocated for them) and its buffers
    (rotary frequencies, position ids) computed on the CPU, as transformers itself builds a
    model before loading a checkpoint into it."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

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
    from .models.adapter import HFAdapter

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
    import ctypes

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # another C library (musl)
        return False
    m_mmap_threshold = -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 1 << 20))


# ---------------------------------------------------------------------------------------------
# memory estimate


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


# ---------------------------------------------------------------------------------------------
# the work folder: finished blocks, the next block's inputs, the state


_STORABLE = (Tensor, bool, int, float, str, type(None), torch.dtype, torch.Size)


def _to_storable(obj: Any, where: str) -> Any:
    """``obj`` with tensors moved to the CPU; an error for what torch.load(weights_only)
    could not read back (a cache object, a function)."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_storable(o, where) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_storable(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, _STORABLE):
        return obj
    raise ModelError(f"block input {where} is a {type(obj).__name__}: streaming can store only "
                     "tensors and plain values between blocks; prune this model in memory")


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


class WorkDir:
    """``.NAME.partial`` beside the output ``NAME``: ``state.json`` (settings, blocks done,
    their results), ``blocks/`` (each finished block's tensors), ``inputs/`` (the block
    arguments of every batch other than the hidden state) and ``acts/I/`` (the hidden state of
    every batch entering block I)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = out.parent / f".{out.name}.partial"

    def open(self, settings: dict[str, Any], restart: bool) -> dict[str, Any]:
        """The state of an unfinished run with the same ``settings``, or a new one."""
        if restart and self.path.exists():
            shutil.rmtree(self.path)
        state_file = self.path / STATE
        if state_file.is_file():
            state = json.loads(state_file.read_text())
            if state.get("settings") != settings or state.get("version") != STATE_VERSION:
                old = state.get("settings") or {}
                diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
                raise UsageError(
                    f"{self.path} holds an unfinished run with other settings ({', '.join(diff)}"
                    "): rerun with the same settings to resume it, or pass --restart to discard it"
                )
            return state
        if self.path.exists():  # a run that stopped before its first state: nothing to keep
            shutil.rmtree(self.path)
        (self.path / "blocks").mkdir(parents=True)  # inputs/ and acts/ come with their files
        state = {"version": STATE_VERSION, "settings": settings, "blocks_done": 0,
                 "layers": [], "files": {}, "entries": {}}
        self.save(state)
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Replace ``state.json`` atomically (a crash leaves the old or the new one)."""
        tmp = self.path / f"{STATE}.tmp"
        tmp.write_text(json.dumps(state, default=str))
        os.replace(tmp, self.path / STATE)

    def acts(self, block: int, batch: int) -> Path:
        return self.path / "acts" / f"{block:05d}" / f"{batch:05d}.safetensors"

    def inputs(self, batch: int) -> Path:
        return self.path / "inputs" / f"{batch:05d}.pt"

    def store_input(self, batch: int, record: BlockInput) -> None:
        """Save batch ``batch``'s block-0 input: its extra arguments once, its hidden state
        as the first activations."""
        args, kwargs = record
        hidden = _hidden_of(args, kwargs)
        extras = {"in_args": bool(args), "args": args[1:] if args else (),
                  "kwargs": {k: v for k, v in kwargs.items() if k != "hidden_states"}}
        self.inputs(batch).parent.mkdir(parents=True, exist_ok=True)  # another machine's folder
        torch.save(_to_storable(extras, f"of batch {batch}"), self.inputs(batch))
        self.store_hidden(0, batch, hidden)

    def store_hidden(self, block: int, batch: int, hidden: Tensor) -> None:
        from safetensors.torch import save_file

        path = self.acts(block, batch)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"hidden": hidden.detach().cpu().contiguous()}, str(path))

    def load(self, block: int, batch: int, device: torch.device) -> BlockInput:
        from safetensors.torch import load_file

        path = self.acts(block, batch)
        if not path.is_file():
            raise ModelError(f"{path} is missing: resume with the same processes and machines "
                             "as the interrupted run, or pass --restart")
        hidden = load_file(str(path))["hidden"].to(device)
        extras = _to_device(torch.load(self.inputs(batch), weights_only=True), device)
        if extras["in_args"]:
            return (hidden, *extras["args"]), extras["kwargs"]
        return tuple(extras["args"]), {**extras["kwargs"], "hidden_states": hidden}

    def drop_block_inputs(self, block: int, batches: Sequence[int]) -> None:
        for j in batches:
            self.acts(block, j).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.acts(block, 0).parent.rmdir()


class _Inputs:
    """The recorded inputs of one block for this rank's batches, read from disk one by one."""

    def __init__(self, work: WorkDir, block: int, batches: Sequence[int], device: torch.device):
        self.work, self.block, self.batches, self.device = work, block, batches, device

    def __iter__(self) -> Iterator[BlockInput]:
        for j in self.batches:
            yield self.work.load(self.block, j, self.device)


# ---------------------------------------------------------------------------------------------
# writing: each block's tensors to their own file, then the rest of the model

BlockWriter = Callable[[nn.Module, str, int, list[LayerResult], Path], dict[str, Any]]


def prunekit_writer(tensor_format: str = "auto") -> BlockWriter:
    """Write a block's tensors as a prunekit checkpoint shard (``prunekit-IIIII.safetensors``,
    each tensor in its smallest exact format); returns its files and manifest entries."""
    from .formats.checkpoint import check_tensor_format, encode_state, write_parts

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
    from safetensors.torch import save_file

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


def rest_tensors(model: nn.Module, list_name: str, job: StreamJob) -> dict[str, Tensor]:
    """The tensors outside the blocks (embeddings, final norm, head), read from the
    checkpoint in the compute dtype, and persistent buffers the checkpoint lacks."""
    in_blocks = set(parameter_names(model, list_name, job.plan))
    out = {n: job.source.read(job.plan.source[n], job.dtype)
           for n in job.plan.source if n not in in_blocks}
    buffers = dict(_persistent_buffers(model))
    out.update({n: buffers[n] for n in job.plan.computed if not n.startswith(f"{list_name}.")})
    return out


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link (instant, no space) where the file system allows one, else a copy; the
    source stays, so a crash before the output is complete loses nothing."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# ---------------------------------------------------------------------------------------------
# the run


@dataclass
class StreamJob:
    """What :func:`stream_prune` needs besides the model: where to read and write, and how."""

    source: SafetensorsSource
    plan: Layout
    work: WorkDir
    state: dict[str, Any]
    dtype: torch.dtype
    device: torch.device
    write_block: BlockWriter


def stream_prune(
    model: nn.Module, adapter: ModelAdapter, batches: Sequence[dict[str, Tensor]],
    make_compressor: Callable[[str, nn.Module], LayerCompressor], job: StreamJob,
    progress: Progress | None = None, group: Group | None = None,
) -> list[LayerResult]:
    """Compress the skeleton ``model`` block by block from ``job.source``, recording each
    finished block in ``job.work`` (resuming after the last one recorded). ``batches``: all
    calibration batches; with a process ``group`` each rank takes its share. Returns every
    layer's result (those of blocks finished earlier are read back without their codes)."""
    list_name, blocks = adapter.block_list(model)
    mine = list(range(len(batches)))
    if group is not None:
        mine = group.shard(mine)
    done = job.state["blocks_done"] if group is None else group.broadcast_object(
        job.state["blocks_done"])
    if done == 0:
        _capture(model, adapter, [batches[j] for j in mine], mine, job, list_name)
    elif done < len(blocks):
        log.info("resuming after block %d of %d (finished earlier)", done, len(blocks))
    for i in range(done, len(blocks)):
        prefix = f"{list_name}.{i}"
        block = blocks[i]
        materialize_(model, parameter_names(model, prefix, job.plan), job.source, job.plan,
                     job.dtype, job.device)
        inputs = _Inputs(job.work, i, mine, job.device)
        compressors = gather_statistics(block, prefix, adapter, inputs, make_compressor)
        results = compress_block(model, block, prefix, adapter, compressors, group)
        if i + 1 < len(blocks):
            for j, out in zip(mine, block_outputs(block, inputs)):
                job.work.store_hidden(i + 1, j, out)
        _finish_block(block, prefix, i, results, job, group, mine)
        release_(block)
        if progress is not None:
            progress(i, len(blocks), results)
    return [LayerResult.from_dict(d) for d in job.state["layers"]]


def _capture(model: nn.Module, adapter: ModelAdapter, batches: Sequence[dict[str, Tensor]],
             ids: Sequence[int], job: StreamJob, list_name: str) -> None:
    """Run the modules before block 0 (read for this only) and store block 0's inputs."""
    base = getattr(model, "base_model", model)
    head = "" if base is model else f"{model.base_model_prefix}."
    in_blocks = set(parameter_names(model, list_name, job.plan))
    before = [n for n in job.plan.source if n.startswith(head) and n not in in_blocks]
    materialize_(model, before, job.source, job.plan, job.dtype, job.device)
    materialize_(model, parameter_names(model, f"{list_name}.0", job.plan), job.source,
                 job.plan, job.dtype, job.device)
    try:
        for j, batch in zip(ids, batches):  # one batch at a time: stored as it comes
            (record,) = capture_block_inputs(model, adapter, [batch], job.device, job.device)
            job.work.store_input(j, record)
    finally:
        release_(base)


def _finish_block(block: nn.Module, prefix: str, i: int, results: list[LayerResult],
                  job: StreamJob, group: Group | None, mine: Sequence[int]) -> None:
    """Write the block's tensors (rank 0), then record it as done: the state is replaced only
    once every rank has stored the next block's inputs."""
    main = group is None or group.is_main
    if main:
        written = job.write_block(block, prefix, i, results, job.work.path / "blocks")
        job.state["files"].update(written["files"])
        job.state["entries"].update(written["entries"])
    job.state["layers"].extend(r.to_dict() for r in results)
    if group is not None:
        group.barrier()
    if main:
        job.state["blocks_done"] = i + 1
        job.work.save(job.state)
    job.work.drop_block_inputs(i, mine)
