"""prune(): what the CLI and users call. Thin orchestration over the pipeline and methods."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fnmatch
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .errors import DataError, ModelError, NumericalError, PatternError, UsageError
from .masks import global_patterns
from .methods.base import (
    DTYPES, LayerCompressor, LayerResult, MethodConfig, get_method, weight_matrix,
)
from .models.adapter import HFAdapter, is_target
from .models.loaders import LoadedModel, load_model, resolve_model
from .patterns import NM, Pattern, Unstructured, check_requested, parse_pattern
from .pipeline import Progress, run_sequential
from .report import PruneReport, report_text, write_json

if TYPE_CHECKING:
    from .distributed import Group

log = logging.getLogger(__name__)

REPORT_FILE = "prune_report.json"
TABLE_FILE = "prune_report.txt"


def make_config(method: str, overrides: Mapping[str, Any] | None = None) -> MethodConfig:
    """The method's frozen config with ``overrides``; unknown keys are a clear error."""
    cls = get_method(method).config_cls
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UsageError(
            f"method {method!r} has no setting {', '.join(unknown)}: its settings are "
            f"{', '.join(sorted(known))}"
        )
    dtype = overrides.get("hessian_dtype")
    if dtype is not None and dtype not in DTYPES:
        raise UsageError(
            f"hessian_dtype {dtype!r} is not supported: use one of {', '.join(sorted(DTYPES))}"
        )
    try:
        return cls(**overrides)
    except (TypeError, ValueError) as exc:  # a config's own validation, or a wrong type
        raise UsageError(f"method {method!r}: invalid settings {overrides}: {exc}") from None


def check_kind(method: str, kind: str) -> None:
    """Raise :class:`UsageError` if ``method`` is not a ``kind`` ("prune" or "quantize")
    method, naming the command that runs it."""
    actual = get_method(method).kind
    if actual != kind:
        raise UsageError(
            f"method {method!r} {'quantizes' if actual == 'quantize' else 'prunes'}: run it "
            f"with `prunekit {actual}` (prunekit.{actual}()); to prune and quantize in one "
            "pass use `prunekit prune ... --bits 4`"
        )


def resolve_pattern(pattern: str | float | Pattern | None, method: str) -> Pattern | None:
    """A requested pattern; a bare sparsity gets the method's default scope (SparseGPT: layer,
    its paper's adaptive per-block mask; magnitude and Wanda: row). Quantizers take none."""
    if get_method(method).kind == "quantize":
        if pattern is not None:
            raise UsageError(f"method {method!r} quantizes and takes no sparsity pattern: prune "
                             "with `prunekit prune ... --bits` for both")
        return None
    if pattern is None:
        raise UsageError(f"method {method!r} needs a sparsity or pattern, e.g. 0.5 or 2:4")
    if isinstance(pattern, (Unstructured, NM)):
        return check_requested(pattern)
    return parse_pattern(pattern, get_method(method).default_scope)


def check_scope(method: str, pattern: Pattern) -> None:
    """Raise :class:`PatternError` if ``method`` cannot rank weights at ``pattern``'s scope."""
    if isinstance(pattern, Unstructured) and pattern.scope == "global":
        if not get_method(method).supports_global:
            from .methods import load_builtin_methods

            ranked = sorted(n for n, c in load_builtin_methods().items() if c.supports_global)
            raise PatternError(
                f"method {method!r} has no global scope: use --scope row or layer "
                f"(global ranking is for {' and '.join(ranked)})"
            )


def _abs_score(_name: str, W: torch.Tensor) -> torch.Tensor:
    return W.abs()


class _LayerScores(Mapping[str, torch.Tensor]):
    """``score(name, W)`` of each target layer's (out, in) weight W (default |W|), computed
    when asked (no copy of all weights at once)."""

    def __init__(self, layers: Mapping[str, nn.Module],
                 score: Callable[[str, torch.Tensor], torch.Tensor] = _abs_score) -> None:
        self.layers, self.score = layers, score

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.score(name, weight_matrix(self.layers[name]))

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)


def layer_patterns(
    model: nn.Module, adapter: HFAdapter, pattern: Pattern, method: str,
    score: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
) -> Callable[[str], Pattern]:
    """Per-layer patterns: global scope is resolved by one ranking over all targets of
    ``score(name, W)`` (default |W|; movement: its scores against the base weights)."""
    check_scope(method, pattern)
    if isinstance(pattern, Unstructured) and pattern.scope == "global":
        targets = adapter.all_targets(model)
        per_layer = global_patterns(_LayerScores(targets, score or _abs_score), pattern.sparsity)
        return per_layer.__getitem__
    return lambda _name: pattern


# --- base weights: methods that compare the model with the checkpoint it was fine-tuned from --

def needs_base(method: str) -> bool:
    """True for a method that scores weights against a base checkpoint (``movement``)."""
    return bool(getattr(get_method(method), "needs_base", False))


def check_base(method: str, base: object) -> None:
    """Raise :class:`UsageError` if ``method`` needs a base and has none, or the reverse."""
    if needs_base(method) and base is None:
        raise UsageError(
            f"method {method!r} scores the weights by how they moved in fine-tuning: pass "
            "base= the pretrained checkpoint the model was fine-tuned from (CLI: --base)"
        )
    if base is not None and not needs_base(method):
        raise UsageError(
            f"base= (--base) is for method 'movement', not {method!r}: drop it, or use "
            "method 'movement'"
        )


def _base_matrix(base: nn.Module | Mapping[str, torch.Tensor], name: str) -> torch.Tensor | None:
    """The base's (out, in) weight of layer ``name``, or None if it has no such layer."""
    if isinstance(base, nn.Module):
        try:
            layer = base.get_submodule(name)
        except AttributeError:
            return None
        return weight_matrix(layer).detach() if is_target(layer) else None
    W0 = base.get(name)
    return None if W0 is None else W0.detach()


def base_weights(
    model: nn.Module, base: LoadedModel | nn.Module | Mapping[str, torch.Tensor],
    skip: Sequence[str] = (), source: str | None = None,
) -> dict[str, torch.Tensor]:
    """{target layer name: the base's (out, in) weight}, matched by qualified name.

    Raises :class:`ModelError` naming the first target layer the base lacks or has in another
    shape, :class:`NumericalError` for NaN/Inf base weights, and :class:`ModelError` if the
    base holds the very same weights as the model (every movement would be 0). No copies: the
    tensors are the base's own storage.
    """
    if isinstance(base, LoadedModel):
        source, base = source or base.source, base.model
    where = f"--base {source!r}" if source else "the base"
    out, moved = {}, False
    for name, layer in HFAdapter(skip=tuple(skip)).all_targets(model).items():
        W, W0 = weight_matrix(layer), _base_matrix(base, name)
        if W0 is None:
            raise ModelError(
                f"{name}: layer missing from {where}: the base must be the pretrained "
                "checkpoint of the same architecture the model was fine-tuned from"
            )
        if tuple(W0.shape) != tuple(W.shape):
            raise ModelError(
                f"{name}: shape {tuple(W.shape)} (out, in) in the model but "
                f"{tuple(W0.shape)} in {where}: pass the checkpoint this model was fine-tuned from"
            )
        if not bool(torch.isfinite(W0).all()):
            raise NumericalError(
                f"{name}: {where} has NaN/Inf weights: load a healthy checkpoint"
            )
        moved = moved or not torch.equal(W0.to(W.device, W.dtype), W)
        out[name] = W0
    if out and not moved:
        raise ModelError(
            f"{where} holds the same weights as the model in every target layer, so no weight "
            "moved: pass the pretrained checkpoint the model was fine-tuned from"
        )
    return out


