"""SD3 / Flux adapters against the real diffusers pipelines on tiny offline models.

What must hold (issue): a noise-free flowalign rollout reproduces StableDiffusion3Pipeline (<= 1e-5)
and FluxPipeline (<= 1e-4) on the same model, prompt and seed; every stored SDE transition's log-prob
is recomputed exactly (<= 1e-6) under unchanged weights; the sigma grids are the schedulers'; bad
input is one ValueError naming the value; reference() switches LoRA off; save/load is lossless.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import FLUX_MAX_SEQ

from flowalign.models import MODELS, FluxModel, SD3Model, load_model
from flowalign.models.tiny import tiny_flux_pipeline, tiny_sd3_pipeline
from flowalign.models.tiny_tokenizers import build_clip_tokenizer, build_t5_tokenizer
from flowalign.sampling.rollout import log_prob_at, rollout
from flowalign.sampling.sde import STEPS

PROMPTS = ["two red circles", "a blue square left of a green star"]


def _gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def _run_pipe(pipe, steps, **kw):
    """Call the diffusers pipeline, capturing the latents after every step."""
    states = []

    def grab(_pipe, i, t, tensors):
        states.append(tensors["latents"].clone())
        return {}

    images = pipe(PROMPTS, num_inference_steps=steps, callback_on_step_end=grab, **kw).images
    return images, torch.stack(states, 1)  # [B, T, *S]


# --- tokenizers ------------------------------------------------------------------------------------
def test_clip_tokenizer_words_are_tokens_and_eos_is_last(tmp_path):
    tok = build_clip_tokenizer(["two red circles", "zebra"], save_dir=str(tmp_path))
    assert tok.tokenize("Two red circles, zebra") == ["two</w>", "red</w>", "circles</w>", ",</w>", "zebra</w>"]
    # 512 byte symbols (with and without </w>) + merges + start + end: the two specials are the last ids
    assert (tok.bos_token_id, tok.eos_token_id) == (len(tok) - 2, len(tok) - 1)
    ids = tok(["two red", "zebra"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    # legacy CLIP pooling (argmax of ids) lands on the first end-of-text token: positions 3 and 2
    assert ids.argmax(-1).tolist() == [3, 2]
    from transformers import CLIPTokenizer

    again = CLIPTokenizer.from_pretrained(str(tmp_path))
    assert again("two red circles zebra").input_ids == tok("two red circles zebra").input_ids


def test_t5_tokenizer_roundtrip(tmp_path):
    from transformers import AutoTokenizer

    tok = build_t5_tokenizer(["two red circles"])
    ids = tok("Two red circles").input_ids
    assert ids == [tok.convert_tokens_to_ids(p) for p in ("▁two", "▁red", "▁circles")] + [1]  # </s> = 1
    assert tok.tokenize("zebra") == ["▁", "z", "e", "b", "r", "a"]  # unseen word -> characters
    tok.save_pretrained(str(tmp_path))
    assert (
        AutoTokenizer.from_pretrained(str(tmp_path))("Two red circles, zebra").input_ids
        == tok("Two red circles, zebra").input_ids
    )


# --- (a) pipeline parity ---------------------------------------------------------------------------
@pytest.mark.parametrize("with_t5", [False, True])
def test_sd3_ode_rollout_reproduces_pipeline(tiny_sd3_pipe, with_t5):
    pipe = tiny_sd3_pipe if not with_t5 else tiny_sd3_pipeline(seed=1, text_encoder_3=True)
    pipe.set_progress_bar_config(disable=True)
    model = SD3Model(pipe)
    h, w, steps, scale = 32, 48, 4, 4.5
    images, states = _run_pipe(
        pipe, steps, height=h, width=w, guidance_scale=scale, generator=_gens(3, 4), output_type="pt"
    )
    with torch.no_grad():
        cond = model.encode(PROMPTS, guidance_scale=scale)
        x = model.initial_noise(2, h, w, _gens(3, 4))
        ro = rollout(model, cond, x, model.sigmas(steps, h, w), step="ode", noise_levels=None)
        ours = model.decode(ro.final)
    assert ro.latents.shape == (2, steps + 1, 4, h // 2, w // 2)
    assert (ro.latents[:, 1:] - states).abs().max().item() <= 1e-5  # every step, the last included
    assert (ours - images).abs().max().item() <= 1e-5
    assert ro.nfe == 2 * steps  # CFG's doubled batch counts once per row


def test_flux_ode_rollout_reproduces_pipeline(tiny_flux_pipe, flux_model):
    h, w, steps, scale = 32, 48, 4, 3.5
    images, states = _run_pipe(
        tiny_flux_pipe,
        steps,
        height=h,
        width=w,
        guidance_scale=scale,
        generator=torch.Generator().manual_seed(5),
        output_type="pt",
        max_sequence_length=FLUX_MAX_SEQ,
    )
    out = flux_model.sample(
        PROMPTS, num_steps=steps, guidance_scale=scale, height=h, width=w, generator=torch.Generator().manual_seed(5)
    )
    assert out.rollout.latents.shape == (2, steps + 1, (h // 4) * (w // 4), 4)  # packed 2x2 tokens
    assert (out.rollout.latents[:, 1:] - states).abs().max().item() <= 1e-4
    assert (out.images - images).abs().max().item() <= 1e-4
    assert out.rollout.nfe == 2 * steps


# --- (b) exact log-prob recomputation --------------------------------------------------------------
@pytest.mark.parametrize("family", ["sd3", "flux"])
@pytest.mark.parametrize("kind", sorted(k for k in STEPS if k != "ode"))
def test_recomputed_log_probs_equal_sampling_time(family, kind, request):
    model = request.getfixturevalue(f"{family}_model")
    steps = 4
    with torch.no_grad():
        cond = model.encode(PROMPTS, guidance_scale=3.0)
        x = model.initial_noise(2, 32, 32, torch.Generator().manual_seed(11))
        ro = rollout(
            model,
            cond,
            x,
            model.sigmas(steps, 32, 32),
            step=kind,
            noise_levels=0.7,
            generator=torch.Generator().manual_seed(12),
        )
    assert ro.noise_mask.tolist() == [True, True, True, False]  # Flow-GRPO window: all but the last
    assert bool((ro.log_probs[:, :3] != 0).all()) and bool((ro.log_probs[:, 3] == 0).all())
    with torch.enable_grad():  # the training path: same numbers with autograd on
        again = torch.stack([log_prob_at(model, cond, ro, j).log_prob.detach() for j in range(steps)], 1)
    assert (again - ro.log_probs).abs().max().item() <= 1e-6


# --- (c) sigma grids -------------------------------------------------------------------------------
def test_sigmas_equal_scheduler_set_timesteps(sd3_model, flux_model):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    assert sd3_model.pipe.scheduler.config.shift == 3.0
    for steps in (1, 2, 4, 10, 28):
        ref = FlowMatchEulerDiscreteScheduler.from_config(sd3_model.pipe.scheduler.config)
        ref.set_timesteps(steps)
        assert (sd3_model.sigmas(steps, 32, 32) - ref.sigmas).abs().max().item() <= 1e-7
    # shift 3, 4 steps: [1, .858, .602, .0089, 0] (the end point is shifted twice)
    assert np.allclose(sd3_model.sigmas(4, 32, 32).tolist(), [1, 0.857692, 0.602151, 0.008929, 0], atol=1e-6)
    cfg = flux_model.pipe.scheduler.config
    for steps in (1, 4, 28):
        for h, w in ((32, 32), (64, 32), (128, 128), (512, 256), (1024, 1024)):
            ref = FlowMatchEulerDiscreteScheduler.from_config(cfg)
            mu = calculate_shift(
                (h // 4) * (w // 4), cfg.base_image_seq_len, cfg.max_image_seq_len, cfg.base_shift, cfg.max_shift
            )
            ref.set_timesteps(steps, sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
            assert (flux_model.sigmas(steps, h, w) - ref.sigmas).abs().max().item() <= 1e-7


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_other_scheduler_configs_still_reproduce_pipeline(family, tiny_sd3_pipe, tiny_flux_pipe):
    """Configs outside the closed forms (SD3 with dynamic shift, Flux-schnell's static shift 1)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    base, cls, kw = (
        (tiny_sd3_pipe, SD3Model, {})
        if family == "sd3"
        else (tiny_flux_pipe, FluxModel, {"max_sequence_length": FLUX_MAX_SEQ})
    )
    sched = (
        FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, max_shift=1.16)
        if family == "sd3"
        else FlowMatchEulerDiscreteScheduler(shift=1.0)
    )
    pipe = type(base)(**{**base.components, "scheduler": sched})
    pipe.set_progress_bar_config(disable=True)
    model = cls(pipe, **kw)
    _, states = _run_pipe(
        pipe, 3, height=32, width=32, guidance_scale=2.0, generator=_gens(0, 1), output_type="latent", **kw
    )
    out = model.sample(
        PROMPTS, num_steps=3, guidance_scale=2.0, height=32, width=32, generator=_gens(0, 1), decode=False
    )
    assert (out.rollout.latents[:, 1:] - states).abs().max().item() <= 1e-5


