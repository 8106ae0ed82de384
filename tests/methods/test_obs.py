"""Optimal Brain Damage / Surgeon on a flat weight vector, checked against the theory (float64)."""

import itertools

import pytest
import torch

from conftest import TOL
from prunekit.methods.obd import obd_prune, obd_saliency
from prunekit.methods.obs import obs_prune, obs_prune_sets_, obs_saliency
from prunekit.errors import NumericalError
from prunekit.obs import obs_greedy_, obs_remove_, obs_remove_set_


def spd(n, seed=0, cond=50.0):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eig = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=torch.float64)
    return Q @ torch.diag(eig) @ Q.T


def quad_loss(w, w_star, H):
    d = w - w_star
    return 0.5 * float(d @ H @ d)


def refit(w_star, H, removed):
    """Exact optimum of the quadratic with the weights ``removed`` forced to zero."""
    n = w_star.numel()
    keep = torch.tensor([i not in removed for i in range(n)])
    w = torch.zeros_like(w_star)
    Q = torch.tensor(sorted(removed), dtype=torch.long)
    if keep.any():
        # minimise over w_F: H_FF (w_F − w*_F) + H_FQ (0 − w*_Q) = 0
        rhs = H[keep][:, keep] @ w_star[keep] + H[keep][:, Q] @ w_star[Q]
        w[keep] = torch.linalg.solve(H[keep][:, keep], rhs)
    return w


def test_obs_predicted_loss_is_exact_and_rest_is_optimal():
    n = 12
    H, w_star = spd(n), torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    res = obs_prune(w_star, H, n_prune=7)
    removed = set()
    w = w_star.clone()
    Hinv = torch.linalg.inv(H)
    for step, q in enumerate(res.order.tolist()):
        before = quad_loss(w, w_star, H)
        dl = obs_remove_(w, Hinv, q)
        removed.add(q)
        assert quad_loss(w, w_star, H) - before == pytest.approx(dl, abs=TOL["float64_loss_sum"])
        assert dl == pytest.approx(float(res.losses[step]), abs=TOL["float64_exact"])
        grad = H @ (w - w_star)
        free = [i for i in range(n) if i not in removed]
        assert grad[free].abs().max() < 1e-8  # the remaining weights are optimal
        assert torch.allclose(w, refit(w_star, H, removed), atol=TOL["float64_sweep"])
    assert torch.allclose(w, res.w, atol=TOL["float64_exact"])
    assert (res.w[res.order] == 0).all()


def test_downdated_inverse_equals_fresh_inverse_of_remaining():
    n = 10
    H = spd(n, seed=2)
    w = torch.randn(n, dtype=torch.float64)
    Hinv = torch.linalg.inv(H)
    obs_remove_(w, Hinv, 3)
    obs_remove_(w, Hinv, 7)
    keep = [i for i in range(n) if i not in (3, 7)]
    fresh = torch.linalg.inv(H[keep][:, keep])
    assert torch.allclose(Hinv[keep][:, keep], fresh, atol=TOL["float64_exact"])
    assert Hinv[3].abs().max() < 1e-12 and Hinv[:, 7].abs().max() < 1e-12


def test_obd_equals_obs_when_hessian_is_diagonal():
    g = torch.Generator().manual_seed(3)
    d = torch.rand(20, generator=g, dtype=torch.float64) + 0.1
    w = torch.randn(20, generator=g, dtype=torch.float64)
    H = torch.diag(d)
    res = obs_prune(w, H, n_prune=12)
    w_obd, order_obd = obd_prune(w, d, 12)
    assert res.order.tolist() == order_obd.tolist()
    assert torch.allclose(res.w, w_obd, atol=TOL["float64_roundoff"])  # diagonal H: no compensation
    assert torch.allclose(res.losses, obd_saliency(w, d)[order_obd], atol=TOL["float64_roundoff"])


def test_obs_order_matches_brute_force_greedy():
    n = 6
    H, w_star = spd(n, seed=4, cond=20.0), torch.randn(n, dtype=torch.float64,
                                                      generator=torch.Generator().manual_seed(5))
    res = obs_prune(w_star, H, n_prune=n - 1)
    removed: set[int] = set()
    for q_obs in res.order.tolist():
        costs = {q: quad_loss(refit(w_star, H, removed | {q}), w_star, H)
                 for q in range(n) if q not in removed}
        assert q_obs == min(costs, key=costs.get)
        removed.add(q_obs)


