"""Adding a method is one new file and no edit anywhere else: a throwaway method, written to a
temporary folder that the registry searches, is found by name, gets its own command-line flag
from its config, and runs end to end through ``prunekit prune``."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch

import prunekit
import prunekit.methods as methods
from conftest import bpe_tokenizer, tiny_model
from prunekit.cli import main

TOY = textwrap.dedent('''
    """Keep the largest (or, for the test, the smallest) |w| of every output row."""
    from dataclasses import dataclass

    from prunekit.masks import pattern_mask
    from prunekit.methods.base import LayerCompressor, MethodConfig, register, setting


    @dataclass(frozen=True)
    class ToyConfig(MethodConfig):
        keep: str = setting("largest", "--toy-keep", "which |w| survive (default largest)",
                            choices=("largest", "smallest"))


    @register
    class Toy(LayerCompressor):
        name = "toy"
        config_cls = ToyConfig
        description = "a throwaway test method"

        def solve(self, W, H):
            score = W.abs() if self.config.keep == "largest" else -W.abs()
            return W * pattern_mask(score, self.pattern), None, {"keep": self.config.keep}
''')

FAST = ["--samples", "4", "--seqlen", "16", "--batch-size", "2", "--quiet"]


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The registry's folder list extended by one holding ``toy_method.py``; undone after."""
    folder = tmp_path / "more_methods"
    folder.mkdir()
    (folder / "toy_method.py").write_text(TOY)
    monkeypatch.setattr(methods, "__path__", [*methods.__path__, str(folder)])
    yield "toy"
    methods.REGISTRY.pop("toy", None)
    sys.modules.pop("prunekit.methods.toy_method", None)


@pytest.fixture
def llama(tmp_path):
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "llama")
    bpe_tokenizer().save_pretrained(tmp_path / "llama")
    return tmp_path / "llama", model


def test_a_new_file_is_a_new_method_with_its_own_flag(toy, llama, tmp_path, capsys):
    folder, dense = llama
    assert main(["methods"]) == 0
    assert "toy" in capsys.readouterr().out
    assert main(["prune", "--help"]) == 0
    assert "--toy-keep {largest,smallest}" in capsys.readouterr().out

    out = tmp_path / "out"
    assert main(["prune", str(folder), "--method", "toy", "--sparsity", "0.5", "--toy-keep",
                 "smallest", "--out", str(out), *FAST]) == 0
    report = json.loads((out / "prune_report.json").read_text())
    assert report["method"] == "toy" and report["config"]["keep"] == "smallest"
    assert {layer["extra"]["keep"] for layer in report["layers"]} == {"smallest"}

    name = "model.layers.0.mlp.down_proj.weight"
    before = dense.state_dict()[name]
    after = prunekit.load(out).model.state_dict()[name]
    half = before.shape[1] // 2
    smallest = torch.argsort(before.abs(), dim=1, stable=True)[:, :half]
    kept = torch.zeros_like(before, dtype=torch.bool).scatter_(1, smallest, True)
    assert torch.equal(after != 0, kept)  # the smallest half kept: the flag reached the method
    assert torch.equal(after[kept], before[kept])


def test_the_new_flag_is_refused_by_other_methods(toy, llama, capsys):
    folder, _ = llama
    assert main(["prune", str(folder), "--method", "wanda", "--sparsity", "0.5", "--toy-keep",
                 "smallest", *FAST]) == 2
    err = capsys.readouterr().err
    assert "--toy-keep smallest does not apply to --method wanda" in err and "(toy)" in err
