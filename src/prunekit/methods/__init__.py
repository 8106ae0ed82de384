"""One-shot layer methods. Each module registers its :class:`LayerCompressor` by name."""

from __future__ import annotations

import importlib
import pkgutil

from .base import REGISTRY, LayerCompressor, LayerResult, MethodConfig, get_method, register

def load_builtin_methods() -> dict[str, type[LayerCompressor]]:
    """Import every module of this package (each registers its method) and return the registry.

    A new method is a new file here: nothing else needs an edit. The quantizers live in
    ``prunekit.quant.compressors``.
    """
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")
    importlib.import_module("prunekit.quant.compressors")  # rtn, gptq, awq (kind "quantize")
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
