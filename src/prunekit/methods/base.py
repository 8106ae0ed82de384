"""The one-shot layer method interface, its results, and the method registry.

A method is one file in ``methods/``: pure maths functions at the top, a frozen config
dataclass, and a :class:`LayerCompressor` subclass registered by name with :func:`register`.
The registry (:mod:`prunekit.methods`) finds it; a new method needs no other edit.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import NumericalError, PatternError, UsageError
from ..hessian import Damping, HessianAccumulator
from ..masks import sparsity
from ..patterns import Pattern, Unstructured
from ..quant import AFTER_PRUNING, quantize_kept
from ..quant.grid import QuantizedWeight, QuantSpec

DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: --sequential: how the layers inside a block are calibrated (see prunekit.pipeline)
SEQUENTIAL = ("block", "true")
#: --allocation: how a sparsity is shared among blocks (see prunekit.allocation)
ALLOCATIONS = ("uniform", "owl")


#: {name: method class}; filled by :func:`register`, read through
#: :func:`prunekit.methods.get_method` (which first imports every method module).
REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make a method reachable by its ``name`` from the API and the CLI."""
    if cls.name in REGISTRY:
        raise ValueError(f"method {cls.name!r} is registered twice")
    REGISTRY[cls.name] = cls
    return cls


@dataclass(frozen=True)
class Flag:
    """The command-line flag of a config field. ``type``: how the CLI parses its text
    ("str", "int", "positive", "nonnegative"); ``const``: a flag without a value that sets
    the field to ``const``; ``choices``: the values allowed."""

    name: str
    help: str
    type: str = "str"
    choices: tuple[str, ...] | None = None
    const: object = None


def setting(default: object, flag: str, help: str, **kwargs: object) -> Any:
    """A config field with the command-line flag that sets it (see :class:`Flag`): the CLI
    builds its method flags from these, so a new method's settings need no CLI edit."""
    return field(default=default, metadata={"flag": Flag(flag, help, **kwargs)})


@dataclass(frozen=True)
class MethodConfig:
    """Settings shared by every one-shot method.

    hessian_dtype: precision of H = 2/N Σ x xᵀ and of the solves ("float32" | "float64").
    quant: also quantize the kept weights to this grid (``prune ... --bits``); the mask is
    kept exactly. quant_method: how, for a method that does not quantize in its own sweep:
    "gptq" after pruning the layer, compensating into kept weights only, or "rtn".
    """

    hessian_dtype: str = setting("float32", "--hessian-dtype", "precision of the Hessian and "
                                 "solves (default float32)", choices=tuple(DTYPES))
    quant: QuantSpec | None = None
    quant_method: str = setting("gptq", "--quant-method", "with --bits, for methods other than "
                                "sparsegpt (and with --two-step): how to quantize after pruning "
                                "(default gptq)", choices=AFTER_PRUNING)
    sequential: str = setting("block", "--sequential", "inside each block: 'true' calibrates "
                              "each stage (q/k/v, attention output, MLP up/gate, MLP down) on "
                              "the outputs of the stages already compressed before it (GPTQ's "
                              "--true-sequential); 'block': every layer on the dense block "
                              "(default: block)", choices=SEQUENTIAL)
    allocation: str = setting("uniform", "--allocation", "sparsity across blocks at the same "
                              "total: 'uniform', or 'owl' (Yin et al. 2024: blocks with more "
                              "outlier weights |W|·‖x‖ keep more; unstructured patterns only; "
                              "default: uniform)", choices=ALLOCATIONS)
    owl_lambda: float = setting(0.08, "--owl-lambda", "OWL: block sparsities spread over "
                                "target ± λ (default 0.08)", type="nonnegative")
    owl_m: float = setting(5.0, "--owl-m", "OWL: a weight is an outlier above M times its "
                           "block's mean score (default 5)", type="nonnegative")

    def __post_init__(self) -> None:
        if self.hessian_dtype not in DTYPES:
            raise UsageError(
                f"--hessian-dtype {self.hessian_dtype!r} is not supported: use "
                f"{' or '.join(sorted(DTYPES))}"
            )
        if self.quant is not None and not isinstance(self.quant, QuantSpec):
            raise UsageError(f"quant {self.quant!r} must be a QuantSpec, e.g. QuantSpec(bits=4)")
        group, blocksize = getattr(self.quant, "group", None), getattr(self, "blocksize", 128)
        if group is not None and group % blocksize and blocksize % group:
            raise UsageError(f"--group {group} and --blocksize {blocksize}: one must divide the "
                             f"other (e.g. --group 128, or --blocksize {group})")
        if self.allocation not in ALLOCATIONS:
            raise UsageError(f"--allocation {self.allocation!r}: use one of "
                             f"{', '.join(ALLOCATIONS)}")
        if not (self.owl_m > 0 and 0 <= self.owl_lambda < 0.5):
            raise UsageError(f"--owl-m {self.owl_m} must be > 0 and --owl-lambda "
                             f"{self.owl_lambda} in [0, 0.5), e.g. --owl-m 5 --owl-lambda 0.08")
        if self.sequential not in SEQUENTIAL:
            raise UsageError(f"--sequential {self.sequential!r}: use one of "
                             f"{', '.join(SEQUENTIAL)}")
        if self.quant_method not in AFTER_PRUNING:
            raise UsageError(f"--quant-method {self.quant_method!r}: use one of "
                             f"{', '.join(AFTER_PRUNING)}")


