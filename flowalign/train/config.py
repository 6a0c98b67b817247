"""Training configuration: nested dataclasses, every field with a one-line comment (units, paper).

Presets live in ``flowalign/train/presets.py`` and never name a GPU count: the per-device numbers
follow from the world size (``batching.derived``). Overrides and presets use the one config language
of every command (``flowalign.overrides``): ``flowalign train testbed sample.num_steps=8``.

Variants own their options: ``sample.window``, ``credit`` and ``objective`` each hold a ``kind`` and
``options`` typed by that kind's registry entry (``sampling.windows.WINDOWS``, ``credit.CREDIT``,
``train.objectives.OBJECTIVES``): ``credit.kind=dense credit.options.ladder_steps=3``. The flat keys
of earlier versions (``credit.name``, ``loss.beta``, ``sample.window_size``, ...) still work with one
deprecation warning naming the new key (``RENAMED``).

Batch vocabulary (Flow-GRPO, arXiv 2505.05470, App. B): one *iteration* samples
``groups_per_iteration`` prompts x ``group_size`` images (48 x 24 in the paper), split evenly over
ranks and cut into sampling batches of ``batch_size`` images per device; the training micro-batch is
the sampling batch (SD3 outputs depend slightly on the batch size, so keeping them equal keeps the
on-policy ratio at exactly 1). Each iteration makes ``optim.steps_per_iteration`` optimizer steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import overrides
from ..credit import GRPOOptions, check_credit
from ..ranges import ranged
from ..sampling.windows import AllOptions, window_kind
from .objectives import FlowGRPOOptions, objective_kind

SD3_LORA_TARGETS = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"]
SD3_LORA_TARGETS += ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out"]
FLUX_LORA_TARGETS = SD3_LORA_TARGETS + ["ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"]


@dataclass
class ModelConfig:
    path: str = "testbed"  # 'testbed', a name in models.MODELS, a saved pipeline dir, or a hub id
    # 'sd3' | 'flux' | 'flux2' | 'flux_kontext' | 'qwenimage' | 'qwenimage_edit' | 'wan'; None = from the name
    family: str | None = None
    dtype: str = "fp32"  # weights of the frozen parts: fp32 | bf16 | fp16 (trainable params stay fp32)
    resolution: int = ranged(32, "[1, inf)")  # image height = width, px (multiple of VAE factor x patch size)
    # T5 tokens (SD3 pipeline default 256; flow_grpo uses 128; Flux 512)
    max_sequence_length: int = ranged(256, "[1, inf)")
    negative_prompt: str = ""  # CFG negative prompt (flow_grpo: "")
    lora: bool = True  # True: train peft LoRA adapters on the transformer; False: full fine-tuning
    lora_rank: int = ranged(32, "[1, inf)")  # LoRA r (Flow-GRPO SD3: 32; Flux: 64)
    lora_alpha: int = ranged(64, "(0, inf)")  # LoRA alpha; the update is scaled by alpha / r (SD3: 64; Flux: 128)
    lora_init: str = "gaussian"  # peft init_lora_weights ('gaussian' as flow_grpo; B = 0: training starts at the base)
    lora_targets: list[str] = field(default_factory=lambda: list(SD3_LORA_TARGETS))  # module-name suffixes
    gradient_checkpointing: bool = False  # recompute transformer activations in backward (less memory, ~30% slower)
    # frames per sample: 1 = an image; video families (wan) need 4k+1 (the VAE compresses time 4x)
    num_frames: int = ranged(1, "[1, inf)")
    attention: str = "sdpa"  # attention kernel of the transformer: sdpa (torch) | xformers (CUDA only)


@dataclass
class DataConfig:
    train: str = "testbed:train"  # prompt file (.txt / .jsonl with metadata columns) or 'testbed:train'
    eval: str | None = "testbed:test"  # held-out prompts for the periodic eval; None = no eval


@dataclass
class WindowConfig:
    kind: str = "all"  # sampling.windows.WINDOWS: all | fixed | random | progressive | geometric | table
    options: Any = field(default_factory=AllOptions)  # the kind's options (sampling.windows)

    @staticmethod
    def options_for(kind: str) -> type:
        return window_kind(kind).options


@dataclass
class SampleConfig:
    num_steps: int = ranged(10, "[1, inf)")  # SDE steps per training rollout (paper: 10 for training, 40 for eval)
    # classifier-free guidance for sampling AND the training forward (on-policy); 1 = off
    guidance_scale: float = ranged(4.5, "[0, inf)")
    noise_level: float = ranged(0.7, "[0, inf)")  # a in g = a sqrt(sigma / (1 - sigma)) (flow_sde), or CPS's a
    # per-step table psi(t) [T] (DenseGRPO); [] = noise_level
    noise_levels: list[float] = ranged([], "[0, inf)")
    step: str = "flow_sde"  # step kind in sampling.sde.STEPS: flow_sde | cps | dance_sde | cps_flowgrpo
    # K images per prompt (paper: 24; 6 and 12 were unstable); trees: leaves per tree
    group_size: int = ranged(24, "[1, inf)")
    groups_per_iteration: int = ranged(48, "[1, inf)")  # distinct prompts per iteration (paper: 48)
    batch_size: int = ranged(9, "[1, inf)")  # images per device per sampling batch = training micro-batch (memory knob)
    window: WindowConfig = field(default_factory=WindowConfig)  # the stochastic (trained) steps of an iteration
    same_noise: bool = False  # one initial noise per group (flow_grpo same_latent): rewards differ by SDE noise only
    share_prefix: bool = False  # run the ODE steps before the first SDE step once per distinct initial noise


@dataclass
class RewardConfig:
    weights: dict[str, float] = ranged({"compositional": 1.0}, "free")  # REWARDS name or 'module:fn'
    options: dict[str, dict] = field(default_factory=dict)  # reward name -> kwargs for its factory


@dataclass
class CreditConfig:
    kind: str = "grpo"  # credit.CREDIT: grpo | dense | turning_point | g2rpo | euphonium | branchgrpo | treegrpo
    scale: str = "batch"  # advantage divisor: 'group' std | 'batch' std (flow_grpo global_std) | 'none'
    eps: float = ranged(1e-4, "[0, inf)")  # added to the std (flow_grpo: 1e-4)
    unbiased: bool = False  # ddof=1 std (FastVideo repos) instead of the population std (flow_grpo)
    filter_zero_std: bool = True  # mask out groups whose rewards are all equal (DAPO-style; they carry no signal)
    options: Any = field(default_factory=GRPOOptions)  # the kind's options (credit/<scheme>.py)

    @staticmethod
    def options_for(kind: str) -> type:
        return check_credit(kind).options


@dataclass
class ObjectiveConfig:
    kind: str = "flow_grpo"  # train.objectives.OBJECTIVES: flow_grpo | nft | grpo_guard
    options: Any = field(default_factory=FlowGRPOOptions)  # the kind's options (train/objectives/<kind>.py)

    @staticmethod
    def options_for(kind: str) -> type:
        return objective_kind(kind).options


@dataclass
class OptimConfig:
    lr: float = ranged(3e-4, "(0, inf)")  # AdamW learning rate (constant) (paper: 3e-4)
    betas: list[float] = ranged([0.9, 0.999], "[0, 1)")  # AdamW betas
    weight_decay: float = ranged(1e-4, "[0, inf)")  # AdamW weight decay
    eps: float = ranged(1e-8, "(0, inf)")  # AdamW epsilon
    max_grad_norm: float = ranged(1.0, "(0, inf]")  # clip the global grad norm before each step (inf = no clipping)
    # optimizer steps per iteration (flow_grpo: grad-acc = batches / 2 -> 2)
    steps_per_iteration: int = ranged(2, "[1, inf)")


@dataclass
class TrainConfig:
    iterations: int = ranged(1000, "[1, inf)")  # outer iterations (sample -> score -> credit -> update)
    inner_epochs: int = ranged(1, "[1, inf)")  # passes over each iteration's samples (flow_grpo: 1)
    seed: int = ranged(0, "free")  # seeds the prompts, initial noise, windows, shuffles and LoRA init
    mixed_precision: str = "no"  # accelerate autocast for the transformer: no | fp16 | bf16 (step math stays fp32)
    ema: bool = True  # keep an EMA of the trainable params, used for eval and the exported LoRA
    ema_decay: float = ranged(0.9, "[0, 1]")  # max EMA decay; decay = min(this, (1 + n) / (10 + n)) (flow_grpo)
    ema_every: int = ranged(8, "[1, inf)")  # update the EMA every this many optimizer steps (flow_grpo: 8)
    save_every: int = ranged(20, "[0, inf)")  # full checkpoint every this many iterations (and at the end)
    keep_last: int = ranged(3, "[1, inf)")  # complete checkpoints kept (older ones are deleted)
    output_dir: str | None = None  # run directory; None = <runs_dir>/<preset>-<timestamp>
    runs_dir: str = "runs"  # parent of automatic run directories
    max_minutes: float = ranged(0.0, "[0, inf)")  # stop (and checkpoint) after this much wall time; 0 = no limit
    budget_clock: str = "wall"  # what max_minutes counts: wall | cpu (this process's CPU time: fair under load)
    # stop (and checkpoint) once the sampler NFEs (all ranks) reach this; 0 = no limit
    max_nfe: int = ranged(0, "[0, inf)")
    cpu: bool = False  # force CPU even when a GPU is present
    reward_retries: int = ranged(2, "[0, inf)")  # calls repeated when a reward raises, then its batch is masked
    reward_patience: int = ranged(3, "[1, inf)")  # iterations in a row with no reward before the run stops
    nonfinite_patience: int = ranged(3, "[1, inf)")  # iterations in a row rolled back (NaN weights) before a stop


@dataclass
class EvalConfig:
    # evaluate every this many iterations (and before the first and after the last); 0 = never
    every: int = ranged(20, "[0, inf)")
    every_nfe: int = ranged(0, "[0, inf)")  # also evaluate each time this many more sampler NFEs are spent; 0 = off
    num_prompts: int = ranged(64, "[1, inf)")  # held-out prompts per eval (prefix of the eval set)
    num_steps: int = ranged(40, "[1, inf)")  # ODE steps at eval (paper: 40)
    guidance_scale: float = ranged(4.5, "[0, inf)")  # classifier-free guidance at eval
    batch_size: int = ranged(16, "[1, inf)")  # images per device per eval batch
    seed: int = ranged(1234, "free")  # fixed per-prompt noise, so evals are comparable across iterations
    grid_images: int = ranged(16, "[0, inf)")  # images in the logged grid (PNG + tensorboard)
    metrics: dict[str, dict] = field(default_factory=dict)  # eval-only scores: name -> {"reward": REWARDS name, ...}
    # early stopping on a held-out gold reward: the eval metric ("reward" or a key of eval.metrics) whose
    # best value is kept; the run stops once it has not improved for early_stop_patience evals in a row, and
    # the weights of the best eval are restored before the last checkpoint and export. "" = off
    early_stop: str = ""
    early_stop_patience: int = ranged(2, "[1, inf)")  # evals in a row without improvement before the stop
    early_stop_min_delta: float = ranged(0.0, "[0, inf)")  # an improvement must exceed the best by more than this


@dataclass
class LogConfig:
    every: int = ranged(1, "[1, inf)")  # write scalars every this many iterations
    wandb: bool = False  # also log to Weights & Biases (only if installed)
    wandb_project: str = "flowalign"  # wandb project name
    progress: bool = True  # tqdm progress bars for sampling and training
    credit_jsonl: bool = False  # write gathered group ids / rewards / advantages per iteration to credit.jsonl


@dataclass
class Config:
    preset: str = "testbed"  # name of the preset this config came from (names the run directory)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    credit: CreditConfig = field(default_factory=CreditConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)


def _renamed() -> dict[str, str]:
    window = {"timestep_fraction": "fraction", "window_size": "size", "window_range": "range"}
    window.update({"window_every": "every", "window_stride": "stride", "window_r": "r"})
    tree = {"tree_splits": "splits", "tree_branch": "branch", "tree_depth_noise": "depth_noise"}
    tree["tree_branch_corr"] = "branch_corr"
    credit = {k: k for k in ("ladder_steps", "ladder_stride", "strides", "fusion", "prune_depths", "c_outcome")}
    credit.update({k: k for k in ("prune_slide_every", "width_pruning", "width_ratio", "c_process")})
    credit.update({k: k for k in ("process_reward", "process_options", "calibrate_iterations", "calibrate_samples")})
    credit.update({"calibrate_eps1": "calibrate_eps1", "calibrate_eps2": "calibrate_eps2", "dense_reward": "reward"})
    credit.update({"tp_constraint": "constraint", "tp_balance": "balance", "granular_completion": "completion"})
    credit.update({"tree_beta": "temperature", "guidance_kappa": "reward_grad_scale"})
    credit["guidance_steps"] = "reward_grad_steps"
    loss = {k: k for k in ("clip_range", "clip_range_high", "adv_clip", "beta", "kl_mode", "nft_beta", "nft_cfg")}
    out = {"sample.window": "sample.window.kind", "sample.noise_table": "sample.noise_levels"}
    out.update({"credit.name": "credit.kind", "loss.objective": "objective.kind"})
    out.update({f"sample.{k}": f"sample.window.options.{v}" for k, v in window.items()})
    out.update({f"sample.{k}": f"credit.options.{v}" for k, v in tree.items()})
    out.update({f"credit.{k}": f"credit.options.{v}" for k, v in credit.items()})
    out.update({f"loss.{k}": f"objective.options.{k}" for k in loss})
    return out


RENAMED: dict[str, str] = _renamed()  # old flat key -> its key now (accepted with a deprecation warning)


def apply_overrides(cfg: Config, items: list[str]) -> Config:
    """The training config's overrides: ``flowalign.overrides.apply_overrides`` with the deprecated keys."""
    return overrides.apply_overrides(cfg, items, RENAMED)
