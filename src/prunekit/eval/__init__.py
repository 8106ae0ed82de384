"""Quality of a pruned model: embedding fidelity (encoders) and perplexity (causal LMs)."""

from .fidelity import EmbeddingFidelity, embedding_fidelity, sentence_embeddings
from .perplexity import PerplexityProtocol, perplexity

__all__ = [
    "EmbeddingFidelity",
    "PerplexityProtocol",
    "embedding_fidelity",
    "perplexity",
    "sentence_embeddings",
]
