"""ReFL (arXiv 2304.05977): the reward gradient of the one-step x0 prediction at the window's step by
hand on a linear flow, the base-velocity regulariser, the bad reward, and a short testbed run."""

from __future__ import annotations

import pytest
import torch
from test_draft import SHAPE, LinearFlow, grads, inputs, not_differentiable, run_tiny

from flowalign.train.objectives import OBJECTIVES
from flowalign.train.objectives.refl import ReFLOptions, refl_unit


def test_one_step_prediction_gradient_by_hand():
    # j = 2 (sigma .5), x_2 = 2: x0_pred = x - .5 (a x + b) = 2 - .5 (0 + .5) = 1.75 per element
    # dx0/db = -.5, dx0/da = -.5 x = -1 -> loss = -mean sum_12: dL/db = 6, dL/da = 12
    model = LinearFlow()
    latents = torch.full((2, 5, *SHAPE), 2.0)
    ga, gb, out = grads(model, refl_unit(inputs(model, latents, steps=[2]), ReFLOptions()), j=2)
    assert (ga, gb) == (pytest.approx(12.0), pytest.approx(6.0))
    assert float(out.stats["reward_grad"]) == pytest.approx(12 * 1.75) and float(out.stats["sigma"]) == 0.5
    # j = 3 (sigma .25): dx0/db = -.25 -> dL/db = 3; reward_scale 2 doubles it
    model = LinearFlow()
    _, gb, _ = grads(model, refl_unit(inputs(model, latents, steps=[3]), ReFLOptions(reward_scale=2.0)), j=3)
    assert gb == pytest.approx(6.0)


def test_base_velocity_regulariser_by_hand():
    # LinearFlow has no adapter: its reference is itself, so v - v_ref = 0 and the term adds 0 (and no grad)
    model = LinearFlow()
    latents = torch.full((2, 5, *SHAPE), 2.0)
    _, gb, out = grads(model, refl_unit(inputs(model, latents, steps=[2]), ReFLOptions(beta=3.0)), j=2)
    assert gb == pytest.approx(6.0) and float(out.stats["velocity_reg"]) == 0.0


def test_non_differentiable_reward_is_one_clear_error():
    model = LinearFlow()
    with pytest.raises(ValueError, match=r"objective.kind='refl' backpropagates the reward, but reward "):
        refl_unit(inputs(model, torch.ones(2, 5, *SHAPE), reward=not_differentiable), ReFLOptions())
    assert OBJECTIVES["refl"].options is ReFLOptions


def test_testbed_step_moves_the_lora(tmp_path):
    res, params = run_tiny(tmp_path, ["objective.kind=refl", "sample.window.options.start=3"])
    assert res.state.optimizer_step == 1 and res.state.skipped_steps == 0
    lora_b = [n for n in params if "lora_B" in n]
    assert lora_b and all(not torch.equal(*params[n]) for n in lora_b)
