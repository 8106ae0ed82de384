"""Bad input raises a clear PrunekitError (one line, the value at fault, the fix), early, and
nothing is lost: the library side of the command line's error handling."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit
import prunekit.api as api
from conftest import random_batches, tiny_model
from prunekit.errors import (
    DataError,
    ModelError,
    NumericalError,
    PatternError,
    PrunekitError,
    UsageError,
)
from prunekit.hessian import damped_cholesky
from prunekit.methods import get_method
from prunekit.models.loaders import LoadedModel
from prunekit.patterns import NM, Unstructured, parse_pattern
from prunekit.report import PruneReport
import prunekit.output as output
import prunekit.plan as plan
import prunekit.eval.protocol as protocol
import prunekit.run as run


def _message(excinfo) -> str:
    """The exception's message, checked to be one line."""
    text = str(excinfo.value)
    assert "\n" not in text, text
    return text


def _loaded(model: nn.Module, tokenizer=None) -> LoadedModel:
    return LoadedModel(model=model, tokenizer=tokenizer, source="tiny", kind="causal")


def _never(*args, **kwargs):
    raise AssertionError("reached a slow step before the input was checked")


def test_every_error_is_a_prunekit_error():
    for cls in (DataError, ModelError, NumericalError, PatternError, UsageError):
        assert issubclass(cls, PrunekitError)
        assert getattr(prunekit, cls.__name__) is cls


# --- patterns and methods ---------------------------------------------------------------------

@pytest.mark.parametrize("value", [1.0, -0.1, 1.5, math.nan, math.inf])
def test_sparsity_outside_unit_interval(value):
    with pytest.raises(PatternError) as excinfo:
        parse_pattern(value)
    msg = _message(excinfo)
    assert repr(value) in msg and "[0, 1)" in msg and "0.5" in msg


def test_api_refuses_sparsity_one(monkeypatch):
    """A Pattern object passed to the API is checked like a parsed one: 1.0 is not a request."""
    monkeypatch.setattr(run, "load_model", _never)
    with pytest.raises(PatternError, match=r"sparsity 1.0 is outside \[0, 1\)"):
        api.prune("some/model", "magnitude", Unstructured(1.0), samples=4, seqlen=16)
    with pytest.raises(PatternError, match=r"sparsity 1.0 is outside \[0, 1\)"):
        run.prune_model(tiny_model("llama"), "magnitude", Unstructured(1.0), random_batches())


@pytest.mark.parametrize("text", ["1", "100%", "-5%"])
def test_sparsity_strings_outside_unit_interval(text):
    with pytest.raises(PatternError, match=r"outside \[0, 1\)"):
        parse_pattern(text)


@pytest.mark.parametrize("n, m", [(4, 4), (5, 4), (0, 4), (2, 0)])
def test_nm_needs_n_below_m(n, m):
    with pytest.raises(PatternError) as excinfo:
        NM(n, m)
    msg = _message(excinfo)
    assert f"{n}:{m}" in msg and "2:4" in msg


def test_nm_that_does_not_divide_in_features_names_the_layer():
    with pytest.raises(PatternError) as excinfo:
        NM(2, 4).check_fits(30, where="decoder.layers.3.fc1")
    msg = _message(excinfo)
    assert "decoder.layers.3.fc1" in msg and "in_features=30" in msg and "--skip" in msg


def test_unknown_pattern_text():
    with pytest.raises(PatternError, match="'two of four'.*2:4"):
        parse_pattern("two of four")


def test_unknown_method_lists_the_choices():
    with pytest.raises(UsageError) as excinfo:
        get_method("nosuch")
    msg = _message(excinfo)
    assert "'nosuch'" in msg and all(m in msg for m in ("magnitude", "obs", "sparsegpt", "wanda"))


def test_make_config_rejects_unknown_settings_and_dtypes():
    with pytest.raises(UsageError, match="'wanda' has no setting rel_damp"):
        plan.make_config("wanda", {"rel_damp": 0.1})
    with pytest.raises(UsageError, match="hessian_dtype 'float16'.*float32, float64"):
        plan.make_config("sparsegpt", {"hessian_dtype": "float16"})
    assert plan.make_config("sparsegpt", {"rel_damp": 0.1, "blocksize": None}).rel_damp == 0.1


# --- devices and output directories -----------------------------------------------------------

@pytest.mark.parametrize("device", ["gpu", "cuda:x", "tpu"])
def test_unknown_device(device):
    with pytest.raises(UsageError) as excinfo:
        plan.check_device(device)
    assert repr(device) in _message(excinfo)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda():
    with pytest.raises(UsageError, match="--device cuda:0: CUDA is not available.*--device cpu"):
        plan.check_device("cuda:0")


