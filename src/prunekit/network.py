"""Pruning a small network whole: every Linear weight at once, with a labelled task loss.

Two kinds of method meet here, on any ``nn.Module`` whose prunable weights are its Linear (and
Conv) weights:

* whole-network methods, which rank all weights together by a second-order model of the task
  loss: OBD (LeCun et al. 1990) with the diagonal of a curvature matrix, and OBS (Hassibi &
  Stork 1993) with the full matrix, so it also updates the weights it keeps. The curvature is
  the empirical Fisher, the Gauss–Newton matrix or the exact Hessian of the loss
  (:mod:`prunekit.curvature`); dense ones are limited to ``max_params`` weights.
* the layer-wise methods of :mod:`prunekit.methods` (magnitude, Wanda, SparseGPT, layer-wise
  exact OBS), run on one Linear layer after another in forward order, each calibrated on the
  inputs the already-pruned layers before it produce.

The transformer pipeline (:mod:`prunekit.pipeline`) is the scalable path; this one is for
networks small enough that every layer can be re-run per layer and the whole Hessian fits.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .curvature import (MAX_DENSE_PARAMS, LossFn, check_dense_size, empirical_fisher,
                        fisher_diagonal, gauss_newton, loss_hessian, prunable_names)
from .errors import NumericalError, PatternError, UsageError
from .masks import global_patterns, prune_count, sparsity
from .methods.base import LayerCompressor, LayerResult, MethodConfig, get_method, weight_matrix
from .methods.obd import obd_prune
from .methods.obs import obs_prune
from .models.adapter import is_target
from .patterns import Pattern, Unstructured

NETWORK_METHODS = {
    "obd": "whole-network OBD: diagonal curvature of the task loss, no update (small models)",
    "obs-network": "whole-network OBS: full curvature of the task loss, updates the weights it "
                   "keeps (small models)",
    "snip": "SNIP: |dL/dw * w| on the calibration batch, one global ranking, no update",
    "ntk": "keeps the weights carrying the dense NTK's top eigenspace (--ntk-top r), no update",
}
MASK_METHODS = ("snip", "ntk")  # choose a mask from data at the current weights; no update
CURVATURES: dict[str, Callable[..., Tensor]] = {
    "fisher": empirical_fisher, "gauss-newton": gauss_newton, "exact": loss_hessian,
}


@dataclass(frozen=True)
class NetworkConfig:
    """curvature: 'fisher' (empirical Fisher), 'gauss-newton' or 'exact' (Hessian of the loss).
    rel_damp: λ = rel_damp · mean(diag H) added before inverting (OBS). k: weights OBS removes
    jointly per step (1 = the classic one at a time). max_params: largest dense curvature."""

    curvature: str = "fisher"
    rel_damp: float = 0.01
    k: int = 1
    max_params: int = MAX_DENSE_PARAMS
    top: int = 10
    rounds: int = 1

    def dense(self, method: str) -> bool:
        """Whether ``method`` needs the dense n × n curvature (OBD with the Fisher does not)."""
        if method in MASK_METHODS:
            return False
        return method == "obs-network" or self.curvature != "fisher"

    def __post_init__(self) -> None:
        if self.curvature not in CURVATURES:
            raise UsageError(f"--curvature {self.curvature!r}: use one of {', '.join(CURVATURES)}")
        if not self.rel_damp >= 0:
            raise UsageError(f"--damp {self.rel_damp!r} must be >= 0, e.g. 0.01")
        if self.k < 1:
            raise UsageError(f"--obs-k {self.k!r} must be >= 1")
        if self.max_params < 1:
            raise UsageError(f"--max-params {self.max_params!r} must be >= 1")
        if self.top < 1 or self.rounds < 1:
            raise UsageError(f"--ntk-top {self.top!r} and --ntk-rounds {self.rounds!r} must be >= 1")


def check_network_size(n: int, method: str, config: NetworkConfig) -> None:
    """Refuse, before any work, a method that needs a dense curvature of more than
    ``config.max_params`` weights (OBD with the Fisher diagonal has no limit)."""
    if config.dense(method):
        check_dense_size(n, config.max_params)


def flat_weights(model: nn.Module, names: list[str]) -> Tensor:
    """The named parameters concatenated, in order: (n,)."""
    params = dict(model.named_parameters())
    return torch.cat([params[n].detach().reshape(-1) for n in names])


def write_flat_(model: nn.Module, names: list[str], w: Tensor) -> None:
    """Copy the flat vector ``w`` back into the named parameters."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, part in zip(names, torch.split(w, [params[n].numel() for n in names])):
            params[n].copy_(part.reshape(params[n].shape))


def curvature_diagonal(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor,
                       names: list[str], config: NetworkConfig) -> Tensor:
    """diag of the chosen curvature: the Fisher's without forming it (any size), the others'
    from the dense matrix (size-limited)."""
    if config.curvature == "fisher":
        return fisher_diagonal(model, loss_fn, x, y, names)
    dense = CURVATURES[config.curvature](model, loss_fn, x, y, names,
                                         max_params=config.max_params)
    return torch.diagonal(dense).clone()


