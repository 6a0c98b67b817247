"""Steering and search: FK particles, resampling, DTS / DTS*, best-of-N, beam, the CLI.

Exactness is checked on Gaussian-mixture flows with a closed-form velocity and a linear reward
r(x) = c.x, whose tilted target p(x) exp(lam c.x) / Z is again a mixture (``tilt_linear``) with
Z = sum_k w_k exp(lam c.m_k + lam^2 c.S_k c / 2). Weighted particle estimates are compared with
5-sigma bounds of a self-normalised estimator: sigma^2 / ESS (Kong's effective sample size),
sigma^2 the target's (co)variance or the variance of the centred products (4th moments from 200k
exact target draws). T = 100 steps keep the sampler's own discretisation error below those bounds.
"""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from flowalign.models.analytic import GaussianMixtureFlow
from flowalign.sampling.rollout import StepContext, rollout
from flowalign.sampling.schedule import linear_sigmas, steps_noise_table
from flowalign.sampling.sde import flow_sde
from flowalign.steering import POTENTIALS, RESAMPLERS, SEARCH, steer
from flowalign.steering.common import LatentReward, default_schedule
from flowalign.steering.dts import branch_depths
from flowalign.steering.fk import fk_steer
from flowalign.steering.fk_hook import FKSteering
from flowalign.steering.resample import ess, flat_index, normalize
from flowalign.steering.velocity_cache import VelocityCache
from flowalign.types import Cond, StepOut

MIX2D = dict(
    means=[[-2.0, 0.5], [1.5, -1.0], [0.5, 2.0]], stds=[[0.5, 0.3], [0.4, 0.6], [0.3, 0.3]], weights=[0.3, 0.5, 0.2]
)
C2D = torch.tensor([1.0, 0.5])
T = 100


def linear(c):
    return lambda x: x @ c.to(x.dtype)


def log_z(mix: GaussianMixtureFlow, c: torch.Tensor, lam: float) -> float:
    c = c.double()
    return float(
        torch.logsumexp(torch.log(mix.weights) + lam * mix.means @ c + 0.5 * lam**2 * (mix.stds**2 * c**2).sum(1), 0)
    )


def weighted_moments(x: torch.Tensor, log_w: torch.Tensor):
    """Pooled self-normalised estimates over G groups: x [G, K, D], log_w [G, K] -> mean, cov, ESS."""
    w = normalize(log_w) / log_w.shape[0]  # each group's weights sum to 1/G
    x = x.double().reshape(-1, x.shape[-1])
    w = w.reshape(-1, 1)
    mean = (w * x).sum(0)
    d = x - mean
    cov = (w[:, :, None] * d[:, :, None] * d[:, None, :]).sum(0)
    return mean, cov, float(ess(log_w).sum())


def assert_matches(target: GaussianMixtureFlow, mean, cov, n_eff: float):
    ref = target.sample_data(200_000, torch.Generator().manual_seed(0)).double()
    d = ref - ref.mean(0)
    mean_tol = 5 * (d.var(0) / n_eff).sqrt()
    cov_tol = 5 * ((d[:, :, None] * d[:, None, :]).var(0) / n_eff).sqrt()
    assert ((mean - target.mean()).abs() < mean_tol).all(), (mean, target.mean(), mean_tol)
    assert ((cov - target.cov()).abs() < cov_tol).all(), (cov, target.cov(), cov_tol)


