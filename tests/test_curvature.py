"""Whole-network Hessians: exact, Gauss–Newton, empirical Fisher, diagonal (float64)."""

import pytest
import torch
from torch import nn

from prunekit.curvature import (empirical_fisher, fisher_diagonal, gauss_newton, loss_hessian,
                                per_sample_gradients)
from prunekit.errors import UsageError


def linear_problem(n=40, d_in=5, d_out=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(d_in, d_out, bias=False).double()
    X = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    T = torch.randn(n, d_out, generator=g, dtype=torch.float64)
    return model, X, T


def test_exact_hessian_of_linear_mse_is_closed_form_and_equals_gauss_newton():
    model, X, T = linear_problem()
    loss = nn.MSELoss()  # mean over N·K entries
    H = loss_hessian(model, loss, X, T)
    n, k = X.shape[0], T.shape[1]
    # vec(W) row-major: for each output row, 2/(N K) XᵀX
    expected = torch.kron(torch.eye(k, dtype=torch.float64), 2.0 / (n * k) * X.T @ X)
    assert torch.allclose(H, expected, atol=1e-12)
    assert torch.allclose(gauss_newton(model, loss, X, T), H, atol=1e-12)  # linear model


def test_gauss_newton_is_psd_and_differs_from_hessian_off_minimum_for_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    X = torch.randn(30, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (30,))
    loss = nn.CrossEntropyLoss()
    H = loss_hessian(model, loss, X, y)
    G = gauss_newton(model, loss, X, y)
    assert H.shape == G.shape == (4 * 6 + 6 * 3,) * 2
    assert torch.allclose(H, H.T, atol=1e-10) and torch.allclose(G, G.T, atol=1e-10)
    assert torch.linalg.eigvalsh(G).min() > -1e-10
    assert not torch.allclose(H, G, atol=1e-6)  # tanh curvature term is not zero


def test_empirical_fisher_matches_explicit_per_sample_loop():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    X = torch.randn(12, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (12,))
    loss = nn.CrossEntropyLoss()
    grads = []
    for i in range(12):
        model.zero_grad()
        loss(model(X[i : i + 1]), y[i : i + 1]).backward()
        grads.append(torch.cat([model[0].weight.grad.reshape(-1), model[2].weight.grad.reshape(-1)]))
    G = torch.stack(grads)
    assert torch.allclose(per_sample_gradients(model, loss, X, y), G, atol=1e-12)
    F = empirical_fisher(model, loss, X, y)
    assert torch.allclose(F, G.T @ G / 12, atol=1e-12)
    assert torch.allclose(fisher_diagonal(model, loss, X, y), torch.diagonal(F), atol=1e-12)


def test_size_limit_says_how_much_memory():
    model = nn.Linear(200, 150, bias=False).double()  # 30,000 weights
    X, T = torch.randn(4, 200, dtype=torch.float64), torch.randn(4, 150, dtype=torch.float64)
    with pytest.raises(UsageError, match=r"30,000 parameters needs 6\.7 GiB"):
        loss_hessian(model, nn.MSELoss(), X, T)
