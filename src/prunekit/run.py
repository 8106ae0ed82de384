"""Running a planned compression on a model in memory: the sequential pipeline with the
method's compressors, the evaluation around it, and the report.

:func:`compress_model` and :func:`execute` take a checked :class:`~prunekit.plan.Plan` and
trust it; :func:`prune_model` and :func:`quantize_model` are the entry points for a model
already in memory, and check what they are given once, at their edge."""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .allocation import outlier_ratio, owl_sparsities, wanda_scores
from .data import load_texts
from .data.calibration import calibration, check_seqlen, resolve_protocol
from .errors import DataError, UsageError
from .eval.protocol import check_task, evaluation_texts, prepare_evaluation, prepare_task
from .formats.load import load_model
from .methods.base import LayerCompressor, LayerResult, MethodConfig, weight_matrix
from .methods.movement_base import base_weights, load_base
from .models.adapter import HFAdapter, max_positions
from .models.loaders import LoadedModel
from .patterns import Pattern, Unstructured
from .pipeline import Progress, input_norms, run_sequential
from .plan import Plan, base_source, check_device, layer_patterns, make_plan, model_dtype
from .preflight import preflight
from .report import PruneReport

if TYPE_CHECKING:
    from .distributed import Group

log = logging.getLogger(__name__)

Base = LoadedModel | nn.Module | Mapping[str, torch.Tensor]


def execute(
    model: nn.Module, plan: Plan, batches: Sequence[dict[str, torch.Tensor]], *,
    device: str | torch.device = "cpu", skip: Sequence[str] = (),
    progress: Progress | None = None, base: Mapping[str, torch.Tensor] | None = None,
    group: Group | None = None,
) -> list[LayerResult]:
    """Compress ``model`` in place by ``plan`` on calibration ``batches``, after
    :func:`~prunekit.preflight.preflight`. ``base``: {layer name: base weight} from
    :func:`~prunekit.methods.movement_base.base_weights` for a method that scores against
    one. ``group``: this process's place in a torch.distributed job; ``batches`` are then
    this rank's share, and every rank ends with the same model (:mod:`prunekit.distributed`)."""
    if not batches:
        raise DataError("the calibration set is empty: pass --samples >= 1 and a non-empty --calib")
    cls, config = plan.cls, plan.config
    adapter = HFAdapter(skip=tuple(skip))
    score = None if base is None else (lambda name, W: cls.scores(W, base[name], config))
    pattern_of = layer_patterns(plan.pattern, adapter.all_targets(model), score)
    if getattr(config, "allocation", "uniform") == "owl":
        if group is not None:
            raise UsageError("--allocation owl needs the activations of every calibration "
                             "batch in one process: run it without torchrun")
        pattern_of = owl_patterns(model, adapter, batches, plan.pattern, config, device)

    def make(name: str, layer: nn.Module) -> LayerCompressor:
        if base is None:
            return cls(layer, pattern_of(name), config, name)
        return cls(layer, pattern_of(name), config, name, base=base[name])

    return run_sequential(model, adapter, batches, make, device=device, progress=progress,
                          group=group, true_sequential=config.sequential == "true")


def owl_patterns(model: nn.Module, adapter: HFAdapter, batches: Sequence[dict[str, Tensor]],
                 pattern: Unstructured, config: MethodConfig,
                 device: str | torch.device) -> Callable[[str], Pattern]:
    """Each target layer's pattern under OWL (:mod:`prunekit.allocation`): its block's
    sparsity, chosen from the dense model's outlier ratios on the calibration ``batches``."""
    norms = input_norms(model, adapter, batches, device)
    list_name, blocks = adapter.block_list(model)
    by_block = [adapter.targets(block, f"{list_name}.{i}") for i, block in enumerate(blocks)]
    ratios = [outlier_ratio([wanda_scores(weight_matrix(layer).detach(), norms[name])
                             for name, layer in targets.items()], config.owl_m)
              for targets in by_block]
    sparsities = owl_sparsities(ratios, pattern.sparsity, config.owl_lambda)
    log.info("OWL: outlier ratios %s -> block sparsities %s",
             [round(r, 4) for r in ratios], [round(s, 4) for s in sparsities])
    per_layer = {name: Unstructured(s, pattern.scope)
                 for targets, s in zip(by_block, sparsities) for name in targets}
    return per_layer.__getitem__