def load_base(
    base: str | LoadedModel | nn.Module | Mapping[str, torch.Tensor], dtype: str = "float32"
) -> LoadedModel | nn.Module | Mapping[str, torch.Tensor]:
    """The base as a model: a spec (HF id, local folder, 'minilm') is loaded with the model's
    loader in ``dtype``; anything else is returned as it is. Load errors name --base."""
    if not isinstance(base, str):
        return base
    try:
        return load_model(base, model_dtype(dtype))
    except ModelError as exc:
        raise ModelError(f"--base: {exc}") from None


def check_weights_finite(model: nn.Module) -> None:
    """Raise :class:`NumericalError` naming the first parameter with NaN/Inf values.

    Checked before any work, so the error names the weight at fault rather than the first
    layer whose calibration activations it poisons.
    """
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.is_floating_point() and not bool(torch.isfinite(param).all()):
                bad = int((~torch.isfinite(param)).sum())
                raise NumericalError(
                    f"{name}: {bad} of {param.numel()} weights are NaN/Inf: the checkpoint is "
                    "corrupt or was saved after a diverged run; load a healthy checkpoint"
                )


def check_pattern_fits(model: nn.Module, pattern: Pattern, skip: Sequence[str] = ()) -> None:
    """Raise :class:`PatternError` now if an N:M pattern does not fit a target layer."""
    if not isinstance(pattern, NM):
        return
    for name, layer in HFAdapter(skip=tuple(skip)).all_targets(model).items():
        pattern.check_fits(weight_matrix(layer).shape[1], where=name)


def check_skips(model: nn.Module, skip: Sequence[str]) -> None:
    """Raise :class:`UsageError` for a --skip glob that matches no target layer (a typo would
    otherwise prune everything)."""
    names = list(HFAdapter().all_targets(model))
    for glob in skip:
        if not any(fnmatch.fnmatch(n, glob) for n in names):
            raise UsageError(
                f"--skip {glob!r} matches no target layer: target names look like {names[0]!r}"
            )


def preflight(
    model: nn.Module, pattern: Pattern, skip: Sequence[str] = (),
    method: type[LayerCompressor] | None = None, config: MethodConfig | None = None,
) -> None:
    """Checks that need only the model: finite weights, an N:M pattern that fits, and the
    method's own check of pattern and settings."""
    check_weights_finite(model)
    check_skips(model, skip)
    check_pattern_fits(model, pattern, skip)
    if method is not None:
        method.check(pattern, config or method.config_cls())


def prune_model(
    model: nn.Module,
    method: str,
    pattern: Pattern | None,
    batches: Sequence[dict[str, torch.Tensor]],
    *,
    config: MethodConfig | None = None,
    device: str | torch.device = "cpu",
    skip: Sequence[str] = (),
    progress: Progress | None = None,
    check: bool = True,
    base: LoadedModel | nn.Module | Mapping[str, torch.Tensor] | None = None,
    group: Group | None = None,
) -> list[LayerResult]:
    """Prune ``model`` in place with ``method`` to ``pattern`` on calibration ``batches``.

    ``base``: for ``movement``, the pretrained model the fine-tuned ``model`` came from (a
    :class:`LoadedModel`, a module of the same architecture, or {layer name: (out, in)
    weight}); its layers are matched to the model's by qualified name.
    ``check=False`` skips :func:`preflight` and the base checks (for a caller that has run
    them already, with ``base`` then the mapping :func:`base_weights` returned).
    ``group``: this process's place in a torch.distributed job; ``batches`` are then this
    rank's share, and every rank ends with the same pruned model (:mod:`prunekit.distributed`).
    """
    cls = get_method(method)
    config = config or cls.config_cls()
    if pattern is not None or cls.kind == "prune":
        check_requested(pattern)
    check_base(method, base)
    if not batches:
        raise DataError("the calibration set is empty: pass --samples >= 1 and a non-empty --calib")
    if check:
        preflight(model, pattern, skip, cls, config)
    if base is not None and (check or not isinstance(base, Mapping)):
        base = base_weights(model, base, skip)
    adapter = HFAdapter(skip=tuple(skip))
    score = None if base is None else (lambda name, W: cls.scores(W, base[name], config))
    pattern_of = layer_patterns(model, adapter, pattern, method, score)

    def make(name: str, layer: nn.Module) -> LayerCompressor:
        if base is None:
            return cls(layer, pattern_of(name), config, name)
        return cls(layer, pattern_of(name), config, name, base=base[name])

    return run_sequential(model, adapter, batches, make, device=device, progress=progress,
                          group=group)


def quantize_model(
    model: nn.Module, method: str, batches: Sequence[dict[str, torch.Tensor]], *,
    spec: Any = None, config: MethodConfig | None = None, **kwargs: Any,
) -> list[LayerResult]:
    """Quantize ``model``'s target layers in place with ``method`` (rtn, gptq, awq) to ``spec``
    (a :class:`prunekit.quant.QuantSpec`; default int4, groups of 128) on calibration
    ``batches``; zeros of a pruned model are kept exactly. Each result's ``quantized`` holds
    the codes. Keywords as :func:`prune_model`."""
    check_kind(method, "quantize")
    if config is None:
        config = make_config(method, {} if spec is None else {"quant": spec})
    return prune_model(model, method, None, batches, config=config, **kwargs)


def check_seqlen(seqlen: int, max_positions: int | None) -> None:
    """Raise :class:`DataError` if ``seqlen`` is longer than the model's position table."""
    if max_positions is not None and seqlen > max_positions:
        raise DataError(
            f"--seqlen {seqlen} is longer than the model's {max_positions} positions: "
            f"use --seqlen {max_positions} or less"
        )


def _base_source(base: str | LoadedModel | nn.Module | Mapping[str, torch.Tensor]) -> str:
    """How the report names a base: its spec, its loaded source, the module's class, or the
    number of layer weights given."""
    if isinstance(base, str):
        return base
    if isinstance(base, LoadedModel):
        return base.source
    if isinstance(base, nn.Module):
        return type(base).__name__
    if isinstance(base, Mapping):
        return f"{len(base)} layer weights"
    raise UsageError(
        f"base= {type(base).__name__} is not a model: pass a Hugging Face id, a local folder, "
        "'minilm', a LoadedModel, an nn.Module or {layer name: (out, in) weight}"
    )


