"""One-shot movement pruning from two checkpoints (methods/movement.py, ``--base``).

Hand oracles for both scores at row, layer and N:M scope; the layer class on nn.Linear and
GPT-2's Conv1D; global ranking; the Python API; the CLI end to end on a tiny Llama "base" and a
perturbed "fine-tuned" copy saved to tmp_path; and the errors (no base, a base with another
method, a layer missing from the base or of another shape), raised before any pruning.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit
from conftest import TOL, random_batches, tiny_config, tiny_model
from prunekit.cli import main
from prunekit.errors import ModelError, NumericalError, UsageError
from prunekit.masks import prune_count
from prunekit.methods.base import weight_matrix
from prunekit.methods.movement import Movement, MovementConfig, movement_prune, movement_scores
from prunekit.patterns import NM, Unstructured
from conftest import FAST, error_line, leftovers
from conftest import bpe_tokenizer as _bpe_tokenizer
import prunekit.analysis.classifiers as classifiers
import prunekit.output as output
import prunekit.plan as plan
import prunekit.run as run

pytestmark = pytest.mark.usefixtures("one_thread")


# --- hand oracle ----------------------------------------------------------------------------
# w_0 (pretrained), w_T (fine-tuned) and Δ = w_T − w_0:
W0 = [[1.0, -2.0, 0.5, 0.0], [0.3, 1.0, -1.0, 2.0]]
WT = [[1.2, -1.0, 2.0, -0.4], [1.1, 1.9, -1.1, 1.7]]
# Δ           = [[0.2, 1.0, 1.5, -0.4], [0.8, 0.9, -0.1, -0.3]]
# |Δ|         = [[0.2, 1.0, 1.5,  0.4], [0.8, 0.9,  0.1,  0.3]]
# w_T · Δ     = [[0.24, -1.0, 3.0, 0.16], [0.88, 1.71, 0.11, -0.51]]
SCORES = {
    "movement": [[0.2, 1.0, 1.5, 0.4], [0.8, 0.9, 0.1, 0.3]],
    "first-order": [[0.24, -1.0, 3.0, 0.16], [0.88, 1.71, 0.11, -0.51]],
}
# keep-masks worked out by hand from the scores above (magnitude on w_T, row 50 %, would
# keep [[1, 0, 1, 0], [0, 1, 0, 1]]: it differs from movement in both rows)
MASKS = {
    # row 50 %: the 2 largest of each row
    ("movement", "row"): [[0, 1, 1, 0], [1, 1, 0, 0]],
    ("first-order", "row"): [[1, 0, 1, 0], [1, 1, 0, 0]],
    # layer 75 %: the 2 largest of all 8 (movement 1.5, 1.0; first-order 3.0, 1.71)
    ("movement", "layer"): [[0, 1, 1, 0], [0, 0, 0, 0]],
    ("first-order", "layer"): [[0, 0, 1, 0], [0, 1, 0, 0]],
    # 1:2: the larger of each consecutive pair
    ("movement", "1:2"): [[0, 1, 1, 0], [0, 1, 0, 1]],
    ("first-order", "1:2"): [[1, 0, 1, 0], [0, 1, 1, 0]],
}
PATTERNS = {"row": Unstructured(0.5, "row"), "layer": Unstructured(0.75, "layer"),
            "1:2": NM(1, 2)}


def _t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("score", ["movement", "first-order"])
def test_scores_by_hand(score):
    S = movement_scores(_t(WT), _t(W0), score)
    assert torch.allclose(S, _t(SCORES[score]), rtol=0, atol=TOL["float64_exact"])


@pytest.mark.parametrize("where", list(PATTERNS))
@pytest.mark.parametrize("score", ["movement", "first-order"])
def test_mask_by_hand(score, where):
    pruned = movement_prune(_t(WT), _t(W0), PATTERNS[where], score)
    assert torch.equal(pruned, _t(WT) * _t(MASKS[score, where]))


def _conv1d(W: torch.Tensor) -> nn.Module:
    from transformers.pytorch_utils import Conv1D

    layer = Conv1D(nf=W.shape[0], nx=W.shape[1])
    with torch.no_grad():
        layer.weight.copy_(W.T)  # Conv1D stores (in, out)
        layer.bias.zero_()
    return layer


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("score", ["movement", "first-order"])
def test_layer_class_by_hand(score, kind):
    """The registered class writes w_T ⊙ mask into the layer; the base is (out, in) for both
    layer types, and calibration only measures the error."""
    W = torch.tensor(WT)
    if kind == "linear":
        layer = nn.Linear(4, 2, bias=False)
        with torch.no_grad():
            layer.weight.copy_(W)
    else:
        layer = _conv1d(W)
    comp = prunekit.get_method("movement")(layer, PATTERNS["row"], MovementConfig(score=score),
                                           "fc", base=torch.tensor(W0))
    comp.add_batch(torch.randn(8, 4, generator=torch.Generator().manual_seed(0)))
    result = comp.compress()
    comp.free()
    assert torch.equal(weight_matrix(layer), W * torch.tensor(MASKS[score, "row"]))
    assert result.sparsity == 0.5 and result.extra == {"score": score, "moved": 1.0}
    assert result.rel_error is not None and result.rel_error > 0


def test_layer_class_errors():
    layer = nn.Linear(4, 2)
    with pytest.raises(UsageError, match="fc: method 'movement' needs the pretrained weights"):
        Movement(layer, Unstructured(0.5), MovementConfig(), "fc")
    with pytest.raises(ModelError,
                       match=r"fc: the base weight is \(4, 2\) but the layer is \(2, 4\)"):
        Movement(layer, Unstructured(0.5), MovementConfig(), "fc", base=torch.zeros(4, 2))
    with pytest.raises(UsageError, match="'second-order'"):
        plan.make_config("movement", {"score": "second-order"})


# --- on a model, from Python ----------------------------------------------------------------

def _fine_tuned(base: nn.Module, seed: int = 1, scale: float = 1e-2) -> nn.Module:
    """A copy of ``base`` with every parameter moved by seeded noise (a stand-in fine-tune)."""
    tuned = copy.deepcopy(base)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return tuned


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("score", ["movement", "first-order"])
def test_global_scope_keeps_the_largest_scores_over_all_layers(family, score):
    base = tiny_model(family)
    tuned = _fine_tuned(base)
    cfg = MovementConfig(score=score)
    before = {n: movement_scores(weight_matrix(m).clone(), weight_matrix(base.get_submodule(n)),
                                 score)
              for n, m in prunekit.HFAdapter().all_targets(tuned).items()}
    results = run.prune_model(tuned, "movement", Unstructured(0.9, "global"), random_batches(),
                              config=cfg, base=base)
    kept, dropped = [], []
    for name, layer in prunekit.HFAdapter().all_targets(tuned).items():
        keep = weight_matrix(layer) != 0
        kept.append(before[name][keep])
        dropped.append(before[name][~keep])
    kept, dropped = torch.cat(kept), torch.cat(dropped)
    total = kept.numel() + dropped.numel()
    assert dropped.numel() == prune_count(total, 0.9)
    assert float(kept.min()) >= float(dropped.max())
    # the layers' shares differ: the ranking is global, not per layer
    assert len({round(r.sparsity, 3) for r in results}) > 1


def test_prune_model_base_errors():
    model, batches = tiny_model("llama"), random_batches()
    with pytest.raises(UsageError, match=r"--method movement needs --base PRETRAINED \(base=\)"):
        run.prune_model(model, "movement", Unstructured(0.5), batches)
    with pytest.raises(UsageError,
                       match=r"--base \w+ does not apply to --method magnitude"):
        run.prune_model(model, "magnitude", Unstructured(0.5), batches, base=tiny_model("llama"))
    with pytest.raises(ModelError, match="the same weights as the model"):
        run.prune_model(model, "movement", Unstructured(0.5), batches, base=copy.deepcopy(model))


def test_base_as_a_mapping_of_weights():
    base = tiny_model("llama")
    tuned = _fine_tuned(base)
    weights = {n: weight_matrix(m).clone()
               for n, m in prunekit.HFAdapter().all_targets(base).items()}
    a, b = copy.deepcopy(tuned), copy.deepcopy(tuned)
    run.prune_model(a, "movement", NM(2, 4), random_batches(), base=base)
    run.prune_model(b, "movement", NM(2, 4), random_batches(), base=weights)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    weights["model.layers.0.self_attn.o_proj"][1, 2] = float("nan")
    with pytest.raises(NumericalError, match="model.layers.0.self_attn.o_proj: the base has NaN"):
        run.prune_model(b, "movement", NM(2, 4), random_batches(), base=weights)
    weights["model.layers.0.self_attn.o_proj"][1, 2] = 0.0
    del weights["model.layers.1.mlp.up_proj"]
    with pytest.raises(ModelError, match="model.layers.1.mlp.up_proj: layer missing from the base"):
        run.prune_model(b, "movement", NM(2, 4), random_batches(), base=weights)
    with pytest.raises(UsageError, match="base= list is not a model"):
        prunekit.prune("minilm", method="movement", base=[1.0], evaluate=False)


def test_classifier_has_no_base():
    with pytest.raises(UsageError, match="movement"):
        classifiers.classifier_plan("movement", 0.5)


# --- checkpoints on disk: the CLI and prune() -----------------------------------------------

PLANTED = [(0, 0), (3, 7), (5, 31), (9, 2), (15, 16)]  # (row, col) in every target layer
PLANTED_FINAL = 0.01  # small |w_T|: magnitude would prune it, movement keeps it
BIG_MOVE = 0.5


def _save(model: nn.Module, folder: Path) -> Path:
    model.save_pretrained(folder)
    _bpe_tokenizer().save_pretrained(folder)
    return folder


def _llama_targets(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: weight_matrix(m).detach().clone()
            for n, m in prunekit.HFAdapter().all_targets(model).items()}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny Llama checkpoints: base (pretrained), tuned (base + noise, plus planted big moves
    ending at a small value), and bases of the wrong shape / depth."""
    import transformers as tf

    root = tmp_path_factory.mktemp("movement")
    base = tiny_model("llama")
    with torch.no_grad():
        for layer in prunekit.HFAdapter().all_targets(base).values():
            for r, c in PLANTED:
                layer.weight[r, c] = PLANTED_FINAL - BIG_MOVE
    tuned = _fine_tuned(base, scale=1e-3)
    with torch.no_grad():
        for layer in prunekit.HFAdapter().all_targets(tuned).values():
            for r, c in PLANTED:
                layer.weight[r, c] = PLANTED_FINAL
    paths = {"base": _save(base, root / "base"), "tuned": _save(tuned, root / "tuned")}
    for name, change in (("wide", {"intermediate_size": 48}),
                         ("shallow", {"num_hidden_layers": 1})):
        cfg = tiny_config("llama")
        for key, value in change.items():
            setattr(cfg, key, value)
        torch.manual_seed(0)
        paths[name] = _save(tf.AutoModelForCausalLM.from_config(cfg), root / name)
    return paths