def prune_model(
    model: nn.Module, method: str | Plan, pattern: str | float | Pattern | None,
    batches: Sequence[dict[str, torch.Tensor]], *, config: MethodConfig | None = None,
    device: str | torch.device = "cpu", skip: Sequence[str] = (),
    progress: Progress | None = None, base: Base | None = None, group: Group | None = None,
) -> list[LayerResult]:
    """Prune ``model`` in place with ``method`` to ``pattern`` on calibration ``batches``.

    ``base``: for ``movement``, the pretrained model the fine-tuned ``model`` came from (a
    :class:`LoadedModel`, a module of the same architecture, or {layer name: (out, in)
    weight}); its layers are matched to the model's by qualified name. ``group``: see
    :func:`execute`."""
    plan = method if isinstance(method, Plan) else make_plan(method, pattern, config, base=base)
    preflight(model, plan, skip)
    weights = None if plan.base is None else base_weights(model, plan.base, skip)
    return execute(model, plan, batches, device=device, skip=skip, progress=progress,
                   base=weights, group=group)


def quantize_model(
    model: nn.Module, method: str, batches: Sequence[dict[str, torch.Tensor]], *,
    spec: Any = None, config: MethodConfig | None = None, **kwargs: Any,
) -> list[LayerResult]:
    """Quantize ``model``'s target layers in place with ``method`` (rtn, gptq, awq) to ``spec``
    (a :class:`prunekit.quant.QuantSpec`; default int4, groups of 128) on calibration
    ``batches``; zeros of a pruned model are kept exactly. Each result's ``quantized`` holds
    the codes. Keywords as :func:`prune_model`."""
    if config is None:
        config = {} if spec is None else {"quant": spec}
    plan = make_plan(method, None, config, kind="quantize")
    return prune_model(model, plan, None, batches, **kwargs)


def run_one(
    loaded: LoadedModel, plan: Plan, batches: Sequence[dict[str, torch.Tensor]], *,
    calibration_info: dict[str, Any], measure: Callable[[nn.Module], dict[str, Any]] | None = None,
    device: str = "cpu", skip: Sequence[str] = (), progress: Progress | None = None,
    base: Mapping[str, torch.Tensor] | None = None, group: Group | None = None,
) -> PruneReport:
    """Compress ``loaded.model`` in place by ``plan`` (see :func:`execute`), evaluate it with
    ``measure``, and report."""
    t0 = time.perf_counter()
    layers = execute(loaded.model, plan, batches, device=device, skip=skip, progress=progress,
                     base=base, group=group)
    t1 = time.perf_counter()
    evaluation = measure(loaded.model) if measure else {}
    return PruneReport(
        model=loaded.source, method=plan.method,
        pattern="dense" if plan.pattern is None else str(plan.pattern),
        calibration=calibration_info,
        device=str(device), layers=layers, evaluation=evaluation,
        params_total=sum(p.numel() for p in loaded.model.parameters()),
        config=dataclasses.asdict(plan.config),
        seconds={"prune": t1 - t0, "eval": time.perf_counter() - t1},
    )


