"""Sigma grids equal diffusers' schedulers; windows and noise tables."""

import random

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from flowalign.sampling.schedule import (
    flux_mu,
    flux_sigmas,
    noise_table,
    parse_steps,
    progressive_window,
    random_window,
    shifted_sigmas,
    steps_noise_table,
    window_mask,
)


@pytest.mark.parametrize("steps", [1, 4, 10, 28])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_sd3_grid_equals_diffusers(steps, shift):
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(steps)
    assert torch.equal(shifted_sigmas(steps, shift), sched.sigmas)


def test_sd3_grid_by_hand():
    # shift 3 and 4 steps: [1, .858, .602, .0089, 0] (environment.md; sigma_min is shifted twice)
    torch.testing.assert_close(shifted_sigmas(4, 3.0), torch.tensor([1, 0.858, 0.602, 0.0089, 0]), atol=6e-4, rtol=0)


@pytest.mark.parametrize("steps,seq_len", [(4, 16), (10, 256), (28, 4096)])
def test_flux_grid_equals_diffusers(steps, seq_len):
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    mu = flux_mu(seq_len)
    import numpy as np

    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    assert torch.equal(flux_sigmas(steps, mu), sched.sigmas)


def test_flux_mu_by_hand():
    # m = (1.15 - .5) / (4096 - 256) = 1.6927e-4; mu(1024) = .5 + (1024 - 256) m = .63
    assert abs(flux_mu(1024) - 0.63) < 1e-9


def test_windows():
    assert window_mask(5).tolist() == [True, True, True, True, False]  # all but the last step
    assert window_mask(6, 2, 3).tolist() == [False, False, False, True, True, False]
    starts = {int(torch.nonzero(random_window(10, 3, 0, 5, random.Random(s)))[0]) for s in range(50)}
    assert starts == {0, 1, 2}  # uniform start in [lo, hi - size]
    # MixGRPO: window of 2 in 5 steps moves every 3 iterations: starts 0,0,0,1,1,1,2,...; 4 positions
    starts = [int(torch.nonzero(progressive_window(5, 2, it, every=3))[0]) for it in range(0, 15, 3)]
    assert starts == [0, 1, 2, 3, 0]


def test_noise_table():
    t = noise_table(4, 0.7)
    torch.testing.assert_close(t, torch.tensor([0.7, 0.7, 0.7, 0.0]))
    psi = torch.tensor([0.9, 0.5, 0.2, 0.1])
    torch.testing.assert_close(noise_table(4, psi, window_mask(4, 2, 1)), torch.tensor([0.0, 0.5, 0.2, 0.0]))


def test_step_lists_and_their_noise_tables():
    assert parse_steps("7-10") == [7, 8, 9, 10]
    assert parse_steps("4,8, 12") == [4, 8, 12]
    assert parse_steps("2-4,9,3") == [2, 3, 4, 9]  # union, sorted, unique
    assert parse_steps([5, 1, 5]) == [1, 5] and parse_steps(3) == [3]
    assert parse_steps(None) is None and parse_steps("all") is None
    # noise 0.7 on steps 1-2 of 5, ODE elsewhere; 'all' = noise_table's all-but-last default
    torch.testing.assert_close(steps_noise_table(5, 0.7, "1-2"), torch.tensor([0.0, 0.7, 0.7, 0.0, 0.0]))
    torch.testing.assert_close(steps_noise_table(5, 0.7, "all"), noise_table(5, 0.7))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: parse_steps("6,8-"), "'8-' is not a step or a range"),
        (lambda: parse_steps("9-6"), "'9-6' is not a step or a range"),
        (lambda: parse_steps([1.5]), "must be ints"),
        (lambda: steps_noise_table(10, 0.7, "6-12"), r"noise_steps \[10, 11, 12\] lie outside the 10 steps"),
        (lambda: shifted_sigmas(0), "num_steps=0"),
        (lambda: noise_table(4, -0.1), "noise_level must be >= 0"),
        (lambda: window_mask(4, 5), "does not fit in 4 steps"),
        (lambda: random_window(4, 3, 2, 4), "does not fit"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
