"""Integer packing, the quantized linear module, AWQ, and quantization of whole models
(pipeline, API, CLI): grids hold, masks survive, folds leave the model's function unchanged."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import TOL, random_batches, tiny_model
from prunekit.errors import UsageError
from prunekit.masks import satisfies
from prunekit.methods.base import weight_matrix
from prunekit.models.adapter import HFAdapter
from prunekit.patterns import NM, Unstructured
from prunekit.quant import QuantSpec, rtn_quantize
from prunekit.quant.awq import activation_scale, awq_quantize, awq_search, fold_input_scale_
from prunekit.quant.pack import QuantizedLinear, pack_int4, pack_linear_, unpack_int4
import prunekit.plan as plan
import prunekit.run as run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("cols", [1, 7, 64])
def test_int4_pack_round_trip(cols):
    codes = torch.randint(0, 16, (5, cols), dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.shape == (5, (cols + 1) // 2) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed, cols), codes)
    assert int(packed[0, 0]) == int(codes[0, 0]) | (int(codes[0, 1]) << 4 if cols > 1 else 0)
    with pytest.raises(ValueError, match="int4 codes"):
        pack_int4(torch.full((1, 2), 16, dtype=torch.uint8))


LINEAR_CASES = [  # (spec, out, in, expected kernel)
    (QuantSpec(4, 128), 64, 256, "int4"), (QuantSpec(4, 32, False), 48, 96, "int4"),
    (QuantSpec(4, 64), 40, 128, "dequant"),  # 40 outputs: not a multiple of 16
    (QuantSpec(4, 16), 32, 64, "dequant"),  # the kernel has no group 16
    (QuantSpec(8, None), 32, 96, "int8"), (QuantSpec(8, 32), 32, 96, "dequant"),
    (QuantSpec(8, None, False), 32, 96, "dequant"), (QuantSpec(3, 32), 32, 96, "dequant"),
    (QuantSpec(2, None, False), 16, 40, "dequant"),
]


@pytest.mark.parametrize("spec,out,inp,kernel", LINEAR_CASES, ids=lambda c: str(c))
@pytest.mark.parametrize("awq", [False, True])
def test_quantized_linear_matches_dequantized_dense(spec, out, inp, kernel, awq):
    g = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(inp, out)
    W = torch.randn(out, inp, generator=g) * (torch.rand(out, inp, generator=g) > 0.3)
    s = torch.rand(inp, generator=g) + 0.5
    H = torch.eye(inp)
    W_hat, qw = awq_quantize(W, H, spec, s) if awq else rtn_quantize(W, spec)
    q = QuantizedLinear.from_linear(layer, qw)
    assert q.kernel == kernel
    x = torch.randn(3, 5, inp, generator=g)
    with torch.no_grad():
        ref = F.linear(x, W_hat, layer.bias)
        y = q(x)
    assert y.shape == (3, 5, out)
    assert torch.allclose(y, ref, rtol=TOL["float32_kernel"],
                          atol=TOL["float32_kernel"] * float(ref.abs().max()))
    assert torch.equal(q.dequantized_weight(), W_hat)
    plain = QuantizedLinear(qw, layer.bias, kernel="dequant")
    with torch.no_grad():
        y_plain = plain(x)
    assert torch.allclose(y_plain, ref, rtol=TOL["float32_forward"],
                          atol=TOL["float32_forward"] * float(ref.abs().max()))
    bytes_codes = q.codes.numel() * q.codes.element_size()
    assert bytes_codes == out * ((inp + 1) // 2 if spec.bits == 4 else inp)


def test_awq_never_worse_than_rtn_and_protects_loud_channels():
    g = torch.Generator().manual_seed(0)
    loud = torch.ones(128)
    loud[:4] = 30.0  # a few input channels carry most of the activation energy
    X = torch.randn(4096, 128, generator=g) * loud
    H = 2 / X.shape[0] * X.T @ X
    W = torch.randn(64, 128, generator=g)
    spec = QuantSpec(3, 64)
    s, alpha, errors = awq_search(W, H, spec)
    assert errors[0] == pytest.approx(min(errors)) or alpha > 0
    W_awq, qw = awq_quantize(W, H, spec, s)
    W_rtn, _ = rtn_quantize(W, spec)
    err = lambda V: float((((W - V) @ H) * (W - V)).sum())  # noqa: E731
    assert err(W_awq) == pytest.approx(min(errors), rel=TOL["search_minimum"])
    assert err(W_awq) < 0.9 * err(W_rtn)
    assert alpha > 0 and torch.equal(qw.input_scale, s)
    assert torch.allclose(activation_scale(H)[:4], torch.full((4,), 30.0), rtol=TOL["activation_scale"])


@pytest.mark.parametrize("family", ["llama", "opt", "gpt2", "bert", "qwen2"])
def test_scale_folds_leave_the_function_unchanged(family):
    """Every fold the adapter offers: producer outputs / s, consumer weights · diag(s)."""
    model = tiny_model(family)
    batch = random_batches(1)[0]
    with torch.no_grad():
        before = model(**batch).last_hidden_state if family == "bert" else model(**batch).logits
    adapter = HFAdapter()
    prefix, blocks = adapter.block_list(model)
    n = 0
    for i, block in enumerate(blocks):
        for producer, consumers in adapter.scale_folds(model, block, f"{prefix}.{i}"):
            s = torch.rand(weight_matrix(model.get_submodule(consumers[0])).shape[1]) + 0.5
            fold_input_scale_(producer, s)
            with torch.no_grad():
                for name in consumers:
                    weight_matrix(model.get_submodule(name)).mul_(s[None, :])
            n += 1
    assert n >= {"bert": 1, "gpt2": 2}.get(family, 3)
    with torch.no_grad():
        after = model(**batch).last_hidden_state if family == "bert" else model(**batch).logits
    assert torch.allclose(after, before, rtol=TOL["float32_kernel"], atol=TOL["float32_kernel"])


def test_post_ln_opt_offers_no_norm_folds():
    model = tiny_model("opt")
    model.config.do_layer_norm_before = False
    adapter = HFAdapter()
    prefix, blocks = adapter.block_list(model)
    folds = adapter.scale_folds(model, blocks[0], f"{prefix}.0")
    assert [type(p).__name__ for p, _ in folds] == ["Linear"]  # only v_proj -> out_proj


# --- whole models ---------------------------------------------------------------------------

def _zero_masks(model):
    return {n: weight_matrix(m) == 0 for n, m in HFAdapter().all_targets(model).items()}


@pytest.mark.parametrize("family", ["llama", "bert"])
@pytest.mark.parametrize("method", ["rtn", "gptq", "awq"])
def test_quantizing_a_pruned_model_keeps_its_mask(family, method):
    model = tiny_model(family)
    batches = random_batches(2)
    run.prune_model(model, "sparsegpt", NM(2, 4), batches)
    masks = _zero_masks(model)
    results = run.quantize_model(model, method, batches, spec=QuantSpec(4, 16, False))
    assert len(results) == len(masks)
    for r in results:
        W = weight_matrix(model.get_submodule(r.name))
        assert torch.equal(r.quantized.keep, ~masks[r.name]), r.name
        assert (W[masks[r.name]] == 0).all() and satisfies(W, NM(2, 4))
        assert torch.equal(r.quantized.dequantize(W.dtype), W), r.name  # on the grid
        assert r.extra["bits_per_weight"] == pytest.approx(4 + 20 / 16)


@pytest.mark.parametrize("method,joint", [("sparsegpt", True), ("sparsegpt", False),
                                          ("magnitude", None), ("wanda", None)])
def test_prune_with_bits_keeps_pattern_and_grid(method, joint):
    model = tiny_model("llama")
    dense = copy.deepcopy(model)
    batches = random_batches(2)
    settings = {"quant": QuantSpec(4, 16)} | ({} if joint is None else {"joint": joint})
    results = run.prune_model(model, method, Unstructured(0.5, "row"), batches,
                              config=plan.make_config(method, settings))
    if method == "magnitude":  # the mask is the pruning method's own, untouched by GPTQ
        # (wanda's depends on the activations, which quantized earlier blocks change)
        run.prune_model(dense, method, Unstructured(0.5, "row"), batches)
        assert all(torch.equal(_zero_masks(model)[n] & m, m) for n, m in _zero_masks(dense).items())
    for r in results:
        W = weight_matrix(model.get_submodule(r.name))
        assert r.sparsity >= 0.5 and torch.equal(r.quantized.dequantize(W.dtype), W)
        assert (W[~r.quantized.keep] == 0).all()


def test_awq_folds_where_the_block_allows():
    model = tiny_model("llama")
    reference = copy.deepcopy(model)
    batches = random_batches(2)
    results = run.quantize_model(model, "awq", batches, spec=QuantSpec(8, 16))
    folded = {r.name.split(".", 3)[-1] for r in results if r.extra["awq_folded"]}
    assert folded == {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                      "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}  # o_proj: GQA, not foldable
    assert all(r.quantized.input_scale is None for r in results if r.extra["awq_folded"])
    with torch.no_grad():  # int8 AWQ changes the function very little, folds included
        a, b = model(**batches[0]).logits, reference(**batches[0]).logits
    assert float((a - b).norm() / b.norm()) < 0.05


def test_packed_model_computes_like_the_fake_quantized_one():
    model = tiny_model("llama")
    batches = random_batches(2)
    results = run.quantize_model(model, "gptq", batches, spec=QuantSpec(4, 32))
    with torch.no_grad():
        ref = model(**batches[0]).logits
    paths = pack_linear_(model, run.quantized_weights(results))
    assert set(paths.values()) <= {"int4", "dequant"} and "int4" in paths.values()
    with torch.no_grad():
        out = model(**batches[0]).logits
    assert torch.allclose(out, ref, rtol=TOL["float32_kernel"], atol=TOL["float32_kernel"])


def test_kind_errors():
    with pytest.raises(UsageError, match="prunekit quantize"):
        plan.check_kind("gptq", "prune")
    with pytest.raises(UsageError, match="prunekit prune"):
        plan.check_kind("sparsegpt", "quantize")
    with pytest.raises(UsageError, match="group"):
        plan.make_config("gptq", {"quant": QuantSpec(4, 96), "blocksize": 128})


def test_bfloat16_compute_is_close_to_the_exact_path():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(64, 256, generator=g) / 16
    _, qw = rtn_quantize(W, QuantSpec(4, 128))
    exact = QuantizedLinear(qw)
    fast = QuantizedLinear(qw, compute_dtype=torch.bfloat16)
    x = torch.randn(8, 256, generator=g)
    with torch.no_grad():
        a, b = exact(x), fast(x)
    assert b.dtype == torch.float32 and fast.kernel == "int4"
    assert float((a - b).norm() / a.norm()) < 0.02
    with pytest.raises(ValueError, match="compute_dtype"):
        QuantizedLinear(qw, compute_dtype=torch.float16)
