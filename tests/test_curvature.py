"""Whole-network Hessians: exact, Gauss–Newton, empirical Fisher, diagonal (float64)."""

import pytest
import torch
from torch import nn

from conftest import TOL
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
    assert torch.allclose(H, expected, atol=TOL["float64_roundoff"])
    assert torch.allclose(gauss_newton(model, loss, X, T), H, atol=TOL["float64_roundoff"])  # linear model


def test_gauss_newton_is_psd_and_differs_from_hessian_off_minimum_for_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    X = torch.randn(30, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (30,))
    loss = nn.CrossEntropyLoss()
    H = loss_hessian(model, loss, X, y)
    G = gauss_newton(model, loss, X, y)
    assert H.shape == G.shape == (4 * 6 + 6 * 3,) * 2
    assert torch.allclose(H, H.T, atol=TOL["float64_exact"]) and torch.allclose(G, G.T, atol=TOL["float64_exact"])
    assert torch.linalg.eigvalsh(G).min() > -1e-10
    assert not torch.allclose(H, G, atol=TOL["float32_of_float64"])  # tanh curvature term is not zero


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
    assert torch.allclose(per_sample_gradients(model, loss, X, y), G, atol=TOL["float64_roundoff"])
    F = empirical_fisher(model, loss, X, y)
    assert torch.allclose(F, G.T @ G / 12, atol=TOL["float64_roundoff"])
    assert torch.allclose(fisher_diagonal(model, loss, X, y), torch.diagonal(F), atol=TOL["float64_roundoff"])


def test_size_limit_says_how_much_memory():
    model = nn.Linear(200, 150, bias=False).double()  # 30,000 weights
    X, T = torch.randn(4, 200, dtype=torch.float64), torch.randn(4, 150, dtype=torch.float64)
    with pytest.raises(UsageError, match=r"30,000 parameters needs 6\.7 GiB"):
        loss_hessian(model, nn.MSELoss(), X, T)


# --- chunked construction: equal to the unchunked / explicit results on small problems ---



def ce_mlp(n_samples=30, seed=0, act=nn.Tanh):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), act(), nn.Linear(6, 3)).double()
    X = torch.randn(n_samples, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (n_samples,))
    return model, X, y


def flat_weight_grad(model):
    return torch.cat([model[0].weight.grad.reshape(-1), model[2].weight.grad.reshape(-1)])


@pytest.mark.parametrize("act", [nn.Tanh, nn.ReLU])
@pytest.mark.parametrize("chunk_size, sample_chunk_size",  # n = 42, N = 30
                         [(1, 30), (7, 7), (11, 4), (42, 1), (1000, 1000)])
def test_chunked_hessian_equals_torch_func_hessian(chunk_size, sample_chunk_size, act):
    from torch.func import hessian

    from prunekit.curvature import _flat_loss

    model, X, y = ce_mlp(act=act)
    loss = nn.CrossEntropyLoss()
    f, w0 = _flat_loss(model, loss, ["0.weight", "2.weight"])
    reference = hessian(f)(w0, X, y)  # (42, 42), all basis directions at once
    H = loss_hessian(model, loss, X, y, chunk_size=chunk_size, sample_chunk_size=sample_chunk_size)
    assert torch.allclose(H, reference, rtol=0, atol=TOL["float64_exact"])
    assert torch.equal(H, H.T)  # symmetrised exactly


@pytest.mark.parametrize("chunk_size", [4, 11])  # n = 15 columns, N = 40: neither divides
def test_chunked_hessian_of_linear_mse_is_closed_form(chunk_size):
    model, X, T = linear_problem()
    H = loss_hessian(model, nn.MSELoss(), X, T, chunk_size=chunk_size, sample_chunk_size=7)
    n, k = X.shape[0], T.shape[1]
    expected = torch.kron(torch.eye(k, dtype=torch.float64), 2.0 / (n * k) * X.T @ X)
    assert torch.allclose(H, expected, rtol=0, atol=TOL["float64_exact"])


def explicit_gauss_newton(model, X, y):
    """1/N Σ J_iᵀ H_i J_i with J_i by one backward pass per logit and the softmax CE output
    Hessian in closed form, H_i = diag(p) − p pᵀ (p = softmax of the logits)."""
    terms = []
    for i in range(X.shape[0]):
        out = model(X[i : i + 1])[0]  # (K,)
        rows = []
        for k in range(out.shape[0]):
            model.zero_grad()
            out[k].backward(retain_graph=True)
            rows.append(flat_weight_grad(model))
        J = torch.stack(rows)  # (K, n)
        p = torch.softmax(out.detach(), 0)
        H_out = torch.diag(p) - torch.outer(p, p)  # (K, K), PSD and singular
        terms.append(J.T @ H_out @ J)
    return torch.stack(terms).mean(0)