# --- (d) bad input ---------------------------------------------------------------------------------
BAD = [
    ("sd3", lambda m: m.initial_noise(1, 33, 32), r"height=33 .*multiple of 2.*use height=32"),
    ("flux", lambda m: m.initial_noise(1, 32, 34), r"width=34 .*multiple of 4.*use width=32"),
    ("sd3", lambda m: m.sigmas(4, 32, 31), r"width=31"),
    ("sd3", lambda m: m.encode(3), r"got int '3'"),
    ("flux", lambda m: m.encode([1, 2]), r"got list '\[1, 2\]'"),
    ("sd3", lambda m: m.initial_noise(2, 32, 32, _gens(0)), r"list of 1 generators for a batch of 2"),
    ("sd3", lambda m: m.encode(PROMPTS, negative_prompts=["x", "y", "z"]), r"3 negative_prompts for 2"),
    ("flux", lambda m: m.encode(PROMPTS, negative_prompts="blurry"), r"negative_prompts"),
    (
        "sd3",
        lambda m: m.velocity(
            torch.zeros(1, 4, 16, 16), 0.5, replace(m.encode("a", guidance_scale=1.0), guidance_scale=5.0)
        ),
        r"guidance_scale=5.0 > 1",
    ),
    ("flux", lambda m: m.velocity(torch.zeros(3, 16, 4), 0.5, m.encode(PROMPTS)), r"batch 3.*2 rows"),
    ("sd3", lambda m: SD3Model.from_pretrained("/no/such/dir"), r"'/no/such/dir' does not exist"),
    (
        "sd3",
        lambda m: SD3Model.from_pretrained("no-such-org/no-such-model"),
        r"'no-such-org/no-such-model' is not a local directory and HF_HUB_OFFLINE",
    ),
    ("flux", lambda m: SD3Model(m.pipe), r"SD3Model needs a sd3 pipeline, got a FluxPipeline"),
    ("sd3", lambda m: load_model("no-such-org/no-such-model"), r"cannot tell the model family"),
]