def test_obs_first_pair_is_optimal_pair_when_k_is_two():
    """For two weights the joint multi-weight solution is the exact constrained optimum."""
    n = 7
    H, w_star = spd(n, seed=6), torch.randn(n, dtype=torch.float64,
                                           generator=torch.Generator().manual_seed(7))
    for Q in itertools.combinations(range(n), 2):
        w, Hinv = w_star.clone(), torch.linalg.inv(H)
        dl = obs_remove_set_(w, Hinv, torch.tensor(Q))
        exact = refit(w_star, H, set(Q))
        assert torch.allclose(w, exact, atol=TOL["float64_sweep"])
        assert dl == pytest.approx(quad_loss(exact, w_star, H), abs=TOL["float64_sweep"])


def test_batched_k1_equals_single_and_k_gt_1_is_joint():
    n = 16
    H, w = spd(n, seed=8), torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    single = obs_prune(w, H, n_prune=10, k=1)  # iterative path (obs_greedy_)
    w1, Hinv = w.clone(), torch.linalg.inv(H)
    order1, losses1 = obs_prune_sets_(w1, Hinv, 10, k=1)  # batched path with sets of one
    assert torch.equal(single.order, order1)
    assert torch.allclose(single.w, w1, atol=TOL["float64_exact"])
    assert torch.allclose(single.losses, losses1, atol=TOL["float64_exact"])
    batched = obs_prune(w, H, n_prune=10, k=5)
    first = set(batched.order[:5].tolist())
    expected = refit(w, H, first)  # after the first joint step: the exact joint optimum
    w2, Hinv = w.clone(), torch.linalg.inv(H)
    obs_remove_set_(w2, Hinv, batched.order[:5])
    assert torch.allclose(w2, expected, atol=TOL["float64_sweep"])
    assert float(batched.losses.sum()) == pytest.approx(quad_loss(batched.w, w, H), abs=TOL["float64_loss_sum"])


@pytest.mark.parametrize("refresh", [1, 3, 7, 256])
def test_deferred_downdates_equal_one_rank1_update_per_removal(refresh):
    """obs_greedy_ folds its downdates in every ``refresh`` removals and drops removed rows;
    the result must equal applying the O(n²) downdate after every removal."""
    n, n_prune = 40, 37
    H = spd(n, seed=11, cond=200.0)
    w0 = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(12))
    w, Hinv = w0.clone(), torch.linalg.inv(H)
    snaps = {5: None, 20: None, n_prune: None}
    order, losses = obs_greedy_(w, Hinv, n_prune, refresh=refresh, snapshots=snaps)
    assert torch.equal(Hinv, torch.linalg.inv(H))  # read only
    assert torch.equal(snaps[n_prune], w)
    ref_w, ref_Hinv = w0.clone(), torch.linalg.inv(H)
    removed = torch.zeros(n, dtype=torch.bool)
    for t in range(n_prune):
        q = int(obs_saliency(ref_w, ref_Hinv, removed).argmin())
        assert q == int(order[t])
        dl = obs_remove_(ref_w, ref_Hinv, q)
        assert dl == pytest.approx(float(losses[t]), rel=TOL["float64_exact"])
        removed[q] = True
        if t + 1 in (5, 20):
            assert torch.allclose(snaps[t + 1], ref_w, atol=TOL["float64_exact"])
    assert torch.allclose(w, ref_w, atol=TOL["float64_exact"])
    assert (w[order] == 0).all() and (w[~removed] != 0).all()
    assert float(losses.sum()) == pytest.approx(quad_loss(w, w0, H), rel=TOL["float64_exact"])


