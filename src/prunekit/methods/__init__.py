"""One-shot layer methods. Each module registers its :class:`LayerCompressor` by name."""

from __future__ import annotations

import importlib

from .base import REGISTRY, LayerCompressor, LayerResult, MethodConfig, get_method, register

BUILTIN = ("magnitude", "wanda", "sparsegpt")


def load_builtin_methods() -> dict[str, type[LayerCompressor]]:
    """Import the built-in method modules (which register themselves) and return the registry."""
    for module in BUILTIN:
        importlib.import_module(f"{__name__}.{module}")
    return REGISTRY


__all__ = [
    "REGISTRY",
    "LayerCompressor",
    "LayerResult",
    "MethodConfig",
    "get_method",
    "load_builtin_methods",
    "register",
]
