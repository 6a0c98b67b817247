"""Training configuration: nested dataclasses, dotted ``key=value`` overrides, presets, batch arithmetic.

Every field has a one-line comment (units, paper). Presets are plain functions that build on each
other and never name a GPU count: the per-device numbers follow from the world size in
``derived(cfg, world_size)``, which checks that everything divides and is printed at start-up.

Batch vocabulary (Flow-GRPO, arXiv 2505.05470, App. B): one *iteration* samples
``groups_per_iteration`` prompts x ``group_size`` images (48 x 24 in the paper), split evenly over
ranks and cut into sampling batches of ``batch_size`` images per device; the training micro-batch is
the sampling batch (SD3 outputs depend slightly on the batch size, so keeping them equal keeps the
on-policy ratio at exactly 1). Each iteration makes ``optim.steps_per_iteration`` optimizer steps.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

SD3_LORA_TARGETS = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
                    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out"]
FLUX_LORA_TARGETS = SD3_LORA_TARGETS + ["ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"]


@dataclass
class ModelConfig:
    path: str = "testbed"  # 'testbed' (assets/testbed/pipeline), a name in models.MODELS, a saved pipeline dir, or a hub id
    family: str | None = None  # 'sd3' | 'flux'; None = read model_index.json / the name
    dtype: str = "fp32"  # weights of the frozen parts: fp32 | bf16 | fp16 (trainable params stay fp32)
    resolution: int = 32  # image height = width, px (multiple of VAE factor x patch size)
    max_sequence_length: int = 256  # T5 tokens (SD3 pipeline default 256; flow_grpo uses 128; Flux 512)
    negative_prompt: str = ""  # CFG negative prompt (flow_grpo: "")
    lora: bool = True  # True: train peft LoRA adapters on the transformer; False: full fine-tuning
    lora_rank: int = 32  # LoRA r (Flow-GRPO SD3: 32; Flux: 64)
    lora_alpha: int = 64  # LoRA alpha; the update is scaled by alpha / r (SD3: 64; Flux: 128)
    lora_init: str = "gaussian"  # peft init_lora_weights ('gaussian' as flow_grpo; B = 0 so training starts at the base)
    lora_targets: list[str] = field(default_factory=lambda: list(SD3_LORA_TARGETS))  # module-name suffixes
    gradient_checkpointing: bool = False  # recompute transformer activations in backward (less memory, ~30% slower)


@dataclass
class DataConfig:
    train: str = "testbed:train"  # prompt file (.txt / .jsonl with metadata columns) or 'testbed:train'
    eval: str | None = "testbed:test"  # held-out prompts for the periodic eval; None = no eval


@dataclass
class SampleConfig:
    num_steps: int = 10  # SDE steps per training rollout (paper: 10 for training, 40 for eval)
    guidance_scale: float = 4.5  # CFG scale used for sampling AND the training forward (on-policy); 1 = no CFG
    noise_level: float = 0.7  # a in g = a sqrt(sigma / (1 - sigma)) (flow_sde), or CPS's a
    step: str = "flow_sde"  # step kind in sampling.sde.STEPS: flow_sde | cps | dance_sde | cps_flowgrpo
    group_size: int = 24  # K images per prompt (paper: 24; 6 and 12 were unstable)
    groups_per_iteration: int = 48  # distinct prompts per iteration (paper: 48)
    batch_size: int = 9  # images per device per sampling batch = training micro-batch (memory knob)
    window: str = "all"  # stochastic/trained steps: 'all' (first timestep_fraction) | 'random' (Fast) | 'progressive' (MixGRPO)
    timestep_fraction: float = 0.99  # 'all': train the first int(T * fraction) steps (0.99 of 10 = all but the last)
    window_size: int = 2  # 'random' / 'progressive': consecutive SDE (trained) steps; the rest are ODE
    window_range: list[int] = field(default_factory=lambda: [0, 10])  # 'random': window start drawn in [lo, hi - size]
    window_every: int = 25  # 'progressive': iterations before the window moves by one step
    same_noise: bool = False  # one initial noise per group (flow_grpo same_latent): rewards differ by the SDE noise only


@dataclass
class RewardConfig:
    weights: dict[str, float] = field(default_factory=lambda: {"compositional": 1.0})  # name in rewards.REWARDS or 'module:factory' -> weight
    options: dict[str, dict] = field(default_factory=dict)  # reward name -> kwargs for its factory (e.g. weights path)


@dataclass
class CreditConfig:
    name: str = "grpo"  # credit function in credit.CREDIT
    scale: str = "batch"  # advantage divisor: 'group' std | 'batch' std (flow_grpo global_std) | 'none'
    eps: float = 1e-4  # added to the std (flow_grpo: 1e-4)
    unbiased: bool = False  # ddof=1 std (FastVideo repos) instead of the population std (flow_grpo)
    filter_zero_std: bool = True  # mask out groups whose rewards are all equal (DAPO-style; they carry no signal)


@dataclass
class LossConfig:
    clip_range: float = 1e-4  # PPO epsilon on the ratio (flow_grpo 1e-4; Fast 1e-5)
    clip_range_high: float | None = None  # upper epsilon if asymmetric (None = clip_range)
    adv_clip: float = 5.0  # advantages clamped to +-adv_clip (flow_grpo adv_clip_max)
    beta: float = 0.04  # KL weight to the reference (adapter off) (paper: 0.04 GenEval/OCR, 0.01 PickScore, 0 Flux)
    kl_mode: str = "flow_grpo"  # 'flow_grpo' (x|dt|, keeps the published betas) | 'exact' (closed-form per-step KL)


@dataclass
class OptimConfig:
    lr: float = 3e-4  # AdamW learning rate (constant) (paper: 3e-4)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    weight_decay: float = 1e-4  # AdamW weight decay
    eps: float = 1e-8  # AdamW epsilon
    max_grad_norm: float = 1.0  # clip the global grad norm before each step (0 = no clipping)
    steps_per_iteration: int = 2  # optimizer steps per iteration (flow_grpo: grad-acc = batches / 2 -> 2)


@dataclass
class TrainConfig:
    iterations: int = 1000  # outer iterations (sample -> score -> credit -> train)
    inner_epochs: int = 1  # passes over each iteration's samples (flow_grpo: 1)
    seed: int = 0  # seeds the prompts, initial noise, windows, shuffles and LoRA init
    mixed_precision: str = "no"  # accelerate autocast for the transformer: no | fp16 | bf16 (step math stays fp32)
    ema: bool = True  # keep an EMA of the trainable params, used for eval and the exported LoRA
    ema_decay: float = 0.9  # max EMA decay; decay = min(this, (1 + n) / (10 + n)) (flow_grpo)
    ema_every: int = 8  # update the EMA every this many optimizer steps (flow_grpo: 8)
    save_every: int = 20  # full checkpoint every this many iterations (and at the end)
    keep_last: int = 3  # complete checkpoints kept (older ones are deleted)
    output_dir: str | None = None  # run directory; None = <runs_dir>/<preset>-<timestamp>
    runs_dir: str = "runs"  # parent of automatic run directories
    max_minutes: float = 0.0  # stop (and checkpoint) after this much wall time; 0 = no limit
    cpu: bool = False  # force CPU even when a GPU is present


@dataclass
class EvalConfig:
    every: int = 20  # evaluate every this many iterations (and before the first and after the last); 0 = never
    num_prompts: int = 64  # held-out prompts per eval (prefix of the eval set)
    num_steps: int = 40  # ODE steps at eval (paper: 40)
    guidance_scale: float = 4.5  # CFG at eval
    batch_size: int = 16  # images per device per eval batch
    seed: int = 1234  # fixed per-prompt noise, so evals are comparable across iterations
    grid_images: int = 16  # images in the logged grid (PNG + tensorboard)
    metrics: dict[str, dict] = field(default_factory=dict)  # extra eval-only scores: log name -> {"reward": REWARDS name, **its options}


@dataclass
class LogConfig:
    every: int = 1  # write scalars every this many iterations
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
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)


# --- presets -------------------------------------------------------------------------------------
def testbed() -> Config:
    """The default: the compositional reward on the embedded shapes-world pipeline, sized for a CPU.
    32 images (4 prompts x 8) per iteration, 8 SDE steps with a random 2-step window in the first
    half (Flow-GRPO-Fast), one initial noise per group so that rewards differ by the SDE noise only,
    LoRA r16 on the attention of the 4-layer transformer. The testbed's T5 is a bag of words, so 16
    T5 positions hold every prompt (the pipeline's default 256 only adds identical pad tokens)."""
    cfg = Config(preset="testbed")
    cfg.model.max_sequence_length = 16
    cfg.model.lora_rank, cfg.model.lora_alpha = 16, 32
    cfg.sample.num_steps, cfg.sample.guidance_scale, cfg.sample.noise_level = 8, 4.5, 0.7
    cfg.sample.group_size, cfg.sample.groups_per_iteration, cfg.sample.batch_size = 8, 4, 16
    cfg.sample.window, cfg.sample.window_size, cfg.sample.window_range = "random", 2, [0, 4]
    cfg.sample.same_noise = True
    cfg.credit.scale = "group"
    cfg.loss.clip_range, cfg.loss.beta = 5e-3, 0.0
    cfg.optim.lr, cfg.optim.steps_per_iteration = 1e-3, 2
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
    cfg.loss.clip_range, cfg.loss.adv_clip = 1e-4, 5.0
    cfg.optim.lr, cfg.optim.steps_per_iteration = 3e-4, 2
    cfg.train.mixed_precision, cfg.train.ema, cfg.train.iterations = "fp16", True, 1000
    cfg.train.save_every, cfg.train.keep_last = 60, 5
    cfg.eval.every, cfg.eval.num_steps, cfg.eval.guidance_scale = 60, 40, 4.5
    cfg.eval.num_prompts, cfg.eval.batch_size, cfg.eval.grid_images = 256, 8, 16
    return cfg


def sd35_pickscore() -> Config:
    """Flow-GRPO PickScore recipe (beta 0.01). Prompts: Pick-a-Pic SFW prompts supplied by the user."""
    cfg = _sd35(Config(preset="sd35_pickscore"))
    cfg.reward.weights = {"pickscore": 1.0}
    cfg.loss.beta = 0.01
    cfg.data.train, cfg.data.eval = "data/pickscore/train.txt", "data/pickscore/test.txt"
    return cfg


def sd35_compositional() -> Config:
    """Flow-GRPO GenEval recipe (beta 0.04) with a user-supplied GenEval-style scorer: replace the
    placeholder with your factory, e.g. ``reward.weights={"my_pkg.geneval:load": 1}`` (options under
    ``reward.options``), and give prompts as .jsonl whose metadata columns (tag, include, ...) reach it."""
    cfg = _sd35(Config(preset="sd35_compositional"))
    cfg.reward.weights = {"geneval_scorer:load": 1.0}
    cfg.loss.beta = 0.04
    cfg.data.train, cfg.data.eval = "data/geneval/train.jsonl", "data/geneval/test.jsonl"
    return cfg


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
    cfg.loss.beta = 0.0
    cfg.train.mixed_precision = "bf16"
    cfg.eval.num_steps, cfg.eval.guidance_scale = 28, 3.5
    cfg.data.train, cfg.data.eval = "data/pickscore/train.txt", "data/pickscore/test.txt"
    return cfg


PRESETS: dict[str, Callable[[], Config]] = {
    "testbed": testbed, "sd35_pickscore": sd35_pickscore,
    "sd35_compositional": sd35_compositional, "flux_hpsv2": flux_hpsv2,
}


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
    return PRESETS[name]()


# --- overrides and (de)serialisation -------------------------------------------------------------
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean (true/false), got {text!r}")


def coerce(text: str, tp: Any) -> Any:
    """Parse the override string ``text`` as type ``tp`` (int, float, bool, str, X | None, list, dict)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if text.strip().lower() in ("none", "null") and type(None) in args:
            return None
        return coerce(text, next(a for a in args if a is not type(None)))
    if tp is bool:
        return _parse_bool(text)
    if tp in (int, float):
        return tp(float(text)) if tp is int and float(text).is_integer() else tp(text)
    if tp is str:
        return text
    if origin is list:
        text = text.strip()
        items = json.loads(text) if text.startswith("[") else [t for t in text.split(",") if t.strip()]
        return [coerce(str(v), args[0]) if args and not isinstance(v, args[0]) else v for v in items]
    if origin is dict:
        text = text.strip()
        if text.startswith("{"):
            return json.loads(text)
        out = {}
        for item in filter(None, (t.strip() for t in text.split(","))):
            key, _, value = item.partition(":")
            out[key.strip()] = coerce(value, args[1]) if args and args[1] in (int, float, bool) else value
        return out
    raise ValueError(f"cannot parse {text!r} as {tp}")


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply dotted ``key=value`` strings in place (``sample.num_steps=8``, ``reward.weights.hpsv2=0.5``,
    ``model.lora_targets=attn.to_q,attn.to_k``). One clear ValueError per bad key or value."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not key=value; write e.g. sample.num_steps=8.")
        node, parts = cfg, key.strip().split(".")
        for depth, part in enumerate(parts):
            if isinstance(node, dict):  # reward.weights.<name>=w / reward.options.<name>={...}
                if depth != len(parts) - 1:
                    raise ValueError(f"override {key!r}: nothing below {'.'.join(parts[:depth + 1])!r}.")
                node[part] = json.loads(value) if value.strip()[:1] in "{[" else coerce(value, float) \
                    if _is_number(value) else value
                break
            names = [f.name for f in dataclasses.fields(node)]
            if part not in names:
                close = difflib.get_close_matches(part, names, n=3)
                where = ".".join(parts[:depth]) or "the config"
                raise ValueError(f"unknown config key {key!r}: {where} has no field {part!r}"
                                 f"{f' (did you mean {close})' if close else ''}; valid: {names}.")
            tp = _hints(type(node))[part]
            if depth == len(parts) - 1:
                try:
                    setattr(node, part, coerce(value, tp))
                except (ValueError, TypeError, json.JSONDecodeError) as err:
                    raise ValueError(f"override {item!r}: cannot read {value!r} as {tp} ({err}).") from None
            else:
                node = getattr(node, part)
                if not dataclasses.is_dataclass(node) and not isinstance(node, dict):
                    raise ValueError(f"override {key!r}: {'.'.join(parts[:depth + 1])} is a value, not a section.")
    return cfg


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(data: dict[str, Any], cls: type = Config) -> Any:
    """Inverse of ``to_dict``; unknown keys are one clear error (a config from another version)."""
    hints, kwargs = _hints(cls), {}
    for key, value in data.items():
        if key not in hints:
            raise ValueError(f"config section {cls.__name__} has no field {key!r}; valid: {list(hints)}.")
        tp = hints[key]
        kwargs[key] = from_dict(value, tp) if dataclasses.is_dataclass(tp) else value
    return cls(**kwargs)


# --- derived batch arithmetic --------------------------------------------------------------------
@dataclass
class Derived:
    world_size: int  # processes (devices)
    images_per_iteration: int  # groups_per_iteration x group_size, over all ranks
    images_per_rank: int  # images_per_iteration / world_size
    batches_per_rank: int  # sampling batches (= training micro-batches) per rank per iteration
    grad_accum: int  # micro-batches accumulated into one optimizer step (per rank)
    trained_steps: int  # trained (stochastic) steps per sample per iteration
    backward_per_step: int  # backward passes (micro-batch x step) per optimizer step

    def table(self) -> str:
        rows = [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)]
        return "\n".join(f"  {k:<22} {v}" for k, v in rows)


def trained_steps(cfg: Config) -> int:
    s = cfg.sample
    if s.window == "all":
        return max(1, int(s.num_steps * s.timestep_fraction))
    return s.window_size


def derived(cfg: Config, world_size: int = 1) -> Derived:
    """Per-device numbers for ``world_size`` processes; one ValueError naming the bad numbers."""
    s, o = cfg.sample, cfg.optim
    for name, value in (("sample.group_size", s.group_size), ("sample.groups_per_iteration", s.groups_per_iteration),
                        ("sample.batch_size", s.batch_size), ("sample.num_steps", s.num_steps),
                        ("optim.steps_per_iteration", o.steps_per_iteration),
                        ("train.inner_epochs", cfg.train.inner_epochs), ("world_size", world_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be an integer >= 1.")
    total = s.groups_per_iteration * s.group_size
    if total % world_size:
        raise ValueError(f"{s.groups_per_iteration} groups x {s.group_size} images = {total} images per "
                         f"iteration do not split over {world_size} processes; make "
                         f"sample.groups_per_iteration x sample.group_size a multiple of {world_size}.")
    per_rank = total // world_size
    if per_rank % s.batch_size:
        fits = [b for b in range(1, per_rank + 1) if per_rank % b == 0 and b <= max(s.batch_size, 1) * 2]
        raise ValueError(f"{per_rank} images per process ({total} / {world_size}) are not a whole number of "
                         f"sampling batches of sample.batch_size={s.batch_size}; use one of {fits[-4:]}.")
    batches = per_rank // s.batch_size
    micro = batches * cfg.train.inner_epochs
    if micro % o.steps_per_iteration:
        raise ValueError(f"{micro} micro-batches per iteration ({batches} batches x {cfg.train.inner_epochs} "
                         f"inner epochs) do not split into optim.steps_per_iteration={o.steps_per_iteration} "
                         f"optimizer steps; use a divisor of {micro}.")
    t = trained_steps(cfg)
    if s.window == "all" and not 0 < s.timestep_fraction <= 1:
        raise ValueError(f"sample.timestep_fraction={s.timestep_fraction} must be in (0, 1].")
    if s.window in ("random", "progressive"):
        lo, hi = (s.window_range + [s.num_steps])[:2] if s.window == "random" else (0, s.num_steps)
        if not 1 <= s.window_size <= hi - lo or not 0 <= lo < hi <= s.num_steps:
            raise ValueError(f"SDE window of {s.window_size} steps in range [{lo}, {hi}) does not fit "
                             f"{s.num_steps} steps; need 1 <= sample.window_size <= hi - lo and "
                             f"0 <= lo < hi <= sample.num_steps.")
    elif s.window != "all":
        raise ValueError(f"sample.window={s.window!r}; choose 'all', 'random' or 'progressive'.")
    grad_accum = micro // o.steps_per_iteration
    return Derived(world_size, total, per_rank, batches, grad_accum, t, grad_accum * t)