@pytest.mark.parametrize("chunk_size", [1, 7, 30, 64])  # N = 30
def test_chunked_gauss_newton_equals_explicit_per_sample_loop_and_is_psd(chunk_size):
    model, X, y = ce_mlp(act=nn.ReLU)
    expected = explicit_gauss_newton(model, X, y)
    G = gauss_newton(model, nn.CrossEntropyLoss(), X, y, chunk_size=chunk_size)
    assert torch.allclose(G, expected, rtol=0, atol=TOL["float64_exact"])
    assert torch.equal(G, G.T)
    assert torch.linalg.eigvalsh(G).min() > -TOL["float64_exact"]


@pytest.mark.parametrize("chunk_size", [1, 7, 12, 100])  # N = 12
def test_chunked_fisher_and_per_sample_gradients_match_explicit_loop(chunk_size):
    model, X, y = ce_mlp(n_samples=12, act=nn.ReLU)
    loss = nn.CrossEntropyLoss()
    grads = []
    for i in range(12):
        model.zero_grad()
        loss(model(X[i : i + 1]), y[i : i + 1]).backward()
        grads.append(flat_weight_grad(model))
    G = torch.stack(grads)  # (N, n)
    kw = dict(chunk_size=chunk_size)
    assert torch.allclose(per_sample_gradients(model, loss, X, y, **kw), G, rtol=0, atol=TOL["float64_exact"])
    F = empirical_fisher(model, loss, X, y, **kw)
    assert torch.allclose(F, G.T @ G / 12, rtol=0, atol=TOL["float64_exact"])
    assert torch.equal(F, F.T)
    assert torch.allclose(fisher_diagonal(model, loss, X, y, **kw), G.square().mean(0),
                          rtol=0, atol=TOL["float64_exact"])


@pytest.mark.parametrize("block", [1, 3, 4, 10, 64])  # n = 10
def test_block_lower_product_and_in_place_symmetrisation(block):
    from prunekit.curvature import _mirror_lower_, _symmetrize_
    from prunekit.hessian import add_lower_product_

    g = torch.Generator().manual_seed(3)
    A = torch.randn(7, 10, generator=g, dtype=torch.float64)
    S = torch.randn(7, 7, generator=g, dtype=torch.float64)
    B = (S + S.T) @ A  # AᵀB = Aᵀ(S + Sᵀ)A is symmetric
    H = torch.zeros(10, 10, dtype=torch.float64)
    add_lower_product_(H, A, B, block=block)
    add_lower_product_(H, B, A, block=block)  # accumulates: 2 AᵀB
    _mirror_lower_(H, block)
    assert torch.allclose(H, 2 * A.T @ B, rtol=0, atol=TOL["float64_exact"]) and torch.equal(H, H.T)
    M = torch.randn(10, 10, generator=g, dtype=torch.float64)
    expected = (M + M.T) / 2
    assert torch.allclose(_symmetrize_(M, block), expected, rtol=0, atol=TOL["float64_exact"])
    assert torch.equal(M, M.T)  # in place


@pytest.mark.parametrize("fn", [loss_hessian, gauss_newton, empirical_fisher, fisher_diagonal,
                                per_sample_gradients])
@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_bad_chunk_size_is_refused(fn, bad):
    model, X, y = ce_mlp(n_samples=4)
    with pytest.raises(UsageError, match=rf"{fn.__name__}: chunk_size must be a positive"):
        fn(model, nn.CrossEntropyLoss(), X, y, chunk_size=bad)
    if fn is loss_hessian:
        with pytest.raises(UsageError, match="sample_chunk_size must be a positive"):
            fn(model, nn.CrossEntropyLoss(), X, y, sample_chunk_size=bad)


def test_size_limit_is_checked_before_any_dense_allocation():
    model = nn.Linear(200, 150, bias=False).double()  # 30,000 weights
    X, T = torch.randn(4, 200, dtype=torch.float64), torch.randn(4, 150, dtype=torch.float64)
    for fn in (gauss_newton, empirical_fisher):
        with pytest.raises(UsageError, match=r"30,000 parameters"):
            fn(model, nn.MSELoss(), X, T, chunk_size=2)
    assert fisher_diagonal(model, nn.MSELoss(), X, T, chunk_size=3).shape == (30_000,)
