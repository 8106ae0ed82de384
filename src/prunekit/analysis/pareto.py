"""The accuracy-versus-size sweep: every recipe of a grid measured on one model (quality, bytes
of its real checkpoint, seconds), points reused from an earlier run, and the frontier."""

from __future__ import annotations

import copy
from dataclasses import dataclass
import csv
import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from ..data.calibration import calibration, resolve_protocol
from ..data.packaged import bbc_labelled
from ..errors import DataError, ModelError
from ..eval.protocol import prepare_evaluation
from ..formats.checkpoint import MANIFEST, WEIGHTS, inspect_checkpoint, write_checkpoint
from ..formats.load import load_model
from ..methods.base import LayerResult
from ..models.adapter import HFAdapter, max_positions
from ..models.digits import parse_small_spec, trained_digits_mlp
from ..models.loaders import LoadedModel, resolve_model
from ..network import linear_targets, prune_layers
from ..output import write_folder
from ..plan import Plan, make_plan, model_dtype
from ..quant import QuantSpec
from ..report import PruneReport, pareto_report
from ..run import copy_model, quantized_weights, run_one
from .classifiers import classifier_metrics, is_small_model
from .grid import Recipe, dominated_by, frontier


POINT_FILE = "point.json"


@dataclass(frozen=True)
class Setup:
    """How a sweep measures one model. ``run(recipe)`` compresses a copy and returns (the
    module to store, its layer results, its evaluation); ``quality`` names the evaluation's
    figure (``higher`` is better); ``source`` names the model and ``calibration`` its data;
    ``numel``: its float values (for the fp16 size); ``builder``: how a plain module is
    rebuilt; ``targets``: the compressible weights' names."""

    run: Callable[[Recipe], tuple[nn.Module, list[LayerResult], dict[str, Any]]]
    quality: str
    higher: bool
    source: str
    calibration: dict[str, Any]
    numel: int
    builder: str | None
    targets: set[str]


def _checkpoint_bytes(folder: Path) -> int:
    return sum((folder / f).stat().st_size for f in (WEIGHTS, MANIFEST))


def float_values(model: nn.Module) -> int:
    """The float values a checkpoint of ``model`` stores: a tensor shared by several names
    (tied input and output embeddings) counts once, as it is stored once."""
    tensors = {(t.data_ptr(), t.numel()): t.numel() for t in model.state_dict().values()
               if t.is_floating_point()}
    return sum(tensors.values())


def recipe_plan(recipe: Recipe) -> Plan | None:
    """The plan a grid recipe runs: a pruning method (quantizing the kept weights with
    ``bits``), a quantizer alone, or nothing (None: a dense point)."""
    spec = (QuantSpec(recipe.bits, recipe.group, recipe.symmetric)
            if recipe.bits is not None else None)
    if recipe.method is not None:
        settings = {} if spec is None else {"quant": spec, "quant_method": recipe.quantizer}
        return make_plan(recipe.method, recipe.pattern, settings)
    if spec is not None:
        return make_plan(recipe.quantizer, None, {"quant": spec})
    return None


def _run_recipe(loaded: LoadedModel, recipe: Recipe, batches: Sequence[dict[str, torch.Tensor]],
                info: dict[str, Any], measure: Callable[[nn.Module], dict[str, Any]]
                ) -> tuple[LoadedModel, PruneReport | None, dict[str, Any]]:
    """Compress a copy of ``loaded`` by ``recipe``; its evaluation (float tensors evaluated in
    float32 after rounding to the recipe's dtype)."""
    work = copy_model(loaded)
    plan = recipe_plan(recipe)
    report = None if plan is None else run_one(work, plan, batches, calibration_info=info)
    work.model.to(model_dtype(recipe.dtype))  # what is stored; measured in float32
    return work, report, measure(copy.deepcopy(work.model).float())