def calibration(
    tokenizer: Any, source: str, samples: int, seqlen: int, batch_size: int = 8, seed: int = 0,
    max_positions: int | None = None, texts: Sequence[str] | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Tokenised calibration batches of ``samples`` × ``seqlen`` tokens from ``source``.

    ``texts``: the source's calibration texts when the caller has loaded them already.
    """
    from .data import calibration_batches, load_texts

    check_seqlen(seqlen, max_positions)
    texts = list(texts) if texts is not None else load_texts(source, "calib")
    return calibration_batches(tokenizer, texts, samples, seqlen, batch_size=batch_size, seed=seed)


def max_positions(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions"):
        if cfg is not None and isinstance(getattr(cfg, key, None), int):
            return getattr(cfg, key)
    return None


def evaluation_texts(calib: str, eval_data: str | None = None) -> list[str]:
    """The held-out texts: the ``"eval"`` part of ``eval_data`` (default: of ``calib``).

    A calibration source that names its split (``NAME@train``) uses that split whole, so it
    has no held-out part: evaluating on it needs another source.
    """
    from .data import explicit_split, load_texts

    source = eval_data or calib
    if source == calib and explicit_split(calib) is not None:
        raise DataError(
            f"--calib {calib!r} names a split, which calibration uses whole: pass --eval-data "
            "with another split (e.g. NAME@test), or --no-eval"
        )
    try:
        return load_texts(source, "eval")
    except DataError as exc:
        raise DataError(f"{exc}; or skip the evaluation (--no-eval)") from None


def fidelity_passages(texts: Sequence[str], n_texts: int) -> list[str]:
    """Up to ``n_texts`` held-out passages (fewer for a small source; the count is reported)."""
    from .data import eval_sentences

    try:
        passages = eval_sentences(list(texts), n_texts, max_chars=500, at_most=True)
    except DataError as exc:
        raise DataError(f"{exc}; embedding fidelity needs at least 2: give a larger --calib "
                        "source or pass --no-eval") from None
    if len(passages) < n_texts:
        log.warning("only %d held-out passages for embedding fidelity (of %d wanted)",
                    len(passages), n_texts)
    return passages


@contextlib.contextmanager
def on_device(model: nn.Module, device: str | torch.device) -> Iterator[nn.Module]:
    """The whole model on ``device`` for an evaluation, back where it was afterwards."""
    home = next(model.parameters()).device
    model.to(device)
    try:
        yield model
    finally:
        model.to(home)


def prepare_evaluation(
    loaded: LoadedModel, source: str, seqlen: int, device: str | torch.device, n_texts: int = 200,
    texts: Sequence[str] | None = None,
) -> Callable[[nn.Module], dict[str, Any]]:
    """Measure the dense model now; return a function that measures a pruned one against it.

    ``texts``: the source's evaluation texts when the caller has loaded them already.
    """
    from .data import eval_windows, explicit_split
    from .eval import embedding_fidelity, perplexity, PerplexityProtocol, sentence_embeddings

    texts = list(texts) if texts is not None else evaluation_texts(source)
    tok = loaded.tokenizer
    if loaded.kind == "encoder":
        passages = fidelity_passages(texts, n_texts)
        max_len = min(seqlen, 128)

        def embed(model: nn.Module) -> torch.Tensor:
            with on_device(model, device):
                return sentence_embeddings(model, tok, passages, max_length=max_len, device=device)

        dense = embed(loaded.model)

        def fidelity(pruned: nn.Module) -> dict[str, Any]:
            return dataclasses.asdict(embedding_fidelity(dense, embed(pruned), max_len)) | {"data": source}

        return fidelity
    windows = eval_windows(tok, texts, seqlen, stride=seqlen, max_windows=32)

    def ppl_of(model: nn.Module) -> tuple[float, int]:
        with on_device(model, device):
            return perplexity(model, windows, device)

    dense_ppl, n_tok = ppl_of(loaded.model)
    split = explicit_split(source) or "held-out (validation/test split, or a 10% hash split)"
    protocol = PerplexityProtocol(source, split, seqlen, seqlen, len(windows), n_tok)

    def ppl(pruned: nn.Module) -> dict[str, Any]:
        return {"dense_ppl": dense_ppl, "pruned_ppl": ppl_of(pruned)[0], "protocol": str(protocol)}

    return ppl


def run_one(
    loaded: LoadedModel,
    method: str,
    pattern: Pattern,
    batches: Sequence[dict[str, torch.Tensor]],
    *,
    calibration_info: dict[str, Any],
    config: MethodConfig | None = None,
    measure: Callable[[nn.Module], dict[str, Any]] | None = None,
    device: str = "cpu",
    skip: Sequence[str] = (),
    progress: Progress | None = None,
    check: bool = True,
    base: LoadedModel | nn.Module | Mapping[str, torch.Tensor] | None = None,
    group: Group | None = None,
) -> PruneReport:
    """Prune ``loaded.model`` in place, evaluate it with ``measure``, and report.

    ``base``: the pretrained model for ``movement`` (see :func:`prune_model`)."""
    cfg = config or get_method(method).config_cls()
    t0 = time.perf_counter()
    layers = prune_model(loaded.model, method, pattern, batches, config=cfg, device=device,
                         skip=skip, progress=progress, check=check, base=base, group=group)
    t1 = time.perf_counter()
    evaluation = measure(loaded.model) if measure else {}
    return PruneReport(
        model=loaded.source, method=method, pattern="dense" if pattern is None else str(pattern),
        calibration=calibration_info,
        device=str(device), layers=layers, evaluation=evaluation,
        params_total=sum(p.numel() for p in loaded.model.parameters()),
        config=dataclasses.asdict(cfg),
        seconds={"prune": t1 - t0, "eval": time.perf_counter() - t1},
    )


def compress(
    model: str | LoadedModel,
    method: str = "sparsegpt",
    pattern: str | float | Pattern | None = 0.5,
    *,
    calib: str = "stdlib",
    samples: int = 128,
    seqlen: int = 512,
    batch_size: int = 8,
    seed: int = 0,
    device: str = "cpu",
    skip: Sequence[str] = (),
    config: Mapping[str, Any] | MethodConfig | None = None,
    evaluate: bool = True,
    eval_data: str | None = None,
    dtype: str = "float32",
    progress: Progress | None = None,
    base: str | LoadedModel | nn.Module | Mapping[str, torch.Tensor] | None = None,
    group: Group | None = None,
) -> tuple[LoadedModel, PruneReport]:
    """Load ``model``, calibrate on ``calib``, compress it with ``method``: a pruning method to
    ``pattern`` (with ``config["quant"]`` also quantized), or a quantizer (pattern None).

    ``base`` (method ``movement`` only, and required there): the pretrained checkpoint the
    fine-tuned ``model`` came from, as a spec loaded like the model (Hugging Face id, local
    folder or 'minilm', in ``dtype``), a :class:`LoadedModel`, a module, or {layer name:
    (out, in) weight}; its source is recorded in the report's config as ``base``.

    ``group``: this process's place in a torch.distributed job (see
    :func:`prunekit.distributed.from_environment`): the calibration batches are split among
    the ranks and only rank 0 evaluates; every rank returns the same pruned model.

    Returns the pruned model (in place) with its tokenizer, and a :class:`PruneReport`.
    Everything that can be checked cheaply (pattern, method, device, data source, then the
    model's weights, positions and layer shapes, and the base's layer names and shapes) is
    checked before the slow steps.
    """
    from .data import load_texts

    t0 = time.perf_counter()
    pattern = resolve_pattern(pattern, method)
    cfg = config if isinstance(config, MethodConfig) else make_config(method, config)
    check_scope(method, pattern)
    check_base(method, base)
    base_source = None if base is None else _base_source(base)
    check_device(device)
    calib_texts = load_texts(calib, "calib")
    eval_texts = evaluation_texts(calib, eval_data) if evaluate else None
    t_texts = time.perf_counter()
    loaded = model if isinstance(model, LoadedModel) else load_model(model, model_dtype(dtype))
    check_seqlen(seqlen, max_positions(loaded.model))
    preflight(loaded.model, pattern, skip, get_method(method), cfg)
    weights = (None if base is None  # only the base's target weights are kept
               else base_weights(loaded.model, load_base(base, dtype), skip, base_source))
    t_load = time.perf_counter()
    batches = calibration(loaded.tokenizer, calib, samples, seqlen, batch_size, seed,
                          max_positions(loaded.model), texts=calib_texts)
    info = {"source": calib, "samples": samples, "seqlen": seqlen, "seed": seed,
            "tokens": samples * seqlen}
    t_data = time.perf_counter()
    evaluate = evaluate and (group is None or group.is_main)
    measure = (prepare_evaluation(loaded, eval_data or calib, seqlen, device, texts=eval_texts)
               if evaluate else None)
    if group is not None:
        info["processes"] = group.world
        batches = group.shard(batches)
    t_dense = time.perf_counter()
    report = run_one(loaded, method, pattern, batches, calibration_info=info, config=cfg,
                     measure=measure, device=device, skip=skip, progress=progress, check=False,
                     base=weights, group=group)
    if base_source is not None:
        report.config["base"] = base_source
    report.seconds = {"load": t_load - t_texts, "calibration_data": t_data - t_load + t_texts - t0,
                      "dense_eval": t_dense - t_data, **report.seconds}
    return loaded, report


def prune(model: str | LoadedModel, method: str = "sparsegpt",
          pattern: str | float | Pattern = 0.5, **kwargs: Any) -> tuple[LoadedModel, PruneReport]:
    """Prune ``model`` with ``method`` to ``pattern``; see :func:`compress` for the keyword
    arguments. ``config={"quant": QuantSpec(bits=4)}`` also quantizes the kept weights (joint
    with SparseGPT, else GPTQ after pruning each layer), keeping the mask exactly."""
    check_kind(method, "prune")
    return compress(model, method, pattern, **kwargs)


def quantize(model: str | LoadedModel, method: str = "gptq", *, bits: int = 4,
             group: int | None = 128, symmetric: bool = True, clip: str = "minmax",
             config: Mapping[str, Any] | MethodConfig | None = None, **kwargs: Any
             ) -> tuple[LoadedModel, PruneReport]:
    """Quantize ``model``'s target layers with ``method`` (rtn, gptq, awq) to ``bits`` with
    ``group`` input columns per scale (None: per output channel). A model that is already
    pruned keeps its zeros exactly. Other settings go in ``config`` (e.g. act_order=True);
    calibration and evaluation keywords as :func:`compress`. Returns the model, whose layers
    hold the dequantized weights (:func:`quantized_weights` gives the codes), and the report."""
    from .quant import QuantSpec

    check_kind(method, "quantize")
    if not isinstance(config, MethodConfig):
        config = make_config(method, {"quant": QuantSpec(bits, group, symmetric, clip),
                                      **(config or {})})
    return compress(model, method, None, config=config, **kwargs)


STREAM_FORMATS = ("prunekit", "hf")


def prune_stream(
    model: str, out: str | os.PathLike, method: str = "sparsegpt",
    pattern: str | float | Pattern | None = 0.5, *, calib: str = "stdlib", samples: int = 128,
    seqlen: int = 512, batch_size: int = 8, seed: int = 0, device: str = "cpu",
    skip: Sequence[str] = (), config: Mapping[str, Any] | MethodConfig | None = None,
    dtype: str = "float32", fmt: str = "prunekit", tensor_format: str = "auto",
    overwrite: bool = False, restart: bool = False, progress: Progress | None = None,
    group: Group | None = None, announce: Callable[[Any], None] | None = None,
) -> tuple[Path, PruneReport]:
    """Compress a Hugging Face checkpoint (a folder of safetensors files, or a hub id
    downloaded to the local cache) block by block without holding the whole model in memory,
    writing the result to ``out`` (see :mod:`prunekit.streaming`); keywords as
    :func:`compress`. A run that stops part way resumes from its last finished block when
    called again with the same settings (``restart=True`` discards it instead); ``out``
    appears only when complete. ``announce(estimate)`` receives the peak-memory
    :class:`~prunekit.streaming.MemoryEstimate` before the work starts. ``fmt``: "prunekit"
    (compact, one file per block) or "hf" (dense sharded safetensors). Returns the output
    folder and the report (no evaluation: the model is never whole in memory)."""
    from . import streaming as st
    from .data import load_texts

    t0 = time.perf_counter()
    pattern = resolve_pattern(pattern, method)
    cfg = config if isinstance(config, MethodConfig) else make_config(method, config)
    check_scope(method, pattern)
    _check_streamable(method, pattern, fmt)
    check_device(device)
    out_path = check_output(out, overwrite)
    calib_texts = load_texts(calib, "calib")
    path, kind = _stream_source(model)
    torch_dtype = model_dtype(dtype)
    skeleton = st.empty_model(path, kind, torch_dtype)
    source = st.SafetensorsSource(path)
    plan = st.layout(skeleton, source)
    cls = get_method(method)
    _check_skeleton(skeleton, seqlen, skip, pattern, cls, cfg)
    adapter = HFAdapter(skip=tuple(skip))
    estimate = st.estimate_memory(skeleton, adapter, source, batch_size, seqlen, torch_dtype,
                                  DTYPES[cfg.hessian_dtype])
    if announce is not None:
        announce(estimate)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    batches = calibration(tokenizer, calib, samples, seqlen, batch_size, seed,
                          max_positions(skeleton), texts=calib_texts)
    n_blocks = len(adapter.block_list(skeleton)[1])
    settings = {"model": str(Path(path).resolve()), "files": source.nbytes(), "method": method,
                "pattern": str(pattern), "config": json.loads(json.dumps(
                    dataclasses.asdict(cfg), default=str)), "calib": calib, "samples": samples,
                "seqlen": seqlen, "batch_size": batch_size, "seed": seed, "dtype": dtype,
                "skip": list(skip), "format": fmt, "tensor_format": tensor_format}  # to resume
    work = st.WorkDir(out_path)
    main = group is None or group.is_main
    state = work.open(settings, restart) if main else {"blocks_done": None, "layers": []}
    if group is not None:
        group.barrier()
    resumed = state["blocks_done"]
    writer = st.prunekit_writer(tensor_format) if fmt == "prunekit" else st.hf_writer(n_blocks)
    job = st.StreamJob(source, plan, work, state, torch_dtype, torch.device(device), writer)
    pattern_of = layer_patterns(skeleton, adapter, pattern, method)
    t1 = time.perf_counter()
    results = st.stream_prune(
        skeleton, adapter, batches,
        lambda name, layer: cls(layer, pattern_of(name), cfg, name), job, progress, group)
    t2 = time.perf_counter()
    info = {"source": calib, "samples": samples, "seqlen": seqlen, "seed": seed,
            "tokens": samples * seqlen}
    if group is not None:
        info["processes"] = group.world
    report = PruneReport(
        model=model, method=method, pattern="dense" if pattern is None else str(pattern),
        calibration=info, device=str(device), layers=results, evaluation={},
        params_total=sum(p.numel() for p in skeleton.parameters()),
        config={**dataclasses.asdict(cfg), "stream": {
            "estimate_bytes": estimate.total, "checkpoint_bytes": estimate.checkpoint,
            "resumed_after_block": resumed, "peak_rss_bytes": peak_rss()}},
        seconds={"load": t1 - t0, "prune": t2 - t1})
    if main:
        _finish_stream(skeleton, job, report, tokenizer, fmt, out_path, overwrite, n_blocks)
    if group is not None:
        group.barrier()
        if not main:  # another machine's activations (on one machine: already gone)
            shutil.rmtree(work.path, ignore_errors=True)
    return out_path, report


def peak_rss() -> int | None:
    """Peak resident memory of this process so far, in bytes (None where not measurable)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _check_skeleton(skeleton: nn.Module, seqlen: int, skip: Sequence[str],
                    pattern: Pattern | None, cls: type[LayerCompressor],
                    cfg: MethodConfig) -> None:
    """:func:`preflight` for a model without weights: everything but the weights' values."""
    check_seqlen(seqlen, max_positions(skeleton))
    check_skips(skeleton, skip)
    if pattern is not None:
        check_pattern_fits(skeleton, pattern, skip)
        cls.check(pattern, cfg)


