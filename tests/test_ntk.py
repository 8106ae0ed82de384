"""Empirical NTK: against the explicit Jacobian product, the two implementations against each
other, masked kernels against a model with the pruned parameters removed, and the metrics on
known spectra."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from conftest import TOL
from prunekit.analysis.kernels import (cka, effective_rank, kernel_regression,
                                       participation_ratio, relative_distance, spectrum,
                                       subspace_overlap)
from prunekit.analysis.ntk import implicit_ntk, jacobian_ntk, ntk
from prunekit.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_thread")


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 8), nn.ReLU(),
                         nn.Linear(8, 3)).double()


def cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Unflatten(1, (1, 4, 4)), nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(),
                         nn.Flatten(), nn.Linear(48, 4)).double()


def inputs(n, d, seed=1):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def explicit_jacobian(model, x, masks=None):
    """(N·K, P_kept): d f / d θ_kept by autograd over a flat vector of the kept entries."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    masks = masks or {}
    keep = {n: masks.get(n, torch.ones_like(p, dtype=torch.bool)) for n, p in params.items()}
    flat = torch.cat([p[keep[n]] for n, p in params.items()])

    def f(v):
        out, i = {}, 0
        for n, p in params.items():
            k = int(keep[n].sum())
            out[n] = torch.zeros_like(p).masked_scatter(keep[n], v[i : i + k])
            i += k
        return functional_call(model, out, (x,)).reshape(-1)

    return torch.autograd.functional.jacobian(f, flat)


@pytest.mark.parametrize("make,d", [(mlp, 6), (cnn, 16)])
def test_ntk_is_the_jacobian_product(make, d):
    model, x, y = make(), inputs(5, d), inputs(4, d, seed=2)
    Jx, Jy = explicit_jacobian(model, x), explicit_jacobian(model, y)
    full = Jx @ Jy.T  # (5·K, 4·K)
    for method in ("jacobian", "implicit"):
        got = ntk(model, x, y, trace=False, method=method, chunk=3)
        assert torch.allclose(got, full, atol=TOL["float64_exact"], rtol=0), method
        traced = ntk(model, x, y, trace=True, method=method, chunk=2)
        k = full.shape[0] // 5
        expected = full.reshape(5, k, 4, k).diagonal(dim1=1, dim2=3).sum(-1)
        assert torch.allclose(traced, expected, atol=TOL["float64_exact"], rtol=0), method


def test_ntk_is_symmetric_psd_and_the_two_implementations_agree():
    model, x = mlp(), inputs(20, 6)
    A = jacobian_ntk(model, x, chunk=7)
    B = implicit_ntk(model, x, chunk=11)
    assert torch.allclose(A, B, atol=TOL["float64_exact"], rtol=0)
    assert torch.allclose(A, A.T, atol=TOL["float64_exact"], rtol=0)
    assert float(torch.linalg.eigvalsh(A).min()) > -1e-10


@pytest.mark.parametrize("make,d", [(mlp, 6), (cnn, 16)])
def test_masked_ntk_is_the_ntk_over_the_kept_parameters(make, d):
    model, x = make(), inputs(6, d)
    g = torch.Generator().manual_seed(3)
    masks = {n: torch.rand(p.shape, generator=g) > 0.6 for n, p in model.named_parameters()
             if p.dim() > 1}
    J = explicit_jacobian(model, x, masks)  # pruned parameters are not parameters at all
    expected = J @ J.T
    for method in ("jacobian", "implicit"):
        got = ntk(model, x, masks=masks, trace=False, method=method)
        assert torch.allclose(got, expected, atol=TOL["float64_exact"], rtol=0), method
    before = [p.clone() for p in model.parameters()]
    ntk(model, x, masks=masks)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # untouched


def test_mask_errors_name_the_parameter():
    model = mlp()
    with pytest.raises(UsageError, match="no such parameter"):
        ntk(model, inputs(2, 6), masks={"9.weight": torch.ones(1)})
    with pytest.raises(UsageError, match="shape"):
        ntk(model, inputs(2, 6), masks={"0.weight": torch.ones(2, 2, dtype=torch.bool)})


def test_effective_rank_and_participation_of_known_spectra():
    n = 7
    assert effective_rank(spectrum(torch.eye(n, dtype=torch.float64))) == pytest.approx(n)
    assert participation_ratio(spectrum(torch.eye(n, dtype=torch.float64))) == pytest.approx(n)
    v = torch.randn(n, 1, dtype=torch.float64)
    rank_one = v @ v.T
    assert effective_rank(spectrum(rank_one)) == pytest.approx(1.0, abs=1e-6)
    assert participation_ratio(spectrum(rank_one)) == pytest.approx(1.0, abs=1e-6)
    assert effective_rank(torch.tensor([2.0, 2.0, 0.0])) == pytest.approx(2.0)


def test_overlap_alignment_and_distance():
    model, x = mlp(), inputs(30, 6)
    K = jacobian_ntk(model, x, trace=True)
    assert subspace_overlap(K, K, 5) == pytest.approx(1.0)
    assert cka(K, K) == pytest.approx(1.0) and relative_distance(K, K) == 0.0
    assert cka(K, 3 * K) == pytest.approx(1.0)  # alignment ignores scale
    Q, _ = torch.linalg.qr(torch.randn(30, 30, dtype=torch.float64))
    other = Q @ torch.diag(torch.linspace(1, 2, 30, dtype=torch.float64)) @ Q.T
    assert subspace_overlap(K, other, 5) < 0.6
    with pytest.raises(ValueError):
        subspace_overlap(K, K, 31)


def test_kernel_regression_classifies_separable_data():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 5, generator=g, dtype=torch.float64) * 4
    y = torch.arange(60) % 3
    X = centres[y] + torch.randn(60, 5, generator=g, dtype=torch.float64) * 0.3
    K = X @ X.T + 1.0
    pred = kernel_regression(K[:40, :40], K[40:, :40], y[:40], 3)
    assert float((pred == y[40:]).double().mean()) == 1.0
