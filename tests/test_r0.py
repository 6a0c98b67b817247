"""R0 (arXiv 2503.13070): the re-noising step (eta = 0 is the Euler step), the adapter's deviation from
the base by hand, the reward gradient with and without intermediate supervision by hand, the bad
inputs, and a short 2-step testbed run that moves the LoRA."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from test_draft import SHAPE, LinearFlow, grads, inputs, not_differentiable, run_tiny

from flowalign.train.objectives import OBJECTIVES
from flowalign.train.objectives.r0 import R0Options, check_r0, lora_deviation, r0_unit, renoise


def test_renoise_eta_zero_is_the_euler_step_and_eta_one_fresh_noise():
    g = torch.Generator().manual_seed(0)
    x, v, noise = (torch.randn(2, 5, generator=g) for _ in range(3))
    x0, x_next = renoise(x, v, 0.75, 0.5, torch.zeros(2), noise)
    assert torch.allclose(x0, x - 0.75 * v)
    assert torch.allclose(x_next, x + (0.5 - 0.75) * v, atol=1e-6)  # (1 - s')(x - s v) + s'(x + (1 - s) v)
    _, x_next = renoise(x, v, 0.75, 0.5, torch.ones(2), noise)
    assert torch.allclose(x_next, 0.5 * (x - 0.75 * v) + 0.5 * noise, atol=1e-6)


def test_lora_deviation_by_hand():
    # A = [[1, 2]] (r 1, in 2), B = [[3], [0]] (out 2), scale .5: scale B A = [[1.5, 3], [0, 0]] -> 2.25 + 9 = 11.25
    layer = torch.nn.Module()
    layer.lora_A = torch.nn.ModuleDict({"default": torch.nn.Linear(2, 1, bias=False)})
    layer.lora_B = torch.nn.ModuleDict({"default": torch.nn.Linear(1, 2, bias=False)})
    layer.scaling = {"default": 0.5}
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(torch.tensor([[1.0, 2.0]]))
        layer.lora_B["default"].weight.copy_(torch.tensor([[3.0], [0.0]]))
    assert float(lora_deviation(torch.nn.Sequential(layer)).detach()) == pytest.approx(11.25)
    with pytest.raises(ValueError, match="needs LoRA adapters"):
        lora_deviation(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_reward_gradient_by_hand():
    # 4 steps (sigmas 1, .75, .5, .25, 0), eta 0, detached chain, v = a x + b: x0_k = x - s_k (a x + b),
    # dx0_k/db = -s_k per element. Last step only: dL/db = 12 x .25 = 3.
    # Intermediate: mean over k of 12 s_k = 12 (1 + .75 + .5 + .25) / 4 = 7.5
    latents = torch.ones(2, 5, *SHAPE)
    for intermediate, expected in ((False, 3.0), (True, 7.5)):
        model = LinearFlow()
        opts = R0Options(eta_max=0.0, intermediate=intermediate, weight_reg=0.0)
        _, gb, out = grads(model, r0_unit(inputs(model, latents), opts))
        assert gb == pytest.approx(expected) and float(out.stats["eta"]) == 0.0
    # the whole chain's graph (K = T): x_4 = x_0 - b (1 - 0) at a = 0 -> dL/db = 12 on the last step
    model = LinearFlow()
    opts = R0Options(eta_max=0.0, intermediate=False, weight_reg=0.0, backprop_chain=True)
    _, gb, _ = grads(model, r0_unit(inputs(model, latents), opts))
    assert gb == pytest.approx(12.0)


def test_bad_inputs_one_clear_error_each():
    with pytest.raises(ValueError, match=r"sample.num_steps=20 must be in \[1, 8\]"):
        check_r0(R0Options(), SimpleNamespace(sample=SimpleNamespace(num_steps=20)))
    check_r0(R0Options(), SimpleNamespace(sample=SimpleNamespace(num_steps=4)))
    model = LinearFlow()
    with pytest.raises(ValueError, match=r"objective.kind='r0' backpropagates the reward, but reward "):
        r0_unit(inputs(model, torch.ones(2, 5, *SHAPE), reward=not_differentiable), R0Options())
    assert OBJECTIVES["r0"].check is check_r0


def test_testbed_two_step_generator_moves_the_lora(tmp_path):
    over = ["objective.kind=r0", "sample.num_steps=2", "sample.window.options.start=0"]
    res, params = run_tiny(tmp_path, over)
    first = res.history[0]
    assert res.state.optimizer_step == 1 and res.state.skipped_steps == 0
    assert first["train/weight_reg"] == 0.0  # B = 0: the adapter starts at the base
    lora_b = [n for n in params if "lora_B" in n]
    assert lora_b and all(not torch.equal(*params[n]) for n in lora_b)