def _check_streamable(method: str, pattern: Pattern | None, fmt: str) -> None:
    if isinstance(pattern, Unstructured) and pattern.scope == "global":
        raise UsageError("--scope global ranks every weight of the model at once, which "
                         "streaming never holds: use --scope row or layer with --stream")
    if needs_base(method):
        raise UsageError(f"--method {method} compares with a --base model: it runs in memory, "
                         "without --stream")
    if fmt not in STREAM_FORMATS:
        raise UsageError(f"--format {fmt!r} with --stream: use {' or '.join(STREAM_FORMATS)} "
                         "(compressed-tensors export needs the model in memory)")


def _stream_source(spec: str) -> tuple[str, str]:
    """(local folder, model kind) of a model to stream; a hub id is downloaded to the local
    Hugging Face cache first (files on disk, nothing in memory)."""
    from transformers import AutoConfig

    from .models.loaders import model_kind

    path, local = resolve_model(spec)
    if not local:
        try:
            from huggingface_hub import snapshot_download

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


def _finish_stream(model: nn.Module, job: Any, report: PruneReport, tokenizer: Any, fmt: str,
                   out: Path, overwrite: bool, n_blocks: int) -> None:
    """Assemble the output from the finished blocks' files and the rest of the model (read
    from the checkpoint), rename it into place and remove the work folder."""
    from safetensors.torch import save_file

    from . import streaming as st
    from .formats.checkpoint import encode_tensor, write_manifest, write_parts

    final = job.work.path / "final"
    shutil.rmtree(final, ignore_errors=True)
    final.mkdir()
    for file in job.state["files"]:
        st.link_or_copy(job.work.path / "blocks" / file, final / file)
    list_name = HFAdapter().block_list(model)[0]
    rest = st.rest_tensors(model, list_name, job)
    files, entries = dict(job.state["files"]), dict(job.state["entries"])
    if fmt == "prunekit":
        from .formats.checkpoint import WEIGHTS

        parts: dict[str, torch.Tensor] = {}
        stored: set[int] = set()
        entries.update({n: encode_tensor(n, t, parts, stored) for n, t in rest.items()})
        entries.update({n: {"tied_to": t} for n, t in job.plan.tied.items()})
        files[WEIGHTS] = write_parts(final, WEIGHTS, parts)
        write_manifest(final, model, entries, files, tokenizer=tokenizer,
                       report=report.to_dict(), provenance={"source": report.model,
                                                            "method": report.label})
    else:
        file = st.hf_shard(n_blocks, n_blocks)
        save_file({n: t.contiguous() for n, t in rest.items()}, str(final / file),
                  metadata={"format": "pt"})
        entries.update(dict.fromkeys(rest, file))
        total = sum((final / f).stat().st_size for f in {*files, file})
        (final / st.INDEX).write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": entries}, indent=1) + "\n")
        model.config.save_pretrained(final)
        tokenizer.save_pretrained(final)
    write_json(report, final / REPORT_FILE)
    (final / TABLE_FILE).write_text(report_text(report) + "\n")
    _chmod_files(final)
    final.chmod(0o777 & ~_umask())
    if out.exists() and not overwrite:
        raise UsageError(f"output directory {str(out)!r} appeared during the run: the pruned "
                         f"model is kept in {final}; move it or pass --overwrite")
    _replace_dir(final, out)
    shutil.rmtree(job.work.path, ignore_errors=True)


