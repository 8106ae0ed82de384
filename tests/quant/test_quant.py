"""Quantization grids, RTN, GPTQ (against the naive reference), joint SparseGPT + quantization,
masks kept exactly."""

import pytest
import torch

from conftest import TOL
from prunekit.errors import UsageError
from prunekit.masks import satisfies
from prunekit.methods.base import relative_error
from prunekit.methods.sparsegpt import sparsegpt_prune, sparsegpt_quantize
from prunekit.patterns import NM, Unstructured
from prunekit.quant import (QuantSpec, fake_quantize, fit, gptq_quantize, parse_group,
                            quantize_kept, rtn_quantize)
from prunekit.quant.grid import fit_rows
from reference import naive_gptq
from conftest import correlated_inputs

SPECS = [QuantSpec(bits, group, sym) for bits in (2, 3, 4, 8) for group in (None, 16)
         for sym in (True, False)]


def weights(rows=24, cols=64, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g, dtype=dtype) * torch.logspace(
        -1, 0.5, cols, dtype=dtype)[torch.randperm(cols, generator=g)]


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_rtn_error_within_half_a_step(spec):
    W = weights(dtype=torch.float32)
    W_hat, qw = rtn_quantize(W, spec)
    scale, _ = fit(W, spec).columns(W.shape[1])
    assert ((W_hat - W).abs() <= scale / 2 * (1 + 1e-6)).all()
    assert torch.equal(qw.dequantize(), W_hat)
    assert int(qw.codes.max()) <= spec.maxq
    assert len(torch.unique(W_hat[0, : spec.group_size(64)])) <= 2 ** spec.bits


@pytest.mark.parametrize("spec", SPECS[:8], ids=str)
def test_zero_is_exact_and_scales_are_float16(spec):
    W = weights(dtype=torch.float32)
    params = fit(W, spec)
    assert torch.equal(params.scale.half().float(), params.scale)
    scale, zero = params.columns(64)
    assert (fake_quantize(torch.zeros_like(W), scale, zero, spec.maxq) == 0).all()


@pytest.mark.parametrize("sym", [True, False])
def test_mse_clipping_never_worse_than_minmax(sym):
    x = torch.randn(50, 128, generator=torch.Generator().manual_seed(0))
    x[:, 0] *= 8  # an outlier per row: clipping it pays off
    errs = {}
    for clip in ("minmax", "mse"):
        spec = QuantSpec(3, None, sym, clip)
        s, z = fit_rows(x, spec)
        errs[clip] = (fake_quantize(x, s[:, None], z[:, None], spec.maxq) - x).square().sum(1)
    assert (errs["mse"] <= errs["minmax"] + 1e-6).all()
    assert errs["mse"].sum() < 0.9 * errs["minmax"].sum()


def test_grids_ignore_pruned_weights():
    x = torch.tensor([[0.0, 5.0, 0.5, -0.25]])
    keep = torch.tensor([[True, False, True, True]])
    s, z = fit_rows(x, QuantSpec(2, None, False), keep)
    # range [-0.25, 0.5] over the kept weights only, 3 steps
    assert float(s) == pytest.approx(0.25, rel=TOL["grid_scale"])
    W_hat, qw = rtn_quantize(torch.tensor([[0.0, 0.0, 0.5, -0.25]]), QuantSpec(2, None, False))
    assert torch.equal(qw.keep, torch.tensor([[False, False, True, True]]))
    assert torch.equal(W_hat, torch.tensor([[0.0, 0.0, 0.5, -0.25]]))


def test_bad_settings_are_clear_errors():
    with pytest.raises(UsageError, match="--bits 5"):
        QuantSpec(bits=5)
    with pytest.raises(UsageError, match="--group"):
        QuantSpec(group=0)
    with pytest.raises(UsageError, match="--clip"):
        QuantSpec(clip="percentile")
    assert parse_group("channel") is None and parse_group("64") == 64
    with pytest.raises(UsageError):
        parse_group("abc")


def test_bits_per_weight_counts_scales():
    assert QuantSpec(4, 128, True).bits_per_weight(4096) == pytest.approx(4 + 16 / 128)
    assert QuantSpec(4, 128, False).bits_per_weight(4096) == pytest.approx(4 + 20 / 128)
    assert QuantSpec(8, None, True).bits_per_weight(1024) == pytest.approx(8 + 16 / 1024)


# --- GPTQ --------------------------------------------------------------------------------

GPTQ_CASES = [
    dict(spec=QuantSpec(4, 16, False)), dict(spec=QuantSpec(3, None, True)),
    dict(spec=QuantSpec(4, 16, True), static_groups=True),
    dict(spec=QuantSpec(4, 16, False), act_order=True), dict(spec=QuantSpec(2, None, False), act_order=True),
    dict(spec=QuantSpec(4, 8, True, "mse")),
]


