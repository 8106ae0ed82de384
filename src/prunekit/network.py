"""Pruning a small network whole: every Linear weight at once, with a labelled task loss.

Two kinds of method meet here, on any ``nn.Module`` whose prunable weights are its Linear (and
Conv) weights:

* whole-network methods (kind "network" in the registry: ``obd``, ``obs-network``, ``snip``,
  ``ntk``), which rank all weights together: OBD (LeCun et al. 1990) with the diagonal of a
  curvature matrix, OBS (Hassibi & Stork 1993) with the full matrix, so it also updates the
  weights it keeps, and the data-driven masks of SNIP and the NTK criterion. The curvature is
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
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .curvature import LossFn, check_dense_size, flat_weights, prunable_names, write_flat_
from .errors import UsageError
from .masks import sparsity
from .methods.base import LayerCompressor, LayerResult, MethodConfig, NetworkConfig
from .models.adapter import is_target
from .patterns import Pattern, Unstructured
from .plan import Plan, layer_patterns, make_plan

NETWORK = "network"  # the registry kind of the whole-network methods


def check_network_size(n: int, plan: Plan) -> None:
    """Refuse, before any work, a method that needs a dense curvature of more than
    ``max_params`` weights (OBD with the Fisher diagonal, SNIP and NTK have no limit)."""
    if plan.cls.dense(plan.config):
        check_dense_size(n, plan.config.max_params)


def network_plan(method: str, sparsity_: float,
                 config: Mapping[str, Any] | NetworkConfig | None = None) -> Plan:
    """The checked plan of a whole-network run: a registered "network" method at a global
    sparsity, with its own settings."""
    plan = make_plan(method, Unstructured(sparsity_, "global"), config, kind=NETWORK)
    plan.cls.check(plan.pattern, plan.config)
    return plan


def prune_network(model: nn.Module, method: str | Plan, sparsity_: float | None = None,
                  x: Tensor | None = None, y: Tensor | None = None,
                  loss_fn: LossFn | None = None,
                  config: Mapping[str, Any] | NetworkConfig | None = None) -> list[LayerResult]:
    """Prune all Linear/Conv weights of ``model`` together, in place, to ``sparsity_``.

    method: 'obd', 'obs-network', 'snip' or 'ntk' (or any registered "network" method), or a
    :class:`~prunekit.plan.Plan` of one. (x, y): calibration inputs and labels for the
    curvature of ``loss_fn`` (default cross-entropy), SNIP's gradient, or the NTK's inputs.
    config: the method's config or a mapping of its settings. The curvature and the OBS solve
    run on a float64 copy of the model, whatever its dtype. Returns one :class:`LayerResult`
    per weight matrix; the first carries the run's totals in ``extra`` (predicted loss
    increase, damping tries).
    """
    plan = method if isinstance(method, Plan) else network_plan(method, sparsity_, config)
    names = prunable_names(model)
    if not names:
        raise UsageError(f"{type(model).__name__} has no Linear/Conv weights to prune")
    start = time.perf_counter()
    work = copy.deepcopy(model).double()  # curvature and OBS in float64, whatever the model's dtype
    x64 = x.double() if x.is_floating_point() else x
    y64 = y.double() if y.is_floating_point() else y
    w = flat_weights(work, names)
    check_network_size(w.numel(), plan)
    level = plan.pattern.sparsity
    w_new, figures, damping = plan.cls.select(work, w, names, x64, y64,
                                              loss_fn or nn.CrossEntropyLoss(), level,
                                              plan.config)
    curvature = getattr(plan.config, "curvature", None)
    extra = {**({} if curvature is None else {"curvature": curvature}), "samples": len(x),
             **figures}
    params = dict(model.named_parameters())
    write_flat_(model, names, w_new.to(params[names[0]].dtype))
    seconds = time.perf_counter() - start
    return [
        LayerResult(name=n.removesuffix(".weight"), method=plan.method,
                    pattern=f"{level:g} network",
                    shape=tuple(params[n].reshape(params[n].shape[0], -1).shape),
                    sparsity=sparsity(params[n]), rel_error=None, damping=damping,
                    seconds=seconds if i == 0 else 0.0, n_tokens=len(x),
                    extra=extra if i == 0 else {})
        for i, n in enumerate(names)
    ]


def linear_targets(model: nn.Module) -> dict[str, nn.Module]:
    """Every Linear (and transformers Conv1D) of ``model``, in registration order."""
    return {name: m for name, m in model.named_modules() if is_target(m)}


def prune_layers(model: nn.Module, method: str | Plan, pattern: Pattern | None, x: Tensor,
                 config: MethodConfig | None = None, batch_size: int = 512) -> list[LayerResult]:
    """Run a layer-wise method on every Linear of ``model`` in order, in place.

    Layer i is calibrated on its inputs when ``model`` runs on x with layers < i already
    pruned (sequential, as in SparseGPT's pipeline). Global magnitude is ranked once over all.
    ``method`` may be a :class:`~prunekit.plan.Plan` (``pattern`` and ``config`` then unused).
    """
    plan = method if isinstance(method, Plan) else make_plan(method, pattern, config,
                                                             kind="prune")
    targets = linear_targets(model)
    if not targets:
        raise UsageError(f"{type(model).__name__} has no Linear layers to prune")
    pattern_of = layer_patterns(plan.pattern, targets)
    results = []
    for name, layer in targets.items():
        comp: LayerCompressor = plan.cls(layer, pattern_of(name), plan.config, name)
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