def compress_model(
    model: str | LoadedModel, plan: Plan, *, calib: str = "stdlib", samples: int = 128,
    seqlen: int = 512, batch_size: int = 8, seed: int = 0, device: str = "cpu",
    skip: Sequence[str] = (), evaluate: bool = True, eval_data: str | None = None,
    eval_task: str | None = None, dtype: str = "float32", progress: Progress | None = None,
    group: Group | None = None, calib_protocol: str = "auto",
) -> tuple[LoadedModel, PruneReport]:
    """Load ``model``, calibrate on ``calib`` and compress it by ``plan``; keywords as
    :func:`prunekit.compress`. What can be checked cheaply (device, data source, then the
    model's weights, positions and layer shapes, and the base's layer names and shapes) is
    checked before the slow steps."""
    t0 = time.perf_counter()
    check_device(device)
    check_task(eval_task)
    resolve_protocol(calib_protocol, "encoder")  # a bad name fails before any work
    torch_dtype = model_dtype(dtype)
    calib_texts = load_texts(calib, "calib")
    eval_texts = evaluation_texts(calib, eval_data) if evaluate else None
    t_texts = time.perf_counter()
    loaded = model if isinstance(model, LoadedModel) else load_model(model, torch_dtype)
    check_seqlen(seqlen, max_positions(loaded.model))
    preflight(loaded.model, plan, skip)
    weights = (None if plan.base is None  # only the base's target weights are kept
               else base_weights(loaded.model, load_base(plan.base, torch_dtype), skip,
                                 base_source(plan.base)))
    t_load = time.perf_counter()
    protocol = resolve_protocol(calib_protocol, loaded.kind)
    batches = calibration(loaded.tokenizer, calib, samples, seqlen, batch_size, seed,
                          max_positions(loaded.model), texts=calib_texts, protocol=protocol)
    info = calibration_info(calib, samples, seqlen, seed, protocol, batches)
    t_data = time.perf_counter()
    evaluate = evaluate and (group is None or group.is_main)
    task = prepare_task(loaded, eval_task, device) if evaluate and eval_task else None
    measure = (prepare_evaluation(loaded, eval_data or calib, seqlen, device, texts=eval_texts)
               if evaluate else None)
    if task is not None:
        measure = both(measure, task)
    if group is not None:
        info["processes"] = group.world
        batches = group.shard(batches)
    t_dense = time.perf_counter()
    report = run_one(loaded, plan, batches, calibration_info=info, measure=measure,
                     device=device, skip=skip, progress=progress, base=weights, group=group)
    if plan.base is not None:
        report.config["base"] = base_source(plan.base)
    report.seconds = {"load": t_load - t_texts, "calibration_data": t_data - t_load + t_texts - t0,
                      "dense_eval": t_dense - t_data, **report.seconds}
    return loaded, report


Measure = Callable[[nn.Module], dict[str, Any]]


def both(first: Measure, second: Measure) -> Measure:
    """One measurement made of two: their results side by side."""
    return lambda model: {**first(model), **second(model)}


def calibration_info(calib: str, samples: int, seqlen: int, seed: int,
                     protocol: str = "windows",
                     batches: Sequence[dict[str, Tensor]] | None = None) -> dict[str, Any]:
    """How a report records its calibration set (``tokens``: the real tokens of ``batches``,
    padding left out, when given)."""
    tokens = (samples * seqlen if batches is None
              else sum(int(b["attention_mask"].sum()) for b in batches))
    return {"source": calib, "samples": samples, "seqlen": seqlen, "seed": seed,
            "protocol": protocol, "tokens": tokens}


def quantized_weights(results: PruneReport | Sequence[LayerResult]) -> dict[str, Any]:
    """{layer name: QuantizedWeight} of the layers a run (its report or results) quantized."""
    layers = results.layers if isinstance(results, PruneReport) else results
    return {r.name: r.quantized for r in layers if r.quantized is not None}


def compare(
    loaded: LoadedModel, runs: Sequence[tuple[str, str | float | Pattern]], *,
    calib: str = "stdlib", samples: int = 64, seqlen: int = 128, batch_size: int = 8,
    seed: int = 0, device: str = "cpu",
    progress: Callable[[str, Pattern], Progress | None] = lambda _m, _p: None,
    calib_protocol: str = "auto",
) -> list[PruneReport]:
    """Prune copies of one dense model with each (method, pattern) of ``runs`` on the same
    calibration batches, and evaluate each against the same dense reference."""
    check_device(device)
    plans = [make_plan(method, p, kind="prune") for method, p in runs]
    protocol = resolve_protocol(calib_protocol, loaded.kind)
    batches = calibration(loaded.tokenizer, calib, samples, seqlen, batch_size, seed,
                          max_positions(loaded.model), protocol=protocol)
    measure = prepare_evaluation(loaded, calib, seqlen, device)
    info = calibration_info(calib, samples, seqlen, seed, protocol, batches)
    return [
        run_one(copy_model(loaded), plan, batches, calibration_info=info, measure=measure,
                device=device, progress=progress(plan.method, plan.pattern))
        for plan in plans
    ]


def copy_model(loaded: LoadedModel) -> LoadedModel:
    """A deep copy of the model (the tokenizer is shared)."""
    return dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))
