"""FMTT (steering/fmtt.py): exactness of the importance-weighted variant on an analytic mixture, the
search variant, NFE accounting and bad input.

The tilted target. For p(x) = sum_k w_k N(x; m_k, S_k) and r(x) = a.x,

    N(x; m, S) exp(lam a.x) = N(x; m + lam S a, S) exp(lam a.m + lam^2 a.S a / 2)

(complete the square: -(x-m).S^-1(x-m)/2 + lam a.x = -(x-m')S^-1(x-m')/2 + lam a.m + lam^2 a.S a/2 with
m' = m + lam S a), so p(x) exp(lam r(x)) / Z is again a mixture with means m_k + lam S_k a and weights
w_k exp(lam a.m_k + lam^2 a.S_k a / 2) / Z (``GaussianMixtureFlow.tilt_linear``). Its mean and
covariance are compared with the self-normalised particle estimates within 5 sigma (sigma^2 = the
target's variance, or the variance of the centred products, over Kong's ESS).
"""

from __future__ import annotations

import pytest
import torch

from flowalign.models.analytic import GaussianMixtureFlow
from flowalign.sampling.rollout import rollout
from flowalign.sampling.schedule import linear_sigmas
from flowalign.steering.fmtt import cost_per_particle, fmtt_steer, ode_flow_map
from flowalign.steering.resample import ess, normalize

MIX = dict(
    means=[[-2.0, 0.5], [1.5, -1.0], [0.5, 2.0]], stds=[[0.5, 0.3], [0.4, 0.6], [0.3, 0.3]], weights=[0.3, 0.5, 0.2]
)
A = torch.tensor([1.0, 0.5])
T = 50


def linear(a):
    return lambda x: x @ a.to(x.dtype)


def moments(x, log_w):
    """Pooled self-normalised mean / cov / ESS over G groups: x [G, K, D], log_w [G, K]."""
    w = (normalize(log_w) / log_w.shape[0]).reshape(-1, 1)
    x = x.double().reshape(-1, x.shape[-1])
    mean = (w * x).sum(0)
    d = x - mean
    cov = (w[:, :, None] * d[:, :, None] * d[:, None, :]).sum(0)
    return mean, cov, float(ess(log_w).sum())


def assert_matches(target, mean, cov, n_eff):
    ref = target.sample_data(100_000, torch.Generator().manual_seed(0)).double()
    d = ref - ref.mean(0)
    mean_tol = 5 * (d.var(0) / n_eff).sqrt()
    cov_tol = 5 * ((d[:, :, None] * d[:, None, :]).var(0) / n_eff).sqrt()
    assert ((mean - target.mean()).abs() < mean_tol).all(), (mean, target.mean(), mean_tol)
    assert ((cov - target.cov()).abs() < cov_tol).all(), (cov, target.cov(), cov_tol)


def run(lam, seed, **kw):
    """2 x 1000 particles, T = 50 steps, the 3-step ODE flow map as a callable (identical particles to the
    built-in 'ode' map, see test_fmtt_search_climbs_and_callable_flow_map, without its velocity cache,
    whose per-row bookkeeping would dominate the time of this cheap model)."""
    mix, sig = GaussianMixtureFlow(**MIX), linear_sigmas(T)
    fmap = ode_flow_map(mix, sig, 3)
    opts = dict(num_particles=1000, lam=lam, sigmas=sig, flow_map=fmap, generator=torch.Generator().manual_seed(seed))
    return mix, fmtt_steer(mix, ["p"] * 2, linear(A), **(opts | kw))


@pytest.mark.parametrize("grad", [0.0, pytest.param(1.0, marks=pytest.mark.slow)])
def test_fmtt_weights_match_the_tilted_mixture(grad):
    mix, res = run(1.0, 0, reward_grad_scale=grad)
    mean, cov, n_eff = moments(res.candidates, res.log_weights)
    assert n_eff > 700
    target = mix.tilt_linear(A, 1.0)
    assert (target.mean() - mix.mean()).abs().max() > 0.5  # the tilt moves the mean far beyond the bounds
    assert_matches(target, mean, cov, n_eff)
    # NFE per particle: 50 steps + the look-ahead after steps 0..48 from grid points i = 1..49, min(3, 50 - i)
    # evaluations each (the callable reuses none): 47 x 3 + 2 + 1 = 144; the gradient proposal on the 49
    # stochastic steps j = 0..48 (the last step is ODE): min(3, 50 - j) each = 48 x 3 + 2 = 146.
    per = 50 + 144 + (146 if grad else 0)
    assert res.nfe == 2 * 1000 * per
    # the built-in map reuses the first look-ahead velocity: 47 x 2 + 1 + 0 = 95 extra instead of 144
    levels = torch.full((T,), 0.7).index_fill(0, torch.tensor([T - 1]), 0)
    assert cost_per_particle(linear_sigmas(T), list(range(T)), 3, levels, grad > 0) == per - 144 + 95


