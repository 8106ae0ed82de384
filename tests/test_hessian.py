import pytest
import torch

from conftest import TOL
from prunekit.errors import DataError, NumericalError
from prunekit.hessian import HessianAccumulator, damped_cholesky, inverse_cholesky_upper


def test_accumulator_matches_definition_over_batches():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(3, 50, 600, generator=g, dtype=torch.float64)  # batches of tokens, c = 600
    acc = HessianAccumulator(600, dtype=torch.float64)
    for b in range(3):
        acc.add_batch(X[b].reshape(5, 10, 600))  # (..., in) shapes are flattened
    flat = X.reshape(-1, 600)
    H_ref = 2.0 / flat.shape[0] * flat.T @ flat
    H = acc.finalize()
    assert acc.n_tokens == 150
    assert torch.allclose(H, H_ref, atol=TOL["float64_exact"], rtol=0)
    assert torch.equal(H, H.T)


def test_accumulator_float32_and_errors():
    acc = HessianAccumulator(4, name="fc1")
    with pytest.raises(DataError, match="fc1: no calibration tokens"):
        acc.finalize()
    with pytest.raises(DataError, match="expected 4"):
        acc.add_batch(torch.ones(2, 5))
    acc.add_batch(torch.tensor([[1.0, float("nan"), 0.0, 0.0]]))
    with pytest.raises(NumericalError, match="fc1.*NaN"):
        acc.finalize()


def test_damped_cholesky_escalates_and_reports():
    H = torch.diag(torch.tensor([1.0, 1.0, -0.5], dtype=torch.float64))  # indefinite
    L, damp = damped_cholesky(H, rel_damp=0.01, name="q_proj")
    assert damp.tries > 1 and damp.relative > 0.01
    Hd = H + damp.absolute * torch.eye(3, dtype=torch.float64)
    assert torch.allclose(L @ L.T, Hd)
    _, ok = damped_cholesky(torch.eye(3), rel_damp=0.01)
    assert ok.tries == 1 and ok.relative == 0.01


def test_damped_cholesky_gives_up_with_clear_error():
    H = torch.diag(torch.tensor([1.0, -1e6]))
    with pytest.raises(NumericalError, match="k_proj.*not positive definite.*--damp"):
        damped_cholesky(H, rel_damp=0.01, max_tries=2, name="k_proj")


def test_inverse_cholesky_upper_matches_textbook():
    g = torch.Generator().manual_seed(0)
    for c in (7, 300, 700):  # 700 exercises the recursive inverse
        X = torch.randn(2 * c, c, generator=g, dtype=torch.float64)
        H = 2.0 / X.shape[0] * X.T @ X
        U, damp = inverse_cholesky_upper(H, rel_damp=0.01)
        Hd = H + damp.absolute * torch.eye(c, dtype=torch.float64)
        ref = torch.linalg.cholesky(torch.linalg.inv(Hd), upper=True)
        assert torch.allclose(U, ref, atol=TOL["float64_sweep"], rtol=TOL["float64_cholesky_rel"])
        assert torch.equal(U, torch.triu(U))


def test_shrink_to_diagonal_scales_only_the_diagonal_and_is_the_convex_mix():
    from prunekit.hessian import shrink_to_diagonal

    H = torch.randn(5, 5, dtype=torch.float64)
    H = H @ H.T
    before = H.clone()
    got = shrink_to_diagonal(H, 0.25)
    assert torch.equal(H, before)  # a new tensor: a shared Hessian is left as it was
    off = ~torch.eye(5, dtype=torch.bool)
    assert torch.equal(got[off], H[off])
    assert torch.allclose(torch.diagonal(got), 1.25 * torch.diagonal(H))
    beta = 0.25 / 1.25  # (1 + α) · ((1 − β) H + β diag H)
    mix = 1.25 * ((1 - beta) * H + beta * torch.diag(torch.diagonal(H)))
    assert torch.allclose(got, mix, atol=TOL["float64_exact"])
