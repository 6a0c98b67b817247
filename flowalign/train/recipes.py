"""The hub-model recipes behind ``flowalign train <preset>``: the Flow-GRPO paper's SD3.5 and Flux
settings and flow_grpo's recipes for the newer families (``presets.py`` names them; the testbed presets
live there). Each builds a ``Config`` with the published numbers; offline, the hub id in
``model.path`` is one clear error naming it and how to pass a local directory."""

from __future__ import annotations

from ..models.flux2 import FLUX2_LORA_TARGETS
from ..models.wan import WAN_LORA_TARGETS
from ..sampling.windows import AllOptions, RandomOptions
from .config import FLUX_LORA_TARGETS, SD3_LORA_TARGETS, Config, WindowConfig


def _sd35(cfg: Config) -> Config:
    """SD3.5 Medium at 512 px with the paper's Flow-GRPO settings (App. B.3, config/grpo.py)."""
    cfg.model.path = "stabilityai/stable-diffusion-3.5-medium"
    cfg.model.resolution, cfg.model.max_sequence_length = 512, 128
    cfg.model.lora_rank, cfg.model.lora_alpha = 32, 64
    cfg.model.lora_targets = list(SD3_LORA_TARGETS)
    cfg.model.gradient_checkpointing = True
    cfg.sample.num_steps, cfg.sample.guidance_scale, cfg.sample.noise_level = 10, 4.5, 0.7
    cfg.sample.group_size, cfg.sample.groups_per_iteration, cfg.sample.batch_size = 24, 48, 9
    cfg.credit.scale = "batch"
    cfg.objective.options.clip_range, cfg.objective.options.adv_clip = 1e-4, 5.0
    cfg.optim.lr, cfg.optim.steps_per_iteration = 3e-4, 2
    cfg.train.mixed_precision, cfg.train.ema, cfg.train.iterations = "fp16", True, 1000
    cfg.train.save_every, cfg.train.keep_last = 60, 5
    cfg.eval.every, cfg.eval.num_steps, cfg.eval.guidance_scale = 60, 40, 4.5
    cfg.eval.num_prompts, cfg.eval.batch_size, cfg.eval.grid_images = 256, 8, 16
    return cfg


def _sd35_recipe(name: str, reward: str, beta: float, train: str, eval_: str) -> Config:
    cfg = _sd35(Config(preset=name))
    cfg.reward.weights, cfg.objective.options.beta = {reward: 1.0}, beta
    cfg.data.train, cfg.data.eval = train, eval_
    return cfg


def sd35_pickscore() -> Config:
    """Flow-GRPO PickScore recipe (beta 0.01). Prompts: Pick-a-Pic SFW prompts supplied by the user."""
    return _sd35_recipe("sd35_pickscore", "pickscore", 0.01, "data/pickscore/train.txt", "data/pickscore/test.txt")


def sd35_compositional() -> Config:
    """Flow-GRPO GenEval recipe (beta 0.04) with a user-supplied GenEval-style scorer: replace the
    placeholder with your factory, e.g. ``reward.weights={"my_pkg.geneval:load": 1}`` (options under
    ``reward.options``), and give prompts as .jsonl whose metadata columns (tag, include, ...) reach it."""
    return _sd35_recipe(
        "sd35_compositional", "geneval_scorer:load", 0.04, "data/geneval/train.jsonl", "data/geneval/test.jsonl"
    )


def flux_hpsv2() -> Config:
    """FLUX.1-dev with HPSv2 (the flow_grpo pickscore_flux recipe's settings): 6 train / 28 eval
    steps, distilled guidance 3.5, a = 0.9, beta 0, LoRA r64/alpha128 including the FF layers, bf16."""
    cfg = _sd35(Config(preset="flux_hpsv2"))
    cfg.model.path, cfg.model.max_sequence_length = "black-forest-labs/FLUX.1-dev", 512
    cfg.model.lora_rank, cfg.model.lora_alpha = 64, 128
    cfg.model.lora_targets = list(FLUX_LORA_TARGETS)
    cfg.sample.num_steps, cfg.sample.guidance_scale, cfg.sample.noise_level = 6, 3.5, 0.9
    cfg.sample.batch_size = 3
    cfg.reward.weights = {"hpsv2": 1.0}
    cfg.objective.options.beta = 0.0
    cfg.train.mixed_precision = "bf16"
    cfg.eval.num_steps, cfg.eval.guidance_scale = 28, 3.5
    cfg.data.train, cfg.data.eval = "data/pickscore/train.txt", "data/pickscore/test.txt"
    return cfg


# --- the newer families (flow_grpo config/grpo.py recipes; docs/reference-phase2.md section 15) ---------------
# Qwen-Image: the image- and text-stream attention projections, live in every block (a last block's
# text-stream outputs are discarded, so add_q_proj / to_add_out there would get no gradient)
QWEN_LORA_TARGETS = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.add_v_proj"]
PICKSCORE, EDIT = ("pickscore", "data/pickscore/{}.txt"), ("clip", "data/counting_edit/{}.jsonl")  # (reward, prompts)


