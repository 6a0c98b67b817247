"""Named configurations (``flowalign train <preset>``): plain functions that build on each other and never
name a GPU count (``config.derived`` turns them into per-device numbers).

* ``testbed`` (default): Flow-GRPO-Fast on the embedded shapes-world pipeline, sized for a CPU;
* ``sd35_pickscore``, ``sd35_compositional``, ``flux_hpsv2``: the Flow-GRPO paper recipes;
* ``qwenimage_pickscore``, ``qwenimage_edit_clip``, ``flux_kontext_clip``, ``wan_t2v_pickscore``: flow_grpo's
  Qwen-Image / Qwen-Image-Edit / Kontext / Wan 2.1 configs (rewards we lack replaced, as each says), and
  ``flux2_klein_pickscore`` (no peer recipe: the SD3.5 PickScore settings on FLUX.2 [klein] base 4B);
* ``testbed_<variant>``: the credit / exploration variants of issue 6 on the testbed (DenseGRPO,
  TP-GRPO, G^2RPO, BranchGRPO, TreeGRPO, Euphonium, MixGRPO window, artifact regulariser) and the
  DiffusionNFT objective (``testbed_nft``), each a few overrides of ``testbed`` so that comparisons
  change one thing.

``get_preset(name)`` returns a fresh ``Config``.
"""

from __future__ import annotations

from collections.abc import Callable

from .. import overrides
from ..credit import (
    BranchGRPOOptions,
    DenseOptions,
    EuphoniumOptions,
    G2RPOOptions,
    TreeGRPOOptions,
    TurningPointOptions,
)
from ..models.flux2 import FLUX2_LORA_TARGETS
from ..models.wan import WAN_LORA_TARGETS
from ..sampling.windows import AllOptions, FixedOptions, GeometricOptions, ProgressiveOptions, RandomOptions
from .config import FLUX_LORA_TARGETS, SD3_LORA_TARGETS, Config, CreditConfig, ObjectiveConfig, WindowConfig
from .objectives import NFTOptions


def testbed() -> Config:
    """The default: the compositional reward on the embedded shapes-world pipeline, sized for a CPU.
    32 images (4 prompts x 8) per iteration, 8 steps of which the first two are SDE (trained) and the
    rest ODE (Flow-GRPO-Fast with the window pinned to the start, as the flow_grpo Flux-fast recipes
    do), one initial noise per group so that rewards differ by the SDE noise only, LoRA r16 on the
    attention of the 4-layer transformer. The testbed's T5 is a bag of words, so 16 T5 positions hold
    every prompt (the pipeline's default 256 only adds identical pad tokens). Layout is settled in the
    first steps: a window drawn in [0, 4) (the previous default) leaves a third of the groups with
    identical rewards on the neglect base (README; pinned: 15%) and reached 0.635 there in 10 one-core
    minutes, the pinned window 0.779 (duplicate base: 0.630 vs 0.790). Learning rate and KL are the
    paper's GenEval values (3e-4, beta 0.04): with the pinned window lr 5e-4 collapsed the previous
    4000-step base (0.432 -> 0.139 in 15 minutes), and at lr 1e-3 held-out accuracy collapses within ~40
    iterations, with or without the KL term."""
    cfg = Config(preset="testbed")
    cfg.model.max_sequence_length = 16
    cfg.model.lora_rank, cfg.model.lora_alpha = 16, 32
    cfg.sample.num_steps, cfg.sample.guidance_scale, cfg.sample.noise_level = 8, 4.5, 0.7
    cfg.sample.group_size, cfg.sample.groups_per_iteration, cfg.sample.batch_size = 8, 4, 16
    cfg.sample.window = WindowConfig("fixed", FixedOptions(size=2, start=0))  # steps 0-1
    cfg.sample.same_noise = True
    cfg.credit.scale = "group"
    cfg.objective.options.clip_range, cfg.objective.options.beta = 5e-3, 0.04
    cfg.optim.lr, cfg.optim.steps_per_iteration = 3e-4, 2
    cfg.train.iterations, cfg.train.save_every, cfg.train.ema = 60, 10, False
    cfg.eval.every, cfg.eval.num_prompts, cfg.eval.num_steps, cfg.eval.batch_size = 10, 64, 20, 32
    cfg.eval.metrics = {"accuracy": {"reward": "compositional", "output": "strict"}}  # GenEval-style: all clauses hold
    return cfg


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


# --- credit / exploration variants on the testbed (issue 6; benchmarks/bench_credit.py compares them) ---
def _variant(name: str, credit=None, window=None, objective=None) -> Config:
    """The testbed preset with the random window in [0, 4) the variants were compared with (issue 6),
    and the given credit / window / objective sections."""
    cfg = testbed()
    cfg.preset = name
    cfg.sample.window = window or WindowConfig("random", RandomOptions(size=2, range=[0, 4]))
    cfg.credit = CreditConfig(kind=credit[0], scale="group", options=credit[1]) if credit else cfg.credit
    cfg.objective = objective or cfg.objective
    return cfg


def testbed_dense() -> Config:
    """DenseGRPO: per-step gains of a reward ladder (ODE completions with all remaining steps)."""
    cfg = _variant("testbed_dense", credit=("dense", DenseOptions()))
    cfg.sample.share_prefix = True
    return cfg


