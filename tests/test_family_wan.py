"""Wan 2.1 text-to-video through the one FlowModel contract, on the tiny offline WanPipeline.

What must hold (issue): flowalign's ODE rollout + decode reproduces ``WanPipeline.__call__`` (same
seed, steps, true CFG, frames, fp32) to <= 1e-5 on the video; a stored SDE step's log-prob is
recomputed to <= 1e-6 on video latents; FK steering with a video reward returns [P, C, F', H', W'];
one Flow-GRPO step with LoRA moves the weights and the exported LoRA loads into the stock pipeline,
which then reproduces flowalign's sampling with the LoRA; bad frame counts / sizes are one ValueError
naming the value and the nearest valid ones.
"""

from __future__ import annotations

import pytest
import torch

from flowalign.models import MODELS, WanModel, detect_family, load_model
from flowalign.models.tiny_wan import tiny_wan_pipeline, wan_unipc_scheduler
from flowalign.models.wan import WAN_LORA_TARGETS
from flowalign.sampling.rollout import log_prob_at, rollout
from flowalign.sampling.sde import STEPS

PROMPTS = ["two red circles", "a blue square left of a green star"]
SEQ = 16  # tiny UMT5 prompts: the pipeline must be called with the same max_sequence_length


def _gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def wan_pipe():
    return _quiet(tiny_wan_pipeline(seed=0))


@pytest.fixture(scope="module")
def wan_model(wan_pipe):
    return WanModel(wan_pipe, max_sequence_length=SEQ, num_frames=5, default_size=32)


def _stock(pipe, steps, frames, h, w, scale, seeds=(3, 4)):
    """The diffusers pipeline's video [B, F, 3, H, W] and its latents after every step [B, T, *S]."""
    states = []

    def grab(_pipe, i, t, tensors):
        states.append(tensors["latents"].clone())
        return {}

    out = pipe(
        PROMPTS,
        height=h,
        width=w,
        num_frames=frames,
        num_inference_steps=steps,
        guidance_scale=scale,
        generator=_gens(*seeds),
        output_type="pt",
        max_sequence_length=SEQ,
        callback_on_step_end=grab,
    ).frames
    return out, torch.stack(states, 1)


@torch.no_grad()
def _ours(model, steps, frames, h, w, scale, seeds=(3, 4)):
    cond = model.encode(PROMPTS, guidance_scale=scale)
    x = model.initial_noise(2, h, w, _gens(*seeds), num_frames=frames)
    ro = rollout(model, cond, x, model.sigmas(steps, h, w), "ode", None)
    return model.decode_video(ro.final), ro


