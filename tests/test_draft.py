"""DRaFT-K (arXiv 2309.17400): the reward gradient through the last K steps by hand on a linear flow,
the bad inputs (K > steps, a non-differentiable reward) and a short testbed run that moves the LoRA."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch

from flowalign.sampling.schedule import linear_sigmas
from flowalign.train.objectives import OBJECTIVES, UnitInputs
from flowalign.train.objectives.draft import DRaFTOptions, check_draft, draft_unit
from flowalign.types import Cond, Rollout

SHAPE = (3, 2, 2)  # a latent is its own image: 12 elements


class LinearFlow:
    """v(x, sigma) = a x + b with trainable scalars a, b; decode is the identity (images = latents)."""

    def __init__(self, a: float = 0.0, b: float = 0.5):
        self.a = torch.nn.Parameter(torch.tensor(a))
        self.b = torch.nn.Parameter(torch.tensor(b))
        self.nfe = 0

    def velocity(self, x, sigma, cond):
        return self.a * x + self.b

    def decode(self, x):
        return x

    @contextlib.contextmanager
    def reference(self):
        yield


def linear_reward(images, prompts):  # r = sum of the pixels (c = 1 everywhere)
    return images.flatten(1).sum(1)


linear_reward.differentiable = True


def not_differentiable(images, prompts):
    return images.flatten(1).sum(1).detach()


not_differentiable.differentiable = False


def inputs(model, latents, reward=linear_reward, steps=(0,), num_steps=4) -> UnitInputs:
    """A batch of len(latents) rows whose stored trajectory holds ``latents`` [B, T+1, *S]."""
    b = latents.shape[0]
    ro = Rollout(latents, torch.zeros(b, num_steps), linear_sigmas(num_steps), torch.zeros(num_steps), "flow_sde")
    cond = Cond(embeds={"row": torch.zeros(b, 1)}, prompts=["p"] * b)
    cfg = SimpleNamespace(sample=SimpleNamespace(num_steps=num_steps), train=SimpleNamespace(seed=0))
    return UnitInputs(cfg, model, cond, ro, list(steps), 0, list(range(b)), reward_fn=reward)


def grads(model, unit, j=0):
    rows = torch.arange(2)
    out = unit(rows, j, torch.zeros(2), torch.ones(2, dtype=torch.bool))
    out.loss.backward()
    return float(model.a.grad), float(model.b.grad), out


@pytest.mark.parametrize("checkpoint", [False, pytest.param(True, marks=pytest.mark.e2e)])  # True imports dynamo (~6 s)
def test_gradient_through_the_last_k_steps_by_hand(checkpoint):
    # sigmas 1, .75, .5, .25, 0 (dt = -.25); K = 2 starts at x_2 = 1 (sigma .5): with a = 0, b = .5
    # x_3 = x_2 - .25 (a x_2 + b) = .875, x_4 = x_3 - .25 (a x_3 + b) = .75 per element
    # dx_4/db = -.25 (1 - .25 a) - .25 = -.5 ; dx_4/da = -.25 x_2 - .25 x_3 = -.25 - .21875 = -.46875
    # loss = -mean_rows sum_12 x_4 -> dL/db = 12 x .5 = 6 ; dL/da = 12 x .46875 = 5.625
    model = LinearFlow()
    latents = torch.ones(2, 5, *SHAPE)
    ga, gb, out = grads(model, draft_unit(inputs(model, latents), DRaFTOptions(k=2, checkpoint=checkpoint)))
    assert gb == pytest.approx(6.0) and ga == pytest.approx(5.625)
    assert float(out.stats["reward_grad"]) == pytest.approx(12 * 0.75)
    assert float(out.loss.detach()) == pytest.approx(-9.0)


def test_k_one_and_k_all_steps():
    # K = 1 from x_3 = 1 (sigma .25): x_4 = x_3 - .25 (a x_3 + b) -> dL/db = 12 x .25 = 3, dL/da = 12 x .25 = 3
    model = LinearFlow()
    ga, gb, _ = grads(model, draft_unit(inputs(model, torch.ones(2, 5, *SHAPE)), DRaFTOptions(k=1)))
    assert (ga, gb) == (pytest.approx(3.0), pytest.approx(3.0))
    # K = T = 4 from x_0 = 1: dx_4/db = -(1 - 0) = -1 at a = 0 -> dL/db = 12
    model = LinearFlow()
    _, gb, _ = grads(model, draft_unit(inputs(model, torch.ones(2, 5, *SHAPE)), DRaFTOptions(k=4)))
    assert gb == pytest.approx(12.0)


def test_bad_inputs_one_clear_error_each():
    cfg = SimpleNamespace(sample=SimpleNamespace(num_steps=4))
    check_draft(DRaFTOptions(k=4), cfg)
    with pytest.raises(ValueError, match=r"objective.options.k=5 is larger than the 4 sampler steps"):
        check_draft(DRaFTOptions(k=5), cfg)
    model = LinearFlow()
    with pytest.raises(ValueError, match=r"objective.kind='draft' backpropagates the reward, but reward "):
        draft_unit(inputs(model, torch.ones(2, 5, *SHAPE), reward=not_differentiable), DRaFTOptions())
    assert OBJECTIVES["draft"].options is DRaFTOptions and OBJECTIVES["draft"].check is check_draft


def test_hard_checker_reward_is_refused_at_config_time():
    from flowalign.overrides import apply_overrides
    from flowalign.train.checks import validate
    from flowalign.train.config import RENAMED
    from flowalign.train.presets import get_preset

    for kind in ("draft", "refl", "direct_align", "r0"):  # the testbed's default reward: the checker's fraction
        cfg = apply_overrides(get_preset("testbed"), [f"objective.kind={kind}", "sample.num_steps=4"], RENAMED)
        with pytest.raises(ValueError, match=rf"objective.kind='{kind}' backpropagates the reward, but reward "):
            validate(cfg)
    validate(get_preset("testbed_draft"))  # output=soft: differentiable


# --- a short testbed run --------------------------------------------------------------------------------
TINY_TARGETS = "attn.to_q,attn.to_k,attn.to_v,attn.to_out.0,attn.add_k_proj,attn.add_v_proj"
TINY = [  # 16 px images (8x8 latents), 4 ODE steps, one trained step, one prompt x 2 images, no eval
    "model.path=tiny-sd3",
    "model.resolution=16",
    f"model.lora_targets={TINY_TARGETS}",
    "model.lora_rank=4",
    "model.lora_alpha=8",
    "sample.num_steps=4",
    "sample.noise_level=0",
    "sample.window.kind=fixed",
    "sample.window.options.size=1",
    "sample.window.options.start=2",
    "sample.same_noise=false",
    "sample.group_size=2",
    "sample.groups_per_iteration=1",
    "sample.batch_size=2",
    "eval.every=0",
    "train.ema=false",
    "train.iterations=1",
    "log.progress=false",
    "optim.lr=1e-2",
    "optim.steps_per_iteration=1",
    'reward.weights={"testbed_aesthetic": 1.0}',  # the config's reward (the runs pass their own reward_fn)
]


def brightness(images, prompts, **meta):  # a differentiable stand-in reward: mean pixel value
    return images.mean((1, 2, 3))


brightness.differentiable = True


def run_tiny(tmp_path, overrides: list[str], reward=brightness):
    """One iteration on the tiny SD3 pipeline -> (result, {name: (before, after)} of the LoRA tensors)."""
    from flowalign.overrides import apply_overrides
    from flowalign.train.build import build_model
    from flowalign.train.config import RENAMED
    from flowalign.train.data import PromptSet
    from flowalign.train.loop import train
    from flowalign.train.presets import get_preset

    cfg = apply_overrides(get_preset("testbed"), [*TINY, *overrides, f"train.output_dir={tmp_path / 'run'}"], RENAMED)
    model, _, _ = build_model(cfg)
    before = {n: p.detach().clone() for n, p in model.transformer.named_parameters() if p.requires_grad}
    res = train(cfg, model, reward, PromptSet(["a red circle", "two blue squares"], [{}] * 2), run_dir=tmp_path / "run")
    after = {n: p.detach() for n, p in model.transformer.named_parameters() if p.requires_grad}
    return res, {n: (before[n], after[n]) for n in before}


def test_testbed_step_moves_the_lora(tmp_path):
    res, params = run_tiny(tmp_path, ["objective.kind=draft", "objective.options.k=2"])
    assert res.state.optimizer_step == 1 and res.state.skipped_steps == 0
    assert res.history[0]["train/reward_grad"] == pytest.approx(res.history[0]["reward/total_mean"], abs=1e-4)
    lora_b = [n for n in params if "lora_B" in n]
    assert lora_b and all(not torch.equal(*params[n]) for n in lora_b)  # B starts at 0: the reward gradient moved it