def test_check_output(tmp_path):
    assert output.check_output(tmp_path / "new" / "deeper", overwrite=False) == tmp_path / "new" / "deeper"
    with pytest.raises(UsageError, match="exists: pass --overwrite or another --out"):
        output.check_output(tmp_path, overwrite=False)
    assert output.check_output(tmp_path, overwrite=True) == tmp_path
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file, not a directory"):
        output.check_output(tmp_path / "file", overwrite=True)


# --- data -------------------------------------------------------------------------------------

def test_empty_calibration_file_fails_before_the_model_loads(tmp_path, monkeypatch):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n\n")
    monkeypatch.setattr(run, "load_model", _never)
    with pytest.raises(DataError) as excinfo:
        api.prune("some/model", "wanda", 0.5, calib=str(empty), samples=4, seqlen=16)
    assert str(empty) in _message(excinfo)


def test_source_without_eval_texts_suggests_no_eval(monkeypatch):
    monkeypatch.setattr(run, "load_model", _never)

    def only_calib(source, split, **kwargs):
        if split == "eval":
            raise DataError(f"source {source!r} gave no 'eval' texts; give it more documents")
        return ["some text"]

    monkeypatch.setattr(run, "load_texts", only_calib)
    monkeypatch.setattr(protocol, "load_texts", only_calib)
    with pytest.raises(DataError, match="gave no 'eval' texts.*--no-eval"):
        api.prune("some/model", "wanda", 0.5, calib="x.txt", samples=4, seqlen=16)


def test_empty_calibration_batches():
    with pytest.raises(DataError, match="calibration set is empty"):
        run.prune_model(tiny_model("llama"), "wanda", Unstructured(0.5), [])


def test_seqlen_longer_than_the_model(monkeypatch):
    monkeypatch.setattr(run, "calibration", _never)
    with pytest.raises(DataError) as excinfo:
        api.prune(_loaded(tiny_model("llama")), "wanda", 0.5, samples=4, seqlen=65, evaluate=False)
    msg = _message(excinfo)
    assert "--seqlen 65" in msg and "64 positions" in msg and "--seqlen 64 or less" in msg


def test_fidelity_passages_uses_what_a_small_source_has():
    texts = [f"Passage number {i} is a sentence long enough to be used here." for i in range(5)]
    assert len(protocol.fidelity_passages(texts, 200)) == 5
    assert len(protocol.fidelity_passages(texts, 3)) == 3
    with pytest.raises(DataError, match="--no-eval"):
        protocol.fidelity_passages(texts[:1], 200)


# --- numbers ----------------------------------------------------------------------------------

def test_nan_weights_are_named_before_any_work(monkeypatch):
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[0].self_attn.v_proj.weight[1, 2] = float("inf")
    monkeypatch.setattr(run, "calibration", _never)
    with pytest.raises(NumericalError) as excinfo:
        api.prune(_loaded(model), "sparsegpt", 0.5, samples=4, seqlen=16, evaluate=False)
    msg = _message(excinfo)
    assert "model.layers.0.self_attn.v_proj.weight: 1 of 512 weights are NaN/Inf" in msg


def test_nan_weights_in_prune_model():
    model = tiny_model("bert")
    with torch.no_grad():
        model.encoder.layer[1].output.dense.weight[0, 0] = float("nan")
    with pytest.raises(NumericalError, match="encoder.layer.1.output.dense.weight"):
        run.prune_model(model, "magnitude", Unstructured(0.5), random_batches())


def test_nm_pattern_that_does_not_fit_fails_before_calibration(monkeypatch):
    monkeypatch.setattr(run, "calibration", _never)
    with pytest.raises(PatternError) as excinfo:
        api.prune(_loaded(tiny_model("llama")), "sparsegpt", "2:3", samples=4, seqlen=16)
    assert "model.layers.0.self_attn.q_proj: in_features=32" in _message(excinfo)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_nan_activations_name_the_layer(method):
    layer = nn.Linear(8, 4)
    compressor = get_method(method)(layer, Unstructured(0.5), plan.make_config(method), "blk.0.fc1")
    compressor.add_batch(torch.tensor([[1.0] * 8]))
    compressor.add_batch(torch.tensor([[1.0] * 7 + [float("nan")]]))
    with pytest.raises(NumericalError) as excinfo:  # checked once, on diag(H), at compress
        compressor.compress()
    assert not torch.isnan(layer.weight).any()
    msg = _message(excinfo)
    assert "blk.0.fc1" in msg and "NaN/Inf" in msg


