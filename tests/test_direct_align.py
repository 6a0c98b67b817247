"""Direct-Align (SRPO, arXiv 2509.06942): exact recovery by interpolation with the exact velocity, the
reward gradient's 1 step / (1 - sigma_next) factor and the discount by hand, the bad reward, and a
short testbed run."""

from __future__ import annotations

import pytest
import torch
from test_draft import SHAPE, LinearFlow, grads, inputs, not_differentiable, run_tiny

from flowalign.train.objectives import OBJECTIVES
from flowalign.train.objectives.direct_align import (
    DirectAlignOptions,
    check_direct_align,
    direct_align_unit,
    recover,
)


@pytest.mark.parametrize("sigma,sigma_next", [(1.0, 0.9), (0.75, 0.5), (0.3, 0.1), (0.25, 0.0)])
def test_recovery_is_exact_with_the_exact_velocity(sigma, sigma_next):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    x_sigma = (1 - sigma) * x0 + sigma * eps
    assert torch.allclose(recover(x_sigma, eps - x0, eps, sigma, sigma_next), x0, atol=1e-5)
    # a velocity error e moves the image by -(sigma - sigma_next) / (1 - sigma_next) e
    err = torch.ones(3, 8)
    shift = recover(x_sigma, eps - x0 + err, eps, sigma, sigma_next) - x0
    assert torch.allclose(shift, -(sigma - sigma_next) / (1 - sigma_next) * err, atol=1e-5)


def test_reward_gradient_and_discount_by_hand():
    # j = 1: sigma .75 -> .5; v = a x + b, dx0_hat/db = -(.25 / .5) = -.5 per element
    # loss = -w mean sum_12 -> dL/db = 12 x .5 x w; w = 1 ('none') -> 6; shift 3: w = 2.25 / 2.5 = .9 -> 5.4
    model = LinearFlow()
    latents = torch.ones(2, 5, *SHAPE)
    opts = DirectAlignOptions(discount="none")
    _, gb, out = grads(model, direct_align_unit(inputs(model, latents, steps=[1]), opts), j=1)
    assert gb == pytest.approx(6.0) and float(out.stats["sigma"]) == 0.75
    model = LinearFlow()
    _, gb, out = grads(model, direct_align_unit(inputs(model, latents, steps=[1]), DirectAlignOptions()), j=1)
    assert gb == pytest.approx(5.4) and float(out.stats["discount"]) == pytest.approx(0.9)
    # j = 3: sigma .25 -> 0 is ReFL's x0_pred: dx0/db = -.25 -> 12 x .25 = 3, x w = .75 / 1.5 = .5 -> 1.5
    model = LinearFlow()
    _, gb, _ = grads(model, direct_align_unit(inputs(model, latents, steps=[3]), DirectAlignOptions()), j=3)
    assert gb == pytest.approx(1.5)


def test_bad_inputs_one_clear_error_each():
    model = LinearFlow()
    with pytest.raises(ValueError, match=r"objective.kind='direct_align' backpropagates the reward, but reward "):
        direct_align_unit(inputs(model, torch.ones(2, 5, *SHAPE), reward=not_differentiable), DirectAlignOptions())
    with pytest.raises(ValueError, match=r"objective.options.discount='exp' must be 'shift'"):
        check_direct_align(DirectAlignOptions(discount="exp"), None)
    assert OBJECTIVES["direct_align"].check is check_direct_align


def test_testbed_step_moves_the_lora(tmp_path):
    res, params = run_tiny(tmp_path, ["objective.kind=direct_align", "sample.window.options.start=1"])
    assert res.state.optimizer_step == 1 and res.state.skipped_steps == 0
    lora_b = [n for n in params if "lora_B" in n]
    assert lora_b and all(not torch.equal(*params[n]) for n in lora_b)
