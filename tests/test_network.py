"""Whole-network OBD/OBS and layer-wise methods on small nn.Modules; the digits-mlp command."""

import json

import pytest
import torch
from torch import nn

from conftest import TOL
from prunekit.cli import main
from prunekit.errors import UsageError
from prunekit.masks import prune_count, satisfies
from prunekit.methods import get_method
from prunekit.methods.obs_network import OBSNetworkConfig
from prunekit.curvature import flat_weights
from prunekit.network import prune_layers, prune_network
from prunekit.patterns import NM, Unstructured


def least_squares_problem(seed=0, n=60, d_in=6, d_out=3):
    """A linear model at the exact minimum of its MSE: the loss is quadratic in the weights."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    Y = X @ torch.randn(d_in, d_out, generator=g, dtype=torch.float64)
    Y += 0.3 * torch.randn(n, d_out, generator=g, dtype=torch.float64)
    model = nn.Linear(d_in, d_out, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(X, Y).solution.T)
    return model, X, Y


def loss_of(model, X, Y):
    with torch.no_grad():
        return float(nn.MSELoss()(model(X), Y))


@pytest.mark.parametrize("curvature", ["exact", "gauss-newton"])
def test_obs_network_predicts_the_loss_increase_and_refits_the_rest(curvature):
    model, X, Y = least_squares_problem()
    before = loss_of(model, X, Y)
    cfg = dict(curvature=curvature, rel_damp=0.0)
    res = prune_network(model, "obs-network", 0.5, X, Y, loss_fn=nn.MSELoss(), config=cfg)
    increase = loss_of(model, X, Y) - before
    assert increase == pytest.approx(res[0].extra["predicted_loss"], abs=TOL["float64_exact"])
    model.zero_grad()
    nn.MSELoss()(model(X), Y).backward()
    kept = model.weight != 0
    assert model.weight.grad[kept].abs().max() < TOL["float64_exact"]  # kept weights optimal
    assert int((~kept).sum()) == prune_count(18, 0.5)


def test_obd_prunes_smallest_diagonal_saliency_without_update():
    model, X, Y = least_squares_problem(seed=1)
    w0 = model.weight.detach().clone()
    H_diag = (2.0 / (X.shape[0] * 3) * (X * X).sum(0)).repeat(3)  # diag of MSE Hessian, row-major
    sal = 0.5 * H_diag * w0.reshape(-1).square()
    res = prune_network(model, "obd", 1 / 3, X, Y, loss_fn=nn.MSELoss(),
                        config=dict(curvature="exact"))
    w = model.weight.detach().reshape(-1)
    gone = torch.argsort(sal, stable=True)[:6]
    assert (w[gone] == 0).all() and int((w == 0).sum()) == 6
    kept = w != 0
    assert torch.equal(w[kept], w0.reshape(-1)[kept])  # no update
    assert res[0].extra["predicted_loss"] == pytest.approx(float(sal[gone].sum()),
                                                           rel=TOL["float64_exact"])


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 4)).double()


def data(seed=0, n=64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 8, generator=g, dtype=torch.float64),
            torch.randint(0, 4, (n,), generator=g))


@pytest.mark.parametrize("method", ["obd", "obs-network"])
@pytest.mark.parametrize("curvature", ["fisher", "gauss-newton", "exact"])
def test_network_methods_count_globally_and_leave_biases(method, curvature):
    model, (x, y) = mlp(), data()
    biases = [model[0].bias.detach().clone(), model[2].bias.detach().clone()]
    n = 8 * 12 + 12 * 4
    res = prune_network(model, method, 0.7, x, y, config=dict(curvature=curvature))
    assert int((flat_weights(model, ["0.weight", "2.weight"]) == 0).sum()) == prune_count(n, 0.7)
    assert torch.equal(model[0].bias, biases[0]) and torch.equal(model[2].bias, biases[1])
    assert [r.name for r in res] == ["0", "2"] and res[0].extra["curvature"] == curvature
    assert (res[0].damping is None) == (method == "obd")


def test_obs_network_beats_obd_on_the_loss_it_models():
    model, (x, y) = mlp(1), data(1, n=200)
    losses = {}
    for method in ("obd", "obs-network"):
        m = mlp(1)
        prune_network(m, method, 0.6, x, y, config=dict(curvature="gauss-newton"))
        with torch.no_grad():
            losses[method] = float(nn.CrossEntropyLoss()(m(x), y))
    assert losses["obs-network"] < losses["obd"]


def test_float32_model_is_pruned_in_float64_and_stays_float32():
    model, (x, y) = mlp(4), data(4)
    m32 = mlp(4).float()
    prune_network(model, "obs-network", 0.6, x, y)
    prune_network(m32, "obs-network", 0.6, x.float(), y)
    assert m32[0].weight.dtype == torch.float32
    for i in (0, 2):
        assert torch.equal(m32[i].weight == 0, model[i].weight == 0)
        assert torch.allclose(m32[i].weight.double(), model[i].weight, atol=TOL["float32_of_float64"])


def test_obd_takes_no_obs_settings():
    model, (x, y) = mlp(), data()
    with pytest.raises(UsageError, match="method 'obd' has no setting k"):
        prune_network(model, "obd", 0.5, x, y, config=dict(k=3))


def test_dense_size_limit_is_a_clear_error():
    model, (x, y) = mlp(), data()
    with pytest.raises(UsageError, match=r"144 parameters needs .* GiB"):
        prune_network(model, "obs-network", 0.5, x, y, config=dict(max_params=100))
    prune_network(model, "obd", 0.5, x, y, config=dict(max_params=100))  # diagonal: fine


@pytest.mark.parametrize("bad", [dict(curvature="hutchinson"), dict(rel_damp=-1.0), dict(k=0)])
def test_network_config_validation(bad):
    with pytest.raises(UsageError):
        OBSNetworkConfig(**bad)


def test_prune_layers_is_sequential():
    """Layer 2 is calibrated on the outputs of the already-pruned layer 1."""
    x, _ = data(2)
    model = mlp(2)
    res = prune_layers(model, "sparsegpt", Unstructured(0.5, "layer"), x, batch_size=20)
    ref = mlp(2)
    cls = get_method("sparsegpt")
    for i, inputs in ((0, lambda: x), (2, lambda: torch.relu(ref[0](x)))):
        comp = cls(ref[i], Unstructured(0.5, "layer"), cls.config_cls(), str(i))
        with torch.no_grad():
            comp.add_batch(inputs())
        comp.compress()
    for i in (0, 2):
        assert torch.allclose(model[i].weight, ref[i].weight, atol=TOL["float64_exact"])
    assert [r.name for r in res] == ["0", "2"] and all(r.n_tokens == 64 for r in res)


def test_prune_layers_patterns_hold():
    x, _ = data(3)
    model = mlp(3)
    prune_layers(model, "obs", NM(2, 4), x)
    assert all(satisfies(model[i].weight, NM(2, 4)) for i in (0, 2))
    model = mlp(3)
    prune_layers(model, "magnitude", Unstructured(0.75, "global"), x)
    w = flat_weights(model, ["0.weight", "2.weight"])
    assert int((w == 0).sum()) == prune_count(w.numel(), 0.75)


# --- the command line on digits-mlp -----------------------------------------------------------


def test_cli_obs_network_on_digits(tmp_path, capsys):
    out = tmp_path / "pruned"
    rc = main(["prune", "digits-mlp:16", "--method", "obs-network", "--sparsity", "0.8",
               "--samples", "300", "--out", str(out)])
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    report = json.loads((out / "prune_report.json").read_text())
    assert report["totals"]["target_params"] == 64 * 16 + 16 * 10
    assert report["totals"]["target_sparsity"] == pytest.approx(prune_count(1184, 0.8) / 1184)
    ev = report["evaluation"]
    assert 0.8 < ev["dense_accuracy"] <= 1 and 0 <= ev["pruned_accuracy"] <= 1
    assert report["calibration"]["samples"] == 300 and report["config"]["curvature"] == "fisher"
    assert "test accuracy on 450 held-out samples" in stdout
    import prunekit

    state = prunekit.load(out).state_dict()  # rebuilt from the checkpoint's builder, digits-mlp:16
    zeros = int((state["0.weight"] == 0).sum() + (state["2.weight"] == 0).sum())
    assert zeros == prune_count(1184, 0.8) and state["0.bias"].shape == (16,)


def test_cli_layer_method_and_obd_on_digits(capsys):
    assert main(["prune", "digits-mlp:16", "--method", "sparsegpt", "--pattern", "2:4",
                 "--samples", "200", "--quiet"]) == 0
    assert main(["prune", "digits-mlp:16", "--method", "obd", "--sparsity", "0.5",
                 "--curvature", "gauss-newton", "--samples", "100", "--quiet"]) == 0
    stdout = capsys.readouterr().out
    assert "sparsegpt 2:4: 5" in stdout and "obd 50% unstructured (global): 50.0%" in stdout


def test_cli_flags_reach_the_config(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["prune", "digits-mlp:8", "--method", "obs-network", "--sparsity", "0.5",
                 "--curvature", "gauss-newton", "--obs-k", "4", "--damp", "0.05",
                 "--max-params", "5000", "--samples", "50", "--no-eval", "--out", str(out)]) == 0
    report = json.loads((out / "prune_report.json").read_text())
    assert report["config"] == {"curvature": "gauss-newton", "rel_damp": 0.05, "k": 4,
                                "max_params": 5000}  # obs-network's own settings only
    assert report["evaluation"] == {} and report["calibration"]["samples"] == 50
    assert report["layers"][0]["damping"] >= 0.05
    assert "test accuracy" not in capsys.readouterr().out


@pytest.mark.parametrize("argv, expected", [
    (["digits-mlp", "--method", "obd", "--sparsity", "0.5", "--damp", "0.1"],
     "--damp 0.1 does not apply to --method obd"),
    (["digits-mlp", "--method", "obs", "--sparsity", "0.5", "--seqlen", "64"], "--seqlen"),
    (["digits-mlp:300", "--method", "obs-network", "--sparsity", "0.5"],
     "22,200 parameters needs 3.7 GiB"),
    (["digits-mlp:8", "--method", "obs", "--sparsity", "0.5", "--max-params", "10"],
     "--max-params 10 does not apply to --method obs: drop it, or use a method that has it "
     "(obd, obs-network)"),
    (["digits-mlp", "--method", "obs-network", "--pattern", "2:4"], "not 2:4"),
    (["digits-mlp", "--method", "obd", "--sparsity", "0.5", "--obs-k", "4"], "--obs-k"),
    (["digits-mlp", "--method", "obd", "--sparsity", "0.5", "--blocksize", "64"], "--blocksize"),
    (["digits-mlp", "--method", "sparsegpt", "--sparsity", "0.5", "--curvature", "exact"],
     "--curvature exact does not apply to --method sparsegpt"),
    (["digits-mlp", "--method", "obd", "--sparsity", "0.5", "--calib", "x.txt"], "--calib"),
    (["digits-mlp:abc", "--sparsity", "0.5"], "digits-mlp[:HIDDEN]"),
    (["minilm", "--method", "obs-network", "--sparsity", "0.5"], "use it on digits-mlp"),
])
def test_cli_network_errors(capsys, argv, expected):
    assert main(["prune", *argv]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
