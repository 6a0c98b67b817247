"""Noise search (steering/noise_search.py): the mutation keeps N(0, I), random search is best-of-N bit
for bit, evolution beats random search at equal NFE, the NFE accounting by hand, bad input."""

from __future__ import annotations

import pytest
import torch

from flowalign.models.analytic import GaussianMixtureFlow
from flowalign.steering import best_of_n
from flowalign.steering.noise_search import mutate, noise_search

MIX = dict(
    means=[[-2.0, 0.5], [1.5, -1.0], [0.5, 2.0]], stds=[[0.5, 0.3], [0.4, 0.6], [0.3, 0.3]], weights=[0.3, 0.5, 0.2]
)
A = torch.tensor([1.0, 0.5])


def reward(x):
    return x @ A


def test_mutation_by_hand_and_keeps_the_prior():
    # a = 0.6: sqrt(1 - 0.36) = 0.8, so x' = 0.8 * 1 + 0.6 * 2 = 2.0
    assert mutate(torch.tensor([1.0]), torch.tensor([2.0]), 0.6).item() == pytest.approx(2.0)
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(200_000, generator=g), torch.randn(200_000, generator=g)
    y = mutate(x, eps, 0.3)
    # 5 sigma of the mean (1 / sqrt(n)) and of the variance (sqrt(2 / n)) of 200k N(0, 1) draws
    assert abs(float(y.mean())) < 5 / 200_000**0.5 and abs(float(y.var()) - 1) < 5 * (2 / 200_000) ** 0.5


def test_random_search_with_the_full_sampler_is_best_of_n():
    mix = GaussianMixtureFlow(**MIX)
    kw = dict(num_steps=10)
    a = noise_search(
        mix, ["a", "b", "c"], reward, mode="random", population=6, generator=torch.Generator().manual_seed(0), **kw
    )
    b = best_of_n(mix, ["a", "b", "c"], reward, n=6, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.candidate_rewards, b.candidate_rewards)
    assert a.nfe == b.nfe == 3 * 6 * 10


def test_evolution_selects_and_climbs_at_equal_nfe():
    mix, prompts = GaussianMixtureFlow(**MIX), ["p"] * 64
    kw = dict(num_steps=8, nfe_budget=8 * 16, population=4, generator=torch.Generator().manual_seed(1))
    rnd = noise_search(mix, prompts, reward, mode="random", **kw)
    evo = noise_search(mix, prompts, reward, mode="evolution", mutation=0.3, **kw)
    assert rnd.nfe == evo.nfe == 64 * 8 * 16 and evo.info["generations"] == 4
    # generation 0 is a plain draw (mean reward E[a.x] = 0.3 (-1.75) + 0.5 (1.0) + 0.2 (1.5) = 0.275); the
    # last generation holds mutated elites, far up the reward; random search's last draw stays at the prior
    first, last = evo.candidate_rewards[:, :4].mean(), evo.candidate_rewards[:, 12:].mean()
    assert abs(float(first) - 0.275) < 0.35 and last > first + 1.0, (first, last)
    assert abs(float(rnd.candidate_rewards[:, 12:].mean()) - 0.275) < 0.35
    assert evo.rewards.mean() > 1.4 and rnd.rewards.mean() > 1.4  # both best-of-16 well above the prior


def test_verifier_completions_count_against_the_budget():
    mix = GaussianMixtureFlow(**MIX)
    # T = 10, 2-step verifier: budget 30 = 10 (the final rollout of the best noise) + 10 candidates x 2,
    # in generations of 4, 4, 2
    res = noise_search(mix, ["a", "b"], reward, num_steps=10, verifier_steps=2, nfe_budget=30, population=4)
    assert res.nfe == 2 * 30 and res.info["generations"] == 3 and res.info["candidates"] == 10
    assert torch.allclose(res.rewards, reward(res.latents))  # the returned reward is the full rollout's


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "grid"}, "unknown noise search mode 'grid'"),
        ({"mutation": 0.0}, r"mutation=0.0 must be in \(0, 1\]"),
        ({"population": 2, "elites": 3}, "elites=3 must be <= population=2"),
        ({"population": 0}, "population=0"),
        ({"nfe_budget": 5}, "smaller than one rollout"),
        ({"verifier_steps": 2, "nfe_budget": 11}, "pays for no candidate"),
    ],
)
def test_bad_input_is_one_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        noise_search(GaussianMixtureFlow(**MIX), ["p"], reward, num_steps=10, **kwargs)