def prune_network(model: nn.Module, method: str, sparsity_: float, x: Tensor, y: Tensor,
                  loss_fn: LossFn | None = None, config: NetworkConfig | None = None
                  ) -> list[LayerResult]:
    """Prune all Linear/Conv weights of ``model`` together, in place, to ``sparsity_``.

    method: 'obd', 'obs-network', 'snip' or 'ntk' (see :mod:`prunekit.analysis.masks`).
    (x, y): calibration inputs and labels for the curvature of ``loss_fn`` (default
    cross-entropy), SNIP's gradient, or the NTK's inputs. The curvature and the OBS solve run on a float64 copy
    of the model, whatever its dtype. Returns one :class:`LayerResult` per weight matrix; the
    first carries the run's totals in ``extra`` (predicted loss increase, damping tries).
    """
    if method not in NETWORK_METHODS:
        raise UsageError(f"unknown whole-network method {method!r}: use {', '.join(NETWORK_METHODS)}")
    if not 0 <= sparsity_ < 1:
        raise PatternError(f"sparsity {sparsity_} must be in [0, 1), e.g. 0.9")
    config = config or NetworkConfig()
    if method == "obd" and config.k != 1:
        raise UsageError(f"--obs-k {config.k} applies to obs-network, not obd")
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    names = prunable_names(model)
    if not names:
        raise UsageError(f"{type(model).__name__} has no Linear/Conv weights to prune")
    start = time.perf_counter()
    work = copy.deepcopy(model).double()  # curvature and OBS in float64, whatever the model's dtype
    x64 = x.double() if x.is_floating_point() else x
    y64 = y.double() if y.is_floating_point() else y
    w = flat_weights(work, names)
    check_network_size(w.numel(), method, config)
    n_prune = prune_count(w.numel(), sparsity_)
    extra: dict = {"curvature": config.curvature, "samples": len(x)}
    damping = None
    if method in MASK_METHODS:
        w_new = _mask_method(work, method, sparsity_, x64, y64, loss_fn, config, names)
        extra = {"samples": len(x), **({"top": config.top, "rounds": config.rounds}
                                       if method == "ntk" else {})}
    elif method == "obd":
        diag = curvature_diagonal(work, loss_fn, x64, y64, names, config)
        w_new, order = obd_prune(w, diag, n_prune)
        extra["predicted_loss"] = float(0.5 * (diag[order] * w[order].square()).sum())
    else:
        H = CURVATURES[config.curvature](work, loss_fn, x64, y64, names,
                                         max_params=config.max_params)
        try:
            res = obs_prune(w, H, n_prune, k=config.k, rel_damp=config.rel_damp,
                            name=type(model).__name__)
        except NumericalError as exc:
            raise NumericalError(
                f"{exc}. The {config.curvature} curvature of this network could not be used: an "
                "exact Hessian away from a minimum is indefinite (use --curvature fisher or "
                "gauss-newton, which are positive semi-definite, or a larger --damp)") from None
        del H
        w_new, damping = res.w, res.damping.relative
        extra["predicted_loss"] = float(res.losses.sum())
        extra["damping_tries"] = res.damping.tries
    params = dict(model.named_parameters())
    write_flat_(model, names, w_new.to(params[names[0]].dtype))
    seconds = time.perf_counter() - start
    return [
        LayerResult(name=n.removesuffix(".weight"), method=method, pattern=f"{sparsity_:g} network",
                    shape=tuple(params[n].reshape(params[n].shape[0], -1).shape),
                    sparsity=sparsity(params[n]), rel_error=None, damping=damping,
                    seconds=seconds if i == 0 else 0.0, n_tokens=len(x),
                    extra=extra if i == 0 else {})
        for i, n in enumerate(names)
    ]


def _mask_method(work: nn.Module, method: str, sparsity_: float, x: Tensor, y: Tensor,
                 loss_fn: LossFn, config: NetworkConfig, names: list[str]) -> Tensor:
    """The flat weights of ``work`` under a SNIP or NTK-preserving mask (no update)."""
    from .analysis.masks import apply_masks_, ntk_masks, snip_masks

    if method == "snip":
        masks = snip_masks(work, x, y, sparsity_, loss_fn)
    else:
        masks = ntk_masks(work, x, sparsity_, top=min(config.top, len(x)), rounds=config.rounds)
    return flat_weights(apply_masks_(work, masks), names)


def linear_targets(model: nn.Module) -> dict[str, nn.Module]:
    """Every Linear (and transformers Conv1D) of ``model``, in registration order."""
    return {name: m for name, m in model.named_modules() if is_target(m)}


def prune_layers(model: nn.Module, method: str, pattern: Pattern, x: Tensor,
                 config: MethodConfig | None = None, batch_size: int = 512) -> list[LayerResult]:
    """Run a layer-wise method on every Linear of ``model`` in order, in place.

    Layer i is calibrated on its inputs when ``model`` runs on x with layers < i already
    pruned (sequential, as in SparseGPT's pipeline). Global magnitude is ranked once over all.
    """
    cls = get_method(method)
    config = config or cls.config_cls()
    targets = linear_targets(model)
    if not targets:
        raise UsageError(f"{type(model).__name__} has no Linear layers to prune")
    patterns = {name: pattern for name in targets}
    if isinstance(pattern, Unstructured) and pattern.scope == "global":
        if not cls.supports_global:
            raise PatternError(f"method {method!r} has no global scope: use --scope row or layer")
        patterns = global_patterns({n: weight_matrix(m).abs() for n, m in targets.items()},
                                   pattern.sparsity)
    results = []
    for name, layer in targets.items():
        comp: LayerCompressor = cls(layer, patterns[name], config, name)
        handle = layer.register_forward_pre_hook(lambda _m, inp: comp.add_batch(inp[0]))
        try:
            with torch.no_grad():
                for i in range(0, len(x), batch_size):
                    model(x[i : i + batch_size])
        finally:
            handle.remove()
        results.append(comp.compress())
        comp.free()
    return results