def test_fmtt_lam_zero_is_the_base_sampler_bit_for_bit():
    """lam = 0: the weights stay 0 (ESS = K: never resampled) and the look-ahead velocity served from the
    cache equals the model's, so the particles are exactly the plain flow_sde rollout."""
    mix, sig = GaussianMixtureFlow(**MIX), linear_sigmas(20)
    res = fmtt_steer(
        mix, ["a", "b"], linear(A), num_particles=5, lam=0.0, sigmas=sig, generator=torch.Generator().manual_seed(1)
    )
    g = torch.Generator().manual_seed(1)
    plain = rollout(
        mix, mix.encode(["a", "b"]).repeat(5), mix.initial_noise(10, generator=g), sig, "flow_sde", 0.7, generator=g
    )
    assert torch.equal(res.candidates.reshape(10, 2), plain.final)
    assert torch.equal(res.log_weights, torch.zeros_like(res.log_weights))


def test_fmtt_search_climbs_and_callable_flow_map():
    mix = GaussianMixtureFlow(**MIX)
    sig = linear_sigmas(20)
    fmap = ode_flow_map(mix, sig, 2)
    # the callable flow map equals the built-in 'ode' one (same grid, same k): identical particles
    kw = dict(num_particles=8, lam=5.0, sigmas=sig, resample_steps="3-15", flow_map_steps=2)
    a = fmtt_steer(mix, ["p"] * 3, linear(A), generator=torch.Generator().manual_seed(2), **kw)
    b = fmtt_steer(mix, ["p"] * 3, linear(A), flow_map=fmap, generator=torch.Generator().manual_seed(2), **kw)
    assert torch.equal(a.candidates, b.candidates)
    assert a.nfe == 3 * 8 * (20 + 13) and b.nfe == 3 * 8 * (20 + 13 * 2)  # the callable's first velocity is not reused
    # search keeps the top half by look-ahead reward: far higher rewards than the weighted sampler's mean
    s = fmtt_steer(mix, ["p"] * 16, linear(A), mode="search", generator=torch.Generator().manual_seed(3), **kw)
    base = fmtt_steer(mix, ["p"] * 16, linear(A), **(kw | {"lam": 0.0}), generator=torch.Generator().manual_seed(3))
    assert s.candidate_rewards.mean() > base.candidate_rewards.mean() + 1.0
    assert s.info["mode"] == "search" and s.method == "fmtt_search"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "beam"}, "unknown mode 'beam'"),
        ({"tilt": "cubic"}, "unknown tilt 'cubic'"),
        ({"flow_map": "x1"}, "must be 'ode'"),
        ({"flow_map_steps": 0}, "flow_map_steps=0"),
        ({"reward_grad_scale": -1.0}, "must be >= 0"),
        ({"ess_threshold": 2.0}, r"must be in \[0, 1\]"),
        ({"nfe_budget": 5}, "smaller than one rollout"),
        ({"flow_map": lambda x, s, c: x, "nfe_budget": 100}, "a callable's cost is unknown"),
    ],
)
def test_bad_input_is_one_clear_error(kwargs, match):
    mix = GaussianMixtureFlow(**MIX)
    with pytest.raises(ValueError, match=match):
        fmtt_steer(mix, ["p"], linear(A), num_steps=10, **kwargs)


def test_nfe_budget_sets_particles_and_non_differentiable_reward():
    mix = GaussianMixtureFlow(**MIX)
    # 10 steps, look-ahead after steps 0..8 with k = 4: grids from points 1..9 have min(4, 10 - i) steps,
    # 3 + 3 + 3 + 3 + 3 + 3 + 2 + 1 + 0 = 21 extra -> 31 per particle; 100 // 31 = 3 particles
    res = fmtt_steer(mix, ["p"], linear(A), num_steps=10, nfe_budget=100, generator=torch.Generator().manual_seed(0))
    assert res.info["num_particles"] == 3 and res.nfe == 3 * 31

    class Hard(torch.nn.Module):
        name, differentiable = "hard", False

        def forward(self, images, prompts):
            return images[:, 0]

    with pytest.raises(ValueError, match="needs a differentiable reward"):
        fmtt_steer(mix, ["p"], Hard(), num_steps=10, reward_grad_scale=1.0)


