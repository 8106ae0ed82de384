"""Shared fixtures: tiny Hugging Face models with random weights, built from configs, and the
one tolerance table of the test suite (never loosened locally)."""

from __future__ import annotations

import os
import random

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# One tolerance table. float64 references against the blocked solvers, float32 pipelines.
TOL = {
    "float64_exact": 1e-10,   # same maths, different arithmetic order, float64
    "float32_solver": 2e-4,   # relative, float32 solver against float64 reference
    "float32_forward": 1e-5,  # forward outputs that should be unchanged
}

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            vocab_size=128, max_position_embeddings=64)


def tiny_config(family: str):
    import transformers as tf

    if family == "llama":
        return tf.LlamaConfig(**TINY, num_key_value_heads=2, architectures=["LlamaForCausalLM"])
    if family == "mistral":
        return tf.MistralConfig(**TINY, num_key_value_heads=2, sliding_window=8,
                                architectures=["MistralForCausalLM"])
    if family == "qwen2":
        return tf.Qwen2Config(**TINY, num_key_value_heads=2, architectures=["Qwen2ForCausalLM"])
    if family == "opt":
        return tf.OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                            vocab_size=128, max_position_embeddings=64, word_embed_proj_dim=32,
                            architectures=["OPTForCausalLM"])
    if family == "gpt2":
        return tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=128, n_positions=64,
                             architectures=["GPT2LMHeadModel"])
    if family == "bert":
        return tf.BertConfig(**TINY, architectures=["BertModel"])
    raise KeyError(family)


def tiny_model(family: str, seed: int = 0):
    import transformers as tf

    torch.manual_seed(seed)
    cfg = tiny_config(family)
    auto = tf.AutoModel if family == "bert" else tf.AutoModelForCausalLM
    return auto.from_config(cfg).eval()


FAMILIES = ("llama", "opt", "gpt2", "bert", "qwen2", "mistral")


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


def random_batches(n_batches: int = 2, batch: int = 2, seqlen: int = 16, vocab: int = 128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {"input_ids": torch.randint(5, vocab, (batch, seqlen), generator=g),
         "attention_mask": torch.ones(batch, seqlen, dtype=torch.long)}
        for _ in range(n_batches)
    ]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


WORDS = ("the model keeps a weight when its score is large and drops it when small so that "
         "every layer loses half of its inputs while the error of the output stays low").split()


def paragraphs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(" ".join(rng.choices(WORDS, k=rng.randint(8, 14))).capitalize() + "."
                     for _ in range(3)) for _ in range(n)]


def bpe_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=128, special_tokens=["<unk>", "<s>", "</s>"],
                                  limit_alphabet=60, show_progress=False)
    tok.train_from_iterator(paragraphs(50) + ["def f(x): return x + 1  # A B C"], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")
    assert len(fast) <= 128  # the tiny Llama's vocabulary
    return fast
