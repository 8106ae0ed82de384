"""Movement scores from two checkpoints, one-shot (Sanh, Wolf & Rush 2020, "Movement Pruning:
Adaptive Sparsity by Fine-Tuning", Sec. 4). No training: the fine-tuned weights w_T are pruned
by how they moved away from the pretrained weights w_0 they were fine-tuned from.

Short names: W = w_T (fine-tuned, the weights pruned), W0 = w_0 (pretrained, the base), both
(out, in); Δ = W − W0.

- ``"movement"``: S = |Δ|, how far each weight moved in fine-tuning.
- ``"first-order"``: S = W · Δ. Movement pruning accumulates S_ij = −Σ_{t<T} (∂L/∂W_ij)^(t)
  W_ij^(t) over the T fine-tuning steps (Sec. 4). With SGD, −η ∂L/∂W^(t) = W^(t+1) − W^(t),
  so S = (1/η) Σ_t (W^(t+1) − W^(t)) · W^(t); taking W^(t) ≈ W_T for every step gives
  (1/η) W_T · (W_T − W_0), and the constant 1/η does not change a ranking. S > 0 when the
  weight moved away from zero, S < 0 when it moved towards zero.

Larger scores are kept, per row, per layer (the paper's Top_v over each weight matrix, the
default), across all layers (global), or per N:M group; the kept weights are not updated.
Calibration data is not needed for the scores; as with magnitude, the pipeline's calibration
only measures each layer's reconstruction error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from ..errors import ModelError, UsageError
from ..masks import pattern_mask
from ..patterns import Pattern
from .base import LayerCompressor, MethodConfig, register, setting, weight_matrix

log = logging.getLogger(__name__)

SCORES = ("movement", "first-order")


def movement_scores(W: Tensor, W0: Tensor, score: str = "movement") -> Tensor:
    """S = |W − W0| ("movement") or W · (W − W0) ("first-order").

    W, W0: (out, in) -> S: (out, in); larger is kept."""
    delta = W - W0.to(W.dtype)  # (out, in): how each weight moved in fine-tuning
    if score == "movement":
        return delta.abs()
    if score == "first-order":
        return W * delta
    raise UsageError(f"movement score {score!r} is unknown: use {' or '.join(SCORES)}")


def movement_prune(W: Tensor, W0: Tensor, pattern: Pattern, score: str = "movement") -> Tensor:
    """W (out, in) with the lowest movement scores against W0 zeroed per ``pattern``."""
    keep = pattern_mask(movement_scores(W, W0, score), pattern)  # (out, in)
    return W * keep


@dataclass(frozen=True)
class MovementConfig(MethodConfig):
    """score: "movement" (|w_T − w_0|) or "first-order" (w_T · (w_T − w_0))."""

    score: str = setting("movement", "--movement-score", "'movement' ranks |w - w_base| "
                         "(default), 'first-order' w*(w - w_base), positive where a weight "
                         "moved away from zero", choices=SCORES)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.score not in SCORES:
            raise UsageError(
                f"--movement-score {self.score!r} is unknown: use {' or '.join(SCORES)}"
            )


@register
class Movement(LayerCompressor):
    """Prunes a fine-tuned layer by its movement from the base (pretrained) weights ``base``."""

    name = "movement"
    config_cls = MovementConfig
    supports_global = True  # resolved into per-layer counts by masks.global_patterns
    default_scope = "layer"  # the paper's Top_v over each weight matrix
    needs_base: ClassVar[bool] = True  # the API passes base= (w_0 of this layer, (out, in))
    description = ("|w_T - w_0| or w_T*(w_T - w_0) against --base (pretrained); "
                   "no data needed (calibration only measures the error)")

    def __init__(self, layer: nn.Module, pattern: Pattern | None, config: MethodConfig,
                 name: str = "layer", base: Tensor | None = None) -> None:
        super().__init__(layer, pattern, config, name)
        if base is None:
            raise UsageError(
                f"{name}: method 'movement' needs the pretrained weights the model was "
                "fine-tuned from: pass --base PRETRAINED (Python: base=...)"
            )
        shape = tuple(weight_matrix(layer).shape)
        if tuple(base.shape) != shape:
            raise ModelError(
                f"{name}: the base weight is {tuple(base.shape)} but the layer is {shape} "
                "(out, in): pass the checkpoint this model was fine-tuned from"
            )
        self.base = base

    @classmethod
    def scores(cls, W: Tensor, W0: Tensor, config: MovementConfig) -> Tensor:
        """The ranking scores of one layer (float32), for a global ranking over all layers."""
        return movement_scores(W.float(), W0.float(), config.score)

    def solve(self, W: Tensor, H: Tensor):
        W0 = self.base.to(W.device, W.dtype)  # (out, in)
        moved = float((W != W0).float().mean())
        if moved == 0.0:
            log.warning("%s did not move in fine-tuning: every score is 0, so the weights "
                        "pruned are chosen by position", self.layer_name)
        W_new = movement_prune(W, W0, self.pattern, self.config.score)
        return W_new, None, {"score": self.config.score, "moved": moved}

    def free(self) -> None:
        super().free()
        self.base = None
