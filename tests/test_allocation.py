import pytest
import torch

from conftest import TOL, random_batches, tiny_model
from prunekit.allocation import outlier_ratio, owl_sparsities, wanda_scores
from prunekit.errors import PatternError, UsageError
from prunekit.methods.base import weight_matrix
from prunekit.models.adapter import HFAdapter
from prunekit.patterns import NM, Unstructured
from prunekit.pipeline import input_norms
from prunekit.plan import make_plan
from prunekit.run import execute


def test_outlier_ratio_hand_example():
    a = torch.tensor([[1.0, 1.0, 1.0, 9.0]])  # mean 3: with M = 2 only 9 > 6 is an outlier
    b = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert outlier_ratio([a, b], 2.0) == pytest.approx(1 / 8)
    assert outlier_ratio([a], 4.0) == 0.0  # 9 is not above 4 x 3
    assert torch.equal(wanda_scores(torch.tensor([[-2.0, 3.0]]), torch.tensor([0.5, 2.0])),
                       torch.tensor([[1.0, 6.0]]))


def test_owl_sparsities_spread_two_lambda_around_the_target():
    s = owl_sparsities([0.01, 0.03, 0.02], sparsity=0.7, lam=0.1)
    assert sum(s) / 3 == pytest.approx(0.7, abs=TOL["float64_roundoff"])
    assert max(s) - min(s) == pytest.approx(0.2, abs=TOL["float64_roundoff"])
    assert s[1] < s[2] < s[0]  # the most outliers, the fewest removed
    assert owl_sparsities([0.02, 0.02], 0.5, 0.1) == pytest.approx([0.5, 0.5])
    with pytest.raises(PatternError, match="lower --owl-lambda"):
        owl_sparsities([0.0, 1.0], 0.05, 0.2)


def test_input_norms_are_the_dense_column_norms_without_padding():
    model = tiny_model("llama")
    adapter = HFAdapter()
    batch = random_batches(1, batch=2, seqlen=8)[0]
    batch["attention_mask"][1, 5:] = 0
    norms = input_norms(model, adapter, [batch])
    xs = {}
    hooks = [layer.register_forward_pre_hook(lambda _m, a, n=n: xs.setdefault(n, a[0]))
             for n, layer in adapter.all_targets(model).items()]
    with torch.no_grad():
        model(**batch)
    for h in hooks:
        h.remove()
    keep = batch["attention_mask"].bool()
    for name, x in xs.items():
        want = x[keep].double().pow(2).sum(0).sqrt().float()
        assert torch.allclose(norms[name], want, rtol=TOL["float32_forward"],
                              atol=TOL["float32_forward"]), name


def test_owl_prunes_blocks_to_their_own_sparsities_at_the_same_total():
    model = tiny_model("llama")
    adapter = HFAdapter()
    plan = make_plan("magnitude", Unstructured(0.5, "layer"),
                     {"allocation": "owl", "owl_lambda": 0.1, "owl_m": 2.0}, kind="prune")
    results = execute(model, plan, random_batches())
    blocks = adapter.block_list(model)[1]
    per_block = [sum(int((weight_matrix(l) == 0).sum()) for l in adapter.targets(b, "").values())
                 / sum(weight_matrix(l).numel() for l in adapter.targets(b, "").values())
                 for b in blocks]
    assert sum(per_block) / len(per_block) == pytest.approx(0.5, abs=TOL["sparsity_rounding"])
    assert per_block[0] != pytest.approx(per_block[1], abs=TOL["sparsity_rounding"])
    assert max(per_block) - min(per_block) <= 0.2 + TOL["sparsity_rounding"]
    assert len(results) == len(adapter.all_targets(model))


@pytest.mark.parametrize("pattern", [NM(2, 4), Unstructured(0.5, "global")])
def test_owl_is_refused_for_structured_or_global_patterns(pattern):
    with pytest.raises(UsageError, match="allocation owl"):
        make_plan("magnitude", pattern, {"allocation": "owl"}, kind="prune")