def sweep(model: str | LoadedModel, out: Path, recipes: list[Recipe], *,
           calib: str = "stdlib", samples: int = 64, seqlen: int = 128, batch_size: int = 8,
           seed: int = 0, progress: Callable[[str, int, int], None] | None = None,
           labels: str | None = None, calib_protocol: str = "auto") -> dict[str, Any]:
    """Measure every point of ``recipes`` on ``model``: quality (the
    model's own metric), bytes of its real prunekit checkpoint, ratio to dense fp16, seconds;
    then the frontier. Points already measured in ``out`` are reused (an interrupted run
    resumes). Writes out/points/NAME/ (checkpoint and point.json), pareto.json, pareto.md and
    pareto.png; returns the pareto.json content. ``labels``: a labelled set (JSONL or CSV with
    ``text`` and ``label``) for a Hugging Face sequence classifier: quality is its accuracy."""
    t0 = time.perf_counter()
    if labels is not None:
        examples = read_labelled(labels)  # before the model loads
        setup = _transformer_points(model, calib, samples, seqlen, batch_size, seed,
                                    calib_protocol, examples)
    elif isinstance(model, str) and is_small_model(model):
        setup = _classifier_points(model, samples, seed)
    else:
        setup = _transformer_points(model, calib, samples, seqlen, batch_size, seed,
                                    calib_protocol)
    quality = setup.quality
    points = []
    for i, recipe in enumerate(recipes):
        folder = out / "points" / recipe.name
        if (folder / POINT_FILE).is_file():
            point = json.loads((folder / POINT_FILE).read_text())
            point["ratio_fp16"] = 2 * setup.numel / point["bytes"]  # as this version counts
            points.append(point)
            continue
        if progress is not None:
            progress(recipe.name, i, len(recipes))
        start = time.perf_counter()
        module, results, evaluation = setup.run(recipe)
        seconds = time.perf_counter() - start
        point = {"name": recipe.name, "recipe": dataclasses.asdict(recipe),
                 "label": recipe.describe(), "quality_metric": quality,
                 quality: evaluation[quality], "evaluation": evaluation, "seconds": seconds}

        def write(tmp: Path) -> None:
            write_checkpoint(tmp, module, quantized=quantized_weights(results or []),
                             builder=setup.builder,
                             provenance={"source": setup.source, "recipe": recipe.describe()})
            point["bytes"] = _checkpoint_bytes(tmp)
            point["ratio_fp16"] = 2 * setup.numel / point["bytes"]
            point.update(_target_bytes(tmp, setup.targets))
            (tmp / POINT_FILE).write_text(json.dumps(point, indent=1, default=str) + "\n")

        write_folder(folder, True, write)
        points.append(point)
    result = summarize_points(points, quality, setup.higher, setup.source, setup.calibration,
                              setup.numel)
    result["seconds_this_run"] = time.perf_counter() - t0
    pareto_report(result, out)
    return result


def _target_bytes(folder: Path, targets: set[str]) -> dict[str, Any]:
    """Bytes and ratio to fp16 of the compressible layers' weights alone (the Linear layers of
    the blocks), from the checkpoint's own part sizes."""
    rows = [t for t in inspect_checkpoint(folder)["tensors"] if t["name"] in targets]
    values = sum(math.prod(t["shape"]) for t in rows)
    stored = sum(t["bytes"] for t in rows)
    return {"layer_bytes": stored, "layer_values": values,
            "layer_ratio_fp16": 2 * values / stored if stored else 0.0}


def read_labelled(path: str) -> list[tuple[str, str]]:
    """(text, label) pairs of a JSONL file (one {"text": ..., "label": ...} per line) or a CSV
    file with ``text`` and ``label`` columns; ``bbc``: the held-out BBC News articles with
    their classes (:func:`prunekit.data.packaged.bbc_labelled`)."""
    if path == "bbc":
        return bbc_labelled("eval")
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"--labels {path!r}: no such file (JSONL or CSV with text and label)")
    try:
        if p.suffix == ".csv":
            with open(p, newline="") as f:
                rows = list(csv.DictReader(f))
        else:
            rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    except (OSError, ValueError, csv.Error) as exc:
        raise DataError(f"--labels {path!r}: unreadable ({exc})") from None
    if not rows or any(not isinstance(r, dict) or "text" not in r or "label" not in r
                       for r in rows):
        raise DataError(f"--labels {path!r}: every row needs 'text' and 'label'")
    return [(str(r["text"]), str(r["label"])) for r in rows]


