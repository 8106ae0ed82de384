"""The streamed run: the calibration inputs captured before block 0, then block by block:
read, gather statistics, compress, store the next inputs, write, release."""


from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub import snapshot_download
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers import AutoConfig, AutoTokenizer

from ..data import load_texts
from ..data.calibration import calibration, resolve_protocol
from ..errors import ModelError, UsageError
from ..formats.checkpoint import WEIGHTS, encode_tensor, write_manifest, write_parts
from ..methods.base import DTYPES, LayerCompressor, LayerResult
from ..models.adapter import HFAdapter, ModelAdapter, max_positions
from ..models.loaders import model_kind, resolve_model
from ..files import publish_permissions
from ..output import REPORT_FILE, TABLE_FILE, replace_dir
from ..pipeline import (Progress, block_outputs, capture_block_inputs, compress_block,
                        gather_statistics, token_mask)
from ..plan import Plan, check_device, layer_patterns, model_dtype
from ..preflight import check_skeleton
from ..report import PruneReport, report_text, write_json
from ..run import calibration_info
from .skeleton import (Layout, MemoryEstimate, _persistent_buffers, empty_model, estimate_memory,
                       layout, materialize_, parameter_names, release_)
from .source import INDEX, SafetensorsSource
from .work import WorkDir, _Inputs
from .writers import BlockWriter, hf_shard, hf_writer, link_or_copy, prunekit_writer

if TYPE_CHECKING:
    from ..distributed import Group

log = logging.getLogger(__name__)










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
    masks = [token_mask(batches[j]) for j in mine]  # padding left out of every statistic
    for i in range(done, len(blocks)):
        prefix = f"{list_name}.{i}"
        block = blocks[i]
        materialize_(model, parameter_names(model, prefix, job.plan), job.source, job.plan,
                     job.dtype, job.device)
        inputs = _Inputs(job.work, i, mine, job.device)
        compressors = gather_statistics(block, prefix, adapter, inputs, make_compressor, masks)
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


def peak_rss() -> int | None:
    """Peak resident memory of this process so far, in bytes (None where not measurable)."""
    try:
        import resource  # POSIX only
    except ImportError:  # not on Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def stream_source(spec: str) -> tuple[str, str]:
    """(local folder, model kind) of a model to stream; a hub id is downloaded to the local
    Hugging Face cache first (files on disk, nothing in memory)."""
    path, local = resolve_model(spec)
    if not local:
        try:
            path = snapshot_download(spec, allow_patterns=["*.json", "*.safetensors", "*.txt",
                                                           "*.model", "tokenizer*"])
        except Exception as exc:  # huggingface_hub raises many error types (network, auth)
            raise ModelError(f"cannot download {spec!r} to stream it: {exc}; pass a local "
                             "folder") from None
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the config of {spec!r}: {exc}") from None
    return path, model_kind(config)