# --- registration: `flowalign steer --method fmtt|das|noise_search` -----------------------------------
@pytest.mark.parametrize(
    "flags, expected",
    [
        (
            ["--method", "fmtt", "--set", "mode=search", "--set", "flow_map_steps=2"],
            {"mode": "search", "flow_map_steps": 2},
        ),
        (["--method", "das", "--set", "tempering_gamma=0.05"], {"tempering_gamma": 0.05}),
        (["--method", "noise_search", "--set", "mode=random"], {"mode": "random", "population": 3}),
    ],
)
def test_steer_command_wires_the_new_methods(flags, expected, tmp_path):
    """The steer command's config -> checks -> keyword arguments -> ``steer`` (on the analytic flow)."""
    import argparse

    from flowalign.cli.steer import add_arguments, config_from_args
    from flowalign.steering import steer
    from flowalign.steering.config import method_kwargs, validate

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = [
        "--model",
        "tiny-sd3",
        "--prompt",
        "p",
        "--particles",
        "3",
        "--reward",
        "testbed_aesthetic",
        "--out",
        str(tmp_path),
    ]
    cfg = config_from_args(parser.parse_args(argv + flags))
    validate(cfg)
    kw = method_kwargs(cfg.method, 10)
    assert kw.items() >= expected.items()
    res = steer(cfg.method.kind, GaussianMixtureFlow(**MIX), ["p"], linear(A), num_steps=10, **kw)
    assert res.latents.shape == (1, 2) and res.nfe > 0


@pytest.mark.parametrize(
    "flags, match",
    [
        (
            ["--method", "fmtt", "--set", "mode=beam"],
            r"method.options.mode='beam' is unknown; choose one of \['search', 'weights'\]",
        ),
        (["--method", "fmtt", "--set", "flow_map_steps=0"], "method.options.flow_map_steps"),
        (["--method", "das", "--set", "tempering_gamma=0"], "method.options.tempering_gamma"),
        (["--method", "noise_search", "--set", "mutation=1.5"], "method.options.mutation"),
        (["--method", "noise_search", "--set", "mode=grid"], "method.options.mode='grid' is unknown"),
    ],
)
def test_steer_command_refuses_bad_options(flags, match, tmp_path):
    import argparse

    from flowalign.cli.steer import add_arguments, config_from_args
    from flowalign.steering.config import validate

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(ValueError, match=match):
        validate(
            config_from_args(
                parser.parse_args(["--model", "tiny-sd3", "--prompt", "p", "--out", str(tmp_path), *flags])
            )
        )


# --- bench_steering's FMTT rows and the aesthetic proxy's sampler defaults (benchmarks/steering_extra.py) ----
def test_bench_steering_runs_both_fmtt_modes_with_the_reward_tuned_sampler(monkeypatch):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_steering
    import steering_extra

    b = bench_steering.parse(["--reward", "testbed_aesthetic"])
    assert (b.args.noise, b.args.noise_steps, b.fk_steps) == (1.2, "all", list(range(1, 19)))
    assert b.sde["noise_level"].tolist() == pytest.approx([1.2] * 19 + [0.0])  # noise on every step but the last
    assert b.args.extra_methods == ["fmtt", "fmtt_weights", "das", "noise_search"]
    modes = {m: steering_extra._plan(b, m, 4, True)[1]["mode"] for m in ("fmtt", "fmtt_weights")}
    assert modes == {"fmtt": "search", "fmtt_weights": "weights"}
    flags = bench_steering.parse(["--reward", "testbed_aesthetic", "--noise", "0.7", "--fk-steps", "7-14"])
    assert (flags.args.noise, flags.args.noise_steps, flags.fk_steps) == (0.7, "all", list(range(7, 15)))
    plain = bench_steering.parse([])  # the compositional checker keeps the FK-tuned window
    assert (plain.args.noise, plain.args.noise_steps, plain.fk_steps) == (0.7, "6-15", list(range(7, 15)))