def quantized_weights(results: PruneReport | Sequence[LayerResult]) -> dict[str, Any]:
    """{layer name: QuantizedWeight} of the layers a run (its report or results) quantized."""
    layers = results.layers if isinstance(results, PruneReport) else results
    return {r.name: r.quantized for r in layers if r.quantized is not None}


def compare(
    loaded: LoadedModel,
    runs: Sequence[tuple[str, str | float | Pattern]],
    *,
    calib: str = "stdlib",
    samples: int = 64,
    seqlen: int = 128,
    batch_size: int = 8,
    seed: int = 0,
    device: str = "cpu",
    progress: Callable[[str, Pattern], Progress | None] = lambda _m, _p: None,
) -> list[PruneReport]:
    """Prune copies of one dense model with each (method, pattern) of ``runs`` on the same
    calibration batches, and evaluate each against the same dense reference."""
    check_device(device)
    resolved = [(method, resolve_pattern(p, method)) for method, p in runs]
    batches = calibration(loaded.tokenizer, calib, samples, seqlen, batch_size, seed,
                          max_positions(loaded.model))
    measure = prepare_evaluation(loaded, calib, seqlen, device)
    info = {"source": calib, "samples": samples, "seqlen": seqlen, "seed": seed,
            "tokens": samples * seqlen}
    return [
        run_one(copy_model(loaded), method, pattern, batches, calibration_info=info,
                measure=measure, device=device, progress=progress(method, pattern))
        for method, pattern in resolved
    ]


SMALL_MODELS = ("digits-mlp",)
MODEL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def model_dtype(name: str) -> torch.dtype:
    """The torch dtype to load a model in; Hessians and solves stay in float32/float64."""
    try:
        return MODEL_DTYPES[name]
    except KeyError:
        raise UsageError(f"--dtype {name!r} is not supported: use one of "
                         f"{', '.join(MODEL_DTYPES)}") from None