def _family(name: str, path: str, family: str, steps: tuple, guidance: float, noise: float, data: tuple) -> Config:
    """A hub model at 512 px in bf16 (frozen weights and autocast), gradient checkpointing, flow_grpo's
    optimizer (lr 3e-4, clip 1e-4, 2 steps per iteration), beta 0, global-std advantages, no EMA;
    ``data`` = (reward, prompt file pattern)."""
    cfg = _sd35(Config(preset=name))
    cfg.reward.weights = {data[0]: 1.0}
    cfg.data.train, cfg.data.eval = data[1].format("train"), data[1].format("test")
    cfg.model.path, cfg.model.family, cfg.model.dtype = path, family, "bf16"
    cfg.model.max_sequence_length, cfg.train.mixed_precision, cfg.train.ema = 512, "bf16", False
    cfg.sample.num_steps, cfg.eval.num_steps = steps
    cfg.sample.guidance_scale = cfg.eval.guidance_scale = guidance
    cfg.sample.noise_level, cfg.objective.options.beta = noise, 0.0
    cfg.train.save_every = cfg.eval.every = 30
    return cfg


def _qwen(name: str, path: str, family: str, noise: float, data: tuple) -> Config:
    """flow_grpo's Qwen-Image configs: 10 / 50 steps, true CFG 4, 32 groups x 16, 4 per batch, LoRA r32."""
    cfg = _family(name, path, family, (10, 50), 4.0, noise, data)
    cfg.model.lora_targets = list(QWEN_LORA_TARGETS)
    cfg.sample.group_size, cfg.sample.groups_per_iteration, cfg.sample.batch_size = 16, 32, 4
    cfg.eval.batch_size = 4
    return cfg


def qwenimage_pickscore() -> Config:
    """flow_grpo ``pickscore_qwenimage`` (Qwen/Qwen-Image): Flow-GRPO-Fast, a 2-step SDE window drawn in
    the first half of the 10 steps, a = 1.2."""
    cfg = _qwen("qwenimage_pickscore", "Qwen/Qwen-Image", "qwenimage", 1.2, PICKSCORE)
    cfg.sample.window = WindowConfig("random", RandomOptions(size=2, range=[0, 5]))
    return cfg


def qwenimage_edit_clip() -> Config:
    """flow_grpo ``counting_qwenimage_edit`` (Qwen/Qwen-Image-Edit): every step SDE with a = 1.0. Its reward
    (GenEval counting 0.8 + CLIP image similarity to the source 0.2) is not built in: CLIP text-image
    score of the instruction stands in. Prompts: .jsonl with each row's source image."""
    cfg = _qwen("qwenimage_edit_clip", "Qwen/Qwen-Image-Edit", "qwenimage_edit", 1.0, EDIT)
    cfg.sample.window = WindowConfig("all", AllOptions(fraction=1.0))
    return cfg


def flux_kontext_clip() -> Config:
    """flow_grpo ``counting_flux_kontext`` (FLUX.1-Kontext-dev): 6 / 28 steps, guidance embedding 2.5,
    a = 0.9, 48 groups x 21, 3 per batch, EMA, LoRA r64 with the FF layers (its Flux scripts). Reward
    stand-in as ``qwenimage_edit_clip`` (theirs: GenEval counting 0.5 + CLIP image similarity 0.5)."""
    path = "black-forest-labs/FLUX.1-Kontext-dev"
    cfg = _family("flux_kontext_clip", path, "flux_kontext", (6, 28), 2.5, 0.9, EDIT)
    cfg.model.lora_rank, cfg.model.lora_alpha, cfg.model.lora_targets = 64, 128, list(FLUX_LORA_TARGETS)
    cfg.sample.group_size, cfg.sample.batch_size, cfg.train.ema, cfg.eval.batch_size = 21, 3, True, 2
    return cfg


def flux2_klein_pickscore() -> Config:
    """No peer recipe: ``sd35_pickscore``'s Flow-GRPO settings (10 steps, a = 0.7, beta 0.01, 48 x 24, EMA)
    on FLUX.2 [klein] base 4B (undistilled: true CFG 4.0, the pipeline's default; eval at its 50 steps),
    LoRA r64 on attention and FF as the Flux recipe."""
    path = "black-forest-labs/FLUX.2-klein-base-4B"
    cfg = _family("flux2_klein_pickscore", path, "flux2", (10, 50), 4.0, 0.7, PICKSCORE)
    cfg.model.lora_rank, cfg.model.lora_alpha, cfg.model.lora_targets = 64, 128, list(FLUX2_LORA_TARGETS)
    cfg.objective.options.beta, cfg.train.ema = 0.01, True
    return cfg


def wan_t2v_pickscore() -> Config:
    """flow_grpo ``general_ocr_wan2_1`` (Wan2.1-T2V-1.3B): 20 / 50 steps, CFG 4.5, groups of 4, 8 clips per
    batch, lr 1e-4, clip 1e-3, beta 0.004, per-group std, EMA. Its video OCR reward (every 4th frame) is
    not built in: PickScore on every 4th frame stands in. 33 frames; 320 px squares hold the pixels of its 240 x 416;
    its Wan-only SDE std (no noise level) is replaced by flow_sde a = 0.7."""
    data = ("video_frames", "data/ocr/{}.txt")
    cfg = _family("wan_t2v_pickscore", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "wan", (20, 50), 4.5, 0.7, data)
    cfg.model.resolution, cfg.model.num_frames, cfg.model.lora_targets = 320, 33, list(WAN_LORA_TARGETS)
    cfg.sample.group_size, cfg.sample.groups_per_iteration, cfg.sample.batch_size = 4, 32, 8
    cfg.credit.scale, cfg.train.ema, cfg.eval.batch_size = "group", True, 2
    cfg.optim.lr, cfg.objective.options.clip_range, cfg.objective.options.beta = 1e-4, 1e-3, 0.004
    cfg.reward.options = {"video_frames": {"reward": "pickscore", "frames": "stride", "stride": 4}}
    return cfg
