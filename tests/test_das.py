"""DAS (steering/das.py): the tempering schedule by hand, exactness of the tempered SMC with the
gradient proposal on an analytic mixture (tilted target derived in tests/test_fmtt.py's docstring:
means m_k + lam S_k a, weights w_k exp(lam a.m_k + lam^2 a.S_k a / 2) / Z), lam = 0 = the base, NFE
accounting and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from flowalign.models.analytic import GaussianMixtureFlow
from flowalign.sampling.rollout import rollout
from flowalign.sampling.schedule import linear_sigmas
from flowalign.steering.das import das_betas, das_steer

MIX = dict(
    means=[[-2.0, 0.5], [1.5, -1.0], [0.5, 2.0]], stds=[[0.5, 0.3], [0.4, 0.6], [0.3, 0.3]], weights=[0.3, 0.5, 0.2]
)
A = torch.tensor([1.0, 0.5])
T = 40


def moments(x, log_w):
    from flowalign.steering.resample import ess, normalize

    w = (normalize(log_w) / log_w.shape[0]).reshape(-1, 1)
    x = x.double().reshape(-1, x.shape[-1])
    mean = (w * x).sum(0)
    d = x - mean
    return mean, (w[:, :, None] * d[:, :, None] * d[:, None, :]).sum(0), float(ess(log_w).sum())


def assert_matches(target, mean, cov, n_eff):
    ref = target.sample_data(100_000, torch.Generator().manual_seed(0)).double()
    d = ref - ref.mean(0)
    assert ((mean - target.mean()).abs() < 5 * (d.var(0) / n_eff).sqrt()).all(), (mean, target.mean())
    assert ((cov - target.cov()).abs() < 5 * ((d[:, :, None] * d[:, None, :]).var(0) / n_eff).sqrt()).all(), cov


def test_tempering_schedule_by_hand():
    # gamma 0.5 on 3 steps: (1.5^i - 1) = 0, 0.5, 1.25, 2.375 -> capped at 1: [0, 0.5, 1, 1]
    assert das_betas(torch.zeros(4), 0.5).tolist() == [0.0, 0.5, 1.0, 1.0]
    # default for T = 100: gamma = 2^(1/88) - 1 = 0.00791 (the paper's 0.008), so beta reaches 1 at step 88
    b = das_betas(torch.zeros(101))
    assert b[87] < 0.99 and b[88] == pytest.approx(1.0) and b[89] == 1.0 and b[0] == 0.0
    assert b[1] == pytest.approx(2 ** (1 / 88) - 1) and math.isclose(2 ** (1 / 88) - 1, 0.00791, abs_tol=1e-5)


def test_das_matches_the_tilted_mixture_with_gradient_proposal():
    mix = GaussianMixtureFlow(**MIX)
    res = das_steer(
        mix,
        ["p"] * 2,
        lambda x: x @ A,
        num_particles=400,
        lam=1.0,
        num_steps=T,
        generator=torch.Generator().manual_seed(0),
    )
    mean, cov, n_eff = moments(res.candidates, res.log_weights)
    assert n_eff > 250
    assert_matches(mix.tilt_linear(A, 1.0), mean, cov, n_eff)
    # 40 steps + one autograd evaluation per stochastic step (0..38); the x0_pred look-ahead reuses its velocity
    assert res.nfe == 2 * 400 * (40 + 39) and res.method == "das"
    assert res.info["betas"][0] == 0 and res.info["betas"][-1] == 1.0


def test_das_lam_zero_is_the_base_sampler_bit_for_bit():
    """lam = 0: every weight stays 0 (ESS = K, never resampled) and the drift lam beta grad r is 0, so the
    particles are exactly the plain flow_sde rollout from the same generator."""
    mix, sig = GaussianMixtureFlow(**MIX), linear_sigmas(20)
    res = das_steer(
        mix,
        ["a", "b"],
        lambda x: x @ A,
        num_particles=5,
        lam=0.0,
        sigmas=sig,
        generator=torch.Generator().manual_seed(1),
    )
    g = torch.Generator().manual_seed(1)
    x = mix.initial_noise(10, generator=g)
    plain = rollout(mix, mix.encode(["a", "b"]).repeat(5), x, sig, "flow_sde", 0.7, generator=g)
    assert torch.equal(res.candidates.reshape(10, 2), plain.final)
    assert torch.equal(res.log_weights, torch.zeros_like(res.log_weights))
    assert res.nfe == 10 * 20  # no drift, so no gradient evaluation


class _Hard(torch.nn.Module):
    name, differentiable = "hard", False

    def forward(self, images, prompts):
        return images[:, 0]


@pytest.mark.parametrize(
    "reward, kwargs, match",
    [
        (_Hard(), {}, "needs a differentiable reward"),
        (None, {"tempering_gamma": 0.0}, "tempering_gamma=0.0 must be a number > 0"),
        (None, {"num_particles": 0}, "num_particles=0"),
        (None, {"lam": -1.0}, "lam=-1.0"),
        (None, {"step": "ode"}, "needs a stochastic sampler"),
    ],
)
def test_bad_input_is_one_clear_error(reward, kwargs, match):
    mix = GaussianMixtureFlow(**MIX)
    with pytest.raises(ValueError, match=match):
        das_steer(mix, ["p"], reward or (lambda x: x @ A), num_steps=10, **kwargs)


def test_non_differentiable_reward_without_gradient_and_budget():
    mix = GaussianMixtureFlow(**MIX)
    res = das_steer(mix, ["p"], _Hard(), reward_grad_scale=0.0, num_steps=10, nfe_budget=40)
    assert res.info["num_particles"] == 4 and res.nfe == 40  # 10 per particle without gradients
    res = das_steer(
        mix, ["p"], lambda x: x @ A, num_steps=10, nfe_budget=40, generator=torch.Generator().manual_seed(0)
    )
    assert res.info["num_particles"] == 2 and res.nfe == 2 * 19  # 10 + 9 gradient evaluations per particle