@pytest.mark.parametrize("family,call,message", BAD)
def test_bad_input_is_one_clear_value_error(family, call, message, request):
    model = request.getfixturevalue(f"{family}_model")
    with pytest.raises(ValueError, match=message):
        call(model)


# --- (e) reference() switches LoRA off -------------------------------------------------------------
@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_reference_disables_lora_and_grads_reach_it(family, request):
    from peft import LoraConfig

    model = (
        SD3Model(tiny_sd3_pipeline(seed=2))
        if family == "sd3"
        else FluxModel(tiny_flux_pipeline(seed=2), max_sequence_length=FLUX_MAX_SEQ)
    )
    cond = model.encode(PROMPTS, guidance_scale=3.0)
    x = model.initial_noise(2, 32, 32, torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = model.velocity(x, 0.6, cond)
        with model.reference():  # no adapter attached: a no-op
            assert torch.equal(model.velocity(x, 0.6, cond), base)
    model.transformer.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    names = {id(p): n for n, p in model.transformer.named_parameters()}
    lora = model.trainable_parameters()
    assert lora and all("lora" in names[id(p)] for p in lora)
    with torch.no_grad():
        tuned = model.velocity(x, 0.6, cond)
        with model.reference():
            ref = model.velocity(x, 0.6, cond)
        after = model.velocity(x, 0.6, cond)
    assert (tuned - base).abs().max().item() > 1e-3
    assert torch.equal(ref, base) and torch.equal(after, tuned)
    assert all(p.requires_grad for p in lora)  # restored on exit
    # training path: gradients of a decoded-image loss reach the LoRA weights and the latents
    x = x.clone().requires_grad_(True)
    x0 = x - 0.6 * model.velocity(x, 0.6, cond)
    model.decode(x0).mean().backward()
    assert x.grad.abs().sum() > 0 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)