def testbed_dense_psi() -> Config:
    """DenseGRPO with the reward-aware noise table psi(t) calibrated before training (Alg. 1)."""
    cfg = _variant("testbed_dense_psi", credit=("dense", DenseOptions(calibrate_iterations=10, calibrate_samples=16)))
    cfg.sample.share_prefix = True
    return cfg


def testbed_turning_point() -> Config:
    """TP-GRPO: a 4-step SDE window (turning points need several steps), balanced per sampling batch."""
    window = WindowConfig("random", RandomOptions(size=4, range=[0, 8]))
    cfg = _variant("testbed_turning_point", credit=("turning_point", TurningPointOptions()), window=window)
    cfg.sample.share_prefix = True
    return cfg


def testbed_g2rpo() -> Config:
    """G^2RPO: one SDE step in the first half per iteration, completions at strides {1, 2, 3}."""
    window = WindowConfig("random", RandomOptions(size=1, range=[0, 4]))
    cfg = _variant("testbed_g2rpo", credit=("g2rpo", G2RPOOptions(strides=[1, 2, 3])), window=window)
    cfg.sample.share_prefix = True
    return cfg


def testbed_branchgrpo() -> Config:
    """BranchGRPO: SDE on every step but the last, binary splits at steps 0, 2, 4 (8 leaves = the group)."""
    tree = BranchGRPOOptions(splits=[0, 2, 4], branch=[2])
    return _variant("testbed_branchgrpo", credit=("branchgrpo", tree), window=WindowConfig("all", AllOptions()))


def testbed_treegrpo() -> Config:
    """TreeGRPO: a 3-step SDE window with a truncated-geometric start (r = 0.5), binary splits at each window step."""
    window = WindowConfig("geometric", GeometricOptions(size=3, r=0.5))
    return _variant(
        "testbed_treegrpo", credit=("treegrpo", TreeGRPOOptions(splits=[0, 1, 2], branch=[2])), window=window
    )


def testbed_euphonium() -> Config:
    """Euphonium: Dance-SDE (eta 0.25) guided by the gradient of the checker's soft clause score on
    x0_pred, dual outcome (compositional fraction) + process advantages."""
    opts = EuphoniumOptions(process_reward="compositional", process_options={"output": "soft"}, reward_grad_scale=1.0)
    cfg = _variant("testbed_euphonium", credit=("euphonium", opts))
    cfg.sample.step, cfg.sample.noise_level = "dance_sde", 0.25
    return cfg


def testbed_mixgrpo() -> Config:
    """MixGRPO: a 2-step SDE window sliding one step later every 5 iterations (wrapping around)."""
    return _variant("testbed_mixgrpo", window=WindowConfig("progressive", ProgressiveOptions(size=2, every=5)))


def testbed_artifact_reg() -> Config:
    """The hackable aesthetic proxy regularised by the artifact detector (weight 5 in the summed reward,
    as the ArtifactReward recipe sums rewards then z-scores) and a KL to the base model (beta 0.04);
    evals track the proxy, the detector and compositional accuracy (benchmarks/bench_artifact_reg.py)."""
    cfg = _variant("testbed_artifact_reg")
    cfg.objective.options.beta = 0.04
    cfg.reward.weights = {"testbed_aesthetic": 1.0, "testbed_artifact": 5.0}
    cfg.eval.metrics = {
        "aesthetic": {"reward": "testbed_aesthetic"},
        "artifact": {"reward": "testbed_artifact"},
        "accuracy": {"reward": "compositional", "output": "strict"},
    }
    return cfg


def testbed_nft() -> Config:
    """DiffusionNFT's forward-process objective instead of Flow-GRPO's ratio: ODE rollouts (the paper's
    deterministic sampler; distinct initial noises give the group its spread), trained at every step's
    sigma but the last, 4 optimizer steps of 8 images per iteration, lr 1e-3, |v - v_ref|^2 weight 1e-4."""
    objective = ObjectiveConfig("nft", NFTOptions(beta=1e-4))
    cfg = _variant("testbed_nft", window=WindowConfig("all", AllOptions()), objective=objective)
    cfg.sample.noise_level, cfg.sample.same_noise, cfg.sample.batch_size = 0.0, False, 8
    cfg.optim.steps_per_iteration, cfg.optim.lr = 4, 1e-3
    return cfg


PRESETS: dict[str, Callable[[], Config]] = {
    "testbed": testbed,
    "sd35_pickscore": sd35_pickscore,
    "sd35_compositional": sd35_compositional,
    "flux_hpsv2": flux_hpsv2,
    "qwenimage_pickscore": qwenimage_pickscore,
    "qwenimage_edit_clip": qwenimage_edit_clip,
    "flux_kontext_clip": flux_kontext_clip,
    "flux2_klein_pickscore": flux2_klein_pickscore,
    "wan_t2v_pickscore": wan_t2v_pickscore,
    "testbed_dense": testbed_dense,
    "testbed_dense_psi": testbed_dense_psi,
    "testbed_turning_point": testbed_turning_point,
    "testbed_g2rpo": testbed_g2rpo,
    "testbed_branchgrpo": testbed_branchgrpo,
    "testbed_treegrpo": testbed_treegrpo,
    "testbed_euphonium": testbed_euphonium,
    "testbed_mixgrpo": testbed_mixgrpo,
    "testbed_artifact_reg": testbed_artifact_reg,
    "testbed_nft": testbed_nft,
}


def get_preset(name: str) -> Config:
    """A fresh ``Config`` of the preset ``name`` (one clear error naming the valid presets)."""
    return overrides.get_preset(PRESETS, name)
