import pytest
import torch

from conftest import TOL, correlated_inputs, random_batches, tiny_model
from prunekit.masks import satisfies
from prunekit.methods.admm import admm_prune, layer_objective, masked_refit
from prunekit.methods.base import weight_matrix
from prunekit.methods.sparsegpt import sparsegpt_prune
from prunekit.models.adapter import HFAdapter
from prunekit.patterns import NM, Unstructured
from prunekit.run import prune_model
from reference import best_nm_support, masked_least_squares


def layer(rows=6, cols=16, seed=0):
    _, H = correlated_inputs(n=256, c=cols, seed=seed)
    W = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=H.dtype)
    return W, H


def test_masked_refit_is_the_exact_least_squares_on_the_mask():
    W, H = layer()
    mask = torch.rand(W.shape, generator=torch.Generator().manual_seed(1)) > 0.5
    got = masked_refit(W, H, mask, W * mask, iters=200, tol=0.0)
    assert torch.allclose(got, masked_least_squares(W, H, mask), atol=TOL["float64_sweep"])
    assert not got[~mask].any()


@pytest.mark.parametrize("pattern", [Unstructured(0.5, "layer"), Unstructured(0.5, "row"),
                                     NM(2, 4)])
def test_admm_keeps_the_pattern_and_never_does_worse_than_sparsegpt(pattern):
    W, H = layer(rows=8, cols=32)
    start = sparsegpt_prune(W, H, pattern)[0].clone()
    got, _, figures = admm_prune(W, H, pattern, start.clone())
    assert satisfies(got, pattern)
    Hd = H + 0.01 * torch.diagonal(H).mean() * torch.eye(H.shape[0], dtype=H.dtype)
    assert layer_objective(W, got, Hd) <= layer_objective(W, start, Hd) * (1 + TOL["float64_exact"])
    assert figures["admm_objective"] < 0.9 * figures["sparsegpt_objective"]  # it does improve


def test_admm_reaches_near_the_brute_force_optimum_of_a_tiny_layer():
    W, H = layer(rows=3, cols=8, seed=2)  # 6^2 supports per row, enumerated
    damped = H + 0.01 * torch.diagonal(H).mean() * torch.eye(8, dtype=H.dtype)
    best = best_nm_support(W, damped, 2, 4)
    start = sparsegpt_prune(W, H, NM(2, 4))[0].clone()
    got = admm_prune(W, H, NM(2, 4), start, iters=60)[0]
    sgpt, admm = layer_objective(W, start, damped), layer_objective(W, got, damped)
    assert best <= admm * (1 + TOL["float64_exact"])  # nothing beats the optimum
    assert admm - best <= 0.25 * (sgpt - best) + TOL["float64_exact"]  # most of the gap closed


def test_admm_through_the_pipeline(one_thread):
    model = tiny_model("llama")
    results = prune_model(model, "admm", NM(2, 4), random_batches())
    for name, lay in HFAdapter().all_targets(model).items():
        assert satisfies(weight_matrix(lay), NM(2, 4)), name
    assert all(r.extra["admm_objective"] <= r.extra["sparsegpt_objective"] for r in results)


def test_admm_method_solves_on_the_hessian_shrunk_towards_its_diagonal():
    from prunekit.errors import UsageError
    from prunekit.hessian import shrink_to_diagonal
    from prunekit.methods.admm import ADMM, ADMMConfig

    W, H = layer(rows=8, cols=32)
    lin = torch.nn.Linear(32, 8, bias=False)
    cfg = ADMMConfig(hessian_dtype="float64")
    assert (cfg.diag_damp, cfg.rel_damp) == (0.2, 0.05)  # the defaults docs/ measured
    got = ADMM(lin, Unstructured(0.5, "layer"), cfg).solve(W, H.clone())[0]
    Hs = shrink_to_diagonal(H, 0.2)
    start, _, damping = sparsegpt_prune(W, Hs, Unstructured(0.5, "layer"), 128, 0.05)
    want = admm_prune(W, Hs, Unstructured(0.5, "layer"), start, damping=damping)[0]
    assert torch.equal(got, want)
    plain = ADMM(lin, Unstructured(0.5, "layer"), ADMMConfig(diag_damp=0.0)).solve(W, H)[0]
    assert not torch.equal(plain, got)  # the shrinkage does change the result
    with pytest.raises(UsageError, match="--diag-damp"):
        ADMMConfig(diag_damp=-1.0)
