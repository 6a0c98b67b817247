"""Qwen-Image and Qwen-Image-Edit adapters against the real diffusers pipelines on tiny offline models.

What must hold (issue): a noise-free flowalign rollout + decode reproduces QwenImagePipeline and
QwenImageEditPipeline (true CFG with negative prompts, fp32) to <= 1e-5 on the output images; stored
SDE log-probs are recomputed to <= 1e-6; a Flow-GRPO iteration with LoRA moves the adapter, which
loads into the stock pipeline and reproduces flowalign's sampling with it (<= 1e-5); the edit
condition rides along Cond rows; bad input is one ValueError naming the value.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from flowalign.models import MODELS, QwenImageEditModel, QwenImageModel, detect_family, load_model
from flowalign.models.tiny_qwen import (
    EDIT_TEMPLATE,
    T2I_TEMPLATE,
    build_qwen_tokenizer,
    tiny_qwenimage_edit_pipeline,
    tiny_qwenimage_pipeline,
)
from flowalign.sampling.rollout import log_prob_at, rollout

PROMPTS = ["two red circles", "a blue square left of a green star"]
NEGATIVES = ["", "blurry photo"]
EDIT_HW = (64, 96)  # output size of the edit tests (the source is at its 1024 x 1024 condition size)
# every LoRA target is live in both blocks (a last block's txt-stream outputs are discarded)
TARGETS = "attn.to_q,attn.to_k,attn.to_v,attn.to_out.0,attn.add_k_proj,attn.add_v_proj"


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _source(seed: int, width: int = 1024, height: int = 1024) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(height, width, 3) * 255).astype("uint8"))


@pytest.fixture(scope="module")
def t2i():
    return QwenImageModel(_quiet(tiny_qwenimage_pipeline(seed=0)))


@pytest.fixture(scope="module")
def edit():
    return QwenImageEditModel(_quiet(tiny_qwenimage_edit_pipeline(seed=0)))


@pytest.fixture(scope="module")
def sources():
    return [_source(1), _source(2)]


@pytest.fixture(scope="module")
def edit_cond(edit, sources):
    return edit.encode(PROMPTS, 4.0, NEGATIVES, images=sources)


def _stock(pipe, steps, **kw):
    """The stock pipeline's images and the latents after every step."""
    states = []

    def grab(_pipe, i, t, tensors):
        states.append(tensors["latents"].clone())
        return {}

    images = pipe(num_inference_steps=steps, callback_on_step_end=grab, output_type="pt", **kw).images
    return images, torch.stack(states, 1)


@torch.no_grad()
def _ours(model, cond, batch, height, width, steps, seed):
    x = model.initial_noise(batch, height, width, torch.Generator().manual_seed(seed))
    ro = rollout(model, cond, x, model.sigmas(steps, height, width), "ode", None)
    return model.decode(ro.final, height, width), ro


# --- tiny pipelines ----------------------------------------------------------------------------------
def test_tokenizer_drops_exactly_the_template_prefix():
    tok = build_qwen_tokenizer()
    assert len(tok(T2I_TEMPLATE.split("{}")[0]).input_ids) == 34  # QwenImagePipeline drops 34
    assert len(tok(EDIT_TEMPLATE.split("<|vision_start|>")[0]).input_ids) == 64  # the edit pipeline 64
    assert tok.tokenize(" two red circles") == ["Ġtwo", "Ġred", "Ġcircles"]