def _load(folder: Path) -> nn.Module:
    import transformers as tf

    if (folder / "prunekit.json").exists():  # a --out folder
        return prunekit.load(folder).model
    return tf.AutoModelForCausalLM.from_pretrained(folder).eval()


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_cli_end_to_end_keeps_the_weights_that_moved_most(checkpoints, tmp_path, capsys):
    out = tmp_path / "pruned"
    rc, stdout, err = _run(["prune", str(checkpoints["tuned"]), "--method", "movement",
                            "--base", str(checkpoints["base"]), "--sparsity", "0.9", *FAST,
                            "--no-eval", "--out", str(out)], capsys)
    assert rc == 0, err
    assert "Traceback" not in err and "movement 90% unstructured (layer)" in stdout

    before = _llama_targets(_load(checkpoints["tuned"]))
    base = _llama_targets(_load(checkpoints["base"]))
    after = _llama_targets(_load(out))
    report = json.loads((out / output.REPORT_FILE).read_text())
    assert report["method"] == "movement"
    assert report["config"]["base"] == str(checkpoints["base"])
    assert report["config"]["score"] == "movement"
    assert [layer["name"] for layer in report["layers"]] == list(after)
    n_pruned = {n: prune_count(W.numel(), 0.9) for n, W in after.items()}
    assert report["totals"]["target_sparsity"] == pytest.approx(
        sum(n_pruned.values()) / sum(W.numel() for W in after.values()))
    for layer in report["layers"]:
        assert layer["sparsity"] == n_pruned[layer["name"]] / after[layer["name"]].numel()
        assert layer["rel_error"] > 0  # calibration still measures the error
    for name, W in after.items():
        moved = (before[name] - base[name]).abs().flatten()
        n_keep = W.numel() - n_pruned[name]
        expected = torch.zeros(W.numel(), dtype=torch.bool)
        expected[torch.topk(moved, n_keep).indices] = True
        assert torch.equal(W.flatten() != 0, expected), name
        assert torch.equal(W[W != 0], before[name][W != 0]), name  # kept weights untouched
        for r, c in PLANTED:
            assert W[r, c] == pytest.approx(PLANTED_FINAL), (name, r, c)
    assert leftovers(tmp_path, "pruned") == []