# --- 1. pipeline parity ----------------------------------------------------------------------------
@pytest.mark.parametrize("frames", [9, 1])
def test_ode_rollout_reproduces_wan_pipeline(wan_pipe, wan_model, frames):
    h, w, steps, scale = 32, 48, 4, 4.5
    video, states = _stock(wan_pipe, steps, frames, h, w, scale)
    ours, ro = _ours(wan_model, steps, frames, h, w, scale)
    f_lat = (frames - 1) // 4 + 1
    assert ro.latents.shape == (2, steps + 1, 16, f_lat, h // 8, w // 8)
    assert video.shape == ours.shape == (2, frames, 3, h, w)  # [B, F, 3, H, W], output_type="pt"
    assert (ro.latents[:, 1:] - states).abs().max().item() <= 1e-5  # every step (measured 0.0)
    assert (ours - video).abs().max().item() <= 1e-5  # the video (measured 0.0)
    assert ro.nfe == 2 * steps  # true CFG's two calls count once per row
    if frames == 1:  # Wan as a text-to-image model: decode gives images for image-only callers
        assert wan_model.decode(ro.final).shape == (2, 3, h, w)


def test_unipc_grid_timesteps_and_order1_parity():
    """Released Wan 2.1 ships UniPC: flowalign samples Euler on UniPC's grid with its int timesteps,
    which is UniPC at order 1 without corrector (<= 1e-5), and not the stock 2nd-order sampler."""
    h, w, steps, scale = 32, 32, 4, 4.5
    euler_like = wan_unipc_scheduler(solver_order=1, disable_corrector=list(range(steps)))
    pipe = _quiet(tiny_wan_pipeline(seed=0, scheduler=euler_like))
    model = WanModel(pipe, max_sequence_length=SEQ, num_frames=5)
    assert model.integer_timesteps
    ref = type(pipe.scheduler).from_config(pipe.scheduler.config)
    ref.set_timesteps(steps)
    grid = model.sigmas(steps, h, w)
    assert float(ref.sigmas[0]) == pytest.approx(1 - 1e-6) and float(grid[0]) == 1.0  # departure 1
    assert torch.equal(grid[1:], ref.sigmas[1:].float())
    assert torch.equal(model.timestep(grid[:-1]), ref.timesteps.float())  # 999, ... as the scheduler
    video, _ = _stock(pipe, steps, 5, h, w, scale)
    ours, _ = _ours(model, steps, 5, h, w, scale)
    assert (ours - video).abs().max().item() <= 1e-5  # measured 1.1e-6 (9 frames, 32x48)
    pipe.scheduler = wan_unipc_scheduler()  # the shipped 2nd-order predictor-corrector
    video2, _ = _stock(pipe, steps, 5, h, w, scale)
    assert (ours - video2).abs().max().item() > 1e-3  # a different ODE solver on the same grid


# --- 2. exact log-prob recomputation on video latents ----------------------------------------------
@pytest.mark.parametrize("kind", sorted(k for k in STEPS if k != "ode"))
def test_recomputed_log_probs_equal_sampling_time(wan_model, kind):
    steps = 4
    with torch.no_grad():
        cond = wan_model.encode(PROMPTS, guidance_scale=3.0)
        x = wan_model.initial_noise(2, 32, 32, torch.Generator().manual_seed(11))
        ro = rollout(wan_model, cond, x, wan_model.sigmas(steps, 32, 32), kind, 0.7, generator=_gens(12, 13))
    assert ro.latents.shape == (2, steps + 1, 16, 2, 4, 4)
    assert bool((ro.log_probs[:, :3] != 0).all()) and bool((ro.log_probs[:, 3] == 0).all())
    with torch.enable_grad():
        again = torch.stack([log_prob_at(wan_model, cond, ro, j).log_prob.detach() for j in range(steps)], 1)
    assert (again - ro.log_probs).abs().max().item() <= 1e-6


# --- 3. FK steering with a video reward ------------------------------------------------------------
def test_fk_steering_runs_on_video_latents(wan_model):
    from flowalign.rewards.video import FrameReward, TemporalConsistencyReward
    from flowalign.steering import fk_steer

    def redness(images, prompts):
        return images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3))

    for reward in (TemporalConsistencyReward(), FrameReward(redness, frames="segment", k=2)):
        res = fk_steer(
            wan_model,
            PROMPTS,
            reward,
            num_particles=2,
            num_steps=3,
            cfg=3.0,
            generator=torch.Generator().manual_seed(1),
        )
        assert res.latents.shape == (2, 16, 2, 4, 4)  # [P, C, F', H', W']
        assert res.rewards.shape == (2,) and bool(torch.isfinite(res.rewards).all())


# --- 4. one Flow-GRPO iteration with LoRA, exported into the stock pipeline ------------------------
def _lora_model(seed=0):
    from peft import LoraConfig

    pipe = _quiet(tiny_wan_pipeline(seed=seed))
    model = WanModel(pipe, max_sequence_length=SEQ, num_frames=5)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        pipe.transformer.add_adapter(
            LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian", target_modules=WAN_LORA_TARGETS)
        )
    return model