def check_device(device: str | torch.device) -> None:
    """Fail early on a device that is not there."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(
            f"--device {device!r} is not a device: use cpu, cuda or cuda:N"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available here: use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA "
                f"device(s): use cuda:0 to cuda:{torch.cuda.device_count() - 1}"
            )
    elif dev.type not in ("cpu", "mps"):
        raise UsageError(f"--device {device!r} is not supported: use cpu or cuda[:N]")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {device}: MPS is not available here: use --device cpu")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output(out: str | os.PathLike, overwrite: bool) -> Path:
    """Fail before any work if ``out`` cannot be written: it exists (without ``overwrite``),
    it is a file, or its nearest existing parent is not a writable folder."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {str(path)!r} is a file, not a directory: pass another --out")
    if path.exists() and not overwrite:
        raise UsageError(f"output directory {str(path)!r} exists: pass --overwrite or another --out")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(
            f"--out {str(path)!r}: {str(parent)!r} is not a writable directory: pass another --out"
        )
    return path


SAVE_FORMATS = ("prunekit", "hf", "compressed-tensors")


def save_pruned(loaded: LoadedModel, report: PruneReport, out: str | os.PathLike,
                overwrite: bool = False, fmt: str = "prunekit", tensor_format: str = "auto",
                ) -> Path:
    """Write the model, its tokenizer and ``prune_report.json`` to ``out`` atomically (see
    :func:`write_output`): by default as a prunekit checkpoint (each tensor in its smallest
    exact format, quantized layers as integer codes; :func:`load` reads it), with
    ``fmt="hf"`` as a plain dense ``save_pretrained`` folder, or with
    ``fmt="compressed-tensors"`` in the pack-quantized layout transformers and vLLM load.
    ``tensor_format``: for a prunekit checkpoint, one format for every compressed layer
    instead of the smallest (an error if it cannot hold one of them exactly)."""
    from .formats.checkpoint import write_checkpoint

    if fmt not in SAVE_FORMATS:
        raise UsageError(f"--format {fmt!r}: use one of {', '.join(SAVE_FORMATS)}")
    if fmt == "compressed-tensors" and not quantized_weights(report):
        raise UsageError("--format compressed-tensors stores quantized layers: add --bits (or "
                         "use prunekit quantize); a pruned-only model exports with --format hf")

    def write(tmp: Path) -> None:
        if fmt == "hf":
            loaded.model.save_pretrained(tmp)
            loaded.tokenizer.save_pretrained(tmp)
            return
        if fmt == "compressed-tensors":
            from .formats.export import export_compressed_tensors

            export_compressed_tensors(loaded.model, quantized_weights(report), tmp,
                                      loaded.tokenizer)
            _chmod_files(tmp)
            return
        write_checkpoint(tmp, loaded.model, quantized=quantized_weights(report),
                         tokenizer=loaded.tokenizer, report=report.to_dict(),
                         tensor_format=tensor_format, targets={r.name for r in report.layers},
                         provenance={"source": loaded.source, "method": report.label})
        _chmod_files(tmp)

    return write_output(report, out, overwrite, write)


def _chmod_files(folder: Path) -> None:
    for f in folder.iterdir():  # safetensors creates 0600; ordinary files
        if f.is_file():
            f.chmod(0o666 & ~_umask())


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
    from .formats.checkpoint import build_model, load_state_into, read_manifest, read_state

    check_device(device)
    folder = Path(path).expanduser()
    manifest = read_manifest(folder)
    state = read_state(folder, manifest)
    module = load_state_into(build_model(folder, manifest, model), state)
    if dtype is not None:
        module.to(model_dtype(dtype))
    module.to(device)
    if semi_structured:
        from .formats.accel import to_semi_structured_

        to_semi_structured_(module)
    if cpu_sparse:
        from .formats.accel import to_cpu_sparse_

        to_cpu_sparse_(module)
    if manifest["model"].get("kind") != "hf" or model is not None:
        return module
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError):
        tokenizer = None
    return LoadedModel(model=module, tokenizer=tokenizer, source=str(path),
                       kind=manifest["model"].get("task", "encoder"))


def write_output(report: PruneReport, out: str | os.PathLike, overwrite: bool,
                 write_model: Callable[[Path], None]) -> Path:
    """Write a model (by ``write_model(folder)``) and its report files to ``out`` atomically
    (see :func:`write_folder`)."""

    def write(tmp: Path) -> None:
        write_model(tmp)
        write_json(report, tmp / REPORT_FILE)
        (tmp / TABLE_FILE).write_text(report_text(report) + "\n")

    return write_folder(out, overwrite, write)


def write_folder(out: str | os.PathLike, overwrite: bool, write: Callable[[Path], None]) -> Path:
    """Fill a new folder ``out`` with ``write(folder)``, atomically.

    Everything goes to a temporary sibling directory that is renamed at the end, so a failure
    never leaves a half-written folder, and an existing ``out`` (with ``overwrite``) is replaced
    only once the new one is complete; if the swap fails the old one is put back. OS errors
    (disk full, permissions) become a :class:`ModelError` naming ``out``.
    """
    path = check_output(out, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; the output is an ordinary folder
    except OSError as exc:
        raise ModelError(f"cannot write {str(path)!r}: {exc}: pass another --out") from None
    try:
        write(tmp)
        _replace_dir(tmp, path)
    except OSError as exc:
        raise ModelError(
            f"cannot write {str(path)!r}: {exc}; nothing was written there: free disk space, "
            "fix permissions, or pass another --out"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _replace_dir(new: Path, path: Path) -> None:
    """Rename ``new`` to ``path``; an existing ``path`` is swapped out, and restored on failure."""
    if not path.exists():
        new.rename(path)
        return
    holder = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
    try:
        path.rename(holder / path.name)
        try:
            new.rename(path)
        except BaseException:
            (holder / path.name).rename(path)
            raise
    finally:
        shutil.rmtree(holder, ignore_errors=True)


def copy_model(loaded: LoadedModel) -> LoadedModel:
    """A deep copy of the model (the tokenizer is shared)."""
    return dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))


# --- small networks: whole-network OBD/OBS and layer-wise methods on a classifier ------------


def is_small_model(spec: object) -> bool:
    """True for the built-in small classifiers (``digits-mlp[:HIDDEN]``)."""
    return isinstance(spec, str) and spec.split(":", 1)[0] in SMALL_MODELS


