"""The built-in small classifiers (``digits-mlp[:HIDDEN]``): trained in seconds, pruned with a
whole-network method (all weights ranked on the curvature of the task loss) or a layer-wise
one, and judged by test accuracy."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from ..methods.base import MethodConfig, NetworkConfig
from ..methods.movement_base import needs_base
from ..models.digits import N_CLASSES, N_PIXELS, accuracy, parse_small_spec, trained_digits_mlp
from ..network import NETWORK, check_network_size, prune_layers, prune_network
from ..patterns import Pattern
from ..plan import Plan, make_plan
from ..report import PruneReport

log = logging.getLogger(__name__)

SMALL_MODELS = ("digits-mlp",)


def is_small_model(spec: object) -> bool:
    """True for the built-in small classifiers (``digits-mlp[:HIDDEN]``)."""
    return isinstance(spec, str) and spec.split(":", 1)[0] in SMALL_MODELS


def classifier_metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Test accuracy and mean cross-entropy of a classifier."""
    with torch.no_grad():
        loss = float(nn.functional.cross_entropy(model(x), y))
    return {"accuracy": accuracy(model, x, y), "loss": loss}


def classifier_plan(method: str, pattern: str | float | Pattern,
                    config: Mapping[str, Any] | MethodConfig | NetworkConfig | None = None,
                    base: Any = None) -> Plan:
    """The checked plan of a small-network run, before any work: a whole-network method at a
    global sparsity, or a layer-wise pruning method (none that needs a base checkpoint)."""
    if needs_base(method):
        raise UsageError(f"method {method!r} prunes a fine-tuned transformer against its "
                         f"pretrained --base: {' or '.join(SMALL_MODELS)} has no base checkpoint")
    plan = make_plan(method, pattern, config, kind=("prune", NETWORK), base=base)
    if plan.cls.kind == NETWORK:
        plan.cls.check(plan.pattern, plan.config)
    return plan


def prune_classifier(
    model: nn.Module, method: str | Plan, pattern: str | float | Pattern | None,
    x: torch.Tensor, y: torch.Tensor, *, x_test: torch.Tensor | None = None,
    y_test: torch.Tensor | None = None,
    config: Mapping[str, Any] | MethodConfig | NetworkConfig | None = None,
    source: str = "calibration set", evaluate: bool = True,
) -> PruneReport:
    """Prune a small classifier in place, with a whole-network method ('obd', 'obs-network':
    all weights ranked together on the curvature of the cross-entropy on (x, y)) or any
    layer-wise method (each Linear in turn, calibrated on its inputs from x). With a test set,
    the report holds dense and pruned accuracy and loss (unless ``evaluate`` is false)."""
    plan = method if isinstance(method, Plan) else classifier_plan(method, pattern, config)
    evaluate = evaluate and x_test is not None
    dense = classifier_metrics(model, x_test, y_test) if evaluate else None
    t0 = time.perf_counter()
    if plan.cls.kind == NETWORK:
        layers = prune_network(model, plan, x=x, y=y)
    else:
        layers = prune_layers(model, plan, None, x)
    t1 = time.perf_counter()
    evaluation: dict[str, Any] = {}
    if dense is not None:
        pruned = classifier_metrics(model, x_test, y_test)
        evaluation = {"data": f"{source} (test split)", "n_test": len(y_test),
                      "dense_accuracy": dense["accuracy"], "pruned_accuracy": pruned["accuracy"],
                      "dense_loss": dense["loss"], "pruned_loss": pruned["loss"]}
    return PruneReport(
        model=type(model).__name__, method=plan.method, pattern=str(plan.pattern),
        calibration={"source": f"{source} (train split)", "samples": len(x)}, device="cpu",
        layers=layers, evaluation=evaluation,
        params_total=sum(p.numel() for p in model.parameters()),
        config=dataclasses.asdict(plan.config),
        seconds={"prune": t1 - t0, "eval": time.perf_counter() - t1},
    )


def prune_small(
    spec: str = "digits-mlp", method: str | Plan = "obs-network",
    pattern: str | float | Pattern = 0.5, *, samples: int | None = None, seed: int = 0,
    config: Mapping[str, Any] | MethodConfig | NetworkConfig | None = None,
    evaluate: bool = True,
) -> tuple[nn.Module, PruneReport]:
    """Train the built-in ``digits-mlp[:HIDDEN]`` (seconds, seeded) and prune it with
    :func:`prune_classifier`; calibration: the first ``samples`` training images (default all),
    evaluation: the held-out test split."""
    hidden = parse_small_spec(spec)
    plan = method if isinstance(method, Plan) else classifier_plan(method, pattern, config)
    if plan.cls.kind == NETWORK:  # before training: the size is known from the spec
        check_network_size(N_PIXELS * hidden + hidden * N_CLASSES, plan)
    t0 = time.perf_counter()
    model, data = trained_digits_mlp(hidden, seed=seed)
    t_train = time.perf_counter() - t0
    n = len(data.y_train) if samples is None else min(samples, len(data.y_train))
    if samples is not None and samples > n:
        log.warning("--samples %d: the digits training split has %d images; using all of them",
                    samples, n)
    report = prune_classifier(model, plan, None, data.x_train[:n], data.y_train[:n],
                              x_test=data.x_test, y_test=data.y_test, source="sklearn digits",
                              evaluate=evaluate)
    report.model = f"digits-mlp:{hidden}"
    report.calibration["seed"] = seed
    report.seconds = {"train": t_train, **report.seconds}
    return model, report
