"""What the user asked for, checked once at the edge: the method and its config, the pattern
and its scope, the base checkpoint a method needs, the dtype and the device.

Strings are parsed here (``"2:4"`` -> ``NM(2, 4)``, ``"float16"`` -> ``torch.float16``); the
layers below take the typed :class:`Plan` and trust it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import PatternError, UsageError
from .masks import global_patterns
from .methods import get_method, load_builtin_methods
from .methods.base import DTYPES, MethodConfig, NetworkConfig, weight_matrix
from .methods.movement_base import check_base, needs_base
from .models.loaders import LoadedModel
from .patterns import NM, Pattern, Unstructured, check_requested, parse_pattern


def make_config(method: str, overrides: Mapping[str, Any] | None = None) -> Any:
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


def check_kind(method: str, kind: str | tuple[str, ...]) -> None:
    """Raise :class:`UsageError` if ``method`` is not of ``kind`` ("prune", "quantize",
    "network", or a tuple of them), naming the command that runs it."""
    actual = get_method(method).kind
    if actual in ((kind,) if isinstance(kind, str) else kind):
        return
    if actual == "network":
        raise UsageError(
            f"--method {method} needs a task loss and a dense curvature of every weight: use it "
            "on digits-mlp, or from Python with prunekit.network.prune_network(model, ...); for "
            "transformers use --method obs (layer-wise exact OBS) or sparsegpt")
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
            ranked = sorted(n for n, c in load_builtin_methods().items()
                            if c.supports_global and c.kind == "prune")
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
    pattern: Pattern | None, targets: Mapping[str, nn.Module],
    score: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
) -> Callable[[str], Pattern | None]:
    """Per-layer patterns of the target layers: global scope is resolved by one ranking over
    all ``targets`` of ``score(name, W)`` (default |W|; movement: its scores against the base
    weights)."""
    if isinstance(pattern, Unstructured) and pattern.scope == "global":
        per_layer = global_patterns(_LayerScores(targets, score or _abs_score), pattern.sparsity)
        return per_layer.__getitem__
    return lambda _name: pattern


def base_source(base: str | LoadedModel | nn.Module | Mapping[str, torch.Tensor]) -> str:
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


SAVE_FORMATS = ("prunekit", "hf", "compressed-tensors")
STREAM_FORMATS = ("prunekit", "hf")


@dataclass(frozen=True)
class Plan:
    """A checked request: the registered ``method``, its ``pattern`` (None for a quantizer)
    and ``config``, and the ``base`` checkpoint of a method that scores against one (a spec
    or a model, as given; matched to the model later)."""

    method: str
    pattern: Pattern | None
    config: MethodConfig
    base: Any = None

    @property
    def cls(self) -> type:
        """The method's class from the registry."""
        return get_method(self.method)

    @property
    def quantizes(self) -> bool:
        """Whether the run stores integer codes (a quantizer, or pruning with --bits)."""
        return self.cls.kind == "quantize" or getattr(self.config, "quant", None) is not None


def default_prune_method(config: Mapping[str, Any] | MethodConfig | None = None) -> str:
    """The pruning method when none is named: ``admm``, the best held-out quality measured
    (docs/one-shot-pruning.md: MiniLM and SmolLM2, 50 % and 2:4), or ``sparsegpt`` when the
    kept weights are also quantized (``config`` has a quant), since it prunes and quantizes
    in one sweep."""
    quant = (config.get("quant") if isinstance(config, Mapping)
             else getattr(config, "quant", None))
    return "sparsegpt" if quant is not None else "admm"


def make_plan(method: str | None, pattern: str | float | Pattern | None = None,
              config: Mapping[str, Any] | MethodConfig | None = None, *,
              kind: str | None = None, base: Any = None) -> Plan:
    """Check a request once, before any work, and return it typed: the method is registered
    (and of ``kind``, "prune" or "quantize", when given), the pattern parses and its scope is
    one the method ranks at, the settings are the method's own, and a base is given exactly
    when the method needs one. ``method`` None: :func:`default_prune_method`."""
    if method is None:
        method = default_prune_method(config)
    if kind is not None:
        check_kind(method, kind)
    pattern = resolve_pattern(pattern, method)
    if not isinstance(config, (MethodConfig, NetworkConfig)):
        config = make_config(method, config)
    if pattern is not None:
        check_scope(method, pattern)
    if getattr(config, "allocation", "uniform") == "owl" and not (
            isinstance(pattern, Unstructured) and pattern.scope != "global"):
        raise UsageError(f"--allocation owl shares an unstructured sparsity among blocks, not "
                         f"{pattern}: give a sparsity such as 0.5 (row or layer scope)")
    if getattr(config, "sequential", "block") == "true" and not getattr(
            get_method(method), "supports_true_sequential", True):
        raise UsageError(f"--sequential true: {method} needs each block's statistics at once; "
                         "use --sequential block")
    check_base(method, base)
    if base is not None:
        base_source(base)  # a base of a type that is no model fails here
    return Plan(method, pattern, config, base)


def check_format(fmt: str, quantized: bool) -> None:
    """Raise :class:`UsageError` if the output format ``fmt`` cannot hold the result: every
    format but compressed-tensors holds any, compressed-tensors only ``quantized`` layers (a
    plan's :attr:`Plan.quantizes` before the run, the report's codes after it)."""
    if fmt not in SAVE_FORMATS:
        raise UsageError(f"--format {fmt!r}: use one of {', '.join(SAVE_FORMATS)}")
    if fmt == "compressed-tensors" and not quantized:
        raise UsageError("--format compressed-tensors stores quantized layers: add --bits 4 "
                         "(or use prunekit quantize); a pruned-only model exports with "
                         "--format hf")


def check_streamable(plan: Plan, fmt: str) -> None:
    """Raise :class:`UsageError` for what a streamed run cannot do: a global ranking (it never
    holds the whole model), a base checkpoint, or an output format other than prunekit/hf."""
    if isinstance(plan.pattern, Unstructured) and plan.pattern.scope == "global":
        raise UsageError("--scope global ranks every weight of the model at once, which "
                         "streaming never holds: use --scope row or layer with --stream")
    if needs_base(plan.method):
        raise UsageError(f"--method {plan.method} compares with a --base model: it runs in "
                         "memory, without --stream")
    if fmt not in STREAM_FORMATS:
        raise UsageError(f"--format {fmt!r} with --stream: use {' or '.join(STREAM_FORMATS)} "
                         "(compressed-tensors export needs the model in memory)")
