"""What users and the CLI call: prune, quantize, compress, stream, sweep, load and save.

Each function checks what it is given once, here at the edge (:func:`prunekit.plan.make_plan`
for the method, pattern and settings), and hands the typed request to the layer below:
:mod:`prunekit.run` in memory, :mod:`prunekit.streaming` block by block from disk,
:mod:`prunekit.analysis.pareto` for a sweep, :mod:`prunekit.formats` and
:mod:`prunekit.output` for files. A :class:`~prunekit.plan.Plan` may stand in for ``method``
(the CLI builds one from its flags); it is then not checked again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from .analysis.grid import load_grid
from .analysis.pareto import sweep
from .errors import UsageError
from .formats.load import load_checkpoint
from .methods.base import MethodConfig
from .models.loaders import LoadedModel
from .output import check_output, write_pruned
from .patterns import Pattern
from .pipeline import Progress
from .plan import Plan, check_device, check_format, check_streamable, make_plan, model_dtype
from .quant import QuantSpec
from .report import PruneReport
from .run import compress_model, quantized_weights
from .streaming import MemoryEstimate, stream_model

if TYPE_CHECKING:
    from .distributed import Group

__all__ = ["compress", "load", "pareto", "prune", "prune_stream", "quantize", "save_pruned"]


def compress(model: str | LoadedModel, method: str | Plan | None = None,
             pattern: str | float | Pattern | None = 0.5, *,
             config: Mapping[str, Any] | MethodConfig | None = None, base: Any = None,
             **kwargs: Any) -> tuple[LoadedModel, PruneReport]:
    """Load ``model``, calibrate on ``calib``, compress it with ``method``: a pruning method to
    ``pattern`` (with ``config["quant"]`` also quantized), or a quantizer (pattern None).
    ``method`` None: ``admm``, or ``sparsegpt`` with a quant
    (:func:`prunekit.plan.default_prune_method`).

    Keywords: ``calib`` (default "stdlib"), ``samples`` (128), ``seqlen`` (512),
    ``batch_size`` (8), ``seed``, ``calib_protocol`` ("auto": the default of the model's
    kind; "windows" or "documents", see :func:`prunekit.data.calibration.calibration`),
    ``device`` ("cpu"), ``skip`` (layer globs), ``evaluate``,
    ``eval_data``, ``eval_task`` ("bbc": a linear probe on an encoder's embeddings, beside the
    fidelity), ``dtype`` ("float32"), ``progress``, and ``group``: this process's place in
    a torch.distributed job (:func:`prunekit.distributed.from_environment`): the calibration
    batches are split among the ranks and only rank 0 evaluates.

    ``base`` (method ``movement`` only, and required there): the pretrained checkpoint the
    fine-tuned ``model`` came from, as a spec loaded like the model (Hugging Face id, local
    folder or 'minilm', in ``dtype``), a :class:`LoadedModel`, a module, or {layer name:
    (out, in) weight}; its source is recorded in the report's config as ``base``.

    Returns the compressed model (in place) with its tokenizer, and a :class:`PruneReport`.
    """
    plan = method if isinstance(method, Plan) else make_plan(method, pattern, config, base=base)
    return compress_model(model, plan, **kwargs)


def prune(model: str | LoadedModel, method: str | Plan | None = None,
          pattern: str | float | Pattern = 0.5, *,
          config: Mapping[str, Any] | MethodConfig | None = None, base: Any = None,
          **kwargs: Any) -> tuple[LoadedModel, PruneReport]:
    """Prune ``model`` with ``method`` (None: ``admm``; ``sparsegpt`` with a quant) to
    ``pattern``; keywords as :func:`compress`.
    ``config={"quant": QuantSpec(bits=4)}`` also quantizes the kept weights (joint with
    SparseGPT, else GPTQ after pruning each layer), keeping the mask exactly."""
    plan = (method if isinstance(method, Plan)
            else make_plan(method, pattern, config, kind="prune", base=base))
    return compress_model(model, plan, **kwargs)


def quantize(model: str | LoadedModel, method: str | Plan = "gptq", *, bits: int = 4,
             group: int | None = 128, symmetric: bool = True, clip: str = "minmax",
             config: Mapping[str, Any] | MethodConfig | None = None, **kwargs: Any
             ) -> tuple[LoadedModel, PruneReport]:
    """Quantize ``model``'s target layers with ``method`` (rtn, gptq, awq) to ``bits`` with
    ``group`` input columns per scale (None: per output channel). A model that is already
    pruned keeps its zeros exactly. Other settings go in ``config`` (e.g. act_order=True);
    calibration and evaluation keywords as :func:`compress`. Returns the model, whose layers
    hold the dequantized weights (:func:`prunekit.run.quantized_weights` gives the codes), and
    the report."""
    if not isinstance(method, Plan):
        if not isinstance(config, MethodConfig):
            config = {"quant": QuantSpec(bits, group, symmetric, clip), **(config or {})}
        method = make_plan(method, None, config, kind="quantize")
    return compress_model(model, method, **kwargs)


def prune_stream(
    model: str, out: str | os.PathLike, method: str | Plan | None = None,
    pattern: str | float | Pattern | None = 0.5, *,
    config: Mapping[str, Any] | MethodConfig | None = None, fmt: str = "prunekit",
    overwrite: bool = False, progress: Progress | None = None, group: Group | None = None,
    announce: Callable[[MemoryEstimate], None] | None = None, **kwargs: Any,
) -> tuple[Path, PruneReport]:
    """Compress a Hugging Face checkpoint (a folder of safetensors files, or a hub id
    downloaded to the local cache) block by block without holding the whole model in memory,
    writing the result to ``out`` (see :mod:`prunekit.streaming`); keywords as
    :func:`compress`, and ``tensor_format``, ``restart``. A run that stops part way resumes
    from its last finished block when called again with the same settings (``restart=True``
    discards it instead); ``out`` appears only when complete. ``announce(estimate)`` receives
    the peak-memory :class:`~prunekit.streaming.MemoryEstimate` before the work starts.
    ``fmt``: "prunekit" (compact, one file per block) or "hf" (dense sharded safetensors).
    Returns the output folder and the report (no evaluation: the model is never whole in
    memory)."""
    plan = method if isinstance(method, Plan) else make_plan(method, pattern, config)
    check_streamable(plan, fmt)
    path = check_output(out, overwrite)
    report = stream_model(model, path, plan, fmt=fmt, overwrite=overwrite, progress=progress,
                          group=group, announce=announce, **kwargs)
    return path, report


def pareto(model: str | LoadedModel, out: str | os.PathLike, grid: str = "default",
           **kwargs: Any) -> dict[str, Any]:
    """Measure every point of ``grid`` ("default" or a YAML file) on ``model`` and draw the
    frontier; see :func:`prunekit.analysis.pareto.sweep` for the keywords and the result.
    Points already measured in ``out`` are reused (an interrupted run resumes)."""
    recipes = load_grid(grid)  # every recipe checked before any work
    folder = Path(out).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {str(folder)!r} is a file: pass a folder")
    return sweep(model, folder, recipes, **kwargs)


def save_pruned(loaded: LoadedModel, report: PruneReport, out: str | os.PathLike,
                overwrite: bool = False, fmt: str = "prunekit", tensor_format: str = "auto",
                ) -> Path:
    """Write the model, its tokenizer and ``prune_report.json`` to ``out`` atomically: by
    default as a prunekit checkpoint (each tensor in its smallest exact format, quantized
    layers as integer codes; :func:`load` reads it), with ``fmt="hf"`` as a plain dense
    ``save_pretrained`` folder, or with ``fmt="compressed-tensors"`` in the pack-quantized
    layout transformers and vLLM load. ``tensor_format``: for a prunekit checkpoint, one
    format for every compressed layer instead of the smallest (an error if it cannot hold one
    of them exactly)."""
    check_format(fmt, bool(quantized_weights(report)))
    return write_pruned(loaded, report, check_output(out, overwrite), overwrite, fmt,
                        tensor_format)


def load(path: str | os.PathLike, model: nn.Module | None = None, dtype: str | None = None,
         device: str = "cpu", semi_structured: bool = False, cpu_sparse: bool = False,
         ) -> LoadedModel | nn.Module:
    """Rebuild a model saved by prunekit: a :class:`LoadedModel` for a Hugging Face model (with
    its tokenizer), the module for a plain one (``model``: an instance to load into, needed
    for a plain class without a builder). Weights equal the saved ones bit for bit; ``dtype``
    and ``device`` convert them afterwards. ``semi_structured``: on CUDA, 2:4 Linear weights
    become PyTorch semi-structured sparse tensors (float16/bfloat16); ``cpu_sparse``: on the
    CPU, Linear layers at least 95 % sparse (the measured threshold,
    :data:`prunekit.formats.accel.CPU_SPARSE_MIN_SPARSITY`) compute with CSR matrices. Raises
    :class:`ModelError` on a corrupt, truncated, foreign or newer checkpoint."""
    check_device(device)
    return load_checkpoint(path, model, None if dtype is None else model_dtype(dtype), device,
                           semi_structured, cpu_sparse)