# --- resampling ----------------------------------------------------------------------------------
def test_ess_and_systematic_by_hand():
    lw = torch.log(torch.tensor([[0.5, 0.25, 0.25, 0.0], [1.0, 1.0, 1.0, 1.0]]))
    # ESS = 1 / sum w^2: 1 / (.25 + .0625 + .0625) = 2.667; uniform -> 4
    torch.testing.assert_close(ess(lw), torch.tensor([8 / 3, 4.0], dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    u = torch.rand(2, 1, generator=g, dtype=torch.float64)
    # points (i + u) / 4 against the CDF [.5, .75, 1, 1]: for u in [0, 1) the first two points fall in
    # [0, .5) -> particle 0, the third in [.5, .75) -> 1, the fourth in [.75, 1) -> 2
    idx = RESAMPLERS["systematic"](lw, torch.Generator().manual_seed(0))
    assert u[0].item() < 1 and idx[0].tolist() == [0, 0, 1, 2] and idx[1].tolist() == [0, 1, 2, 3]
    assert flat_index(idx).tolist() == [0, 0, 1, 2, 4, 5, 6, 7]


@pytest.mark.parametrize("name", sorted(RESAMPLERS))
def test_resamplers_are_unbiased(name):
    """E[copies of i] = K w_i; 4000 draws of K = 5, 5-sigma bound (copies are within [0, K])."""
    w = torch.tensor([0.05, 0.4, 0.3, 0.25, 0.0], dtype=torch.float64)
    lw = torch.log(w).expand(4000, 5)
    idx = RESAMPLERS[name](lw, torch.Generator().manual_seed(1))
    counts = torch.nn.functional.one_hot(idx, 5).sum(1).double()  # [4000, 5]
    tol = 5 * counts.std(0) / math.sqrt(4000) + 1e-9
    assert ((counts.mean(0) - 5 * w).abs() <= tol).all(), (counts.mean(0), 5 * w)
    assert (counts[:, 4] == 0).all()


# --- potentials and the final correction ---------------------------------------------------------
@pytest.mark.parametrize(
    "potential,expected",
    [
        # r_phi = 1, 3, 2 at three resampling steps, r(x0) = 4, lam = 2:
        ("diff", [2, 4, -2, 4]),  # 2(1-0), 2(3-1), 2(2-3), final 2*4 - (2+4-2) = 4
        ("max", [2, 6, 6, -6]),  # 2*1, 2*max(1,3), 2*max(3,2), final 8 - 14
        ("sum", [2, 8, 12, -14]),  # 2*1, 2*(1+3), 2*(1+3+2), final 8 - 22
        ("rt", [2, 6, 4, -4]),  # 2*r_t, final 8 - 12
    ],
)
def test_potentials_and_final_correction_by_hand(potential, expected):
    sig = linear_sigmas(4)
    model = VelocityCache(GaussianMixtureFlow(means=[[0.0]], stds=[[1.0]]))
    rew = LatentReward(lambda x: x[:, 0], model)
    hook = FKSteering(
        model,
        rew,
        sig,
        torch.full((4,), 0.5),
        "flow_sde",
        1,
        1,
        lam=2.0,
        potential=potential,
        lookahead="x0_prev",
        lookahead_steps=None,
        resampler="systematic",
        schedule=[0, 1, 2, 3],
        ess_threshold=1.0,
        reward_grad_scale=0.0,
        generator=torch.Generator(),
    )
    cond = Cond(embeds={"row": torch.zeros(1, 1)}, prompts=["p"])
    logs = []
    for j, r in enumerate([1.0, 3.0, 2.0, 4.0]):
        x = torch.tensor([[r]])
        out = StepOut(x_next=x, mean=x, std=torch.ones(1), log_prob=torch.zeros(1), x0_pred=x)
        before = hook.log_prod.clone()
        hook.on_step(StepContext(j, sig[j], sig[j + 1], x, x, cond, out))
        logs.append(float(hook.log_prod - before))
    assert logs == expected and float(hook.log_prod) == 2.0 * 4.0  # product of potentials = exp(lam r(x0))


# --- FK exactness on analytic flows --------------------------------------------------------------
def test_fk_matches_tilted_mixture_and_its_normalising_constant():
    mix, lam, groups = GaussianMixtureFlow(**MIX2D), 1.0, 4
    res = fk_steer(
        mix,
        ["p"] * groups,
        linear(C2D),
        num_particles=1500,
        lam=lam,
        potential="diff",
        num_steps=T,
        generator=torch.Generator().manual_seed(0),
    )
    mean, cov, n_eff = weighted_moments(res.candidates, res.log_weights)
    assert n_eff > 2000
    assert_matches(mix.tilt_linear(C2D, lam), mean, cov, n_eff)
    # the SMC estimate of Z = E_p[exp(lam r)] (closed form 1.56); 5 sigma of the mean over 4 groups
    lz = res.info["log_z"]
    assert abs(float(lz.mean()) - log_z(mix, C2D, lam)) < 5 * float(lz.std()) / 2 + 0.02
    assert res.nfe == groups * 1500 * T  # x0 look-ahead velocities are reused: no extra evaluation


@pytest.mark.parametrize("potential", sorted(POTENTIALS))
def test_every_potential_targets_the_tilt(potential):
    """All four potentials have product exp(lam r(x0)); on a unimodal target (where the stronger
    intermediate tilts of max / sum / rt keep the target's support covered) each matches it."""
    mix, lam, c = GaussianMixtureFlow(means=[[0.5]], stds=[[0.8]]), 0.5, torch.tensor([1.0])
    res = fk_steer(
        mix,
        ["p"] * 2,
        linear(c),
        num_particles=1000,
        lam=lam,
        potential=potential,
        num_steps=T,
        generator=torch.Generator().manual_seed(1),
    )
    mean, cov, n_eff = weighted_moments(res.candidates, res.log_weights)
    assert_matches(mix.tilt_linear(c, lam), mean, cov, n_eff)


def test_fk_lam_zero_is_the_base_distribution():
    mix = GaussianMixtureFlow(**MIX2D)
    res = fk_steer(
        mix,
        ["p"] * 2,
        linear(C2D),
        num_particles=2000,
        lam=0.0,
        potential="max",
        num_steps=T,
        generator=torch.Generator().manual_seed(2),
    )
    assert torch.equal(res.log_weights, torch.zeros_like(res.log_weights))
    mean, cov, n_eff = weighted_moments(res.candidates, res.log_weights)
    assert n_eff == pytest.approx(4000)
    assert_matches(mix, mean, cov, n_eff)


@pytest.mark.parametrize("lookahead", ["x0", "x0_prev", "ode"])
def test_fk_with_one_particle_is_plain_sampling_bit_for_bit(lookahead):
    mix, sig = GaussianMixtureFlow(**MIX2D), linear_sigmas(20)
    res = fk_steer(
        mix,
        ["a", "b", "c"],
        linear(C2D),
        num_particles=1,
        lam=10.0,
        lookahead=lookahead,
        lookahead_steps=3,
        sigmas=sig,
        generator=torch.Generator().manual_seed(3),
    )
    g = torch.Generator().manual_seed(3)
    x = mix.initial_noise(3, generator=g)
    plain = rollout(mix, mix.encode(["a", "b", "c"]), x, sig, "flow_sde", 0.7, generator=g)
    assert torch.equal(res.latents, plain.final)
    # the look-ahead of 'x0' costs nothing; 'ode' with 3 steps from each of the 4 intermediate
    # resampling states (after steps 4, 8, 12, 16 of 20) costs 3 - 1 extra evaluations each
    extra = {"x0": 0, "x0_prev": 0, "ode": 4 * 2}[lookahead]
    assert res.nfe == 3 * (20 + extra)


def test_gradient_proposal_keeps_fk_exact_and_its_weight_correction():
    mix, lam = GaussianMixtureFlow(**MIX2D), 1.0
    res = fk_steer(
        mix,
        ["p"] * 2,
        linear(C2D),
        num_particles=1500,
        lam=lam,
        potential="diff",
        num_steps=T,
        reward_grad_scale=1.0,
        generator=torch.Generator().manual_seed(4),
    )
    mean, cov, n_eff = weighted_moments(res.candidates, res.log_weights)
    assert_matches(mix.tilt_linear(C2D, lam), mean, cov, n_eff)
    assert res.nfe == 2 * 1500 * (T + T - 1)  # one autograd evaluation per stochastic step (the last is ODE)
    # the closed-form log p/q equals scoring the same x_next with and without the drift
    g = torch.Generator().manual_seed(5)
    x, v, d = torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g), 0.1 * torch.randn(6, 2, generator=g)
    q = flow_sde(x, v, 0.6, 0.5, 0.7, drift=d, generator=g)
    p = flow_sde(x, v, 0.6, 0.5, 0.7, x_next=q.x_next)
    hook = FKSteering.__new__(FKSteering)
    hook.log_w, hook._drift = torch.zeros(6, dtype=torch.float64), d
    hook._proposal_correction(StepContext(0, torch.tensor(0.6), torch.tensor(0.5), x, v, None, q))
    torch.testing.assert_close(hook.log_w.float(), 2 * (p.log_prob - q.log_prob), atol=1e-4, rtol=1e-4)


# --- DTS ---------------------------------------------------------------------------------------
def _readout_moments(res):
    """Per tree, the exact read-out expectation of x and x^2 over its leaves -> [R] each."""
    m1 = torch.stack(
        [(p * x.double()[:, 0]).sum() for p, x in zip(res.info["readout_probs"], res.info["leaf_latents"])]
    )
    m2 = torch.stack(
        [(p * x.double()[:, 0] ** 2).sum() for p, x in zip(res.info["readout_probs"], res.info["leaf_latents"])]
    )
    return m1, m2


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_dts_readout_matches_the_tilted_target(lam):
    """200 independent trees of 32 rollouts each; the read-out law of each tree is exact over its
    leaves, so the per-tree expectations are i.i.d.: 5 sigma of their mean. lam = 0 is exact at any
    budget; for lam > 0 DTS is only asymptotically exact (see the report for its finite-budget bias)."""
    mix, c, trees, steps = GaussianMixtureFlow(means=[[-1.0], [1.0]], stds=[[0.5], [0.5]]), torch.tensor([1.0]), 200, 50
    res = steer(
        "dts",
        mix,
        ["p"] * trees,
        linear(c),
        lam=lam,
        nfe_budget=32 * steps,
        num_steps=steps,
        generator=torch.Generator().manual_seed(6),
    )
    assert all(abs(float(p.sum()) - 1) < 1e-9 for p in res.info["readout_probs"])
    assert max(res.info["nfe_per_prompt"]) <= 32 * steps and res.nfe == sum(res.info["nfe_per_prompt"])
    m1, m2 = _readout_moments(res)
    target = mix.tilt_linear(c, lam)
    assert abs(float(m1.mean()) - float(target.mean())) < 5 * float(m1.std()) / trees**0.5
    var = m2 - m1**2  # within-tree variance + spread of the tree means = total variance
    total = float(var.mean() + m1.var())
    assert abs(total - float(target.cov())) < 5 * float((m2 - 2 * m1 * float(target.mean())).std()) / trees**0.5


def test_dts_star_searches_better_than_best_of_n_at_equal_nfe():
    mix, c = GaussianMixtureFlow(**MIX2D), C2D
    kw = dict(nfe_budget=16 * 20, num_steps=20, generator=torch.Generator().manual_seed(7))
    bon = steer("bon", mix, ["p"] * 64, linear(c), **kw)
    kw["generator"] = torch.Generator().manual_seed(7)
    star = steer("dts_star", mix, ["p"] * 64, linear(c), lam=10.0, widen_c=1.0, widen_alpha=0.5, **kw)
    assert star.nfe <= bon.nfe == 64 * 16 * 20
    assert float(star.rewards.mean()) > float(bon.rewards.mean())


# --- best-of-N and beam ------------------------------------------------------------------------
def test_best_of_n_and_beam_accounting():
    mix, r = GaussianMixtureFlow(**MIX2D), linear(C2D)
    bon = steer("bon", mix, ["a", "b"], r, n=5, num_steps=10, generator=torch.Generator().manual_seed(8))
    assert bon.nfe == 2 * 5 * 10 and bon.reward_calls == 10
    torch.testing.assert_close(bon.rewards, bon.candidate_rewards.max(-1).values)
    torch.testing.assert_close(bon.latents @ C2D, bon.rewards)
    beam = steer(
        "beam",
        mix,
        ["a", "b"],
        r,
        beam_width=2,
        num_children=3,
        num_steps=10,
        generator=torch.Generator().manual_seed(8),
    )
    # 6 particles x 10 steps, the look-ahead velocities reused; 4 selection steps (2, 4, 6, 8) + final
    assert beam.nfe == 2 * 6 * 10 and beam.reward_calls == 2 * 6 * 5
    svdd = steer("svdd", mix, ["a"], r, num_children=4, num_steps=10, generator=torch.Generator().manual_seed(8))
    assert svdd.method == "svdd" and svdd.nfe == 4 * 10
    budget = steer("beam", mix, ["a"], r, beam_width=2, num_children=None, nfe_budget=85, num_steps=10)
    assert budget.info["num_children"] == 4 and budget.nfe == 80  # 85 // 10 = 8 particles = 2 beams x 4


def test_expected_best_of_n_by_hand():
    from flowalign.steering.common import expected_best_of_n

    # sorted pool [0, .5, 1]: n=1 -> mean .5; n=2 -> subsets {0,.5} {0,1} {.5,1} have max .5, 1, 1 -> 2.5/3;
    # n=3 -> 1. Second prompt all 1 -> 1 for every n.
    curve = expected_best_of_n(torch.tensor([[1.0, 0.0, 0.5], [1.0, 1.0, 1.0]]))
    torch.testing.assert_close(curve, torch.tensor([[0.5, 2.5 / 3, 1.0], [1.0, 1.0, 1.0]], dtype=torch.float64))


def test_dts_star_spends_the_whole_budget_on_deeper_branches():
    """T = 10, branch depths after steps 2, 4, 6, 8 (grid 3, 5, 7, 9: rollouts from there cost 7, 5, 3,
    1). With 25 NFE two rollouts from the top cost 20; the 5 left must still buy deeper branches."""
    mix = GaussianMixtureFlow(**MIX2D)
    res = steer(
        "dts_star",
        mix,
        ["a", "b", "c"],
        linear(C2D),
        nfe_budget=25,
        num_steps=10,
        lam=10.0,
        generator=torch.Generator().manual_seed(9),
    )
    assert res.info["nfe_per_prompt"] == [25, 25, 25] and res.nfe == 75
    assert all(n > 2 for n in res.info["rollouts"])


def test_velocity_cache_serves_remembered_rows_only():
    mix = GaussianMixtureFlow(**MIX2D)
    cache, cond = VelocityCache(mix), mix.encode(["a", "b", "c"])
    x = torch.randn(3, 2)
    v = mix.velocity(x, 0.5, cond)
    cache.remember(x, 0.5, cond, v)
    n0 = mix.nfe
    out = cache.velocity(x[[2, 2, 0]], torch.tensor(0.5), cond.select([2, 2, 0]))
    assert mix.nfe == n0 and torch.equal(out, v[[2, 2, 0]]) and cache.hits == 3
    cache.velocity(x + 1, 0.5, cond)  # new states: evaluated
    assert mix.nfe == n0 + 3
    cache.velocity(x, 0.4, cond)  # another sigma: evaluated, cache cleared
    assert mix.nfe == n0 + 6 and not cache._store


def test_step_lists_as_strings_equal_explicit_tables():
    """noise_steps='3-6' is the [T] table with noise on steps 3..6 only, and resample_steps='4-6' the
    list [4, 5, 6]: the same particles, bit for bit; ODE steps outside the window draw nothing."""
    mix, sig = GaussianMixtureFlow(**MIX2D), linear_sigmas(10)
    table = torch.tensor([0.0, 0.0, 0.0, 0.7, 0.7, 0.7, 0.7, 0.0, 0.0, 0.0])
    runs = [
        fk_steer(
            mix, ["a", "b"], linear(C2D), num_particles=3, sigmas=sig, generator=torch.Generator().manual_seed(1), **kw
        )
        for kw in (
            dict(noise_level=table, resample_steps=[4, 5, 6]),
            dict(noise_level=0.7, noise_steps="3-6", resample_steps="4-6"),
        )
    ]
    assert torch.equal(runs[0].candidates, runs[1].candidates) and torch.equal(runs[0].latents, runs[1].latents)
    for method, kw in (
        ("bon", dict(n=2, step="flow_sde")),
        ("beam", dict(num_children=2)),
        ("dts_star", dict(nfe_budget=40)),
    ):
        a, b = (
            steer(
                method, mix, ["a"], linear(C2D), sigmas=sig, generator=torch.Generator().manual_seed(2), **kw, **levels
            )
            for levels in (dict(noise_level=table), dict(noise_level=0.7, noise_steps=[3, 4, 5, 6]))
        )
        assert torch.equal(a.latents, b.latents), method


# --- bad input: one clear error each -------------------------------------------------------------
class _Hard(torch.nn.Module):
    name, differentiable = "hard", False

    def forward(self, images, prompts):
        return (images[:, 0] > 0).float()


@pytest.mark.parametrize(
    "method,kwargs,match",
    [
        ("fk", dict(num_particles=0), "num_particles=0 must be an int >= 1"),
        ("fk", dict(lam=-1.0), "lam=-1.0 must be a finite float >= 0"),
        ("fk", dict(resample_steps=[3, 10]), r"resample_steps=\[3, 10\] has \[10\] outside the schedule"),
        ("fk", dict(step="ode"), "FK steering needs a stochastic sampler"),
        ("fk", dict(noise_level=0.0), "FK steering needs a stochastic sampler"),
        ("dts", dict(nfe_budget=100, noise_level=0.0), "dts needs a stochastic sampler"),
        ("dts_star", dict(nfe_budget=100, step="ode"), "dts_star needs a stochastic sampler"),
        ("fk", dict(reward_grad_scale=1.0, reward=_Hard()), "needs a differentiable reward"),
        ("bon", dict(nfe_budget=9), "nfe_budget=9 is smaller than one rollout"),
        ("fk", dict(nfe_budget=9), "nfe_budget=9 is smaller than one rollout"),
        ("beam", dict(nfe_budget=5), "nfe_budget=5 is smaller than one rollout"),
        ("dts", dict(nfe_budget=9), "nfe_budget=9 is smaller than one rollout"),
        ("dts", dict(nfe_budget=40, branch_steps=[12]), r"branch_steps=\[12\] has \[12\] outside the schedule"),
        ("dts", dict(nfe_budget=40, branch_steps=[8]), r"grid indices \[9\] .* \(the last step is always noise-free\)"),
        (
            "dts_star",
            dict(nfe_budget=40, branch_steps=[4], noise_steps="0-2"),
            r"grid indices \[5\] up to the next branch",
        ),
        ("beam", dict(beam_width=0), "beam_width=0 must be an int >= 1"),
        ("fk", dict(noise_steps="6-12"), r"noise_steps \[10, 11, 12\] lie outside the 10 steps"),
        ("bon", dict(n=2, noise_steps="2-4"), "noise_steps='2-4' needs a noise level"),
        ("fk", dict(resample_steps="3-x"), "'3-x' is not a step or a range"),
        ("nope", dict(), "unknown steering method 'nope'"),
    ],
)
def test_bad_input_is_one_clear_error(method, kwargs, match):
    mix = GaussianMixtureFlow(**MIX2D)
    reward = kwargs.pop("reward", linear(C2D))
    with pytest.raises(ValueError, match=match):
        steer(method, mix, ["p"], reward, num_steps=10, **kwargs)


def test_default_branch_depths_skip_ode_tails():
    # 10 steps, noise on steps 0-4: the default depths are grid 3, 5, 7, 9 (after steps 2, 4, 6, 8); below 5, 7
    # and 9 only ODE steps follow, so they are dropped one by one and only grid 3 (and the root) branch
    assert branch_depths(None, steps_noise_table(10, 0.7, "0-4"), 10) == [3]
    assert branch_depths(None, steps_noise_table(10, 0.7, "all"), 10) == [3, 5, 7]  # the last step is an ODE step
    assert branch_depths("1,5", steps_noise_table(10, 0.7, "2,6"), 10) == [2, 6]


def test_registries_and_default_schedule():
    assert set(SEARCH) == {"bon", "fk", "beam", "svdd", "dts", "dts_star", "fmtt", "das", "noise_search"}
    assert set(POTENTIALS) == {"diff", "max", "sum", "rt"}
    assert default_schedule(100) == [20, 40, 60, 80, 99]  # the FK code's T2I schedule
    assert default_schedule(20) == [4, 8, 12, 16, 19]


# --- CLI -----------------------------------------------------------------------------------------
class _Redness(torch.nn.Module):
    name, differentiable = "redness", True

    def forward(self, images, prompts):
        return images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3))


