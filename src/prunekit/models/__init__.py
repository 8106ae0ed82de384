"""Model adapters (the only code that knows model families) and loaders."""

from .adapter import HFAdapter, ModelAdapter
from .loaders import LoadedModel, load_model

__all__ = ["HFAdapter", "LoadedModel", "ModelAdapter", "load_model"]