@pytest.mark.parametrize("blocksize", [16, 32])
@pytest.mark.parametrize("case", GPTQ_CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
@pytest.mark.parametrize("masked", [False, True])
def test_gptq_equals_naive_float64(case, blocksize, masked):
    _, H = correlated_inputs(c=48)
    W = weights(12, 48, seed=1)
    keep = (torch.rand(12, 48, generator=torch.Generator().manual_seed(5)) > 0.5) if masked else None
    if keep is not None:
        W = W * keep
    ours, qw, loss, damp = gptq_quantize(W, H, blocksize=blocksize, rel_damp=0.01, keep=keep, **case)
    ref = naive_gptq(W, H, rel_damp=0.01, keep=keep, **case)
    assert damp.relative == 0.01
    assert torch.allclose(ours, ref, atol=TOL["float64_exact"], rtol=0)
    assert torch.allclose(qw.dequantize(torch.float64), ours, atol=TOL["float64_exact"], rtol=0)
    if keep is not None:
        assert (ours[~keep] == 0).all() and torch.equal(qw.keep, keep)
    Hd = H + damp.absolute * torch.eye(48, dtype=H.dtype)
    D = ours - W
    assert float(loss) == pytest.approx(0.5 * float(((D @ Hd) * D).sum()), rel=TOL["float64_sweep"])


@pytest.mark.parametrize("spec", [QuantSpec(4, 128), QuantSpec(3, None, False), QuantSpec(4, 32, False)],
                         ids=str)
def test_gptq_beats_rtn_on_correlated_inputs(spec):
    _, H = correlated_inputs(n=4096, c=256, dtype=torch.float32)
    W = weights(64, 256, dtype=torch.float32)
    W_gptq = gptq_quantize(W, H, spec)[0]
    W_rtn = rtn_quantize(W, spec)[0]
    assert relative_error(W, W_gptq, H) < 0.8 * relative_error(W, W_rtn, H)


def test_gptq_float32_close_to_float64():
    _, H = correlated_inputs(c=64)
    W = weights(16, 64)
    spec = QuantSpec(4, 32, False)
    e64 = relative_error(W, gptq_quantize(W, H, spec)[0], H)
    e32 = relative_error(W, gptq_quantize(W.float(), H.float(), spec)[0].double(), H)
    assert e32 == pytest.approx(e64, rel=TOL["float32_vs_float64_error"])


def test_gptq_group_must_fit_the_blocks():
    _, H = correlated_inputs(c=48)
    with pytest.raises(ValueError, match="period 24"):
        gptq_quantize(weights(4, 48), H, QuantSpec(4, 24), blocksize=32)


# --- joint pruning and quantization: the mask survives exactly --------------------------

@pytest.mark.parametrize("pattern", [Unstructured(0.5, "layer"), Unstructured(0.7, "row"), NM(2, 4)],
                         ids=str)
@pytest.mark.parametrize("spec", [QuantSpec(4, 32), QuantSpec(4, None, False), QuantSpec(3, 64, False)],
                         ids=str)
def test_joint_sparsegpt_keeps_pattern_and_grid(pattern, spec):
    _, H = correlated_inputs(c=128, dtype=torch.float32)
    W = weights(32, 128, dtype=torch.float32)
    W_hat, qw, _, _ = sparsegpt_quantize(W, H, pattern, spec, blocksize=64)
    assert satisfies(W_hat, pattern)
    assert torch.equal(qw.dequantize(), W_hat)  # every kept weight is on its grid
    assert satisfies(qw.keep.float(), pattern)  # the mask the sweep chose, kept exactly
    assert (W_hat[~qw.keep] == 0).all()
    # joint beats prune-then-round-to-nearest, and stays close to pruning alone
    pruned = sparsegpt_prune(W, H, pattern, blocksize=64)[0]
    two_step_rtn = rtn_quantize(pruned, spec)[0]
    assert relative_error(W, W_hat, H) < relative_error(W, two_step_rtn, H)


@pytest.mark.parametrize("method", ["gptq", "rtn"])
def test_two_step_keeps_the_mask_bit_exactly(method):
    _, H = correlated_inputs(c=128, dtype=torch.float32)
    W = weights(32, 128, dtype=torch.float32)
    pruned = sparsegpt_prune(W, H, NM(2, 4), blocksize=64)[0]
    W_hat, qw, _ = quantize_kept(pruned, H, QuantSpec(4, 64, False), method)
    assert torch.equal(qw.keep, pruned != 0)
    assert (W_hat[pruned == 0] == 0).all()
    assert satisfies(W_hat, NM(2, 4))
    assert torch.equal(qw.dequantize(), W_hat)