def test_nan_weights_in_one_layer_compressor():
    layer = nn.Linear(8, 4)
    compressor = get_method("wanda")(layer, Unstructured(0.5), plan.make_config("wanda"), "fc2")
    compressor.add_batch(torch.randn(16, 8))
    with torch.no_grad():
        layer.weight[0, 0] = float("nan")
    with pytest.raises(NumericalError, match="fc2: weights contain NaN/Inf"):
        compressor.compress()


@pytest.mark.parametrize("where", [(2, 2), (1, 2)], ids=["diagonal", "off-diagonal"])
def test_hessian_with_nan_names_the_layer(where):
    H = torch.eye(4)
    H[where] = H[where[::-1]] = float("nan")  # symmetric, as every accumulated Hessian is
    with pytest.raises(NumericalError) as excinfo:
        damped_cholesky(H, max_tries=3, name="model.layers.5.mlp.down_proj")
    assert "model.layers.5.mlp.down_proj" in _message(excinfo)


def test_hessian_that_damping_cannot_fix_names_the_layer():
    H = torch.diag(torch.tensor([1.0, 2.0, -1e6, 3.0]))  # one strongly negative eigenvalue
    with pytest.raises(NumericalError) as excinfo:
        damped_cholesky(H, rel_damp=0.01, max_tries=2, name="model.layers.2.self_attn.k_proj")
    msg = _message(excinfo)
    assert "model.layers.2.self_attn.k_proj" in msg and "not positive definite" in msg
    assert "--damp" in msg


def test_sparsegpt_layer_whose_hessian_cannot_be_fixed():
    layer = nn.Linear(8, 4)
    compressor = get_method("sparsegpt")(layer, NM(2, 4), plan.make_config("sparsegpt"), "fc3")
    compressor.add_batch(torch.randn(16, 8))
    before = layer.weight.detach().clone()
    compressor.hessian.H.copy_(-1e9 * torch.eye(8))  # far beyond any damping
    with pytest.raises(NumericalError, match="fc3: .*not positive definite"):
        compressor.compress()
    assert torch.equal(layer.weight, before)  # the layer is left as it was


# --- saving -----------------------------------------------------------------------------------

class _Tokenizer:
    def __init__(self, fail: bool = False):
        self.fail = fail

    def save_pretrained(self, folder):
        if self.fail:
            raise PermissionError(13, "Permission denied", str(folder))
        Path(folder, "tokenizer.json").write_text("{}")


def _report() -> PruneReport:
    return PruneReport(model="tiny", method="magnitude", pattern="2:4", calibration={},
                       device="cpu", layers=[])


def _siblings(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def test_save_is_atomic_on_failure(tmp_path):
    loaded = _loaded(tiny_model("gpt2"), _Tokenizer(fail=True))
    out = tmp_path / "out"
    with pytest.raises(ModelError) as excinfo:
        api.save_pruned(loaded, _report(), out)
    msg = _message(excinfo)
    assert str(out) in msg and "Permission denied" in msg and "nothing was written" in msg
    assert _siblings(tmp_path) == []


def test_save_replaces_and_restores(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    loaded = _loaded(tiny_model("gpt2"), _Tokenizer())

    real_rename = Path.rename

    def fail_to_move_in(self, target):  # the swap fails after the old output was moved away
        if self.name.startswith(".out.tmp-"):
            raise OSError(18, "Invalid cross-device link")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", fail_to_move_in)
    with pytest.raises(ModelError, match="Invalid cross-device link"):
        api.save_pruned(loaded, _report(), out, overwrite=True)
    assert _siblings(tmp_path) == ["out"] and _siblings(out) == ["keep.txt"]

    monkeypatch.setattr(Path, "rename", real_rename)
    assert api.save_pruned(loaded, _report(), out, overwrite=True) == out
    assert {"config.json", "tokenizer.json", output.REPORT_FILE} <= set(_siblings(out))
    assert "keep.txt" not in _siblings(out) and _siblings(tmp_path) == ["out"]


def test_skip_glob_matching_nothing_is_an_error():
    with pytest.raises(UsageError, match="--skip '\\*.nope' matches no target layer"):
        run.prune_model(tiny_model("llama"), "magnitude", Unstructured(0.5), random_batches(),
                        skip=["*.nope"])


def test_named_calibration_split_needs_separate_eval_data():
    with pytest.raises(DataError, match="--eval-data"):
        protocol.evaluation_texts("wikitext:wikitext-2-raw-v1@train")


def test_blocksize_that_does_not_fit_nm_fails_before_calibration(monkeypatch):
    monkeypatch.setattr(run, "calibration", _never)
    with pytest.raises(PatternError, match="--blocksize 6 is not a multiple of m=4"):
        api.prune(_loaded(tiny_model("llama")), "sparsegpt", "2:4", samples=4, seqlen=16,
                  config={"blocksize": 6}, evaluate=False)