def stream_model(
    model: str, out: Path, plan: Plan, *, calib: str = "stdlib", samples: int = 128,
    seqlen: int = 512, batch_size: int = 8, seed: int = 0, device: str = "cpu",
    skip: Sequence[str] = (), dtype: str = "float32", fmt: str = "prunekit",
    tensor_format: str = "auto", overwrite: bool = False, restart: bool = False,
    progress: Progress | None = None, group: Group | None = None,
    announce: Callable[[MemoryEstimate], None] | None = None, calib_protocol: str = "auto",
) -> PruneReport:
    """Compress checkpoint ``model`` by ``plan`` block by block into the checked folder
    ``out`` (see :func:`prunekit.prune_stream`, which checks the request); returns the report."""
    t0 = time.perf_counter()
    check_device(device)
    resolve_protocol(calib_protocol, "encoder")  # a bad name fails before any work
    calib_texts = load_texts(calib, "calib")
    path, kind = stream_source(model)
    protocol = resolve_protocol(calib_protocol, kind)
    torch_dtype = model_dtype(dtype)
    skeleton = empty_model(path, kind, torch_dtype)
    source = SafetensorsSource(path)
    tensors = layout(skeleton, source)
    check_skeleton(skeleton, plan, seqlen, skip)
    adapter = HFAdapter(skip=tuple(skip))
    estimate = estimate_memory(skeleton, adapter, source, batch_size, seqlen, torch_dtype,
                               DTYPES[plan.config.hessian_dtype])
    if announce is not None:
        announce(estimate)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    batches = calibration(tokenizer, calib, samples, seqlen, batch_size, seed,
                          max_positions(skeleton), texts=calib_texts, protocol=protocol)
    n_blocks = len(adapter.block_list(skeleton)[1])
    settings = {"model": str(Path(path).resolve()), "files": source.nbytes(),
                "method": plan.method, "pattern": str(plan.pattern), "config": json.loads(
                    json.dumps(dataclasses.asdict(plan.config), default=str)), "calib": calib,
                "samples": samples, "seqlen": seqlen, "batch_size": batch_size, "seed": seed,
                "protocol": protocol, "dtype": dtype, "skip": list(skip), "format": fmt,
                "tensor_format": tensor_format}  # to resume
    work = WorkDir(out)
    main = group is None or group.is_main
    state = work.open(settings, restart) if main else {"blocks_done": None, "layers": []}
    if group is not None:
        group.barrier()
    resumed = state["blocks_done"]
    writer = prunekit_writer(tensor_format) if fmt == "prunekit" else hf_writer(n_blocks)
    job = StreamJob(source, tensors, work, state, torch_dtype, torch.device(device), writer)
    pattern_of = layer_patterns(plan.pattern, adapter.all_targets(skeleton))
    cls, cfg = plan.cls, plan.config
    t1 = time.perf_counter()
    results = stream_prune(
        skeleton, adapter, batches,
        lambda name, layer: cls(layer, pattern_of(name), cfg, name), job, progress, group)
    t2 = time.perf_counter()
    info = calibration_info(calib, samples, seqlen, seed, protocol, batches)
    if group is not None:
        info["processes"] = group.world
    report = PruneReport(
        model=model, method=plan.method,
        pattern="dense" if plan.pattern is None else str(plan.pattern),
        calibration=info, device=str(device), layers=results, evaluation={},
        params_total=sum(p.numel() for p in skeleton.parameters()),
        config={**dataclasses.asdict(cfg), "stream": {
            "estimate_bytes": estimate.total, "checkpoint_bytes": estimate.checkpoint,
            "resumed_after_block": resumed, "peak_rss_bytes": peak_rss()}},
        seconds={"load": t1 - t0, "prune": t2 - t1})
    if main:
        finish_stream(skeleton, job, report, tokenizer, fmt, out, overwrite, n_blocks)
    if group is not None:
        group.barrier()
        if not main:  # another machine's activations (on one machine: already gone)
            shutil.rmtree(work.path, ignore_errors=True)
    return report


def rest_tensors(model: nn.Module, list_name: str, job: StreamJob) -> dict[str, Tensor]:
    """The tensors outside the blocks (embeddings, final norm, head), read from the
    checkpoint in the compute dtype, and persistent buffers the checkpoint lacks."""
    in_blocks = set(parameter_names(model, list_name, job.plan))
    out = {n: job.source.read(job.plan.source[n], job.dtype)
           for n in job.plan.source if n not in in_blocks}
    buffers = dict(_persistent_buffers(model))
    out.update({n: buffers[n] for n in job.plan.computed if not n.startswith(f"{list_name}.")})
    return out


def finish_stream(model: nn.Module, job: StreamJob, report: PruneReport, tokenizer: Any, fmt: str,
                   out: Path, overwrite: bool, n_blocks: int) -> None:
    """Assemble the output from the finished blocks' files and the rest of the model (read
    from the checkpoint), rename it into place and remove the work folder."""
    final = job.work.path / "final"
    shutil.rmtree(final, ignore_errors=True)
    final.mkdir()
    for file in job.state["files"]:
        link_or_copy(job.work.path / "blocks" / file, final / file)
    list_name = HFAdapter().block_list(model)[0]
    rest = rest_tensors(model, list_name, job)
    files, entries = dict(job.state["files"]), dict(job.state["entries"])
    if fmt == "prunekit":
        parts: dict[str, torch.Tensor] = {}
        stored: set[int] = set()
        entries.update({n: encode_tensor(n, t, parts, stored) for n, t in rest.items()})
        entries.update({n: {"tied_to": t} for n, t in job.plan.tied.items()})
        files[WEIGHTS] = write_parts(final, WEIGHTS, parts)
        write_manifest(final, model, entries, files, tokenizer=tokenizer,
                       report=report.to_dict(), provenance={"source": report.model,
                                                            "method": report.label})
    else:
        file = hf_shard(n_blocks, n_blocks)
        save_file({n: t.contiguous() for n, t in rest.items()}, str(final / file),
                  metadata={"format": "pt"})
        entries.update(dict.fromkeys(rest, file))
        total = sum((final / f).stat().st_size for f in {*files, file})
        (final / INDEX).write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": entries}, indent=1) + "\n")
        model.config.save_pretrained(final)
        tokenizer.save_pretrained(final)
    write_json(report, final / REPORT_FILE)
    (final / TABLE_FILE).write_text(report_text(report) + "\n")
    publish_permissions(final)
    if out.exists() and not overwrite:
        raise UsageError(f"output directory {str(out)!r} appeared during the run: the pruned "
                         f"model is kept in {final}; move it or pass --overwrite")
    replace_dir(final, out, overwrite=True)
    shutil.rmtree(job.work.path, ignore_errors=True)
