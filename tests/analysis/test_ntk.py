"""Empirical NTK: against the explicit Jacobian product, the two implementations against each
other, masked kernels against a model with the pruned parameters removed, and the metrics on
known spectra."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
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
    assert effective_rank(spectrum(rank_one)) == pytest.approx(1.0, abs=TOL["fraction_rounding"])
    assert participation_ratio(spectrum(rank_one)) == pytest.approx(1.0, abs=TOL["fraction_rounding"])
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


# --- masks chosen at initialisation, the NTK-preserving criterion, the study, the CLI ---------

from prunekit.analysis import masks as am  # noqa: E402
from prunekit.analysis.kernels import top_eigenvectors  # noqa: E402
from prunekit.analysis.study import (Budget, parse_mask, rank_correlation,  # noqa: E402
                                     train_masked)


def test_mask_criteria_reach_the_sparsity_and_snip_is_the_connection_sensitivity():
    model, x = mlp(), inputs(40, 6)
    y = torch.arange(40) % 3
    for masks in (am.random_masks(model, 0.7), am.magnitude_masks(model, 0.7),
                  am.snip_masks(model, x, y, 0.7), am.ntk_masks(model, x, 0.7, top=4)):
        assert set(masks) == {"0.weight", "2.weight", "4.weight"}
        assert am.mask_sparsity(masks) == pytest.approx(0.7, abs=TOL["sparsity_rounding"])
    model.zero_grad()
    nn.CrossEntropyLoss()(model(x), y).backward()
    scores = am.snip_scores(model, x, y)
    assert torch.allclose(scores["2.weight"], (model[2].weight.grad * model[2].weight).abs().float())


def test_ntk_scores_split_the_top_eigenspace_energy_exactly():
    """With J at the current weights, tr(Uᵀ J diag(m) Jᵀ U) = Σ_kept s_p (+ the always-kept
    biases' share): the criterion keeps the most top-eigenspace energy of the column-masked
    Jacobian (the pruned network's own Jacobian then moves with its weights)."""
    model, x = mlp(), inputs(25, 6)
    top = 5
    J = explicit_jacobian(model, x)  # (N·K, P) at the dense weights, parameters in order
    k = J.shape[0] // 25
    U = top_eigenvectors(jacobian_ntk(model, x, trace=True), top)  # (N, r)
    scores = am.ntk_scores(model, x, top=top)
    masks = am.random_masks(model, 0.5, seed=1)
    keep = torch.cat([masks.get(n, torch.ones_like(p, dtype=torch.bool)).reshape(-1)
                      for n, p in model.named_parameters()]).double()
    bias = torch.cat([torch.zeros(p.numel()) if n in masks else torch.ones(p.numel())
                      for n, p in model.named_parameters()]).double()

    def energy(cols: Tensor) -> float:  # tr(Uᵀ Σ_k J_k diag(cols) J_kᵀ U)
        Jk = J.reshape(25, k, -1)
        return float(torch.einsum("nr,nkp,p,mkp,mr->", U, Jk, cols, Jk, U))

    kept = sum(float(s[masks[n]].sum()) for n, s in scores.items())
    assert energy(keep) == pytest.approx(kept + energy(bias), rel=TOL["float64_sweep"])
    total = sum(float(s.sum()) for s in scores.values())
    assert energy(torch.ones_like(keep)) == pytest.approx(total + energy(bias), rel=TOL["float64_sweep"])


def test_trained_masked_networks_keep_their_zeros_for_linear_and_conv():
    from prunekit.models.digits import digits_cnn, load_digits_split

    data = load_digits_split()
    torch.manual_seed(0)
    init = digits_cnn(2)
    masks = am.magnitude_masks(init, 0.8)
    model = train_masked(init, masks, data, Budget(epochs=1))
    assert all(bool((dict(model.named_parameters())[n][~m] == 0).all()) for n, m in masks.items())
    assert am.mask_sparsity(am.masks_of(model)) >= am.mask_sparsity(masks)


def test_mask_specs_and_rank_correlation():
    assert parse_mask("snip:90%").sparsity == pytest.approx(0.9)
    assert parse_mask("lottery:0.5").method == "lottery"
    for bad in ("snip", "foo:0.5", "snip:1.5", "snip:x"):
        with pytest.raises(UsageError):
            parse_mask(bad)
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert rank_correlation([1, 1, 2], [1, 1, 2]) == pytest.approx(1.0)


def test_ntk_is_a_registered_whole_network_method_and_cli(tmp_path, capsys):
    from prunekit.cli import main

    assert main(["prune", "digits-mlp:8", "--method", "ntk", "--sparsity", "0.5", "--quiet",
                 "--ntk-top", "4", "--samples", "100"]) == 0
    assert "ntk 50% unstructured (global)" in capsys.readouterr().out
    out = tmp_path / "ntk"
    rc = main(["ntk", "digits-mlp:8", "--masks", "random:0.5", "ntk:0.5", "lottery:0.5",
               "--samples", "40", "--epochs", "1", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "lottery 50%" in captured.out and "top10_overlap" in captured.out
    assert {p.name for p in out.iterdir()} == {"ntk_report.md", "ntk_report.json",
                                                "ntk_spectra.png", "ntk_overlap.png"}
    rc = main(["ntk", "minilm", "--masks", "random:0.5"])
    assert rc == 2 and "digits-mlp" in capsys.readouterr().err


def test_ntk_masks_from_a_saved_checkpoint_of_any_method(tmp_path, capsys):
    from prunekit.cli import main

    ck = tmp_path / "ck"
    assert main(["prune", "digits-mlp:8", "--method", "sparsegpt", "--pattern", "2:4",
                 "--samples", "100", "--quiet", "--no-eval", "--out", str(ck)]) == 0
    capsys.readouterr()
    assert main(["ntk", "digits-mlp:8", "--masks", str(ck), "--samples", "30"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith(str(ck)))
    assert " 50.0% " in row  # the checkpoint's 2:4 zeros are the mask