def test_greedy_edge_counts():
    H = spd(5, seed=2)
    w0 = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    w = w0.clone()
    snaps = {0: None}
    order, losses = obs_greedy_(w, torch.linalg.inv(H), 0, snapshots=snaps)
    assert order.numel() == 0 and torch.equal(w, w0) and torch.equal(snaps[0], w0)
    order, _ = obs_greedy_(w, torch.linalg.inv(H), 5, refresh=2)
    assert sorted(order.tolist()) == list(range(5)) and (w == 0).all()
    with pytest.raises(ValueError, match="n_prune 6"):
        obs_greedy_(w, torch.linalg.inv(H), 6)
    with pytest.raises(ValueError, match="refresh 0"):
        obs_greedy_(w, torch.linalg.inv(H), 2, refresh=0)
    with pytest.raises(ValueError, match=r"snapshot counts \[3\]"):
        obs_greedy_(w, torch.linalg.inv(H), 2, snapshots={3: None})
    with pytest.raises(ValueError, match="same dtype"):
        obs_greedy_(w.float(), torch.linalg.inv(H), 2)


def test_greedy_stops_on_a_non_positive_pivot():
    """An 'inverse Hessian' that is not positive definite must stop with an error, not NaN."""
    Hinv = torch.diag(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))
    w = torch.ones(3, dtype=torch.float64)
    with pytest.raises(NumericalError, match="pivot for weight 1 is -2"):
        obs_greedy_(w, Hinv, 2)


def test_damping_is_reported_and_escalates():
    H = torch.diag(torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64))
    res = obs_prune(torch.ones(3, dtype=torch.float64), H, n_prune=1, rel_damp=0.01)
    assert res.damping.tries > 1 and res.damping.relative > 0.01


# --- layer-wise exact OBS ---------------------------------------------------------------------

from prunekit.masks import satisfies  # noqa: E402
from prunekit.methods.base import relative_error  # noqa: E402
from prunekit.methods.obs import exact_obs_prune  # noqa: E402
from prunekit.methods.sparsegpt import sparsegpt_prune  # noqa: E402
from prunekit.patterns import NM, Unstructured  # noqa: E402
from conftest import correlated_inputs  # noqa: E402


def naive_row_obs(w, Hd, n_prune, allowed):
    """Greedy exact removal for one row, by brute force over candidates with a fresh re-fit."""
    removed: set[int] = set()
    for _ in range(n_prune):
        best = None
        for q in range(w.numel()):
            if q in removed or not allowed(removed, q):
                continue
            cost = quad_loss(refit(w, Hd, removed | {q}), w, Hd)
            if best is None or cost < best[0] - 1e-15:
                best = (cost, q)
        removed.add(best[1])
    return refit(w, Hd, removed)


@pytest.mark.parametrize("pattern", [Unstructured(0.5), NM(2, 4)])
def test_exact_obs_equals_brute_force_greedy(pattern):
    _, H = correlated_inputs(c=12, seed=1)
    W = torch.randn(3, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ours, loss, damp = exact_obs_prune(W, H, pattern, rel_damp=0.01, row_batch=2)
    Hd = H + damp.absolute * torch.eye(12, dtype=torch.float64)

    def allowed(removed, q):
        if not isinstance(pattern, NM):
            return True
        g = q // pattern.m
        return sum(1 for r in removed if r // pattern.m == g) < pattern.m - pattern.n

    for r in range(3):
        expected = naive_row_obs(W[r], Hd, 6, allowed)
        assert torch.allclose(ours[r], expected, atol=TOL["float64_sweep"]), r
    D = ours - W
    assert float(loss) == pytest.approx(0.5 * float(((D @ Hd) * D).sum()), rel=TOL["float64_sweep"])


@pytest.mark.parametrize("pattern", [Unstructured(0.5), Unstructured(0.7), NM(2, 4), NM(1, 4)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_obs_never_worse_than_sparsegpt(pattern, seed):
    _, H = correlated_inputs(c=64, seed=seed)
    W = torch.randn(16, 64, generator=torch.Generator().manual_seed(10 + seed), dtype=torch.float64)
    exact, _, _ = exact_obs_prune(W, H, pattern)
    approx, _, _ = sparsegpt_prune(W, H, pattern, blocksize=16)  # row scope: same count per row
    assert satisfies(exact, pattern)
    if isinstance(pattern, Unstructured):
        assert ((exact == 0).sum(1) == (approx == 0).sum(1)).all()
    assert relative_error(W, exact, H) <= relative_error(W, approx, H) + 1e-12