@dataclass
class LayerResult:
    """What compressing one layer did. ``rel_error`` = ‖XWᵀ − XŴᵀ‖² / ‖XWᵀ‖² on calibration X."""

    name: str
    method: str
    pattern: str
    shape: tuple[int, int]
    sparsity: float
    rel_error: float | None
    damping: float | None
    seconds: float
    n_tokens: int
    extra: dict = field(default_factory=dict)
    quantized: QuantizedWeight | None = field(default=None, repr=False, compare=False)

    @property
    def bits_per_weight(self) -> float | None:
        """Bits per weight of the quantized codes with their scales; None if not quantized."""
        return None if self.quantized is None else self.quantized.bits_per_weight()

    def to_dict(self) -> dict:
        """The result as JSON-ready values, without its quantized codes (kept in checkpoints)."""
        d = asdict(replace(self, quantized=None))
        d.pop("quantized")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LayerResult:
        """The inverse of :meth:`to_dict` (the codes are not restored)."""
        return cls(**{**d, "shape": tuple(d["shape"])})


def weight_matrix(layer: nn.Module) -> Tensor:
    """The layer's weight as a (out, in) view: nn.Linear as is, GPT-2's Conv1D transposed."""
    if isinstance(layer, nn.Linear):
        return layer.weight.data
    if type(layer).__name__ == "Conv1D" and hasattr(layer, "nf"):
        return layer.weight.data.T  # Conv1D stores (in, out)
    raise PatternError(
        f"layer type {type(layer).__name__} is not supported: prunekit compresses nn.Linear and "
        "transformers' Conv1D; skip it with --skip"
    )


def relative_error(W: Tensor, W_new: Tensor, H: Tensor) -> float:
    """‖XWᵀ − XŴᵀ‖²_F / ‖XWᵀ‖²_F computed from H = 2/N XᵀX as tr(ΔHΔᵀ) / tr(WHWᵀ)."""
    W = W.to(H.dtype)
    D = W - W_new.to(H.dtype)  # (out, in)
    num = float(((D @ H) * D).sum())
    den = float(((W @ H) * W).sum())
    return num / den if den > 0 else 0.0


