"""Embedding fidelity of a pruned sentence encoder against its dense original.

Embeddings are mean-pooled over tokens and L2-normalised, as sentence-transformers does for
all-MiniLM-L6-v2 (Reimers & Gurevych 2019). Fidelity is the mean cosine similarity between
dense and pruned embeddings of the same held-out passage, and the nearest-neighbour agreement:
the fraction of passages whose nearest other passage is the same under both models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class EmbeddingFidelity:
    cosine: float  # mean cos(e_dense, e_pruned) over passages
    nn_agreement: float  # fraction of passages with the same nearest neighbour
    n_texts: int
    max_length: int


def sentence_embeddings(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    max_length: int = 128,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Mean-pooled, L2-normalised embeddings (n, d) of ``texts`` from the encoder's last layer."""
    base = getattr(model, "base_model", model)
    chunks = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(
                list(texts[i : i + batch_size]), padding=True, truncation=True,
                max_length=max_length, return_tensors="pt",
            ).to(device)
            hidden = base(**enc).last_hidden_state  # (b, s, d)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, s, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            chunks.append(F.normalize(pooled.float(), dim=-1).cpu())
    return torch.cat(chunks)


def nearest_neighbours(emb: Tensor) -> Tensor:
    """Index of each row's most similar other row (cosine, embeddings already normalised)."""
    sim = emb @ emb.T  # (n, n)
    sim.fill_diagonal_(-float("inf"))
    return sim.argmax(dim=1)


def embedding_fidelity(dense: Tensor, pruned: Tensor, max_length: int = 128) -> EmbeddingFidelity:
    """Compare normalised embeddings (n, d) of the same passages from two models."""
    cosine = float((dense * pruned).sum(-1).mean())
    agree = float((nearest_neighbours(dense) == nearest_neighbours(pruned)).float().mean())
    return EmbeddingFidelity(cosine, agree, dense.shape[0], max_length)