def _transformer_points(model: str | LoadedModel, calib: str, samples: int, seqlen: int,
                        batch_size: int, seed: int, calib_protocol: str = "auto",
                        examples: list[tuple[str, str]] | None = None) -> Setup:
    """The :class:`Setup` of a Hugging Face model: embedding fidelity or perplexity; with
    labelled ``examples``, a sequence classifier's accuracy on them."""
    if examples is None:
        loaded = model if isinstance(model, LoadedModel) else load_model(model)
        measure = prepare_evaluation(loaded, calib, seqlen, "cpu")
        quality, higher = (("cosine", True) if loaded.kind == "encoder"
                           else ("pruned_ppl", False))
        extra: dict[str, Any] = {}
    else:
        loaded = (model if isinstance(model, LoadedModel)
                  else _load_sequence_classifier(model))
        measure = _accuracy_on(loaded, examples, seqlen)
        quality, higher = "accuracy", True
        extra = {"dense_accuracy": measure(loaded.model)["accuracy"]}
    protocol = resolve_protocol(calib_protocol, loaded.kind)
    batches = calibration(loaded.tokenizer, calib, samples, seqlen, batch_size, seed,
                          max_positions(loaded.model), protocol=protocol)
    info = {"source": calib, "samples": samples, "seqlen": seqlen, "seed": seed,
            "protocol": protocol,
            **({} if examples is None else {"labelled": len(examples)})}
    def run(recipe: Recipe) -> tuple[nn.Module, list[LayerResult], dict[str, Any]]:
        work, report, evaluation = _run_recipe(loaded, recipe, batches, info, measure)
        return work.model, (report.layers if report else []), {**evaluation, **extra}

    targets = {f"{n}.weight" for n in HFAdapter().all_targets(loaded.model)}
    return Setup(run, quality, higher, loaded.source, info, float_values(loaded.model), None,
                 targets)


def _load_sequence_classifier(model: str) -> LoadedModel:
    path, local = resolve_model(model)
    try:
        net = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=local)
        tok = AutoTokenizer.from_pretrained(path, local_files_only=local)
    except (OSError, ValueError) as exc:
        raise ModelError(f"--labels needs a sequence classifier: cannot load {model!r} as "
                         f"one: {str(exc).splitlines()[0]}") from None
    return LoadedModel(model=net.eval(), tokenizer=tok, source=model, kind="encoder")


def _accuracy_on(loaded: LoadedModel, examples: list[tuple[str, str]], seqlen: int
                 ) -> Callable[[nn.Module], dict[str, Any]]:
    """measure(model): accuracy on the labelled ``examples`` (labels matched to the model's
    id2label names, or read as indices)."""
    names = {str(v): int(k) for k, v in (loaded.model.config.id2label or {}).items()}
    try:
        y = torch.tensor([names[lab] if lab in names else int(lab) for _, lab in examples])
    except ValueError:
        raise DataError(f"labels {sorted({lab for _, lab in examples})[:5]} are neither the "
                        f"model's label names {sorted(names)[:5]} nor indices") from None
    enc = loaded.tokenizer([t for t, _ in examples], truncation=True, max_length=seqlen,
                           padding=True, return_tensors="pt")

    def measure(m: nn.Module) -> dict[str, Any]:
        with torch.no_grad():
            logits = torch.cat([m(**{k: v[i : i + 32] for k, v in enc.items()}).logits
                                for i in range(0, len(y), 32)])
        return {"accuracy": float((logits.argmax(-1) == y).double().mean()), "n_test": len(y)}

    return measure


def _classifier_points(spec: str, samples: int, seed: int) -> Setup:
    """The :class:`Setup` of a built-in classifier (``digits-mlp[:HIDDEN]``): test accuracy on
    the held-out split; layer methods calibrated on the first ``samples`` training images."""
    net, data = trained_digits_mlp(parse_small_spec(spec), seed=seed)
    x = data.x_train[:samples]
    dense = classifier_metrics(net, data.x_test, data.y_test)
    info = {"source": "sklearn digits (train split)", "samples": len(x), "seed": seed}

    def run(recipe: Recipe) -> tuple[nn.Module, list[LayerResult], dict[str, Any]]:
        work = copy.deepcopy(net)
        plan = recipe_plan(recipe)
        results = [] if plan is None else prune_layers(work, plan, None, x)
        work.to(model_dtype(recipe.dtype))  # what is stored; measured in the data's dtype
        evaluated = copy.deepcopy(work).to(data.x_test.dtype)
        return work, results, {**classifier_metrics(evaluated, data.x_test, data.y_test),
                               "dense_accuracy": dense["accuracy"]}

    targets = {f"{n}.weight" for n in linear_targets(net)}
    return Setup(run, "accuracy", True, spec, info, float_values(net), spec, targets)


def summarize_points(points: list[dict], quality: str, higher: bool, source: str,
                     calibration_info: dict, numel: int) -> dict[str, Any]:
    """The frontier flags and domination lists of measured points."""
    flags = frontier(points, quality, higher)
    for p, on in zip(points, flags):
        p["frontier"] = on
    return {"model": source, "quality_metric": quality, "higher_is_better": higher,
            "calibration": calibration_info, "dense_fp16_bytes": 2 * numel, "points": points,
            "dominates": dominated_by(points, quality, higher)}