def classifier_metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Test accuracy and mean cross-entropy of a classifier."""
    from .models.digits import accuracy

    with torch.no_grad():
        loss = float(nn.functional.cross_entropy(model(x), y))
    return {"accuracy": accuracy(model, x, y), "loss": loss}


def classifier_plan(method: str, pattern: str | float | Pattern, config: Any = None,
                    network_config: Any = None) -> tuple[Pattern, Any]:
    """The checked pattern and config of a small-network run, before any work: whole-network
    methods take a global sparsity and a :class:`prunekit.network.NetworkConfig`."""
    from .network import NETWORK_METHODS, NetworkConfig

    if method in NETWORK_METHODS:
        if config is not None:
            raise UsageError(f"{method} takes a network_config (NetworkConfig), not config")
        pattern = pattern if isinstance(pattern, (Unstructured, NM)) else parse_pattern(pattern)
        if not isinstance(pattern, Unstructured):
            raise PatternError(f"{method} ranks all weights of the network together: pass a "
                               f"sparsity such as 0.9, not {pattern}")
        check_requested(pattern)
        if isinstance(network_config, Mapping):
            known = {f.name for f in dataclasses.fields(NetworkConfig)}
            unknown = sorted(set(network_config) - known)
            if unknown:
                raise UsageError(f"{method} has no setting {', '.join(unknown)}: its settings "
                                 f"are {', '.join(sorted(known))}")
            network_config = NetworkConfig(**network_config)
        return Unstructured(pattern.sparsity, "global"), network_config or NetworkConfig()
    if network_config is not None:
        raise UsageError(f"network_config is for the whole-network methods "
                         f"({', '.join(NETWORK_METHODS)}), not for {method!r}")
    if needs_base(method):
        raise UsageError(f"method {method!r} prunes a fine-tuned transformer against its "
                         "pretrained --base: the small classifiers have no base checkpoint")
    pattern = resolve_pattern(pattern, method)
    check_scope(method, pattern)
    cfg = config if isinstance(config, MethodConfig) else make_config(method, config)
    return pattern, cfg


def prune_classifier(
    model: nn.Module,
    method: str,
    pattern: str | float | Pattern,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    x_test: torch.Tensor | None = None,
    y_test: torch.Tensor | None = None,
    config: Mapping[str, Any] | MethodConfig | None = None,
    network_config: Any = None,
    source: str = "calibration set",
    evaluate: bool = True,
) -> PruneReport:
    """Prune a small classifier in place, with a whole-network method ('obd', 'obs-network':
    all weights ranked together on the curvature of the cross-entropy on (x, y)) or any
    layer-wise method (each Linear in turn, calibrated on its inputs from x). With a test set,
    the report holds dense and pruned accuracy and loss (unless ``evaluate`` is false)."""
    from .network import NETWORK_METHODS, prune_network, prune_layers

    pattern, cfg = classifier_plan(method, pattern, config, network_config)
    evaluate = evaluate and x_test is not None
    dense = classifier_metrics(model, x_test, y_test) if evaluate else None
    t0 = time.perf_counter()
    if method in NETWORK_METHODS:
        layers = prune_network(model, method, pattern.sparsity, x, y, config=cfg)
    else:
        layers = prune_layers(model, method, pattern, x, cfg)
    t1 = time.perf_counter()
    evaluation: dict[str, Any] = {}
    if dense is not None:
        pruned = classifier_metrics(model, x_test, y_test)
        evaluation = {"data": f"{source} (test split)", "n_test": len(y_test),
                      "dense_accuracy": dense["accuracy"], "pruned_accuracy": pruned["accuracy"],
                      "dense_loss": dense["loss"], "pruned_loss": pruned["loss"]}
    return PruneReport(
        model=type(model).__name__, method=method, pattern=str(pattern),
        calibration={"source": f"{source} (train split)", "samples": len(x)}, device="cpu",
        layers=layers, evaluation=evaluation,
        params_total=sum(p.numel() for p in model.parameters()),
        config=dataclasses.asdict(cfg),
        seconds={"prune": t1 - t0, "eval": time.perf_counter() - t1},
    )


def prune_small(
    spec: str = "digits-mlp",
    method: str = "obs-network",
    pattern: str | float | Pattern = 0.5,
    *,
    samples: int | None = None,
    seed: int = 0,
    config: Mapping[str, Any] | MethodConfig | None = None,
    network_config: Any = None,
    evaluate: bool = True,
) -> tuple[nn.Module, PruneReport]:
    """Train the built-in ``digits-mlp[:HIDDEN]`` (seconds, seeded) and prune it with
    :func:`prune_classifier`; calibration: the first ``samples`` training images (default all),
    evaluation: the held-out test split."""
    from .models.digits import parse_small_spec, trained_digits_mlp

    from .models.digits import N_CLASSES, N_PIXELS
    from .network import NETWORK_METHODS, check_network_size

    hidden = parse_small_spec(spec)
    pattern, cfg = classifier_plan(method, pattern, config, network_config)
    whole = method in NETWORK_METHODS
    if whole:  # before training: the size is known from the spec
        check_network_size(N_PIXELS * hidden + hidden * N_CLASSES, method, cfg)
    t0 = time.perf_counter()
    model, data = trained_digits_mlp(hidden, seed=seed)
    t_train = time.perf_counter() - t0
    n = len(data.y_train) if samples is None else min(samples, len(data.y_train))
    if samples is not None and samples > n:
        log.warning("--samples %d: the digits training split has %d images; using all of them",
                    samples, n)
    report = prune_classifier(model, method, pattern, data.x_train[:n], data.y_train[:n],
                              x_test=data.x_test, y_test=data.y_test,
                              config=None if whole else cfg, network_config=cfg if whole else None,
                              source="sklearn digits", evaluate=evaluate)
    report.model = f"digits-mlp:{hidden}"
    report.calibration["seed"] = seed
    report.seconds = {"train": t_train, **report.seconds}
    return model, report


def save_module(model: nn.Module, report: PruneReport, out: str | os.PathLike,
                overwrite: bool = False, builder: str | None = None) -> Path:
    """Write a plain module as a prunekit checkpoint with its report, atomically; ``builder``
    (e.g. 'digits-mlp:128') lets :func:`load` rebuild it without an instance."""
    from .formats.checkpoint import write_checkpoint

    def write(tmp: Path) -> None:
        write_checkpoint(tmp, model, quantized=quantized_weights(report), report=report.to_dict(),
                         builder=builder)
        _chmod_files(tmp)

    return write_output(report, out, overwrite, write)


# --- the accuracy-versus-size frontier ---------------------------------------------------------

POINT_FILE = "point.json"


def _checkpoint_bytes(folder: Path) -> int:
    from .formats.checkpoint import MANIFEST, WEIGHTS

    return sum((folder / f).stat().st_size for f in (WEIGHTS, MANIFEST))


def _recipe_plan(recipe: Any) -> tuple[str | None, Pattern | None, MethodConfig | None]:
    """(method, pattern, config) a grid recipe runs: a pruning method (quantizing the kept
    weights with ``bits``), a quantizer alone, or nothing (a dense point)."""
    from .quant import QuantSpec

    spec = (QuantSpec(recipe.bits, recipe.group, recipe.symmetric)
            if recipe.bits is not None else None)
    if recipe.method is not None:
        settings = {} if spec is None else {"quant": spec, "quant_method": recipe.quantizer}
        return (recipe.method, resolve_pattern(recipe.pattern, recipe.method),
                make_config(recipe.method, settings))
    if spec is not None:
        return recipe.quantizer, None, make_config(recipe.quantizer, {"quant": spec})
    return None, None, None


def _run_recipe(loaded: LoadedModel, recipe: Any, batches: Sequence[dict[str, torch.Tensor]],
                info: dict[str, Any], measure: Callable[[nn.Module], dict[str, Any]]
                ) -> tuple[LoadedModel, PruneReport | None, dict[str, Any]]:
    """Compress a copy of ``loaded`` by ``recipe``; its evaluation (float tensors evaluated in
    float32 after rounding to the recipe's dtype)."""
    work = copy_model(loaded)
    method, pattern, config = _recipe_plan(recipe)
    report = None if method is None else run_one(
        work, method, pattern, batches, calibration_info=info, config=config, measure=None)
    work.model.to(model_dtype(recipe.dtype))  # what is stored; measured in float32
    return work, report, measure(copy.deepcopy(work.model).float())


def pareto(model: str | LoadedModel, out: str | os.PathLike, grid: str = "default", *,
           calib: str = "stdlib", samples: int = 64, seqlen: int = 128, batch_size: int = 8,
           seed: int = 0, progress: Callable[[str, int, int], None] | None = None,
           labels: str | None = None) -> dict[str, Any]:
    """Measure every point of ``grid`` ("default" or a YAML file) on ``model``: quality (the
    model's own metric), bytes of its real prunekit checkpoint, ratio to dense fp16, seconds;
    then the frontier. Points already measured in ``out`` are reused (an interrupted run
    resumes). Writes out/points/NAME/ (checkpoint and point.json), pareto.json, pareto.md and
    pareto.png; returns the pareto.json content. ``labels``: a labelled set (JSONL or CSV with
    ``text`` and ``label``) for a Hugging Face sequence classifier: quality is its accuracy."""
    import json

    from .analysis.pareto import load_grid
    from .formats.checkpoint import write_checkpoint

    recipes = load_grid(grid)  # every recipe checked before any work
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file: pass a folder")
    t0 = time.perf_counter()
    if labels is not None:
        examples = read_labelled(labels)  # before the model loads
        setup = _transformer_points(model, calib, samples, seqlen, batch_size, seed, examples)
    elif isinstance(model, str) and is_small_model(model):
        setup = _classifier_points(model, samples, seed)
    else:
        setup = _transformer_points(model, calib, samples, seqlen, batch_size, seed)
    run, quality, higher, source, info, numel, builder, targets = setup
    points = []
    for i, recipe in enumerate(recipes):
        folder = out / "points" / recipe.name
        if (folder / POINT_FILE).is_file():
            points.append(json.loads((folder / POINT_FILE).read_text()))
            continue
        if progress is not None:
            progress(recipe.name, i, len(recipes))
        start = time.perf_counter()
        module, results, evaluation = run(recipe)
        seconds = time.perf_counter() - start
        point = {"name": recipe.name, "recipe": dataclasses.asdict(recipe),
                 "label": recipe.describe(), "quality_metric": quality,
                 quality: evaluation[quality], "evaluation": evaluation, "seconds": seconds}

        def write(tmp: Path) -> None:
            write_checkpoint(tmp, module, quantized=quantized_weights(results or []),
                             builder=builder,
                             provenance={"source": source, "recipe": recipe.describe()})
            point["bytes"] = _checkpoint_bytes(tmp)
            point["ratio_fp16"] = 2 * numel / point["bytes"]
            point.update(_target_bytes(tmp, targets))
            (tmp / POINT_FILE).write_text(json.dumps(point, indent=1, default=str) + "\n")

        write_folder(folder, True, write)
        points.append(point)
    result = summarize_points(points, quality, higher, source, info, numel)
    result["seconds_this_run"] = time.perf_counter() - t0
    from .report import pareto_report

    pareto_report(result, out)
    return result


def _target_bytes(folder: Path, targets: set[str]) -> dict[str, Any]:
    """Bytes and ratio to fp16 of the compressible layers' weights alone (the Linear layers of
    the blocks), from the checkpoint's own part sizes."""
    from .formats.checkpoint import inspect_checkpoint

    rows = [t for t in inspect_checkpoint(folder)["tensors"] if t["name"] in targets]
    values = sum(math.prod(t["shape"]) for t in rows)
    stored = sum(t["bytes"] for t in rows)
    return {"layer_bytes": stored, "layer_values": values,
            "layer_ratio_fp16": 2 * values / stored if stored else 0.0}


def read_labelled(path: str) -> list[tuple[str, str]]:
    """(text, label) pairs of a JSONL file (one {"text": ..., "label": ...} per line) or a CSV
    file with ``text`` and ``label`` columns."""
    import csv
    import json

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
                        batch_size: int, seed: int,
                        examples: list[tuple[str, str]] | None = None) -> tuple:
    """(run(recipe), quality key, higher is better, source, calibration info, float values,
    builder, target weight names) for a Hugging Face model: embedding fidelity or perplexity;
    with labelled ``examples``, a sequence classifier's accuracy on them."""
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
    batches = calibration(loaded.tokenizer, calib, samples, seqlen, batch_size, seed,
                          max_positions(loaded.model))
    info = {"source": calib, "samples": samples, "seqlen": seqlen, "seed": seed,
            **({} if examples is None else {"labelled": len(examples)})}
    numel = sum(t.numel() for t in loaded.model.state_dict().values() if t.is_floating_point())

    def run(recipe: Any) -> tuple[nn.Module, list[LayerResult], dict[str, Any]]:
        work, report, evaluation = _run_recipe(loaded, recipe, batches, info, measure)
        return work.model, (report.layers if report else []), {**evaluation, **extra}

    targets = {f"{n}.weight" for n in HFAdapter().all_targets(loaded.model)}
    return run, quality, higher, loaded.source, info, numel, None, targets