class LayerCompressor(ABC):
    """One-shot compression of one layer: statistics from ``add_batch``, then ``compress``.

    Subclasses implement :meth:`solve`, a thin call of their pure maths function.
    """

    name: ClassVar[str]
    kind: ClassVar[str] = "prune"  # or "quantize": reached by `prunekit quantize`
    config_cls: ClassVar[type[MethodConfig]] = MethodConfig
    supports_global: ClassVar[bool] = False
    default_scope: ClassVar[str] = "row"  # scope of an unstructured sparsity given as a number
    description: ClassVar[str] = ""
    #: False for a method that must see a whole block's statistics at once (AWQ's scale search)
    supports_true_sequential: ClassVar[bool] = True

    def __init__(
        self, layer: nn.Module, pattern: Pattern | None, config: MethodConfig, name: str = "layer"
    ) -> None:
        self.layer = layer
        self.pattern = pattern
        self.config = config
        self.layer_name = name
        W = weight_matrix(layer)
        self.hessian: HessianAccumulator | None = HessianAccumulator(
            W.shape[1], DTYPES[config.hessian_dtype], W.device, name
        )

    @classmethod
    def check(cls, pattern: Pattern, config: MethodConfig) -> None:
        """Raise a clear error, before any work, if ``pattern`` and ``config`` cannot go
        together."""

    def add_batch(self, x: Tensor) -> None:
        """Accumulate statistics from layer inputs x: (..., in_features)."""
        assert self.hessian is not None, "add_batch after free()"
        self.hessian.add_batch(x)

    @abstractmethod
    def solve(self, W: Tensor, H: Tensor) -> tuple[Tensor, Damping | None, dict]:
        """Return the compressed (out, in) weight, the damping used, and extra figures
        (``extra["quantized"]``: the :class:`QuantizedWeight` of a method that quantizes)."""

    @classmethod
    def prepare_block(cls, comps: list[LayerCompressor],
                      folds: list[tuple[nn.Module, list[str]]]) -> None:
        """Called once per block, after its statistics and before any ``compress``, with the
        block's compressors and the places where an input scale of some of them can be folded
        into the operation producing their input (AWQ searches and folds its scales here)."""

    def _quantize_after(self, W_new: Tensor, H: Tensor, extra: dict) -> Tensor:
        """``prune ... --bits``: quantize the pruned weight, keeping its zeros (two-step)."""
        cfg = self.config
        W_new, extra["quantized"], damp = quantize_kept(
            W_new, H, cfg.quant, cfg.quant_method, blocksize=getattr(cfg, "blocksize", 128),
            rel_damp=getattr(cfg, "rel_damp", 0.01), name=self.layer_name)
        if damp is not None:
            extra["quant_damping"] = damp
        return W_new

    def compress(self) -> LayerResult:
        """Compress the layer's weight in place and report what it cost."""
        assert self.hessian is not None, "compress after free()"
        start = time.perf_counter()
        H = self.hessian.finalize()
        target = weight_matrix(self.layer)
        W = target.to(H.dtype, copy=True)  # (out, in); the solvers never see the layer's storage
        if not bool(torch.isfinite(W).all()):
            raise NumericalError(
                f"{self.layer_name}: weights contain NaN/Inf: the checkpoint is corrupt or was "
                "saved after a diverged run"
            )
        W_new, damping, extra = self.solve(W, H)
        if self.config.quant is not None and "quantized" not in extra:
            W_new = self._quantize_after(W_new, H, extra)
        quantized = extra.pop("quantized", None)
        if quantized is not None:
            extra["bits_per_weight"] = quantized.bits_per_weight()
            extra["quant"] = str(quantized.spec)
        err = relative_error(W, W_new, H)
        target.copy_(W_new.to(target.dtype))
        return LayerResult(
            name=self.layer_name,
            method=self.name,
            pattern=str(self.pattern),
            shape=tuple(W.shape),
            sparsity=sparsity(target),
            rel_error=err,
            damping=None if damping is None else damping.relative,
            seconds=time.perf_counter() - start,
            n_tokens=self.hessian.n_tokens,
            extra=extra,
            quantized=quantized,
        )

    def free(self) -> None:
        """Release the statistics."""
        self.hessian = None


@dataclass(frozen=True)
class NetworkConfig:
    """Settings shared by the whole-network methods (none; each method adds its own)."""


class NetworkMethod(ABC):
    """Whole-network pruning of a small model: every prunable weight ranked together on a
    labelled task loss (:func:`prunekit.network.prune_network` runs it). Subclasses implement
    :meth:`select`, a thin call of their pure maths function."""

    name: ClassVar[str]
    kind: ClassVar[str] = "network"
    config_cls: ClassVar[type[NetworkConfig]] = NetworkConfig
    supports_global: ClassVar[bool] = True
    default_scope: ClassVar[str] = "global"
    description: ClassVar[str] = ""

    @classmethod
    def check(cls, pattern: Pattern | None, config: NetworkConfig) -> None:
        """A global unstructured sparsity: the method ranks all weights together."""
        if not isinstance(pattern, Unstructured):
            raise PatternError(f"{cls.name} ranks all weights of the network together: pass a "
                               f"sparsity such as 0.9, not {pattern}")
        if pattern.scope != "global":
            raise UsageError(f"--method {cls.name} ranks all weights together: drop --scope "
                             "(or pass Unstructured(s, 'global'))")

    @classmethod
    def dense(cls, config: NetworkConfig) -> bool:
        """Whether the method needs the dense n × n curvature of the weights (size-limited)."""
        return False

    @classmethod
    @abstractmethod
    def select(cls, model: nn.Module, w: Tensor, names: list[str], x: Tensor, y: Tensor,
               loss_fn: Any, sparsity: float, config: NetworkConfig
               ) -> tuple[Tensor, dict, float | None]:
        """The pruned flat weights of ``model`` (a float64 copy; ``w``: its flat weights
        ``names``), the run's figures for the report, and the relative damping used."""
