import torch

from prunekit.masks import (global_patterns, global_prune_counts, keep_all_but_lowest, nm_mask,
                            pattern_mask, prune_count, satisfies, sparsity, topk_mask)
from prunekit.patterns import NM, Unstructured


def test_row_mask_hand_oracle():
    s = torch.tensor([[4.0, 1.0, 3.0, 2.0],
                      [0.5, 0.7, 0.1, 0.9]])
    keep = topk_mask(s, 0.5, "row")
    assert keep.tolist() == [[True, False, True, False], [False, True, False, True]]


def test_layer_mask_hand_oracle():
    s = torch.tensor([[4.0, 1.0, 3.0, 2.0],
                      [0.5, 0.7, 0.1, 0.9]])
    keep = topk_mask(s, 0.5, "layer")  # prune the 4 lowest of 8: 0.1, 0.5, 0.7, 0.9
    assert keep.tolist() == [[True, True, True, True], [False, False, False, False]]


def test_nm_mask_hand_oracle():
    s = torch.tensor([[1.0, 5.0, 2.0, 4.0, 9.0, 8.0, 7.0, 6.0]])
    assert nm_mask(s, 2, 4).tolist() == [[False, True, False, True, True, True, False, False]]
    assert nm_mask(s, 1, 4).tolist() == [[False, True, False, False, True, False, False, False]]


def test_ties_are_broken_by_position_and_counts_are_exact():
    s = torch.ones(3, 8)
    keep = topk_mask(s, 0.5, "row")
    assert keep.tolist() == [[False] * 4 + [True] * 4] * 3
    keep = keep_all_but_lowest(torch.tensor([[2.0, 1.0, 1.0, 1.0, 3.0]]), 2)
    assert keep.tolist() == [[True, False, False, True, True]]


def test_column_groups_match_rowwise_selection_with_ties():
    from prunekit.masks import keep_all_but_lowest_in_columns

    g = torch.Generator().manual_seed(3)
    for m, n_prune in ((4, 2), (4, 3), (8, 4), (3, 1)):
        s = torch.randint(0, 3, (m, 50), generator=g).float()  # many ties
        assert torch.equal(keep_all_but_lowest_in_columns(s, n_prune),
                           keep_all_but_lowest(s.T, n_prune).T)


def test_kth_smallest_is_exact():
    from prunekit.masks import kth_smallest

    g = torch.Generator().manual_seed(4)
    cases = [torch.rand(100_000, generator=g), torch.randn(70_001, generator=g).exp(),
             torch.arange(90_000, 0, -1).float(),  # sorted: strided sample sees a pattern
             torch.randint(0, 5, (80_000,), generator=g).float()]  # massive ties
    for x in cases:
        for k in (1, 17, x.numel() // 2, x.numel() - 3, x.numel()):
            assert kth_smallest(x, k) == torch.kthvalue(x, k).values


def test_long_row_selection_matches_small_path():
    x = torch.rand(1, 1 << 17, generator=torch.Generator().manual_seed(5))
    keep = keep_all_but_lowest(x, 50_000)
    assert int((~keep).sum()) == 50_000
    assert x[~keep].max() <= x[keep].min()


def test_prune_count_floor():
    assert prune_count(10, 0.3) == 3 and prune_count(7, 0.5) == 3 and prune_count(8, 0.0) == 0


def test_invariants_random():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        s = torch.rand(16, 32, generator=g)
        for pat in (Unstructured(0.3), Unstructured(0.7, "layer"), NM(2, 4), NM(1, 4), NM(4, 8)):
            keep = pattern_mask(s, pat)
            W = (s + 0.1) * keep
            assert satisfies(W, pat)
            if isinstance(pat, NM):
                assert (keep.reshape(16, -1, pat.m).sum(-1) == pat.n).all()
            elif pat.scope == "row":
                assert ((~keep).sum(1) == prune_count(32, pat.sparsity)).all()
            else:
                assert int((~keep).sum()) == prune_count(s.numel(), pat.sparsity)
            # every kept score is >= every pruned score in its comparison group
            if isinstance(pat, Unstructured) and pat.scope == "row":
                kept_min = torch.where(keep, s, torch.inf).min(1).values
                pruned_max = torch.where(keep, -torch.inf, s).max(1).values
                assert (kept_min >= pruned_max).all()


def test_sparsity_zero_keeps_everything():
    s = torch.rand(4, 8)
    assert topk_mask(s, 0.0).all() and topk_mask(s, 0.0, "layer").all()


def test_global_counts_hand_oracle():
    scores = {"a": torch.tensor([[1.0, 8.0], [2.0, 9.0]]), "b": torch.tensor([[3.0, 4.0, 5.0, 6.0]])}
    # 8 scores, prune 4 lowest: 1, 2 (a) and 3, 4 (b)
    assert global_prune_counts(scores, 0.5) == {"a": 2, "b": 2}
    pats = global_patterns(scores, 0.75)  # prune 6: 1,2,3,4,5,6 -> a:2, b:4 (all of b)
    assert pats == {"a": Unstructured(0.5, "layer"), "b": Unstructured(1.0, "layer")}
    assert not topk_mask(scores["b"], pats["b"].sparsity, "layer").any()


def test_global_patterns_reproduce_counts():
    g = torch.Generator().manual_seed(1)
    scores = {f"l{i}": torch.rand(7 + i, 13, generator=g) * (i + 1) for i in range(4)}
    counts = global_prune_counts(scores, 0.6)
    assert sum(counts.values()) == prune_count(sum(s.numel() for s in scores.values()), 0.6)
    pats = global_patterns(scores, 0.6)
    for k, s in scores.items():
        assert int((~topk_mask(s, pats[k].sparsity, "layer")).sum()) == counts[k]


def test_sparsity_of_tensor():
    assert sparsity(torch.tensor([0.0, 1.0, 0.0, 2.0])) == 0.5
