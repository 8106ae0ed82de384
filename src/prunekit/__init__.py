"""prunekit: pruning and compression of PyTorch models, with honest numbers."""

from ._version import __version__
from .api import compress, load, pareto, prune, prune_stream, quantize, save_pruned
from .errors import DataError, ModelError, NumericalError, PatternError, PrunekitError, UsageError
from .formats.load import load_model
from .methods import REGISTRY, LayerCompressor, LayerResult, MethodConfig, get_method, register
from .models.adapter import HFAdapter
from .patterns import NM, Pattern, Unstructured, parse_pattern
from .plan import Plan, make_plan
from .report import PruneReport
from .run import prune_model, quantize_model

__all__ = [
    "NM", "REGISTRY", "DataError", "HFAdapter", "LayerCompressor", "LayerResult", "MethodConfig",
    "ModelError", "NumericalError", "Pattern", "PatternError", "Plan", "PruneReport",
    "PrunekitError", "Unstructured", "UsageError", "__version__", "compress", "get_method",
    "load", "load_model", "make_plan", "pareto", "parse_pattern", "prune", "prune_model",
    "prune_stream", "quantize", "quantize_model", "register", "save_pruned",
]
