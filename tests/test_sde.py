"""Step functions against hand-computed numbers, and their shared invariants."""

import math

import pytest
import torch

from flowalign.sampling.sde import STEPS, cps, cps_flowgrpo, dance_sde, flow_sde, gaussian_log_prob, get_step, ode

X, V = torch.tensor([[1.0]]), torch.tensor([[0.5]])
ONE = torch.tensor([[1.0]])  # the given standard-normal draw


def close(t, value, tol=1e-6):
    assert abs(float(t.flatten()[0]) - value) < tol, (float(t.flatten()[0]), value)


def test_ode_by_hand():
    # dt = 0.25 - 0.5 = -0.25; x_next = 1 + (-0.25)(0.5) = 0.875; x0_pred = 1 - 0.5 * 0.5 = 0.75
    out = ode(X, V, 0.5, 0.25)
    close(out.x_next, 0.875), close(out.mean, 0.875), close(out.x0_pred, 0.75)
    close(out.std, 0.0), close(out.log_prob, 0.0)


def test_flow_sde_by_hand():
    # sigma = .8, sigma_next = .6, a = .5: g = .5 sqrt(.8 / .2) = 1; dt = -.2
    # eps_pred = 1 + (1 - .8)(.5) = 1.1; mean = 1 - .2 (.5 + 1 / 1.6 * 1.1) = 1 - .2 (1.1875) = .7625
    # flow_grpo's form gives the same: 1 (1 + 1(-.2)/1.6) + .5 (1 + 1(.2)/1.6)(-.2) = .875 - .1125 = .7625
    # std = g sqrt(.2) = .4472136; x_next = .7625 + .4472136 = 1.2097136
    # log_prob = -(.4472136^2)/(2 .2) - log .4472136 - log sqrt(2 pi) = -.5 + .8047190 - .9189385 = -.6142195
    out = flow_sde(X, V, 0.8, 0.6, 0.5, noise=ONE)
    close(out.mean, 0.7625), close(out.std, 0.4472136), close(out.x_next, 1.2097136)
    close(out.log_prob, -0.6142195), close(out.x0_pred, 0.6)


def test_flow_sde_first_step_std_is_noise_level():
    # sigma = 1: the denominator 1 - sigma uses sigma_next: g = .7 sqrt(1 / .1); std = g sqrt(.1) = .7
    out = flow_sde(X, V, 1.0, 0.9, 0.7, noise=ONE)
    close(out.std, 0.7)
    # mean = 1 + (-.1)(.5 + g^2 / 2 * (1 + 0)) with g^2 = 4.9: 1 - .1 (.5 + 2.45) = .705
    close(out.mean, 0.705)


def test_dance_sde_by_hand():
    # eta = .5 at sigma = .8 -> .6: mean = 1 - .2 (.5 + .25 / 1.6 * 1.1) = 1 - .2 (.671875) = .865625
    # std = .5 sqrt(.2) = .2236068; log_prob = -.5 - log .2236068 - .9189385 = .0789276
    out = dance_sde(X, V, 0.8, 0.6, 0.5, noise=ONE)
    close(out.mean, 0.865625), close(out.std, 0.2236068), close(out.x_next, 1.0892318)
    close(out.log_prob, 0.0789276)


def test_cps_by_hand():
    # a = .5: std = .6 sin(pi / 4) = .4242641; x0_pred = .6; eps_pred = 1.1
    # mean = (1 - .6)(.6) + sqrt(.36 - .18)(1.1) = .24 + .4666905 = .7066905
    # log_prob = -.5 - log .4242641 - .9189385 = -.5615393; flow_grpo's: -(.4242641^2) = -.18
    out = cps(X, V, 0.8, 0.6, 0.5, noise=ONE)
    close(out.mean, 0.7066905), close(out.std, 0.4242641), close(out.x_next, 1.1309546)
    close(out.log_prob, -0.5615393)
    close(cps_flowgrpo(X, V, 0.8, 0.6, 0.5, noise=ONE).log_prob, -0.18)


def test_log_prob_is_mean_over_elements():
    # two elements with z = 1 and z = 3 under std 2: per element -z^2/2 - log 2 - .9189385
    # -> (-.5 - .6931472 - .9189385, -4.5 - .6931472 - .9189385); mean = -4.1120857
    x_next = torch.tensor([[2.0, 6.0]])
    lp = gaussian_log_prob(x_next, torch.zeros(1, 2), torch.tensor([2.0]))
    close(lp, -4.1120857)


@pytest.mark.parametrize("kind", ["flow_sde", "dance_sde", "cps"])
def test_noise_level_zero_is_euler(kind):
    x, v = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    out = get_step(kind)(x, v, 0.7, 0.4, 0.0)
    torch.testing.assert_close(out.x_next, ode(x, v, 0.7, 0.4).x_next, atol=1e-6, rtol=0)
    assert float(out.std.abs().max()) == 0 and float(out.log_prob.abs().max()) == 0


@pytest.mark.parametrize("kind", sorted(STEPS))
def test_one_fixed_type_and_fp32(kind):
    x, v = torch.randn(2, 3, dtype=torch.bfloat16), torch.randn(2, 3, dtype=torch.float16)
    out = get_step(kind)(
        x, v, torch.tensor([0.9, 0.5]), torch.tensor([0.8, 0.3]), 0.7, generator=torch.Generator().manual_seed(0)
    )
    assert type(out).__name__ == "StepOut"
    assert all(t.dtype == torch.float32 for t in (out.x_next, out.mean, out.std, out.log_prob, out.x0_pred))
    assert out.std.shape == (2,) and out.log_prob.shape == (2,)


@pytest.mark.parametrize("kind", ["flow_sde", "dance_sde", "cps", "cps_flowgrpo"])
def test_rescoring_own_sample_is_exact_and_drift_shifts_mean(kind):
    fn = get_step(kind)
    x, v = torch.randn(4, 8), torch.randn(4, 8)
    out = fn(x, v, 0.6, 0.5, 0.8, generator=torch.Generator().manual_seed(1))
    again = fn(x, v, 0.6, 0.5, 0.8, x_next=out.x_next)
    assert torch.equal(again.log_prob, out.log_prob)
    drift = torch.full_like(x, 0.1)
    guided = fn(x, v, 0.6, 0.5, 0.8, noise=torch.zeros_like(x), drift=drift)
    torch.testing.assert_close(guided.mean, out.mean + drift)


def test_given_noise_and_per_row_generators():
    x, v = torch.zeros(2, 5), torch.zeros(2, 5)
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    a = dance_sde(x, v, 0.5, 0.4, 1.0, generator=gens)
    # row 1 alone with the same seed gives the same draw: per-row reproducibility
    b = dance_sde(x[1:], v[1:], 0.5, 0.4, 1.0, generator=[torch.Generator().manual_seed(4)])
    torch.testing.assert_close(a.x_next[1:], b.x_next)
    z = torch.randn(2, 5)
    c = dance_sde(x, v, 0.5, 0.4, 1.0, noise=z)
    torch.testing.assert_close(c.x_next, z * math.sqrt(0.1))


def test_unknown_kind_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown step kind 'euler_sde'.*flow_sde"):
        get_step("euler_sde")
