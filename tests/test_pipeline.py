import copy

import pytest
import torch

from conftest import TOL, random_batches, tiny_model
from prunekit.run import prune_model
from prunekit.masks import satisfies
from prunekit.methods.base import weight_matrix
from prunekit.methods.sparsegpt import sparsegpt_prune
from prunekit.models.adapter import HFAdapter
from prunekit.patterns import NM, Unstructured
from prunekit.pipeline import capture_block_inputs, run_block


def non_target_state(model, adapter):
    targets = {n + ".weight" for n in adapter.all_targets(model)}
    return {k: v.clone() for k, v in model.state_dict().items() if k not in targets}


def forward(model, batch):
    with torch.no_grad():
        out = model(**batch)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("method,pattern", [("sparsegpt", NM(2, 4)), ("wanda", Unstructured(0.5)),
                                            ("magnitude", Unstructured(0.6, "layer")),
                                            ("obs", Unstructured(0.5)), ("obs", NM(2, 4))])
def test_pipeline_prunes_every_family(family, method, pattern):
    model = tiny_model(family)
    adapter = HFAdapter()
    list_name, blocks = adapter.block_list(model)
    before = non_target_state(model, adapter)
    batches = random_batches()
    results = prune_model(model, method, pattern, batches)
    targets = adapter.all_targets(model)
    assert [r.name for r in results] == list(targets)
    for name, layer in targets.items():
        assert satisfies(weight_matrix(layer), pattern), name
    for r in results:
        assert abs(r.sparsity - pattern.sparsity) < 0.02 and r.rel_error is not None
        assert r.n_tokens == sum(b["input_ids"].numel() for b in batches)
    after = non_target_state(model, adapter)
    assert all(torch.equal(before[k], after[k]) for k in before)  # embeddings, heads untouched
    assert model.get_submodule(list_name) is blocks  # block list restored
    assert torch.isfinite(forward(model, batches[0])).all()


@pytest.mark.parametrize("fam", ["bert", "llama"])
def test_padding_is_left_out_of_every_statistic(fam):
    """Sequences of different lengths padded into one batch give exactly the statistics (and
    so the pruned weights) of the same sequences fed one at a time without padding."""
    lengths = (16, 9, 5)
    rows = [b["input_ids"][0] for b in random_batches(3, batch=1, seqlen=16, seed=1)]
    alone = [{"input_ids": r[:n][None], "attention_mask": torch.ones(1, n, dtype=torch.long)}
             for r, n in zip(rows, lengths)]
    ids = torch.stack(rows)
    mask = (torch.arange(16)[None] < torch.tensor(lengths)[:, None]).long()
    padded = [{"input_ids": ids * mask, "attention_mask": mask}]
    one, two = tiny_model(fam), tiny_model(fam)
    r1 = prune_model(one, "sparsegpt", Unstructured(0.5), alone)
    r2 = prune_model(two, "sparsegpt", Unstructured(0.5), padded)
    assert [r.n_tokens for r in r2] == [sum(lengths)] * len(r2)
    for a, b in zip(r1, r2):
        assert a.rel_error == pytest.approx(b.rel_error, rel=TOL["float32_solver"])
    for (name, p1), p2 in zip(one.named_parameters(), two.parameters()):
        assert torch.allclose(p1, p2, atol=TOL["float32_solver"], rtol=0), name


def test_zero_sparsity_changes_nothing(family):
    model = tiny_model(family)
    batch = random_batches()[0]
    ref = forward(model, batch)
    prune_model(model, "sparsegpt", Unstructured(0.0), random_batches())
    assert torch.allclose(forward(model, batch), ref, atol=TOL["float32_forward"], rtol=0)


def test_capture_records_inputs_without_side_effects(family):
    model = tiny_model(family)
    adapter = HFAdapter()
    batches = random_batches(n_batches=3)
    state = copy.deepcopy(model.state_dict())
    records = capture_block_inputs(model, adapter, batches, torch.device("cpu"))
    assert len(records) == 3
    args, kwargs = records[0]
    hidden = args[0] if args else kwargs["hidden_states"]
    assert hidden.shape[:2] == batches[0]["input_ids"].shape
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize("fam", ["llama", "bert"])
def test_blocks_are_calibrated_on_pruned_outputs(fam):
    """Block 1 must be pruned with inputs that come from the already-pruned block 0."""
    model = tiny_model(fam)
    dense = copy.deepcopy(model)
    adapter = HFAdapter()
    batches = random_batches()
    prune_model(model, "sparsegpt", NM(2, 4), batches)
    # expected block 1: SparseGPT of the dense block-1 weights with H from pruned block 0
    list_name, blocks = adapter.block_list(model)
    inputs = run_block(blocks[0], capture_block_inputs(model, adapter, batches, torch.device("cpu")))
    dense_block1 = adapter.block_list(dense)[1][1]
    hessians = {}
    hooks = [m.register_forward_hook(
        lambda mod, inp, out, n=n: hessians.setdefault(n, []).append(inp[0].reshape(-1, inp[0].shape[-1])))
        for n, m in adapter.targets(dense_block1).items()]
    run_block(dense_block1, inputs)
    for h in hooks:
        h.remove()
    for name, layer in adapter.targets(blocks[1]).items():
        X = torch.cat(hessians[name]).double()
        H = 2.0 / X.shape[0] * X.T @ X
        W0 = weight_matrix(adapter.targets(dense_block1)[name]).double()
        expected, _, _ = sparsegpt_prune(W0, H, NM(2, 4))
        got = weight_matrix(layer).double()
        assert torch.equal(got == 0, expected == 0), name
        assert torch.allclose(got, expected, atol=TOL["float32_kernel"], rtol=TOL["float32_model_rel"]), name