def test_cli_first_order_two_four(checkpoints, tmp_path, capsys):
    out = tmp_path / "pruned"
    rc, _, err = _run(["prune", str(checkpoints["tuned"]), "--method", "movement",
                       "--base", str(checkpoints["base"]), "--movement-score", "first-order",
                       "--pattern", "2:4", *FAST, "--no-eval", "--quiet", "--out", str(out)],
                      capsys)
    assert rc == 0, err
    before = _llama_targets(_load(checkpoints["tuned"]))
    base = _llama_targets(_load(checkpoints["base"]))
    for name, W in _llama_targets(_load(out)).items():
        S = before[name] * (before[name] - base[name])  # (out, in)
        groups = S.reshape(S.shape[0], -1, 4)
        expected = torch.zeros_like(groups, dtype=torch.bool)
        expected.scatter_(-1, torch.topk(groups, 2, dim=-1).indices, True)
        assert torch.equal(W != 0, expected.reshape(W.shape)), name
    assert json.loads((out / output.REPORT_FILE).read_text())["config"]["score"] == "first-order"


def test_api_prune_with_a_base_spec(checkpoints):
    loaded, report = prunekit.prune(str(checkpoints["tuned"]), method="movement", pattern=0.5,
                                    base=str(checkpoints["base"]), config={"score": "first-order"},
                                    samples=4, seqlen=16, batch_size=2, evaluate=False)
    assert report.config == {"hessian_dtype": "float32", "score": "first-order", "quant": None,
                             "quant_method": "gptq", "sequential": "block",
                             "allocation": "uniform", "owl_lambda": 0.08, "owl_m": 5.0,
                             "base": str(checkpoints["base"])}
    assert report.pattern == "50% unstructured (layer)"
    assert report.target_sparsity == pytest.approx(0.5)


