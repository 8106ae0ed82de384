"""prunekit: pruning and compression of PyTorch models, with honest numbers."""

from .api import (compress, load, prune, prune_model, prune_stream, quantize, quantize_model,
                  save_pruned)
from .errors import DataError, ModelError, NumericalError, PatternError, PrunekitError, UsageError
from .methods import REGISTRY, LayerCompressor, LayerResult, MethodConfig, get_method, register
from .models import HFAdapter, load_model
from .patterns import NM, Pattern, Unstructured, parse_pattern
from .report import PruneReport

__version__ = "0.1.0"

__all__ = [
    "NM", "REGISTRY", "DataError", "HFAdapter", "LayerCompressor", "LayerResult", "MethodConfig",
    "ModelError", "NumericalError", "Pattern", "PatternError", "PruneReport", "PrunekitError",
    "Unstructured", "UsageError", "compress", "get_method", "load", "load_model",
    "parse_pattern", "prune", "prune_model", "prune_stream", "quantize", "quantize_model",
    "register", "save_pruned",
]