def test_skip_leaves_layers_dense():
    model = tiny_model("llama")
    results = prune_model(model, "magnitude", Unstructured(0.5), random_batches(),
                          skip=["*.mlp.*"])
    assert results and all(".mlp." not in r.name for r in results)
    assert (model.model.layers[0].mlp.down_proj.weight != 0).all()


def test_global_magnitude_ranks_across_layers():
    model = tiny_model("opt")
    adapter = HFAdapter()
    all_w = torch.cat([weight_matrix(m).abs().reshape(-1) for m in adapter.all_targets(model).values()])
    threshold = all_w.sort().values[int(all_w.numel() * 0.5) - 1]
    results = prune_model(model, "magnitude", Unstructured(0.5, "global"), random_batches())
    sizes = torch.tensor([r.shape[0] * r.shape[1] for r in results], dtype=torch.float64)
    sp = torch.tensor([r.sparsity for r in results], dtype=torch.float64)
    assert float((sizes * sp).sum() / sizes.sum()) == pytest.approx(0.5, abs=TOL["fraction_rounding"])
    assert sp.std() > 0  # layers differ
    for layer in adapter.all_targets(model).values():
        W = weight_matrix(layer)
        assert (W[W != 0].abs() >= threshold).all()


@pytest.mark.parametrize("fam", ["bert", "llama", "gpt2", "opt"])
def test_true_sequential_calibrates_each_stage_on_compressed_earlier_ones(fam):
    """--sequential true: the stages come in call order (layers sharing an input together), and
    each stage's Hessian is that of its inputs with the earlier stages of the block already
    compressed: checked against a brute-force run that prunes one stage at a time and
    recomputes the inputs with plain hooks."""
    from prunekit.methods.sparsegpt import SparseGPTConfig
    from prunekit.pipeline import call_stages
    from prunekit.plan import make_plan
    from prunekit.run import execute

    model, ref = tiny_model(fam), tiny_model(fam)
    batches = random_batches()
    adapter = HFAdapter()
    list_name, blocks = adapter.block_list(model)
    first = capture_block_inputs(model, adapter, batches[:1], torch.device("cpu"))[0]
    stages = call_stages(blocks[0], adapter.targets(blocks[0], f"{list_name}.0"), first)
    flat = [n for s in stages for n in s]
    assert sorted(flat) == sorted(adapter.targets(blocks[0], f"{list_name}.0"))
    assert len(stages) == {"bert": 4, "llama": 4, "gpt2": 4, "opt": 4}[fam]
    assert len(stages[0]) == (1 if fam == "gpt2" else 3)  # q/k/v (GPT-2: one c_attn)
    plan = make_plan("sparsegpt", 0.5, SparseGPTConfig(sequential="true", hessian_dtype="float64"))
    results = execute(model, plan, batches)
    # brute force on `ref`: for each block and stage, Hessians from a full forward of the
    # model as it stands (earlier blocks and stages already pruned), then prune that stage
    ref_adapter = HFAdapter()
    _, ref_blocks = ref_adapter.block_list(ref)
    expected = {}
    for i, block in enumerate(ref_blocks):
        targets = ref_adapter.targets(block, f"{list_name}.{i}")
        for stage in call_stages(block, targets, first):
            xs = {n: [] for n in stage}
            hs = [targets[n].register_forward_pre_hook(
                lambda _m, inp, n=n: xs[n].append(inp[0].reshape(-1, inp[0].shape[-1])))
                for n in stage]
            with torch.no_grad():
                for b in batches:
                    ref(**b)
            for h in hs:
                h.remove()
            for n in stage:
                X = torch.cat(xs[n]).double()
                H = 2 * X.T @ X / X.shape[0]
                W = weight_matrix(targets[n]).double()
                W_new = sparsegpt_prune(W, H, plan.pattern)[0]
                weight_matrix(targets[n]).copy_(W_new.to(W.dtype))
                expected[n] = W_new
    assert [r.name for r in results] == list(adapter.all_targets(model))
    for name, layer in adapter.all_targets(model).items():
        assert torch.allclose(weight_matrix(layer).double(), expected[name],
                              atol=TOL["float32_model_rel"], rtol=TOL["float32_model_rel"]), name


def test_true_sequential_is_refused_where_a_block_is_needed_whole():
    from prunekit.errors import UsageError
    from prunekit.plan import make_plan

    with pytest.raises(UsageError, match="--sequential block"):
        make_plan("awq", None, {"sequential": "true"}, kind="quantize")
