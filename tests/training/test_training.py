"""Training-time pruning: schedules, sparsifiers (GMP, movement, N:M), checkpoints, lottery."""

import copy

import pytest
import torch
from torch import nn

from conftest import TOL
from prunekit.errors import UsageError
from prunekit.masks import satisfies
from prunekit.patterns import NM
from prunekit.training import (Constant, Cubic, GradualMagnitude, HardMovement, NMSparsifier,
                               OneShot, SoftMovement, find_ticket, prune_round)


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def batch(seed=0, n=64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


def train_steps(model, sp, opt, steps, seed=0, penalty=False):
    x, y = batch(seed)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        if penalty:
            loss = loss + sp.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sp.step()


# --- schedules --------------------------------------------------------------------------------


def test_cubic_schedule_values():
    s = Cubic(initial=0.0, final_sparsity=0.8, start=10, end=110, frequency=25)
    assert s.sparsity(0) == 0.0 and s.sparsity(10) == 0.0
    assert s.sparsity(60) == pytest.approx(0.8 - 0.8 * 0.5**3)  # halfway: s_f + (s_i-s_f)(1/2)^3
    assert s.sparsity(35) == pytest.approx(0.8 - 0.8 * 0.75**3)
    assert s.sparsity(110) == s.sparsity(500) == 0.8
    assert [t for t in range(0, 130) if s.updates(t)] == [10, 35, 60, 85, 110]
    assert Cubic(0.2, 0.8, 0, 10, 1).sparsity(0) == pytest.approx(0.2)


def test_constant_and_one_shot_schedules():
    c = Constant(0.5, start=3, frequency=2)
    assert [c.sparsity(t) for t in (0, 3, 9)] == [0.0, 0.5, 0.5]
    assert [t for t in range(10) if c.updates(t)] == [3, 5, 7, 9]
    o = OneShot(0.7, at=4)
    assert [t for t in range(10) if o.updates(t)] == [4] and o.sparsity(3) == 0 and o.final == 0.7


def test_cubic_phases_warm_up_ramp_cool_down():
    """Sanh et al.'s three phases over 100 steps: 10 dense, the cubic ramp over [10, 70],
    30 at the final sparsity."""
    s = Cubic.phases(0.9, steps=100, warmup=10, cooldown=30, frequency=1)
    assert (s.start, s.end) == (10, 70)
    assert [s.sparsity(t) for t in (0, 5, 10)] == [0.0, 0.0, 0.0]  # warm-up: dense
    assert s.sparsity(40) == pytest.approx(0.9 * (1 - 0.5**3))  # halfway up the ramp
    assert all(s.sparsity(t) < s.sparsity(t + 1) for t in range(10, 70))
    assert [s.sparsity(t) for t in (70, 85, 100)] == [0.9, 0.9, 0.9]  # cool-down: constant
    assert [t for t in range(101) if s.updates(t)] == list(range(10, 71))
    with pytest.raises(UsageError, match="leave some"):
        Cubic.phases(0.9, steps=100, warmup=60, cooldown=40)
    with pytest.raises(UsageError, match=">= 0"):
        Cubic.phases(0.9, steps=100, warmup=-1, cooldown=10)


def test_ramp_power_one_is_linear():
    s = Cubic.phases(0.9, steps=100, warmup=10, cooldown=30, power=1.0)
    assert [s.sparsity(t) for t in (10, 25, 40, 70)] == pytest.approx([0.0, 0.225, 0.45, 0.9])
    cubic = Cubic.phases(0.9, 100, 10, 30)  # its first step removes three times as much
    assert s.sparsity(11) == pytest.approx(cubic.sparsity(11) / 3, rel=TOL["sparsity_schedule"])


@pytest.mark.parametrize("bad", [dict(final_sparsity=1.0), dict(start=5, end=5),
                                 dict(frequency=0), dict(initial=-0.1), dict(power=0)])
def test_schedule_validation(bad):
    with pytest.raises(UsageError):
        Cubic(**bad)


# --- gradual magnitude ------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["row", "layer", "global"])
def test_gmp_masks_only_grow_and_reach_the_target(scope):
    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    sp = GradualMagnitude(Cubic(0.0, 0.75, 0, 12, 3), scope=scope, optimizer=opt)
    sp.prepare(model)
    previous = sp.masks()
    for _ in range(15):
        train_steps(model, sp, opt, 1)
        now = sp.masks()
        for n in now:
            assert not (now[n] & ~previous[n]).any()  # nothing pruned comes back
            W = sp.dense_weight(sp.layers[n])
            assert (W[~now[n]] == 0).all()  # the dense values under the mask are zero
            state = opt.state[W]
            assert (state["exp_avg"][~now[n]] == 0).all()  # and so is the optimizer state
        previous = now
    assert sp.sparsity() == pytest.approx(0.75, abs=TOL["sparsity_schedule"])


@pytest.mark.parametrize("make", [
    lambda opt: GradualMagnitude(Cubic(0.0, 0.6, 0, 6, 2), optimizer=opt),
    lambda opt: HardMovement(Cubic(0.0, 0.6, 0, 6, 2), score_lr=0.05),
    lambda opt: SoftMovement(lam=1e-2, score_lr=0.05),
    lambda opt: NMSparsifier(NM(2, 4), optimizer=opt),
])
def test_squash_keeps_the_forward_output_exactly(make):
    model = mlp(1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sp = make(opt)
    sp.prepare(model)
    train_steps(model, sp, opt, 8, penalty=isinstance(sp, SoftMovement))
    x, _ = batch(5)
    with torch.no_grad():
        before = model(x)
        masks = sp.masks()
        W0, W2 = (sp.dense_weight(sp.layers[n]) * masks[n] for n in ("0", "2"))
        by_hand = nn.functional.linear(torch.relu(nn.functional.linear(x, W0, model[0].bias)),
                                       W2, model[2].bias)
    assert torch.equal(before, by_hand)  # the parametrized forward is exactly W ⊙ M
    masks = sp.squash()
    with torch.no_grad():
        after = model(x)
    assert torch.equal(before, after)
    assert not hasattr(model[0], "parametrizations")
    assert isinstance(model[0].weight, nn.Parameter)
    assert (model[0].weight[~masks["0"]] == 0).all()


# --- movement ---------------------------------------------------------------------------------


def test_straight_through_gradient_reaches_pruned_scores():
    model = mlp(2)
    sp = HardMovement(OneShot(0.5, 1))
    sp.prepare(model)
    layer = sp.layers["0"]
    param = layer.parametrizations.weight[0]
    param.scores.data.copy_(torch.randn(16, 8, generator=torch.Generator().manual_seed(3)))
    sp._update(1)
    assert (~param.mask).sum() == 64
    x, y = batch(2)
    nn.functional.cross_entropy(model(x), y).backward()
    W = sp.dense_weight(layer).detach()
    Wp = (W * param.mask).requires_grad_(True)  # W' = W ⊙ M, as a leaf: ∂L/∂W' by autograd
    hidden = torch.relu(x @ Wp.T + layer.bias.detach())
    nn.functional.cross_entropy(model[2](hidden), y).backward()
    expected = Wp.grad * W  # ∂L/∂S = ∂L/∂W' ⊙ W, pruned weights included
    assert torch.allclose(param.scores.grad, expected, atol=TOL["float32_gradient"])
    pruned = ~param.mask
    assert (param.scores.grad[pruned] != 0).any()


def test_hard_movement_accumulates_and_lets_weights_return():
    model = mlp(3)
    sp = HardMovement(Constant(0.5, start=1, frequency=1), scope="layer", score_lr=1.0,
                      score_optimizer="sgd")  # the plain running sum of −(∂L/∂W')·W
    sp.prepare(model)
    assert sp.sparsity() == 0  # nothing is ranked before the scores have learned anything
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    train_steps(model, sp, opt, 1)
    first = sp.masks()["0"]
    S0 = sp.layers["0"].parametrizations.weight[0].scores.detach().clone()
    train_steps(model, sp, opt, 30)
    S = sp.layers["0"].parametrizations.weight[0].scores.detach()
    assert not torch.equal(S, S0)
    revived = sp.masks()["0"] & ~first
    assert revived.any()  # some weights pruned at first were brought back
    assert sp.sparsity() == pytest.approx(0.5, abs=TOL["sparsity_rounding"])


def test_hard_movement_adam_masks_do_not_depend_on_the_score_lr():
    """Scores start at 0 and Adam's step is lr · m̂/(√v̂ + ε): every score scales with the lr,
    so the top-k ranking, the masks and the whole training run are the same for any lr (up to
    ε). Tuning the score lr is no remedy for a bad movement ranking (docs/training.md)."""
    runs = []
    for lr in (1e-3, 1e-2, 1e-1):
        model = mlp(5)
        sp = HardMovement(Cubic(0.0, 0.75, 2, 20, 3), scope="layer", score_lr=lr)
        sp.prepare(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        train_steps(model, sp, opt, 25)
        runs.append((sp.masks(), sp.layers["0"].parametrizations.weight[0].scores.detach() / lr))
    for masks, scores in runs[1:]:
        assert all(torch.equal(masks[n], runs[0][0][n]) for n in masks)
        assert torch.allclose(scores, runs[0][1], rtol=TOL["score_accumulation"], atol=TOL["score_accumulation"])


def test_soft_movement_sparsity_rises_with_lambda():
    levels = []
    for lam in (0.0, 3e-3, 3e-2):
        model = mlp(4)
        sp = SoftMovement(lam=lam, score_lr=0.05)
        sp.prepare(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        train_steps(model, sp, opt, 60, penalty=True)
        levels.append(sp.sparsity())
    assert levels[0] < levels[1] < levels[2]
    assert levels[2] > 0.5


def scores_of(sp):
    return [layer.parametrizations.weight[0].scores for layer in sp.layers.values()]


def test_soft_movement_lambda_warm_up_follows_the_schedule():
    ramp = Cubic(0.0, 0.9, start=4, end=12, frequency=1)
    runs = {}
    for name, kwargs in (("ramp", dict(lam=1e-1, lam_schedule=ramp)), ("none", dict(lam=0.0))):
        model = mlp(7)
        sp = SoftMovement(score_lr=0.05, **kwargs)
        sp.prepare(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        lams, trace = [], []
        for t in range(16):
            total = sum(torch.sigmoid(S.detach()).sum() for S in scores_of(sp))
            assert float(sp.penalty().detach()) == pytest.approx(sp.current_lambda() * float(total))
            lams.append(sp.current_lambda())
            train_steps(model, sp, opt, 1, penalty=True)
            trace.append([S.detach().clone() for S in scores_of(sp)])
        runs[name] = lams, trace
    lams, trace = runs["ramp"]
    # λ_t = λ · s_t / s_f: nothing until the ramp starts, a cubic rise, the full λ at its end
    assert lams[:5] == [0.0] * 5
    assert all(a < b for a, b in zip(lams[4:13], lams[5:13]))
    assert lams[8] == pytest.approx(1e-1 * (1 - 0.5**3)) and lams[12:] == [1e-1] * 4
    # before the ramp the scores move exactly as without any penalty, afterwards they do not
    for t in range(5):
        assert all(torch.equal(a, b) for a, b in zip(trace[t], runs["none"][1][t]))
    assert not all(torch.equal(a, b) for a, b in zip(trace[-1], runs["none"][1][-1]))


def test_soft_movement_lambda_schedule_errors():
    with pytest.raises(UsageError, match="Schedule"):
        SoftMovement(lam=1e-2, lam_schedule=0.5)
    with pytest.raises(UsageError, match="s_f > 0"):
        SoftMovement(lam=1e-2, lam_schedule=Constant(0.0))
    sp = SoftMovement(lam=1e-2, lam_schedule=Cubic(0.0, 0.9, 2, 10, 1))
    sp.prepare(mlp())
    state = sp.state_dict()
    assert state["penalty"]["lam_schedule"]["type"] == "Cubic"
    for other in (SoftMovement(lam=1e-2),
                  SoftMovement(lam=2e-2, lam_schedule=Cubic(0.0, 0.9, 2, 10, 1)),
                  SoftMovement(lam=1e-2, lam_schedule=Cubic(0.0, 0.9, 3, 10, 1))):
        other.prepare(mlp())
        with pytest.raises(UsageError, match="same lam, lam_schedule"):
            other.load_state_dict(state)


def test_soft_movement_threshold_ramp_and_mean_penalty():
    """τ ramped from 0 as in the paper's code: scores start at 0 (σ = 0.5 > τ_t), so nothing is
    pruned before the ramp; λ_t = λ·τ_t/τ_f with the same schedule; ``penalty="mean"`` is λ_t
    times the mean over layers of each layer's mean σ(S)."""
    ramp = Cubic(0.0, 0.1, start=5, end=15, frequency=1)
    model = mlp(8)
    sp = SoftMovement(lam=50.0, threshold=ramp, init=0.0, score_lr=0.1, lam_schedule=ramp,
                      penalty="mean")
    sp.prepare(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for t in range(30):
        assert sp.current_threshold() == pytest.approx(ramp.sparsity(t))
        S = [x.detach() for x in scores_of(sp)]
        by_hand = sp.current_lambda() * sum(float(torch.sigmoid(x).mean()) for x in S) / len(S)
        assert float(sp.penalty().detach()) == pytest.approx(by_hand)
        train_steps(model, sp, opt, 1, penalty=True)
        if t < 5:  # τ = 0: every σ(S) > 0
            assert sp.sparsity() == 0.0
    assert sp.current_lambda() == 50.0 and sp.current_threshold() == pytest.approx(0.1)
    assert sp.sparsity() > 0.3  # the penalty at full strength pushed scores under logit(0.1)
    with pytest.raises(UsageError, match="'sum' or 'mean'"):
        SoftMovement(lam=1.0, penalty="l1")
    with pytest.raises(UsageError, match="in \\(0, 1\\)"):
        SoftMovement(lam=1.0, threshold=Constant(0.0))


def test_hard_movement_scores_follow_the_learning_rate():
    """lr_factor scales the score step: at 0 the scores stand still; score_lr 0.01 at factor
    0.5 trains exactly as score_lr 0.005 at factor 1."""
    def run(score_lr, factors):
        model = mlp(9)
        sp = HardMovement(Cubic(0.0, 0.5, 3, 8, 1), score_lr=score_lr)
        sp.prepare(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for f in factors:
            sp.lr_factor = f
            train_steps(model, sp, opt, 1)
        return sp
    frozen = run(0.01, [0.0, 0.0])
    assert all(bool((S.detach() == 0).all()) for S in scores_of(frozen))
    a, b = run(0.01, [0.5] * 10), run(0.005, [1.0] * 10)
    assert all(torch.equal(x.detach(), y.detach()) for x, y in zip(scores_of(a), scores_of(b)))
    assert all(torch.equal(a.masks()[n], b.masks()[n]) for n in a.layers)
    assert a.sparsity() == pytest.approx(0.5, abs=TOL["sparsity_rounding"])


def test_distillation_loss_by_hand():
    import math

    from prunekit.training import distillation_loss, distilled

    s, t, T = [1.0, 0.0, -1.0], [0.0, 2.0, 0.5], 2.0

    def softmax(v):
        e = [math.exp(x / T) for x in v]
        return [x / sum(e) for x in e]

    ps, pt = softmax(s), softmax(t)
    kl = sum(b * (math.log(b) - math.log(a)) for a, b in zip(ps, pt))
    row = torch.tensor([s]), torch.tensor([t])
    assert float(distillation_loss(*row, T)) == pytest.approx(T * T * kl, rel=TOL["float32_of_float64"])
    # rows average; a second row identical to its teacher adds 0
    two = torch.tensor([s, t]), torch.tensor([t, t])
    assert float(distillation_loss(*two, T)) == pytest.approx(T * T * kl / 2, rel=TOL["float32_of_float64"])
    # token logits (batch, seq, vocab) are rows too
    assert float(distillation_loss(two[0][None], two[1][None], T)) == pytest.approx(
        T * T * kl / 2, rel=TOL["float32_of_float64"])
    task = torch.tensor(0.7)
    assert float(distilled(task, *row, alpha=0.25, temperature=T)) == pytest.approx(
        0.75 * 0.7 + 0.25 * T * T * kl, rel=TOL["float32_of_float64"])
    with pytest.raises(UsageError, match="differ"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(UsageError, match="temperature"):
        distillation_loss(*row, 0.0)
    with pytest.raises(UsageError, match="alpha"):
        distilled(task, *row, alpha=1.5)


def clusters(n=512, seed=0):
    """Four Gaussian clusters in 8 dimensions: a task a 90 %-sparse MLP can still solve."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 8, generator=torch.Generator().manual_seed(100)) * 2
    y = torch.randint(0, 4, (n,), generator=g)
    return centres[y] + torch.randn(n, 8, generator=g), y


def test_hard_movement_reaches_90_percent_without_collapsing():
    """Fine-tune a dense MLP, then hard movement with the paper's phases (dense warm-up, cubic
    ramp with masks every step, cool-down) and the scores following a warm-up-and-decay
    learning rate: 90 % sparse and every class still predicted, most of them right."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 4))
    x, y = clusters()
    xt, yt = clusters(256, seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(100):  # the dense fine-tuned model
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    dense = float((model(xt).argmax(-1) == yt).float().mean())
    steps = 400
    sp = HardMovement(Cubic.phases(0.9, steps, warmup=40, cooldown=120), score_lr=0.01)
    sp.prepare(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    peak = 1e-2
    for t in range(steps):
        lr = peak * min(1.0, (t + 1) / 40) * (1 - t / steps) / (1 - min(t, 40) / steps)
        for group in opt.param_groups:
            group["lr"] = lr
        sp.lr_factor = lr / peak
        g = torch.Generator().manual_seed(t)
        idx = torch.randint(0, len(y), (64,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
        sp.step()
    assert sp.sparsity() == pytest.approx(0.9, abs=TOL["sparsity_rounding"])
    sp.squash()
    with torch.no_grad():
        pred = model(xt).argmax(-1)
    assert set(pred.tolist()) == {0, 1, 2, 3}  # not one class
    accuracy = float((pred == yt).float().mean())
    assert dense > 0.9 and accuracy > dense - 0.1, (dense, accuracy)


# --- N:M --------------------------------------------------------------------------------------


@pytest.mark.parametrize("recompute", [False, True])
def test_nm_pattern_holds_after_every_step(recompute):
    model = mlp(5)
    opt = torch.optim.Adam(model.parameters(), lr=5e-2)
    sp = NMSparsifier(NM(2, 4), recompute=recompute, frequency=3, optimizer=opt)
    sp.prepare(model)
    fixed = sp.masks()
    changed = False
    for _ in range(10):
        train_steps(model, sp, opt, 1)
        for n, layer in sp.layers.items():
            assert satisfies(layer.weight, NM(2, 4))  # the weight the forward uses
            keep, W = sp.masks()[n], sp.dense_weight(layer)
            assert (opt.state[W]["exp_avg_sq"][~keep] == 0).all()  # no stale moments
            if recompute:
                changed |= not torch.equal(keep, fixed[n])
            else:
                assert torch.equal(keep, fixed[n]) and (W[~keep] == 0).all()
    assert changed == recompute


def test_nm_that_does_not_fit_is_a_clear_error():
    model = nn.Sequential(nn.Linear(6, 4))
    with pytest.raises(Exception, match="6"):
        NMSparsifier(NM(2, 4)).prepare(model)


# --- checkpoints ------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda: GradualMagnitude(Cubic(0.0, 0.7, 0, 20, 4)),
    lambda: HardMovement(Cubic(0.0, 0.7, 0, 20, 4)),
    lambda: HardMovement(Cubic(0.0, 0.7, 0, 20, 4), score_lr=1.0, score_optimizer="sgd"),
    lambda: SoftMovement(lam=1e-2, score_lr=0.05),
    lambda: SoftMovement(lam=1e-1, score_lr=0.05, lam_schedule=Cubic(0.0, 0.5, 3, 14, 1)),
])
def test_checkpoint_round_trip_resumes_identically(make):
    soft = isinstance(make(), SoftMovement)
    model = mlp(6)
    sp = make()
    sp.prepare(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sp.optimizer = opt if sp.hard_zero else None
    train_steps(model, sp, opt, 7, penalty=soft)
    ckpt = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(),
                          "sparsifier": sp.state_dict()})
    train_steps(model, sp, opt, 9, seed=1, penalty=soft)
    expected = model.state_dict()

    model2 = mlp(99)  # other weights: everything must come from the checkpoint
    sp2 = make()
    sp2.prepare(model2)
    model2.load_state_dict(ckpt["model"])
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-2)
    opt2.load_state_dict(ckpt["opt"])
    sp2.optimizer = opt2 if sp2.hard_zero else None
    for layer in sp2.layers.values():  # the sparsifier's own state must restore masks, scores
        layer.parametrizations.weight[0].mask.fill_(True)
        if hasattr(layer.parametrizations.weight[0], "scores"):
            layer.parametrizations.weight[0].scores.data.zero_()
    sp2.load_state_dict(ckpt["sparsifier"])
    assert sp2.step_count == 7
    train_steps(model2, sp2, opt2, 9, seed=1, penalty=soft)
    for key, value in expected.items():
        assert torch.equal(model2.state_dict()[key], value), key


def test_prepare_twice_and_step_before_prepare_are_errors():
    sp = GradualMagnitude(Constant(0.5))
    with pytest.raises(UsageError, match="prepare"):
        sp.step()
    model = mlp()
    sp.prepare(model)
    with pytest.raises(UsageError, match="already"):
        sp.prepare(mlp())
    with pytest.raises(UsageError, match="parametrized already"):
        GradualMagnitude(Constant(0.5)).prepare(model)  # a second sparsifier on the same model
    with pytest.raises(UsageError, match="start at sparsity 0"):
        HardMovement(Constant(0.5))
    with pytest.raises(UsageError, match="masks only grow"):
        Cubic(0.5, 0.2)


def test_conv1d_layers_are_refused():
    from conftest import tiny_model

    with pytest.raises(UsageError, match="Conv1D"):
        GradualMagnitude(Constant(0.5)).prepare(tiny_model("gpt2"))


def test_scores_keep_learning_after_a_dtype_move():
    model = mlp(8)
    sp = HardMovement(Constant(0.5, start=2, frequency=1))
    sp.prepare(model)
    model.double()
    S = sp.layers["0"].parametrizations.weight[0].scores
    assert S.is_leaf and S.requires_grad
    before = S.detach().clone()
    x, y = batch(8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(model(x.double()), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    sp.step()
    assert not torch.equal(sp.layers["0"].parametrizations.weight[0].scores.detach(), before)


# --- lottery tickets --------------------------------------------------------------------------


def _trainer(steps=5):
    def train(model, sp, round_, start_step):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sp.optimizer = opt
        train_steps(model, sp, opt, steps, seed=round_)
    return train


@pytest.mark.parametrize("rewind", ["init", 3])
def test_lottery_rewinds_kept_weights_exactly(rewind):
    model = mlp(7)
    init = copy.deepcopy(model.state_dict())
    if rewind == 3:  # the weights after 3 steps of round 0, recorded independently
        ref = mlp(7)
        sp = GradualMagnitude(Constant(0.0))
        sp.prepare(ref)
        opt = torch.optim.SGD(ref.parameters(), lr=0.1)
        train_steps(ref, sp, opt, 3, seed=0)
        sp.squash()
        init = copy.deepcopy(ref.state_dict())
    ticket = find_ticket(model, _trainer(), rounds=3, rate=0.2, rewind=rewind)
    assert len(ticket.masks) == 3
    for r in range(1, 3):  # nested: masks only shrink
        for n in ticket.masks[r]:
            assert not (ticket.masks[r][n] & ~ticket.masks[r - 1][n]).any()
    for n, key in (("0", "0.weight"), ("2", "2.weight")):
        keep = ticket.masks[-1][n]
        assert torch.equal(model.state_dict()[key][keep], init[key][keep])
        assert (model.state_dict()[key][~keep] == 0).all()
    assert torch.equal(model.state_dict()["0.bias"], init["0.bias"])
    assert ticket.sparsity[-1] == pytest.approx(1 - 0.8**3, abs=TOL["sparsity_schedule"])


def test_prune_round_removes_a_fraction_of_the_kept():
    w = {"a": torch.arange(1.0, 11.0).reshape(2, 5)}
    m = {"a": torch.ones(2, 5, dtype=torch.bool)}
    m1 = prune_round(w, m, 0.2)
    assert m1["a"].sum() == 8 and not m1["a"][0, :2].any()
    m2 = prune_round(w, m1, 0.5)
    assert m2["a"].sum() == 4 and torch.equal(m2["a"][1, 1:], torch.ones(4, dtype=torch.bool))


def test_lottery_needs_enough_steps_to_rewind():
    with pytest.raises(UsageError, match="rewind to iteration 50"):
        find_ticket(mlp(), _trainer(steps=5), rounds=1, rewind=50)


# --- Hugging Face Trainer ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gmp", "soft"])
def test_trainer_callback_prunes_a_tiny_bert(tmp_path, kind):
    import transformers as tf

    from prunekit.training.hf import SparsifierCallback

    torch.manual_seed(0)
    cfg = tf.BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, vocab_size=128, max_position_embeddings=64,
                        num_labels=2)
    model = tf.BertForSequenceClassification(cfg)
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(0, 128, (16,), generator=g),
             "labels": int(torch.randint(0, 2, (1,), generator=g))} for _ in range(32)]
    sp = (GradualMagnitude(Cubic(0.0, 0.5, 0, 4, 2)) if kind == "gmp"
          else SoftMovement(lam=1.0, score_lr=0.1))
    args = tf.TrainingArguments(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=8,
                                learning_rate=1e-3, report_to=[], save_strategy="no",
                                use_cpu=True, logging_strategy="no", disable_tqdm=True)
    trainer = tf.Trainer(model=model, args=args, train_dataset=rows,
                         callbacks=[SparsifierCallback(sp)])
    result = trainer.train()
    assert sp.step_count == 6
    assert set(sp.layers) == {n for n in sp.layers if n.startswith("bert.encoder.layer.")}
    assert "classifier" not in sp.layers  # the head stays dense
    assert result.global_step == 6
    if kind == "gmp":
        assert sp.sparsity() == pytest.approx(0.5, abs=TOL["sparsity_rounding"])
    else:  # the penalty's gradient pushed every score down from its start at 1
        S = torch.cat([sp.layers[n].parametrizations.weight[0].scores.detach().reshape(-1)
                       for n in sp.layers])
        assert float(S.mean()) < 0.7
    sp.squash()
    assert not any(hasattr(m, "parametrizations") for m in model.modules())


def _tiny_bert_and_rows(seed=0):
    import transformers as tf

    torch.manual_seed(seed)
    cfg = tf.BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, vocab_size=128, max_position_embeddings=64,
                        num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    g = torch.Generator().manual_seed(seed)
    rows = [{"input_ids": torch.randint(0, 128, (16,), generator=g),
             "labels": int(torch.randint(0, 3, (1,), generator=g))} for _ in range(32)]
    return tf.BertForSequenceClassification(cfg), rows


def _args(tmp_path, **kw):
    import transformers as tf

    return tf.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8,
                                report_to=[], save_strategy="no", use_cpu=True,
                                logging_strategy="no", disable_tqdm=True, **kw)


def test_trainer_scores_follow_the_warm_up_and_decay(tmp_path):
    """Under the Trainer the movement scores' step is score_lr times the weights' current
    learning rate over its peak: the linear warm-up over 4 steps (0 at the first step, as
    transformers schedules it), then the linear decay to 0 at step 10."""
    import transformers as tf

    from prunekit.training.hf import SparsifierCallback

    model, rows = _tiny_bert_and_rows()
    sp = HardMovement(Cubic.phases(0.5, 10, warmup=2, cooldown=2), score_lr=0.01)
    factors = []
    sp.hooks.append(lambda s: factors.append(s.lr_factor))
    trainer = tf.Trainer(model=model, args=_args(tmp_path, max_steps=10, learning_rate=1e-3,
                                                 warmup_steps=4, lr_scheduler_type="linear"),
                         train_dataset=rows, callbacks=[SparsifierCallback(sp)])
    trainer.train()
    expected = [t / 4 if t < 4 else (10 - t) / 6 for t in range(10)]
    assert factors == pytest.approx(expected)
    assert sp.sparsity() == pytest.approx(0.5, abs=TOL["sparsity_rounding"])


def test_distill_trainer_loss(tmp_path):
    """alpha = 1 with the student's own copy as the teacher: the loss is the KL of identical
    logits, 0 (to rounding), so plain SGD leaves the weights where they are (Adam would blow
    the rounding-sized gradients up to full steps); alpha = 0.5: (task + T²·KL) / 2 computed
    by hand."""
    import transformers as tf

    from prunekit.training import distilled
    from prunekit.training.hf import DistillTrainer

    model, rows = _tiny_bert_and_rows(1)
    teacher = copy.deepcopy(model)
    before = copy.deepcopy(model.state_dict())
    trainer = DistillTrainer(model=model, args=_args(tmp_path, max_steps=3, learning_rate=1e-2,
                                                     weight_decay=0.0, optim="sgd"),
                             train_dataset=rows, teacher=teacher, alpha=1.0)
    result = trainer.train()
    assert abs(result.training_loss) < 1e-6
    assert all(torch.allclose(before[k], v, atol=TOL["float32_forward"]) for k, v in model.state_dict().items())
    plain, _ = _tiny_bert_and_rows(1)  # the same run without distillation moves the weights
    tf_trainer = type(trainer).__mro__[1](model=plain, args=_args(
        tmp_path, max_steps=3, learning_rate=1e-2, weight_decay=0.0, optim="sgd"),
        train_dataset=rows)
    assert tf_trainer.train().training_loss > 0.5
    assert not torch.allclose(before["classifier.weight"], plain.state_dict()["classifier.weight"],
                              atol=TOL["float32_forward"])

    other, _ = _tiny_bert_and_rows(2)
    trainer = DistillTrainer(model=model, args=_args(tmp_path, max_steps=1), train_dataset=rows,
                             teacher=other, temperature=3.0, alpha=0.5)
    batch = {"input_ids": torch.stack([r["input_ids"] for r in rows[:4]]),
             "labels": torch.tensor([r["labels"] for r in rows[:4]])}
    model.eval()
    loss = trainer.compute_loss(model, batch)
    with torch.no_grad():
        out = model(**batch)
        expected = distilled(out.loss, out.logits, other(input_ids=batch["input_ids"]).logits,
                             0.5, 3.0)
    assert float(loss.detach()) == pytest.approx(float(expected), rel=TOL["float32_forward"])
    with pytest.raises(UsageError, match="labels"):
        trainer.compute_loss(model, {"input_ids": batch["input_ids"]})
    with pytest.raises(UsageError, match="alpha"):
        DistillTrainer(model=model, args=_args(tmp_path, max_steps=1), teacher=other, alpha=2.0)