# --- (f) save / load offline -----------------------------------------------------------------------
def test_save_pretrained_then_from_pretrained_is_lossless(tmp_path, sd3_model, flux_model):
    sd3_model.pipe.save_pretrained(str(tmp_path / "sd3"))  # no T5: saved as null components
    flux_model.pipe.save_pretrained(str(tmp_path / "flux"))
    pairs = [
        (sd3_model, SD3Model.from_pretrained(str(tmp_path / "sd3"))),
        (flux_model, load_model(str(tmp_path / "flux"), max_sequence_length=FLUX_MAX_SEQ)),
    ]
    assert isinstance(pairs[1][1], FluxModel) and isinstance(load_model(str(tmp_path / "sd3")), SD3Model)
    for old, new in pairs:
        x = old.initial_noise(2, 32, 32, torch.Generator().manual_seed(0))
        with torch.no_grad():
            v_old = old.velocity(x, 0.3, old.encode(PROMPTS))
            v_new = new.velocity(x, 0.3, new.encode(PROMPTS))
        assert torch.equal(v_old, v_new)


# --- rows, registry --------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_selected_and_repeated_conds_keep_rows_aligned(family, request):
    """Groups (Cond.repeat) must carry each row's negatives / pooled embeddings along."""
    model = request.getfixturevalue(f"{family}_model")
    cond = model.encode(PROMPTS, guidance_scale=5.0)
    x = model.initial_noise(2, 32, 32, torch.Generator().manual_seed(0))
    with torch.no_grad():
        v = model.velocity(x, torch.tensor([0.9, 0.4]), cond)  # per-row sigma
        v_rep = model.velocity(x.repeat_interleave(2, 0), torch.tensor([0.9, 0.9, 0.4, 0.4]), cond.repeat(2))
        v_sel = model.velocity(x[[1]], 0.4, cond.select([1]))
    assert (v_rep - v.repeat_interleave(2, 0)).abs().max().item() <= 1e-5
    assert (v_sel - v[[1]]).abs().max().item() <= 1e-5


def test_load_model_names_and_objects(tiny_sd3_pipe, tiny_flux_pipe):
    assert {"tiny-sd3", "tiny-flux"} <= set(MODELS)
    assert isinstance(load_model(tiny_sd3_pipe), SD3Model)
    assert isinstance(load_model(tiny_flux_pipe, max_sequence_length=FLUX_MAX_SEQ), FluxModel)
    model = load_model("tiny-flux", guidance_scale=2.0)
    assert isinstance(model, FluxModel) and model.encode("a").guidance_scale == 2.0
    with pytest.raises(ValueError, match="unknown model family 'sdxl'"):
        load_model("x", family="sdxl")


def test_a_damaged_saved_pipeline_is_one_error_naming_the_file(tmp_path, tiny_sd3_pipe):
    from flowalign.models import load_model

    tiny_sd3_pipe.save_pretrained(str(tmp_path))
    weights = tmp_path / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated mid-file
    with pytest.raises(ValueError, match=r"cannot load the pipeline in .*transformer/diffusion_pytorch_model"):
        load_model(str(tmp_path))
