"""Library code never seeds (or draws from) the global RNG: the seeded builders of the small
digits networks, the digits split, the seeded training and the seeded masks leave
``torch.get_rng_state()`` as they found it; the same seed gives the same weights, a different
seed different ones; and the generator-based initialisation reproduces, bit for bit, what
``torch.manual_seed(seed)`` followed by PyTorch's default initialisation gave (so the recorded
figures in docs/experiments still hold)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.analysis.masks import random_masks
from prunekit.analysis.study import Budget, at_init_masks, small_network, train_masked
from prunekit.models.digits import (digits_cnn, digits_mlp, load_digits_split, train_classifier,
                                    trained_digits_mlp)

pytest.importorskip("sklearn")  # the digits data set

SPECS = ["digits-mlp:16", "digits-cnn:2"]
OUTSIDE = 12345  # the caller's own seed: any library seeding would move the state away from it


@pytest.fixture
def global_rng():
    """The global RNG set to a caller's state (restored afterwards); yields that state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(OUTSIDE)
        yield torch.get_rng_state()


@pytest.fixture(scope="module")
def data():
    return load_digits_split(seed=0)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def assert_untouched(state: torch.Tensor) -> None:
    assert torch.equal(torch.get_rng_state(), state), "the global RNG state changed"


@pytest.mark.parametrize("spec", SPECS)
def test_small_network_leaves_global_rng(global_rng, spec):
    for seed in (0, 1, OUTSIDE):
        small_network(spec, seed)
        assert_untouched(global_rng)


@pytest.mark.parametrize("spec", SPECS)
def test_small_network_same_seed_same_weights(spec):
    assert same(weights(small_network(spec, 3)), weights(small_network(spec, 3)))
    assert not same(weights(small_network(spec, 3)), weights(small_network(spec, 4)))


@pytest.mark.parametrize("spec", SPECS)
def test_small_network_generator_is_the_seed(global_rng, spec):
    g = torch.Generator().manual_seed(5)
    assert same(weights(small_network(spec, generator=g)), weights(small_network(spec, 5)))
    assert_untouched(global_rng)
    # the generator is consumed: a second network from it is a different one
    assert not same(weights(small_network(spec, generator=g)), weights(small_network(spec, 5)))


@pytest.mark.parametrize("build, arg", [(digits_mlp, 16), (digits_cnn, 2)])
def test_builders_with_generator_leave_global_rng(global_rng, build, arg):
    a = weights(build(arg, generator=torch.Generator().manual_seed(0)))
    assert_untouched(global_rng)
    assert same(a, weights(build(arg, generator=torch.Generator().manual_seed(0))))
    assert not same(a, weights(build(arg, generator=torch.Generator().manual_seed(1))))


@pytest.mark.parametrize("spec, build, arg", [("digits-mlp:16", digits_mlp, 16),
                                              ("digits-cnn:2", digits_cnn, 2),
                                              ("digits-mlp", digits_mlp, 128),
                                              ("digits-cnn", digits_cnn, 8)])
@pytest.mark.parametrize("seed", [0, 7])
def test_initialisation_bit_identical_to_global_seeding(spec, build, arg, seed):
    """What the library did before it stopped seeding the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        before = weights(build(arg))  # default init, drawn from the global RNG
    assert same(weights(small_network(spec, seed)), before)
    g = torch.Generator().manual_seed(seed)
    float32 = weights(build(arg, dtype=torch.float32, generator=g))
    assert same({k: v.double() for k, v in float32.items()}, before)


def test_trained_digits_mlp_leaves_global_rng_and_is_seeded(global_rng, data):
    a, _ = trained_digits_mlp(8, seed=0, data=data)
    assert_untouched(global_rng)
    b, _ = trained_digits_mlp(8, seed=0, data=data)
    c, _ = trained_digits_mlp(8, seed=1, data=data)
    assert_untouched(global_rng)
    assert same(weights(a), weights(b))
    assert not same(weights(a), weights(c))


def test_trained_digits_mlp_starts_from_the_seeded_initialisation(data):
    """Its initialisation is ``digits_mlp`` from ``Generator().manual_seed(seed)``, i.e. the
    one ``torch.manual_seed(seed)`` gave: training that by hand gives the same network."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        init = digits_mlp(8)
    by_hand = train_classifier(init, data.x_train, data.y_train, seed=2)
    assert same(weights(trained_digits_mlp(8, seed=2, data=data)[0]), weights(by_hand))
    g = torch.Generator().manual_seed(2)
    assert same(weights(trained_digits_mlp(8, seed=2, data=data, generator=g)[0]),
                weights(by_hand))


def test_split_training_and_masks_leave_global_rng(global_rng, data):
    split = load_digits_split(seed=1)
    assert_untouched(global_rng)
    assert not torch.equal(split.y_test, data.y_test)  # the seed matters
    init = small_network("digits-mlp:8", 0)
    train_classifier(init, data.x_train[:256], data.y_train[:256], epochs=1, seed=1)
    assert_untouched(global_rng)
    m = random_masks(init, 0.5, seed=1)
    assert_untouched(global_rng)
    assert not all(torch.equal(m[k], v) for k, v in random_masks(init, 0.5, seed=2).items())
    at_init_masks(init, data, "random", 0.5, seed=1)
    train_masked(init, m, data, Budget(epochs=1, seed=1))
    assert_untouched(global_rng)
