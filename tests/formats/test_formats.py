"""Tensor formats and prunekit checkpoints: exact round trips, documented sizes, the smallest
valid format, validation of corrupt, truncated and foreign files, inspect from real sizes."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import prunekit
from conftest import TOL, random_batches, tiny_model
from prunekit.errors import ModelError
from prunekit.formats.checkpoint import MANIFEST, WEIGHTS, inspect_checkpoint, write_checkpoint
from prunekit.formats.tensors import (best_encoding, decode, detect_nm, encode, pack_bits,
                                      unpack_bits)
from prunekit.masks import nm_mask
from prunekit.patterns import NM, Unstructured
from prunekit.quant import QuantSpec, rtn_quantize
from prunekit.quant.awq import awq_quantize
import prunekit.plan as plan
import prunekit.run as run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("width", range(1, 9))
@pytest.mark.parametrize("count", [1, 7, 64, 1001])
def test_bit_streams_round_trip(width, count):
    values = torch.randint(0, 2 ** width, (count,), generator=torch.Generator().manual_seed(width))
    stream = pack_bits(values, width)
    assert stream.numel() == -(-count * width // 8)
    assert torch.equal(unpack_bits(stream, width, count), values.to(torch.uint8))


def test_bit_stream_layout_is_little_endian():
    assert pack_bits(torch.tensor([1, 2, 3, 0]), 2).tolist() == [0b00111001]
    assert pack_bits(torch.tensor([0xA, 0x5]), 4).tolist() == [0x5A]  # low nibble first


def _weights(rows=16, cols=64, dtype=torch.float16, seed=0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _two_four(W):
    return W * nm_mask(W.float().abs(), 2, 4)


def test_two_four_costs_half_the_values_plus_one_sixteenth():
    W = _two_four(_weights(64, 256))
    enc = encode(W, "nm", nm=(2, 4))
    dense = W.numel() * 2  # fp16
    assert enc.parts["values"].numel() * 2 == dense // 2
    assert enc.parts["positions"].numel() == dense // 16  # 2 bits per kept value = 6.25 %
    assert enc.nbytes == dense // 2 + dense // 16
    assert torch.equal(decode(enc, tuple(W.shape), W.dtype), W)
    assert best_encoding(W).format == "nm"


@pytest.mark.parametrize("nm", [(1, 4), (4, 8), (2, 4)])
def test_nm_with_fewer_nonzeros_than_n_round_trips(nm):
    n, m = nm
    W = _weights(8, 32, torch.float32) * nm_mask(_weights(8, 32, torch.float32).abs(), n, m)
    W[0, :m] = 0  # a whole group pruned
    assert detect_nm(W) is not None
    enc = encode(W, "nm", nm=nm)
    assert torch.equal(decode(enc, tuple(W.shape), W.dtype), W)


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 1.0])
def test_bitmask_round_trips_and_is_chosen_when_smaller(sparsity):
    W = _weights(32, 96, torch.float32)
    W[torch.rand(W.shape, generator=torch.Generator().manual_seed(1)) < sparsity] = 0
    enc = encode(W, "bitmask")
    assert enc.nbytes == int((W != 0).sum()) * 4 + W.numel() // 8
    assert torch.equal(decode(enc, tuple(W.shape), W.dtype), W)
    best = best_encoding(W)
    assert best.nbytes == min(enc.nbytes, W.numel() * 4, encode(W, "nm", nm=detect_nm(W)).nbytes
                              if detect_nm(W) else 10 ** 9)


QSPECS = [QuantSpec(4, 32), QuantSpec(4, 32, False), QuantSpec(8, None), QuantSpec(3, 16, False),
          QuantSpec(2, None)]


@pytest.mark.parametrize("spec", QSPECS, ids=str)
@pytest.mark.parametrize("kind", ["dense", "unstructured", "2:4", "awq"])
def test_quantized_formats_round_trip_bit_exactly(spec, kind):
    W = _weights(32, 128, torch.float32)
    if kind == "unstructured":
        W[torch.rand(W.shape, generator=torch.Generator().manual_seed(2)) < 0.7] = 0
    if kind == "2:4":
        W = _two_four(W)
    if kind == "awq":
        s = torch.rand(128, generator=torch.Generator().manual_seed(3)) + 0.5
        W_hat, qw = awq_quantize(W, torch.eye(128), spec, s)
    else:
        W_hat, qw = rtn_quantize(W, spec)
    formats = ["quant", "quant-bitmask"] + (["quant-nm"] if kind == "2:4" else [])
    for fmt in formats:
        enc = encode(W_hat, fmt, qw, nm=(2, 4))
        assert torch.equal(decode(enc, tuple(W.shape), W.dtype), W_hat), fmt
    best = best_encoding(W_hat, qw)
    assert best.format.startswith("quant")
    if kind == "2:4" and spec.bits == 4:
        assert best.format == "quant-nm"  # int2 positions + int4 values
        assert best.parts["codes"].numel() == W.numel() // 4  # 2 of 4 kept, two per byte


def test_quantized_format_is_refused_when_weights_changed_after_quantizing():
    W_hat, qw = rtn_quantize(_weights(8, 64, torch.float32), QuantSpec(4, 32))
    W_hat[0, 0] += 1e-3
    assert not best_encoding(W_hat, qw).format.startswith("quant")
    with pytest.raises(ValueError, match="cannot hold this tensor exactly"):
        best_encoding(W_hat, qw, only="quant")


# --- checkpoints -----------------------------------------------------------------------------

def _state_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(
        sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert", "opt"])
@pytest.mark.parametrize("case", ["pruned", "quantized", "2:4+int4"])
def test_checkpoint_round_trip_is_bit_exact(family, case, tmp_path):
    model = tiny_model(family)
    batches = random_batches(2)
    if case == "pruned":
        results = run.prune_model(model, "sparsegpt", Unstructured(0.6, "layer"), batches)
    elif case == "quantized":
        results = run.quantize_model(model, "awq", batches, spec=QuantSpec(4, 16, False))
    else:
        results = run.prune_model(model, "sparsegpt", NM(2, 4), batches,
                                  config=plan.make_config("sparsegpt", {"quant": QuantSpec(4, 16)}))
    write_checkpoint(tmp_path, model, quantized=run.quantized_weights(results))
    loaded = prunekit.load(tmp_path)
    assert _state_equal(loaded.model, model)
    info = inspect_checkpoint(tmp_path)
    assert info["totals"]["bytes"] == (tmp_path / WEIGHTS).stat().st_size
    formats = {t["format"].split()[0] for t in info["tensors"]}
    expected = {"pruned": "bitmask", "quantized": "quant", "2:4+int4": "quant-nm"}[case]
    assert expected in formats
    batch = batches[0]
    with torch.no_grad():
        a, b = model(**batch), loaded.model(**batch)
    key = "last_hidden_state" if family == "bert" else "logits"
    assert torch.equal(a[key], b[key])


def test_plain_module_checkpoint_with_builder_or_skeleton(tmp_path):
    from prunekit.models.digits import digits_mlp

    model = digits_mlp(16)
    with torch.no_grad():
        model[0].weight[:, ::2] = 0
    (tmp_path / "a").mkdir()
    write_checkpoint(tmp_path / "a", model, builder="digits-mlp:16")
    assert _state_equal(prunekit.load(tmp_path / "a"), model)
    (tmp_path / "b").mkdir()
    write_checkpoint(tmp_path / "b", model)
    with pytest.raises(ModelError, match="pass the module"):
        prunekit.load(tmp_path / "b")
    assert _state_equal(prunekit.load(tmp_path / "b", model=digits_mlp(16)), model)


@pytest.fixture
def saved(tmp_path):
    model = tiny_model("llama")
    run.prune_model(model, "magnitude", Unstructured(0.5), random_batches(1))
    folder = tmp_path / "ckpt"
    folder.mkdir()
    write_checkpoint(folder, model)
    return folder


def _edit_manifest(folder, change):
    manifest = json.loads((folder / MANIFEST).read_text())
    change(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))


CORRUPTIONS = {
    "truncated": (lambda f: (f / WEIGHTS).write_bytes((f / WEIGHTS).read_bytes()[:-100]),
                  "truncated"),
    "flipped byte": (lambda f: (f / WEIGHTS).write_bytes(
        (lambda b: b[:-10] + bytes([b[-10] ^ 1]) + b[-9:])((f / WEIGHTS).read_bytes())),
        "checksum mismatch"),
    "no weights": (lambda f: (f / WEIGHTS).unlink(), "missing"),
    "no manifest": (lambda f: (f / MANIFEST).unlink(), "not a prunekit checkpoint"),
    "foreign json": (lambda f: (f / MANIFEST).write_text('{"hello": 1}'), "foreign"),
    "not json": (lambda f: (f / MANIFEST).write_text("PK\x03\x04 zip"), "unreadable manifest"),
    "newer version": (lambda f: _edit_manifest(f, lambda m: m.update(version=99)),
                      "upgrade prunekit"),
    "wrong shape": (lambda f: _edit_manifest(f, lambda m: m["tensors"][
        "model.layers.0.mlp.up_proj.weight"]["parts"]["values"].update(shape=[3])),
        "in the manifest"),
    "unknown format": (lambda f: _edit_manifest(f, lambda m: m["tensors"][
        "model.norm.weight"].update(format="zstd")), "unknown dtype"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_loader_rejects_corrupt_checkpoints(saved, case):
    corrupt, expected = CORRUPTIONS[case]
    corrupt(saved)
    with pytest.raises(ModelError, match=expected):
        prunekit.load(saved)


def test_transformers_refuses_a_prunekit_folder_instead_of_half_loading(saved):
    import transformers as tf

    with pytest.raises(OSError, match="model.safetensors"):
        tf.AutoModelForCausalLM.from_pretrained(saved)


def test_checkpoint_is_smaller_than_hf_and_load_model_reads_it(saved, tmp_path):
    from prunekit.formats.load import load_model

    shutil.copy(saved / MANIFEST, tmp_path / "m.json")
    loaded = load_model(str(saved))
    assert loaded.source == str(saved)
    info = inspect_checkpoint(saved)
    targets = [t for t in info["tensors"] if "layers" in t["name"] and t["shape"]
               and len(t["shape"]) == 2]
    assert all(t["format"] == "bitmask" for t in targets)
    assert all(t["bits_per_value"] == pytest.approx(0.5 * 32 + 1, rel=TOL["bits_overhead"]) for t in targets)


# --- export to compressed-tensors --------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:You passed `quantization_config`:UserWarning")
@pytest.mark.parametrize("family,spec,prune", [
    ("llama", QuantSpec(4, 16), False), ("llama", QuantSpec(4, 32, False), True),
    ("bert", QuantSpec(8, None), False), ("llama", QuantSpec(3, None, False), False)],
    ids=lambda v: str(v))
def test_compressed_tensors_export_loads_in_transformers_bit_exactly(family, spec, prune, tmp_path):
    pytest.importorskip("compressed_tensors")
    import transformers as tf
    from transformers.utils.quantization_config import CompressedTensorsConfig

    from prunekit.formats.export import export_compressed_tensors

    model = tiny_model(family)
    batches = random_batches(2)
    if prune:
        run.prune_model(model, "sparsegpt", NM(2, 4), batches)
    results = run.quantize_model(model, "gptq", batches, spec=spec)
    config = export_compressed_tensors(model, run.quantized_weights(results), tmp_path)
    assert config["format"] == "pack-quantized"
    auto = tf.AutoModel if family == "bert" else tf.AutoModelForCausalLM
    back = auto.from_pretrained(tmp_path, quantization_config=CompressedTensorsConfig(
        run_compressed=False))  # compressed-tensors unpacks and dequantizes every layer
    ours, theirs = model.state_dict(), back.state_dict()
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k].to(ours[k].dtype)) for k in ours)


def test_compressed_tensors_export_refuses_what_it_cannot_hold(tmp_path):
    from prunekit.formats.export import export_compressed_tensors

    model = tiny_model("bert")
    results = run.quantize_model(model, "awq", random_batches(1), spec=QuantSpec(4, 16))
    with pytest.raises(ModelError, match="AWQ input scale not folded"):
        export_compressed_tensors(model, run.quantized_weights(results), tmp_path)
    with pytest.raises(ModelError, match="no layer was quantized"):
        export_compressed_tensors(model, {}, tmp_path)


def test_semi_structured_finds_two_four_layers_and_needs_cuda(tmp_path):
    from prunekit.formats.accel import to_semi_structured_, two_four_linears
    from prunekit.errors import UsageError

    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 64),
                                torch.nn.Linear(64, 32))
    with torch.no_grad():
        model[0].weight.copy_(_two_four(model[0].weight))
        model[1].weight.copy_(_two_four(model[1].weight))  # 32 inputs: too narrow for the kernels
    assert two_four_linears(model) == ["0"]
    with pytest.raises(UsageError, match="CUDA"):
        to_semi_structured_(model)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="2:4 kernels need a CUDA GPU")
def test_semi_structured_on_cuda_matches_dense(tmp_path):  # pragma: no cover - GPU only
    from prunekit.formats.accel import to_semi_structured_

    layer = torch.nn.Linear(128, 64).half().cuda()
    with torch.no_grad():
        layer.weight.copy_(_two_four(layer.weight))
    x = torch.randn(32, 128, device="cuda", dtype=torch.float16)
    ref = layer(x)
    model = torch.nn.Sequential(layer)
    assert to_semi_structured_(model) == ["0"]
    assert torch.allclose(model(x), ref, rtol=TOL["float16_kernel"], atol=TOL["float16_kernel"])


def test_cpu_sparse_layers_above_the_measured_threshold(tmp_path):
    from prunekit.formats.accel import CPU_SPARSE_MIN_SPARSITY, CSRLinear

    model = tiny_model("llama")
    run.prune_model(model, "magnitude", Unstructured(0.97, "layer"), random_batches(1),
                    skip=["*.mlp.down_proj"])
    write_checkpoint(tmp_path, model)
    batch = random_batches(1)[0]
    with torch.no_grad():
        ref = model(**batch).logits
    loaded = prunekit.load(tmp_path, cpu_sparse=True)
    kinds = {n: type(m).__name__ for n, m in loaded.model.named_modules() if "layers.0." in n}
    assert kinds["model.layers.0.mlp.up_proj"] == "CSRLinear"
    assert kinds["model.layers.0.mlp.down_proj"] == "Linear"  # dense: under the threshold
    assert CPU_SPARSE_MIN_SPARSITY == 0.95
    with torch.no_grad():
        out = loaded.model(**batch).logits
    assert torch.allclose(out, ref, rtol=TOL["float32_kernel"], atol=TOL["float32_forward"])
    assert isinstance(loaded.model.model.layers[0].self_attn.q_proj, CSRLinear)
