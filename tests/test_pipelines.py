"""The diffusers-compatible pipelines (pipelines/pipeline_flowalign_{sd3,flux}.py) on tiny offline models.

What must hold (issue 7): with steering off the output equals the stock pipeline's; loading with
``DiffusionPipeline.from_pretrained(dir, custom_pipeline=<file>)`` works offline; steered calls return
the standard output classes, honour ``callback_on_step_end`` and report NFE; bad input is one
ValueError. The steered loop itself is checked against the stock pipeline too: best-of-1 with the
ODE sampler goes through ``flowalign``'s rollout and must reproduce the stock images.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch
from conftest import FLUX_MAX_SEQ

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["two red circles", "a blue square left of a green star"]


def _load(name: str):
    path = os.path.join(ROOT, "pipelines", f"pipeline_flowalign_{name}.py")
    spec = importlib.util.spec_from_file_location(f"pipeline_flowalign_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module, path


def redness(images, prompts):  # a differentiable reward on [0, 1] images
    return images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3))


def _gen():
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="module")
def sd3_pair(tiny_sd3_pipe):
    cls = _load("sd3")[0].FlowAlignSD3Pipeline
    pipe = cls(**tiny_sd3_pipe.components)
    pipe.set_progress_bar_config(disable=True)
    return tiny_sd3_pipe, pipe


@pytest.fixture(scope="module")
def flux_pair(tiny_flux_pipe):
    cls = _load("flux")[0].FlowAlignFluxPipeline
    pipe = cls(**tiny_flux_pipe.components)
    pipe.set_progress_bar_config(disable=True)
    return tiny_flux_pipe, pipe


def test_sd3_steering_off_and_best_of_one_equal_stock(sd3_pair):
    stock, pipe = sd3_pair
    kw = dict(num_inference_steps=4, guidance_scale=4.5, height=32, width=48, output_type="pt")
    ref = stock(PROMPTS, generator=_gen(), **kw).images
    assert torch.equal(pipe(PROMPTS, generator=_gen(), **kw).images, ref)
    out = pipe(PROMPTS, generator=_gen(), steering="bon", num_particles=1, reward=redness, **kw)
    from diffusers.pipelines.stable_diffusion_3.pipeline_output import StableDiffusion3PipelineOutput

    assert isinstance(out, StableDiffusion3PipelineOutput)
    assert torch.equal(out.images, ref)  # flowalign's rollout + decode reproduce the stock sampler exactly
    assert out.steering["nfe"] == 2 * 4 and len(out.steering["rewards"]) == 2


def test_flux_steering_off_and_best_of_one_equal_stock(flux_pair):
    stock, pipe = flux_pair
    kw = dict(num_inference_steps=4, output_type="pt", max_sequence_length=FLUX_MAX_SEQ)
    ref = stock(PROMPTS, generator=_gen(), **kw).images
    assert torch.equal(pipe(PROMPTS, generator=_gen(), **kw).images, ref)
    out = pipe(PROMPTS, generator=_gen(), steering="bon", num_particles=1, reward=redness, **kw)
    assert torch.allclose(out.images, ref, atol=1e-5, rtol=0)
    from diffusers.pipelines.flux.pipeline_output import FluxPipelineOutput

    assert isinstance(out, FluxPipelineOutput)


def test_custom_pipeline_loading_offline(tmp_path, tiny_sd3_pipe, tiny_flux_pipe):
    from diffusers import DiffusionPipeline

    for name, stock, extra in (
        ("sd3", tiny_sd3_pipe, dict(text_encoder_3=None, tokenizer_3=None)),
        ("flux", tiny_flux_pipe, {}),
    ):
        stock.save_pretrained(tmp_path / name)
        # diffusers 0.42 asks trust_remote_code=True for any local custom_pipeline file (our own code)
        pipe = DiffusionPipeline.from_pretrained(
            tmp_path / name, custom_pipeline=_load(name)[1], trust_remote_code=True, **extra
        )
        assert type(pipe).__name__ == f"FlowAlign{'SD3' if name == 'sd3' else 'Flux'}Pipeline"
        pipe.set_progress_bar_config(disable=True)
        kw = dict(num_inference_steps=3, output_type="pt")
        if name == "flux":
            kw["max_sequence_length"] = FLUX_MAX_SEQ
        ref = stock(PROMPTS[:1], generator=_gen(), **kw).images
        assert torch.allclose(pipe(PROMPTS[:1], generator=_gen(), **kw).images, ref, atol=1e-6, rtol=0)
        steered = pipe(PROMPTS[:1], generator=_gen(), steering="fk", num_particles=2, reward=redness, **kw)
        assert steered.images.shape == ref.shape and steered.steering["nfe"] == 2 * 3


def test_fk_pipeline_honours_callback_on_step_end(sd3_pair):
    stock, pipe = sd3_pair
    seen, stock_seen = [], []
    stock(
        PROMPTS,
        num_inference_steps=6,
        guidance_scale=4.5,
        generator=_gen(),
        output_type="latent",
        callback_on_step_end=lambda p, i, t, tensors: stock_seen.append((i, round(float(t), 3))) or {},
    )

    def callback(p, i, t, tensors):
        seen.append((i, round(float(t), 3), tuple(tensors["latents"].shape)))
        return {"latents": torch.zeros_like(tensors["latents"])} if i == 5 else {}

    out = pipe(
        PROMPTS,
        num_inference_steps=6,
        guidance_scale=4.5,
        generator=_gen(),
        output_type="latent",
        steering="fk",
        num_particles=3,
        lam=5.0,
        reward=redness,
        callback_on_step_end=callback,
    )
    assert [s[:2] for s in seen] == stock_seen  # same step indices and timesteps as the stock pipeline
    assert all(s[2] == (6, 4, 16, 16) for s in seen)  # 2 prompts x 3 particles
    assert torch.equal(out.images, torch.zeros(2, 4, 16, 16))  # the returned latents replaced the state
    assert out.steering["nfe"] == 2 * 3 * 6 and out.steering["method"] == "fk_max"


def test_steered_pipeline_methods_and_budget(sd3_pair):
    _, pipe = sd3_pair
    kw = dict(num_inference_steps=6, guidance_scale=4.5, generator=_gen(), output_type="pt", reward=redness)
    for method in ("beam", "dts_star"):
        out = pipe(PROMPTS[:1], steering=method, nfe_budget=24, **kw)
        assert out.steering["nfe"] <= 24 and out.images.shape == (1, 3, 32, 32)
    res = out.steering["result"]
    assert float(res.rewards[0]) == pytest.approx(float(redness(out.images, PROMPTS[:1])[0]), abs=1e-5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(steering="fk", reward=redness, num_particles=0), "num_particles=0 must be an int >= 1"),
        (dict(steering="fk", reward=redness, lam=-2.0), "lam=-2.0 must be a finite float >= 0"),
        (dict(steering="fk", reward=redness, noise_level=0.0), "needs a stochastic sampler"),
        (dict(steering="fk", reward=redness, resample_steps=[7]), "outside the schedule"),
        (
            dict(steering="fk", reward=redness, steering_kwargs={"noise_steps": "2-5"}),
            r"\[4, 5\] lie outside the 4 steps",
        ),
        (dict(steering="fk"), "needs reward="),
        (dict(steering="fk", reward=redness, latents=torch.zeros(1, 4, 16, 16)), "`latents` is not supported"),
        (dict(steering="bon", reward=redness, nfe_budget=3), "smaller than one rollout"),
        (dict(steering="magic", reward=redness), "unknown steering='magic'"),
    ],
)
def test_pipeline_bad_input(sd3_pair, kwargs, match):
    _, pipe = sd3_pair
    with pytest.raises(ValueError, match=match):
        pipe(PROMPTS[:1], num_inference_steps=4, generator=_gen(), output_type="pt", **kwargs)