def test_flow_grpo_step_with_lora_and_export_to_stock_pipeline(tmp_path):
    from flowalign.train.checkpoint import export_lora
    from flowalign.train.losses import flow_grpo_loss

    model = _lora_model()
    params = dict((n, p) for n, p in model.transformer.named_parameters() if p.requires_grad)
    assert params and all("lora_" in n for n in params)
    before = {n: p.detach().clone() for n, p in params.items()}
    opt = torch.optim.Adam(list(params.values()), lr=5e-2)
    with torch.no_grad():
        cond = model.encode(PROMPTS, guidance_scale=4.0)
        x = model.initial_noise(2, 32, 32, _gens(5, 6))
        ro = rollout(model, cond, x, model.sigmas(3, 32, 32), "flow_sde", 0.7, generator=_gens(7, 8))
    advantages = torch.tensor([1.0, -1.0])
    for j in range(2):  # the stochastic steps
        out = log_prob_at(model, cond, ro, j)
        dt = float(ro.sigmas[j + 1] - ro.sigmas[j])
        loss = flow_grpo_loss(out, None, ro.log_probs[:, j], advantages, None, dt, clip_range=0.2).loss
        loss.backward()
    opt.step()
    assert max((params[n].detach() - before[n]).abs().max().item() for n in params) > 1e-3

    export_lora(type(model.pipe), model.transformer, tmp_path)
    stock = _quiet(tiny_wan_pipeline(seed=0))
    base_video, _ = _stock(stock, 3, 5, 32, 32, 4.0)
    stock.load_lora_weights(str(tmp_path))
    video, _ = _stock(stock, 3, 5, 32, 32, 4.0)
    ours, _ = _ours(model, 3, 5, 32, 32, 4.0)
    assert (video - base_video).abs().max().item() > 1e-3  # the LoRA changes the stock output...
    assert (ours - video).abs().max().item() <= 1e-5  # ...exactly as flowalign samples with it
    with model.reference(), torch.no_grad():  # adapters off: the base model again
        assert (_ours(model, 3, 5, 32, 32, 4.0)[0] - base_video).abs().max().item() <= 1e-5


# --- 5. bad input, registry, save / load ---------------------------------------------------------
def test_bad_frames_and_sizes_are_one_clear_error(wan_model):
    with pytest.raises(ValueError, match=r"num_frames=6 .*nearest valid counts are 5 and 9"):
        wan_model.initial_noise(1, 32, 32, num_frames=6)
    with pytest.raises(ValueError, match=r"num_frames=0 "):
        wan_model.initial_noise(1, 32, 32, num_frames=0)
    with pytest.raises(ValueError, match=r"num_frames=8 .*5 and 9"):
        WanModel(wan_model.pipe, max_sequence_length=SEQ, num_frames=8)
    with pytest.raises(ValueError, match=r"height=40 is not a positive multiple of 16.*use height=32 or 48"):
        wan_model.initial_noise(1, 40, 32)
    with pytest.raises(ValueError, match=r"width=8 is not a positive multiple of 16.*use width=16"):
        wan_model.sigmas(4, 32, 8)
    with pytest.raises(ValueError, match=r"Wan latents are \[B, C, F', H', W'\]"):
        wan_model.velocity(torch.zeros(1, 16, 4, 4), 0.5, wan_model.encode(["a"], guidance_scale=1.0))


def test_non_flow_scheduler_and_other_pipelines_are_refused(wan_pipe, tiny_sd3_pipe):
    from diffusers import UniPCMultistepScheduler

    pipe = tiny_wan_pipeline(seed=0, scheduler=UniPCMultistepScheduler())  # DDPM-style sigmas
    with pytest.raises(ValueError, match="flow-matching scheduler"):
        WanModel(pipe)
    with pytest.raises(ValueError, match="needs a wan pipeline|WanPipeline"):
        WanModel(tiny_sd3_pipe)


def test_registry_detection_and_save_load(wan_pipe, wan_model, tmp_path):
    assert detect_family(wan_pipe) == "wan" and detect_family("Wan-AI/Wan2.1-T2V-1.3B-Diffusers") == "wan"
    tiny = MODELS["tiny-wan"]()
    assert isinstance(tiny, WanModel) and tiny.num_frames == 5 and tiny.default_size == 32
    wan_pipe.save_pretrained(str(tmp_path))
    assert detect_family(str(tmp_path)) == "wan"
    again = load_model(str(tmp_path), max_sequence_length=SEQ, num_frames=9)
    assert again.num_frames == 9 and again.initial_noise(1, 32, 32).shape == (1, 16, 3, 4, 4)
    with torch.no_grad():
        x = wan_model.initial_noise(1, 32, 32, torch.Generator().manual_seed(0))
        c1, c2 = wan_model.encode(PROMPTS[:1], 3.0), again.encode(PROMPTS[:1], 3.0)
        assert (wan_model.velocity(x, 0.6, c1) - again.velocity(x, 0.6, c2)).abs().max().item() <= 1e-6
