"""One-shot and whole-network pruning methods, one file each, and the registry that finds them.

A new method is one new file in this folder: pure maths functions at the top, a frozen config
dataclass, and a class registered by name with :func:`register`. :func:`load_builtin_methods`
imports every module of the folder the first time a method is asked for (never at import
time); the CLI builds its flags and choices from the registry, so nothing else needs an edit.
The quantizers (``quantizers.py``: rtn, gptq, awq, kind "quantize") are registered the same
way; their maths is in :mod:`prunekit.quant`.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..errors import UsageError
from .base import REGISTRY, LayerCompressor, LayerResult, MethodConfig, register

#: The module of this folder that holds no method.
NOT_METHODS = frozenset({"base"})


def load_builtin_methods() -> dict[str, type]:
    """Import every module of this package (each registers its method), once, and return the
    registry."""
    for info in pkgutil.iter_modules(__path__):
        if info.name not in NOT_METHODS:
            importlib.import_module(f"{__name__}.{info.name}")
    return REGISTRY


def get_method(name: str) -> type:
    """The registered method called ``name``, or a :class:`UsageError` listing the choices."""
    load_builtin_methods()
    try:
        return REGISTRY[name]
    except KeyError:
        raise UsageError(
            f"unknown method {name!r}: choose one of {', '.join(sorted(REGISTRY))}"
        ) from None


__all__ = ["REGISTRY", "LayerCompressor", "LayerResult", "MethodConfig", "get_method",
           "load_builtin_methods", "register"]
