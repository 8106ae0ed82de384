import pytest
import torch

from conftest import TOL, correlated_inputs
from prunekit.masks import satisfies
from prunekit.methods.base import relative_error
from prunekit.methods.magnitude import magnitude_prune
from prunekit.methods.sparsegpt import sparsegpt_prune
from prunekit.methods.wanda import wanda_prune, wanda_scores
from prunekit.patterns import NM, Unstructured
from reference import naive_sparsegpt


@pytest.mark.parametrize("blocksize", [24, 48])  # lazy sub-blocks of 12 and 16 inside
@pytest.mark.parametrize("pattern", [Unstructured(0.5, "layer"), Unstructured(0.37, "layer"),
                                     Unstructured(0.3, "row"), NM(2, 4), NM(1, 4), NM(4, 8),
                                     NM(1, 3)])
def test_sparsegpt_equals_naive_obs_float64(pattern, blocksize):
    _, H = correlated_inputs(c=48)
    W = torch.randn(12, 48, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours, loss, damp = sparsegpt_prune(W, H, pattern, blocksize=blocksize, rel_damp=0.01)
    ref = naive_sparsegpt(W, H, pattern, blocksize=blocksize, rel_damp=0.01)
    assert torch.allclose(ours, ref, atol=TOL["float64_exact"], rtol=0)
    assert torch.equal(ours == 0, ref == 0)
    # the OBS loss the sweep predicts is the actual increase ½ tr(ΔW H_λ ΔWᵀ)
    Hd = H + damp.absolute * torch.eye(48, dtype=H.dtype)
    D = ours - W
    assert float(loss) == pytest.approx(0.5 * float(((D @ Hd) * D).sum()), rel=TOL["float64_sweep"])


def test_sparsegpt_float32_close_to_float64_reference():
    X, H = correlated_inputs(c=64, dtype=torch.float64)
    W = torch.randn(32, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref = naive_sparsegpt(W, H, NM(2, 4), blocksize=32, rel_damp=0.01)
    ours, _, _ = sparsegpt_prune(W.float(), H.float(), NM(2, 4), blocksize=32, rel_damp=0.01)
    err_ref = relative_error(W, ref, H)
    err_ours = relative_error(W, ours.double(), H)
    assert err_ours == pytest.approx(err_ref, rel=TOL["float32_solver"] * 10)


@pytest.mark.parametrize("pattern", [Unstructured(0.5), Unstructured(0.3, "layer"), NM(2, 4)])
def test_sparsegpt_pattern_holds_exactly(pattern):
    _, H = correlated_inputs(c=256, dtype=torch.float32)
    W = torch.randn(40, 256, generator=torch.Generator().manual_seed(3))
    ours, _, _ = sparsegpt_prune(W, H, pattern)
    assert satisfies(ours, pattern)
    if isinstance(pattern, Unstructured) and pattern.scope == "row":
        assert ((ours == 0).sum(1) == int(256 * pattern.sparsity)).all()


def test_dead_inputs_are_pruned_first():
    """Inputs no token activated cannot matter on the data: their weights go, live ones stay."""
    H = torch.diag(torch.tensor([1e-2] * 8 + [0.0] * 8, dtype=torch.float64))
    W = torch.ones(4, 16, dtype=torch.float64)
    ours, _, _ = sparsegpt_prune(W, H, Unstructured(0.5, "layer"), blocksize=16)
    assert (ours[:, 8:] == 0).all() and (ours[:, :8] != 0).all()
    assert relative_error(W, ours, H) == pytest.approx(0.0, abs=TOL["float64_roundoff"])


@pytest.mark.parametrize("blocksize,pattern", [(20, Unstructured(0.5)), (126, NM(1, 3)),
                                               (24, NM(2, 4)), (7, Unstructured(0.4, "layer"))])
def test_unusual_blocksizes(blocksize, pattern):
    _, H = correlated_inputs(c=168, dtype=torch.float32)
    W = torch.randn(8, 168, generator=torch.Generator().manual_seed(6))
    ours, _, _ = sparsegpt_prune(W, H, pattern, blocksize=blocksize)
    assert satisfies(ours, pattern)


def test_sparsegpt_zero_sparsity_changes_nothing():
    _, H = correlated_inputs(c=32)
    W = torch.randn(8, 32, dtype=torch.float64)
    ours, loss, _ = sparsegpt_prune(W, H, Unstructured(0.0), blocksize=8)
    assert torch.equal(ours, W) and float(loss) == 0.0


def test_sparsegpt_does_not_modify_its_input():
    _, H = correlated_inputs(c=32)
    W = torch.randn(8, 32, dtype=torch.float64)
    W0, H0 = W.clone(), H.clone()
    sparsegpt_prune(W, H, NM(2, 4), blocksize=8)
    assert torch.equal(W, W0) and torch.equal(H, H0)


@pytest.mark.parametrize("pattern", [Unstructured(0.5), NM(2, 4)])
def test_error_ordering_sparsegpt_wanda_magnitude(pattern):
    X, H = correlated_inputs(c=128, seed=4)
    W = torch.randn(64, 128, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    e_sgpt = relative_error(W, sparsegpt_prune(W, H, pattern)[0], H)
    e_wanda = relative_error(W, wanda_prune(W, torch.diagonal(H), pattern), H)
    e_mag = relative_error(W, magnitude_prune(W, pattern), H)
    assert e_sgpt < e_wanda < e_mag
    # and the H-based relative error is the definition on the tokens themselves
    W_s = sparsegpt_prune(W, H, pattern)[0]
    direct = float(((X @ W.T - X @ W_s.T) ** 2).sum() / ((X @ W.T) ** 2).sum())
    assert relative_error(W, W_s, H) == pytest.approx(direct, rel=TOL["float64_sweep"])


def test_wanda_hand_oracle():
    W = torch.tensor([[1.0, -2.0, 3.0, -4.0]])
    norms2 = torch.tensor([16.0, 4.0, 1.0, 0.25])  # H_jj ∝ ‖X_j‖²: norms 4, 2, 1, 0.5
    # scores |w|·‖x‖ = 4, 4, 3, 2 -> prune the two lowest: columns 3 and 2
    assert torch.allclose(wanda_scores(W, norms2), torch.tensor([[4.0, 4.0, 3.0, 2.0]]))
    assert wanda_prune(W, norms2, Unstructured(0.5)).tolist() == [[1.0, -2.0, 0.0, 0.0]]


def test_magnitude_hand_oracle():
    W = torch.tensor([[0.1, -0.5, 0.3, -0.2], [1.0, 2.0, -3.0, 0.5]])
    assert torch.equal(magnitude_prune(W, NM(2, 4)),
                       torch.tensor([[0.0, -0.5, 0.3, 0.0], [0.0, 2.0, -3.0, 0.0]]))