def _load_sequence_classifier(model: str) -> LoadedModel:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

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


def _classifier_points(spec: str, samples: int, seed: int) -> tuple:
    """The same for a built-in classifier (``digits-mlp[:HIDDEN]``): test accuracy on the held-
    out split; layer methods calibrated on the first ``samples`` training images."""
    from .models.digits import parse_small_spec, trained_digits_mlp
    from .network import prune_layers

    net, data = trained_digits_mlp(parse_small_spec(spec), seed=seed)
    x = data.x_train[:samples]
    dense = classifier_metrics(net, data.x_test, data.y_test)
    info = {"source": "sklearn digits (train split)", "samples": len(x), "seed": seed}

    def run(recipe: Any) -> tuple[nn.Module, list[LayerResult], dict[str, Any]]:
        work = copy.deepcopy(net)
        method, pattern, config = _recipe_plan(recipe)
        results = [] if method is None else prune_layers(work, method, pattern, x, config)
        work.to(model_dtype(recipe.dtype))  # what is stored; measured in the data's dtype
        evaluated = copy.deepcopy(work).to(data.x_test.dtype)
        return work, results, {**classifier_metrics(evaluated, data.x_test, data.y_test),
                               "dense_accuracy": dense["accuracy"]}

    numel = sum(t.numel() for t in net.state_dict().values() if t.is_floating_point())
    from .network import linear_targets

    targets = {f"{n}.weight" for n in linear_targets(net)}
    return run, "accuracy", True, spec, info, numel, spec, targets


def summarize_points(points: list[dict], quality: str, higher: bool, source: str,
                     calibration_info: dict, numel: int) -> dict[str, Any]:
    """The frontier flags and domination lists of measured points."""
    from .analysis.pareto import dominated_by, frontier

    flags = frontier(points, quality, higher)
    for p, on in zip(points, flags):
        p["frontier"] = on
    return {"model": source, "quality_metric": quality, "higher_is_better": higher,
            "calibration": calibration_info, "dense_fp16_bytes": 2 * numel, "points": points,
            "dominates": dominated_by(points, quality, higher)}