# --- (1) parity with the stock __call__ ----------------------------------------------------------------
def test_qwenimage_ode_rollout_reproduces_pipeline(t2i):
    h, w, steps, scale = 32, 48, 4, 4.0
    images, states = _stock(
        t2i.pipe, steps, prompt=PROMPTS, negative_prompt=NEGATIVES, true_cfg_scale=scale, height=h, width=w,
        generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    cond = t2i.encode(PROMPTS, scale, NEGATIVES)
    ours, ro = _ours(t2i, cond, 2, h, w, steps, 3)
    assert ro.latents.shape == (2, steps + 1, (h // 16) * (w // 16), 16)  # packed 2x2 tokens of 4 x 4 channels
    assert (ro.latents[:, 1:] - states).abs().max().item() <= 1e-5
    assert (ours - images).abs().max().item() <= 1e-5 and images.std() > 0.02
    assert ro.nfe == 2 * steps  # the negative forward counts once per row
    assert cond.embeds["prompt_mask"].sum(1).tolist() != cond.embeds["negative_prompt_mask"].sum(1).tolist()


def test_qwenimage_edit_ode_rollout_reproduces_pipeline(edit, edit_cond, sources):
    (h, w), steps, scale = EDIT_HW, 3, 4.0
    images, states = _stock(
        edit.pipe, steps, image=sources, prompt=PROMPTS, negative_prompt=NEGATIVES, true_cfg_scale=scale,
        height=h, width=w, generator=torch.Generator().manual_seed(5),
    )  # fmt: skip
    ours, ro = _ours(edit, edit_cond, 2, h, w, steps, 5)
    assert (ro.latents[:, 1:] - states).abs().max().item() <= 1e-5
    assert (ours - images).abs().max().item() <= 1e-5
    assert edit_cond.embeds["image_latents"].shape == (2, 32 * 32, 16)  # 1024 px / 16 / 2 per side
    assert edit_cond.static["condition_shape"] == (1, 32, 32)
    # one PIL source of another aspect ratio: resized to calculate_dimensions(1024^2, 3/2) = 1248 x 832
    src = _source(3, 60, 40)
    images, _ = _stock(
        edit.pipe, 2, image=src, prompt=PROMPTS[1], negative_prompt=" ", height=h, width=w,
        generator=torch.Generator().manual_seed(6),
    )  # fmt: skip
    cond = edit.encode(PROMPTS[1], 4.0, images=src)
    ours, _ = _ours(edit, cond, 1, h, w, 2, 6)
    assert cond.static["condition_size"] == (1248, 832) and (ours - images).abs().max().item() <= 1e-5


@pytest.mark.parametrize("family", ["qwenimage", "qwenimage_edit"])
@pytest.mark.parametrize("kind", ["flow_sde", "dance_sde", "cps"])
def test_recomputed_log_probs_equal_sampling_time(family, kind, t2i, edit, edit_cond):
    model = t2i if family == "qwenimage" else edit
    cond = t2i.encode(PROMPTS, 4.0) if family == "qwenimage" else edit_cond
    h, w = (32, 32) if family == "qwenimage" else EDIT_HW
    with torch.no_grad():
        x = model.initial_noise(2, h, w, torch.Generator().manual_seed(11))
        ro = rollout(model, cond, x, model.sigmas(3, h, w), kind, 0.7, generator=torch.Generator().manual_seed(12))
    assert bool((ro.log_probs[:, :2] != 0).all())
    with torch.enable_grad():
        again = torch.stack([log_prob_at(model, cond, ro, j).log_prob.detach() for j in range(3)], 1)
    assert (again - ro.log_probs).abs().max().item() <= 1e-6


def test_sigmas_are_the_schedulers(t2i):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift

    plain = QwenImageModel(
        tiny_qwenimage_pipeline(scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True))
    )
    for model in (t2i, plain):  # Qwen-Image's config (shift_terminal 0.02: read off the scheduler) / closed form
        cfg = model.pipe.scheduler.config
        for steps, (h, w) in ((2, (32, 32)), (4, (64, 32)), (50, (1024, 1024))):
            ref = FlowMatchEulerDiscreteScheduler.from_config(cfg)
            mu = calculate_shift(
                (h // 16) * (w // 16), cfg.base_image_seq_len, cfg.max_image_seq_len, cfg.base_shift, cfg.max_shift
            )
            ref.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
            assert (model.sigmas(steps, h, w) - ref.sigmas).abs().max().item() <= 1e-7
    assert abs(t2i.sigmas(4, 32, 32)[-2].item() - 0.02) < 1e-6  # shift_terminal: the last step starts at 0.02
    assert plain.sigmas(1, 32, 32).tolist() == [1.0, 0.0]


# --- rows -------------------------------------------------------------------------------------------
def test_repeated_and_selected_conds_carry_the_condition_latents(edit, edit_cond):
    x = edit.initial_noise(2, *EDIT_HW, torch.Generator().manual_seed(0))
    with torch.no_grad():
        v = edit.velocity(x, torch.tensor([0.9, 0.4]), edit_cond)
        v_rep = edit.velocity(x.repeat_interleave(2, 0), torch.tensor([0.9, 0.9, 0.4, 0.4]), edit_cond.repeat(2))
        v_sel = edit.velocity(x[[1]], 0.4, edit_cond.select([1]))
        v_swap = edit.velocity(x[[1]], 0.4, edit_cond.select([0]))  # another row's source changes the result
    assert (v_rep - v.repeat_interleave(2, 0)).abs().max().item() <= 1e-5
    assert (v_sel - v[[1]]).abs().max().item() <= 1e-5
    assert (v_swap - v[[1]]).abs().max().item() > 1e-3


# --- (2, 3) LoRA: a Flow-GRPO iteration, export, the stock pipeline ----------------------------------------
def test_flow_grpo_lora_iteration_and_export_load_in_stock_pipeline(tmp_path):
    from flowalign.train import apply_overrides, get_preset
    from flowalign.train.build import build_model
    from flowalign.train.data import PromptSet
    from flowalign.train.loop import train

    overrides = ["model.path=tiny-qwenimage", "model.resolution=32", f"model.lora_targets={TARGETS}"]
    overrides += ["model.lora_rank=4", "model.lora_alpha=8", "sample.num_steps=3", "sample.window=all"]
    overrides += ["sample.timestep_fraction=0.99", "sample.group_size=4", "sample.groups_per_iteration=1"]
    overrides += ["sample.batch_size=4", "eval.every=0", "train.ema=false", "train.iterations=2"]
    overrides += ["optim.steps_per_iteration=1", "log.progress=false", "optim.lr=1e-2", "loss.clip_range=0.2"]
    cfg = apply_overrides(get_preset("testbed"), overrides + [f"train.output_dir={tmp_path / 'run'}"])
    model, export_fn, _ = build_model(cfg)
    assert isinstance(model, QwenImageModel)
    before = {n: p.detach().clone() for n, p in model.transformer.named_parameters() if p.requires_grad}
    assert before and all(".lora_" in n for n in before)
    prompts = PromptSet(["a red circle", "two blue squares"], [{}] * 2)
    res = train(
        cfg, model, lambda im, p, **m: im.mean((1, 2, 3)), prompts, run_dir=tmp_path / "run", export_fn=export_fn
    )
    assert res.history[0]["train/ratio_max"] == res.history[0]["train/ratio_min"] == 1.0  # on-policy, exact
    after = dict(model.transformer.named_parameters())
    assert all(not torch.equal(before[n], after[n]) for n in before)  # every adapter tensor moved

    stock = _quiet(tiny_qwenimage_pipeline(seed=0))
    kw = dict(prompt=PROMPTS, negative_prompt=NEGATIVES, height=32, width=48, num_inference_steps=3)
    plain = stock(generator=torch.Generator().manual_seed(0), output_type="pt", **kw).images
    stock.load_lora_weights(str(tmp_path / "run" / "lora"))
    loaded = stock(generator=torch.Generator().manual_seed(0), output_type="pt", **kw).images
    ours, _ = _ours(model, model.encode(PROMPTS, 4.0, NEGATIVES), 2, 32, 48, 3, 0)
    assert (loaded - plain).abs().max().item() > 1e-4  # the adapter matters
    assert (ours - loaded).abs().max().item() <= 1e-5


def test_edit_lora_step_moves_the_adapter_and_loads_in_stock_pipeline(tmp_path, sources):
    from peft import LoraConfig

    from flowalign.train.checkpoint import export_lora
    from flowalign.train.losses import flow_grpo_loss

    model = QwenImageEditModel(_quiet(tiny_qwenimage_edit_pipeline(seed=0)))
    model.transformer.requires_grad_(False).add_adapter(
        LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian", target_modules=TARGETS.split(","))
    )
    params = model.trainable_parameters()
    before = [p.detach().clone() for p in params]
    cond = model.encode(PROMPTS, 4.0, NEGATIVES, images=sources)
    with torch.no_grad():
        x = model.initial_noise(2, *EDIT_HW, torch.Generator().manual_seed(0))
        ro = rollout(
            model, cond, x, model.sigmas(3, *EDIT_HW), "flow_sde", 0.7, generator=torch.Generator().manual_seed(1)
        )
    opt = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(2):  # lora_B starts at 0: lora_A gets a gradient from the second step on
        for j in range(2):
            out = log_prob_at(model, cond, ro, j)
            dt = float(ro.sigmas[j] - ro.sigmas[j + 1])
            loss = flow_grpo_loss(out, None, ro.log_probs[:, j], torch.tensor([1.0, -1.0]), None, dt, clip_range=0.2)
            loss.loss.backward()
        opt.step()
        opt.zero_grad()
    assert all(not torch.equal(a, p.detach()) for a, p in zip(before, params))
    export_lora(type(model.pipe), model.transformer, tmp_path / "lora")
    stock = _quiet(tiny_qwenimage_edit_pipeline(seed=0))
    stock.load_lora_weights(str(tmp_path / "lora"))
    (h, w), kw = EDIT_HW, dict(prompt=PROMPTS, negative_prompt=NEGATIVES, image=sources)
    images, _ = _stock(stock, 2, height=h, width=w, generator=torch.Generator().manual_seed(2), **kw)
    ours, _ = _ours(model, cond, 2, h, w, 2, 2)
    assert (ours - images).abs().max().item() <= 1e-5


# --- registry, save / load -----------------------------------------------------------------------------
def test_registry_detects_and_save_load_is_lossless(tmp_path, t2i, edit):
    assert {"tiny-qwenimage", "tiny-qwenimage-edit"} <= set(MODELS)
    assert detect_family(t2i.pipe) == "qwenimage" and detect_family(edit.pipe) == "qwenimage_edit"
    assert detect_family("Qwen/Qwen-Image") == "qwenimage" and detect_family("Qwen/Qwen-Image-Edit") == "qwenimage_edit"
    assert isinstance(load_model(edit.pipe), QwenImageEditModel)
    t2i.pipe.save_pretrained(str(tmp_path / "qi"))
    again = load_model(str(tmp_path / "qi"))
    assert isinstance(again, QwenImageModel)
    x = t2i.initial_noise(2, 32, 32, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(t2i.velocity(x, 0.3, t2i.encode(PROMPTS)), again.velocity(x, 0.3, again.encode(PROMPTS)))
    edit.pipe.save_pretrained(str(tmp_path / "qie"))  # the processor (image + video) survives offline too
    again, src = load_model(str(tmp_path / "qie")), _source(4, 64, 64)
    x = edit.initial_noise(1, 64, 64, torch.Generator().manual_seed(0))
    as_tensor = torch.from_numpy(np.array(src)).permute(2, 0, 1)[None].float() / 255  # [1, 3, H, W] in [0, 1]
    with torch.no_grad():
        v_old = edit.velocity(x, 0.3, edit.encode("a red circle", images=as_tensor))  # == the PIL image
        assert torch.equal(v_old, again.velocity(x, 0.3, again.encode("a red circle", images=src)))


# --- (4) bad input -------------------------------------------------------------------------------------
BAD = [
    ("edit", lambda m: m.encode(PROMPTS), r"qwenimage_edit needs a source image per prompt: pass images="),
    (
        "edit",
        lambda m: m.encode(PROMPTS, images=[_source(0, 64, 64), _source(0, 96, 48)]),
        r"source image 1 is 96x48 \(WxH\) -> condition size 1440x736, but image 0 is 64x64",
    ),
    ("edit", lambda m: m.encode(PROMPTS, images=[_source(0, 64, 64)] * 3), r"got 3 source images for 2 prompts"),
    ("edit", lambda m: m.encode(PROMPTS, images=torch.full((2, 3, 8, 8), 2.0)), r"\[0, 1\], got values in \[2, 2\]"),
    ("edit", lambda m: m.initial_noise(1, 64, 80), r"width=80 is not a positive multiple of 32 .*use width=64"),
    ("t2i", lambda m: m.initial_noise(1, 40, 32), r"height=40 is not a positive multiple of 16 .*use height=32"),
    ("t2i", lambda m: m.sigmas(4, 32, 24), r"width=24 is not a positive multiple of 16"),
    ("t2i", lambda m: m.sigmas(1, 32, 32), r"non-finite sigmas \[nan, 0.0\] for num_steps=1 \(shift_terminal=0.02"),
    ("t2i", lambda m: m.encode(PROMPTS, height=20), r"height=20 is not a positive multiple of 16"),
    (
        "t2i",
        lambda m: m.encode(PROMPTS, images=[_source(0, 32, 32)]),
        r"qwenimage is text-to-image and takes no source",
    ),
    ("t2i", lambda m: m.encode(PROMPTS, 4.0, ["a", "b", "c"]), r"got 3 negative_prompts for 2 prompts"),
    ("t2i", lambda m: m.velocity(torch.zeros(3, 4, 16), 0.5, m.encode(PROMPTS, 1.0)), r"batch 3 .*2 rows"),
    ("t2i", lambda m: QwenImageModel(m.pipe, max_sequence_length=2048), r"max_sequence_length=2048 must be"),
    (
        "edit",
        lambda m: QwenImageModel(m.pipe),
        r"QwenImageModel needs a qwenimage pipeline, got a QwenImageEditPipeline",
    ),
]


@pytest.mark.parametrize("which,call,message", BAD)
def test_bad_input_is_one_clear_value_error(which, call, message, t2i, edit):
    with pytest.raises(ValueError, match=message):
        call(t2i if which == "t2i" else edit)