@pytest.mark.parametrize("which", ["wide", "shallow"])
def test_api_base_mismatch_fails_before_pruning(checkpoints, which):
    loaded = prunekit.load_model(str(checkpoints["tuned"]))
    dense = [p.detach().clone() for p in loaded.model.parameters()]
    expected = {"wide": r"model.layers.0.mlp.gate_proj: shape \(64, 32\) \(out, in\) in the model "
                        r"but \(48, 32\) in --base",
                "shallow": "model.layers.1.self_attn.q_proj: layer missing from --base"}[which]
    with pytest.raises(ModelError, match=expected):
        prunekit.prune(loaded, method="movement", pattern=0.5, base=str(checkpoints[which]),
                       samples=4, seqlen=16, batch_size=2, evaluate=False)
    assert all(torch.equal(p, q) for p, q in zip(loaded.model.parameters(), dense))


BAD = {  # id: (arguments after MODEL, text the error line must contain)
    "no-base": (["--method", "movement", "--sparsity", "0.9"],
                "--method movement needs --base PRETRAINED"),
    "base-with-magnitude": (["--method", "magnitude", "--sparsity", "0.5", "--base", "{base}"],
                            "--base {base} does not apply to --method magnitude"),
    "base-with-default-method": (["--sparsity", "0.5", "--base", "{base}"],
                                 "does not apply to --method admm"),
    "score-with-wanda": (["--method", "wanda", "--sparsity", "0.5", "--movement-score",
                          "first-order"], "--movement-score first-order does not apply"),
    "score-unknown": (["--method", "movement", "--base", "{base}", "--sparsity", "0.5",
                       "--movement-score", "second"], "'second'"),
    "shape-mismatch": (["--method", "movement", "--base", "{wide}", "--sparsity", "0.5"],
                       "model.layers.0.mlp.gate_proj: shape (64, 32) (out, in) in the model but "
                       "(48, 32) in --base"),
    "missing-layer": (["--method", "movement", "--base", "{shallow}", "--sparsity", "0.5"],
                      "model.layers.1.self_attn.q_proj: layer missing from --base"),
    "same-checkpoint": (["--method", "movement", "--base", "{tuned}", "--sparsity", "0.5"],
                        "holds the same weights as the model"),
    "base-not-found": (["--method", "movement", "--base", "{tmp}/nope", "--sparsity", "0.5"],
                       "--base: model '{tmp}/nope' is not a model folder"),
    "wanda-global": (["--method", "wanda", "--sparsity", "0.5", "--scope", "global"],
                     "and movement)"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_cli_errors_one_line_no_output(checkpoints, tmp_path, capsys, case):
    args, expected = BAD[case]
    names = {k: str(v) for k, v in checkpoints.items()} | {"tmp": str(tmp_path)}
    out = tmp_path / "out"
    rc, stdout, err = _run(["prune", str(checkpoints["tuned"]), *FAST,
                            *[a.format(**names) for a in args], "--out", str(out)], capsys)
    assert rc == 2
    line = error_line(err)
    assert expected.format(**names) in line, line
    assert "Traceback" not in err + stdout
    assert not out.exists() and leftovers(tmp_path, "out") == []


def test_cli_digits_has_no_base(capsys):
    rc, _, err = _run(["prune", "digits-mlp", "--method", "movement", "--sparsity", "0.5"], capsys)
    assert rc == 2 and "digits-mlp has no base checkpoint" in error_line(err)
    rc, _, err = _run(["prune", "digits-mlp", "--method", "magnitude", "--sparsity", "0.5",
                       "--base", "x"], capsys)
    assert rc == 2 and "--base x does not apply to --method magnitude" in error_line(err)


def test_methods_lists_movement(capsys):
    assert main(["methods"]) == 0
    assert any(line.split()[0] == "movement" for line in capsys.readouterr().out.splitlines()
               if line.startswith("  "))