def test_steer_cli_writes_images_and_json(tmp_path, monkeypatch):
    from flowalign import rewards
    from flowalign.cli import main

    monkeypatch.setattr(rewards, "load_reward", lambda name, path=None, **kw: _Redness())
    out = tmp_path / "run"
    assert (
        main(
            [
                "steer",
                "--model",
                "tiny-sd3",
                "--prompt",
                "two red circles",
                "--prompt",
                "a blue square",
                "--method",
                "fk",
                "--particles",
                "3",
                "--steps",
                "5",
                "--resample-steps",
                "1,3",
                "--noise-steps",
                "0-2",
                "--set",
                "final=argmax",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "steer.json").read_text())
    assert report["method"] == "fk_max" and report["nfe"] == 2 * 3 * 5 and len(report["rewards"]) == 2
    assert report["kwargs"]["resample_steps"] == [1, 3] and report["kwargs"]["final"] == "argmax"
    assert report["kwargs"]["noise_steps"] == [0, 1, 2]
    assert all((out / f).is_file() for f in report["images"])
    from flowalign.cli.steer import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(ValueError, match="must look like key=value"):
        config_from_args(parser.parse_args(["--set", "oops"]))
    with pytest.raises(ValueError, match="--noise-steps='6,': '' is not a step or a range"):
        config_from_args(parser.parse_args(["--noise-steps", "6,"]))
