"""Metrics of kernel matrices (n × n, symmetric positive semi-definite), to compare the NTK of
a pruned network with the dense one. Pure functions on tensors.

  spectrum               eigenvalues, descending (negative round-off clipped to 0)
  effective_rank         exp of the Shannon entropy of the normalised spectrum p = λ/Σλ
                         (Roy & Vetterli 2007): n for the identity, 1 for a rank-one kernel
  participation_ratio    (Σλ)² / Σλ²
  cka                    centred kernel alignment ⟨HK₁H, HK₂H⟩ / (‖HK₁H‖ ‖HK₂H‖), H = I − 11ᵀ/n
                         (Cortes et al. 2012; Kornblith et al. 2019)
  relative_distance      ‖K₁ − K₂‖_F / ‖K₁‖_F
  subspace_overlap       ‖U₁ᵀU₂‖²_F / k for the top-k eigenvectors: the mean squared cosine of
                         the principal angles between the two top-k eigenspaces (1: the same)
  kernel_regression      NTK regression (Jacot et al. 2018; Arora et al. 2019), the
                         infinite-width stand-in for training: ŷ = K(test, train)(K + λI)⁻¹ Y
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def spectrum(K: Tensor) -> Tensor:
    """Eigenvalues of the symmetric K, descending, clipped at 0."""
    return torch.linalg.eigvalsh(_sym(K)).flip(0).clamp_min(0.0)


def _sym(K: Tensor) -> Tensor:
    return (K + K.T) / 2


def effective_rank(eigenvalues: Tensor) -> float:
    """exp(H(p)) with p = λ / Σλ (0 · log 0 = 0)."""
    lam = eigenvalues.clamp_min(0.0)
    total = float(lam.sum())
    if total <= 0:
        return 0.0
    p = lam / total
    p = p[p > 0]
    return math.exp(float(-(p * p.log()).sum()))


def participation_ratio(eigenvalues: Tensor) -> float:
    lam = eigenvalues.clamp_min(0.0)
    den = float((lam ** 2).sum())
    return float(lam.sum()) ** 2 / den if den > 0 else 0.0


def _centre(K: Tensor) -> Tensor:
    return K - K.mean(0, keepdim=True) - K.mean(1, keepdim=True) + K.mean()


def cka(K1: Tensor, K2: Tensor) -> float:
    """Centred kernel alignment of two n × n kernels, in [0, 1] for PSD kernels."""
    A, B = _centre(K1), _centre(K2)
    den = float(A.norm() * B.norm())
    return float((A * B).sum()) / den if den > 0 else 0.0


def relative_distance(K1: Tensor, K2: Tensor) -> float:
    den = float(K1.norm())
    return float((K1 - K2).norm()) / den if den > 0 else 0.0


def top_eigenvectors(K: Tensor, k: int) -> Tensor:
    """The k leading eigenvectors of K as columns (n, k)."""
    _, vecs = torch.linalg.eigh(_sym(K))
    return vecs[:, -k:]


def subspace_overlap(K1: Tensor, K2: Tensor, k: int) -> float:
    """Mean squared cosine of the principal angles between the top-k eigenspaces."""
    if not 1 <= k <= K1.shape[0]:
        raise ValueError(f"k={k} must be in [1, {K1.shape[0]}]")
    U1, U2 = top_eigenvectors(K1, k), top_eigenvectors(K2, k)
    return float((U1.T @ U2).square().sum()) / k


def kernel_regression(K_train: Tensor, K_test_train: Tensor, y_train: Tensor, n_classes: int,
                      ridge: float = 1e-3) -> Tensor:
    """Predicted classes of the test points by kernel ridge regression on one-hot targets;
    ``ridge`` is relative to the mean of diag(K_train)."""
    n = K_train.shape[0]
    Y = torch.nn.functional.one_hot(y_train, n_classes).to(K_train.dtype)
    lam = ridge * float(torch.diagonal(K_train).mean())
    A = _sym(K_train) + lam * torch.eye(n, dtype=K_train.dtype, device=K_train.device)
    alpha = torch.linalg.solve(A, Y)
    return (K_test_train @ alpha).argmax(1)


def kernel_metrics(K_dense: Tensor, K: Tensor, k: int = 10) -> dict[str, float]:
    """The metrics of a pruned kernel K against the dense one (both n × n, same inputs)."""
    lam = spectrum(K)
    return {"effective_rank": effective_rank(lam), "participation_ratio": participation_ratio(lam),
            "trace": float(lam.sum()), "cka": cka(K_dense, K),
            "relative_distance": relative_distance(K_dense, K),
            f"top{k}_overlap": subspace_overlap(K_dense, K, k)}
