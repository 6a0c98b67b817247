"""Training configuration: nested dataclasses and dotted ``key=value`` overrides.

Every field has a one-line comment (units, paper). Presets live in ``flowalign/presets.py``
(``config.get_preset`` / ``config.PRESETS`` still resolve there) and never name a GPU count: the
per-device numbers follow from the world size in ``derived(cfg, world_size)`` (``flowalign/batching.py``,
re-exported here), which checks that everything divides and is printed at start-up.

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
from typing import Any

SD3_LORA_TARGETS = [
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
]
FLUX_LORA_TARGETS = SD3_LORA_TARGETS + ["ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"]


@dataclass
class ModelConfig:
    path: str = (
        "testbed"  # 'testbed' (assets/testbed/pipeline), a name in models.MODELS, a saved pipeline dir, or a hub id
    )
    family: str | None = None  # 'sd3' | 'flux'; None = read model_index.json / the name
    dtype: str = "fp32"  # weights of the frozen parts: fp32 | bf16 | fp16 (trainable params stay fp32)
    resolution: int = 32  # image height = width, px (multiple of VAE factor x patch size)
    max_sequence_length: int = 256  # T5 tokens (SD3 pipeline default 256; flow_grpo uses 128; Flux 512)
    negative_prompt: str = ""  # CFG negative prompt (flow_grpo: "")
    lora: bool = True  # True: train peft LoRA adapters on the transformer; False: full fine-tuning
    lora_rank: int = 32  # LoRA r (Flow-GRPO SD3: 32; Flux: 64)
    lora_alpha: int = 64  # LoRA alpha; the update is scaled by alpha / r (SD3: 64; Flux: 128)
    lora_init: str = (
        "gaussian"  # peft init_lora_weights ('gaussian' as flow_grpo; B = 0 so training starts at the base)
    )
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
    noise_table: list[float] = field(
        default_factory=list
    )  # per-step noise levels psi(t) [T] (DenseGRPO); [] = noise_level on every step
    step: str = "flow_sde"  # step kind in sampling.sde.STEPS: flow_sde | cps | dance_sde | cps_flowgrpo
    group_size: int = 24  # K images per prompt (paper: 24; 6 and 12 were unstable); tree rollouts: leaves per tree
    groups_per_iteration: int = 48  # distinct prompts per iteration (paper: 48)
    batch_size: int = 9  # images per device per sampling batch = training micro-batch (memory knob)
    window: str = "all"  # stochastic/trained steps: 'all' (first timestep_fraction) | 'fixed' | 'random' (Fast) | 'progressive' (MixGRPO) | 'geometric' (TreeGRPO)
    timestep_fraction: float = 0.99  # 'all': train the first int(T * fraction) steps (0.99 of 10 = all but the last)
    window_size: int = 2  # other windows: consecutive SDE (trained) steps; the rest are ODE
    window_range: list[int] = field(
        default_factory=lambda: [0, 10]
    )  # 'random': start drawn in [lo, hi - size]; 'fixed': start = lo
    window_every: int = 25  # 'progressive': iterations before the window moves by window_stride steps
    window_stride: int = 1  # 'progressive': steps the window moves each time (MixGRPO s)
    window_r: float = 0.5  # 'geometric': start i drawn with P(i) ~ r^i, i = 0..T-size-1 (TreeGRPO r = 0.5)
    same_noise: bool = (
        False  # one initial noise per group (flow_grpo same_latent): rewards differ by the SDE noise only
    )
    share_prefix: bool = False  # run the ODE steps before the first SDE step once per distinct initial noise (same_noise groups; batches then hold whole groups)
    tree_splits: list[int] = field(
        default_factory=list
    )  # tree rollouts (BranchGRPO / TreeGRPO credit): split steps, increasing; offsets from the window start unless window='all'
    tree_branch: list[int] = field(
        default_factory=lambda: [2]
    )  # children per split (one value, or one per split); product = group_size
    tree_depth_noise: float = (
        0.0  # noise level x (1 + this x depth / #splits) (Dynamic-TreeRPO's depth-dependent noise)
    )
    tree_branch_corr: float | None = None  # BranchGRPO paper's sibling-noise correlation s; None = independent draws


@dataclass
class RewardConfig:
    weights: dict[str, float] = field(
        default_factory=lambda: {"compositional": 1.0}
    )  # name in rewards.REWARDS or 'module:factory' -> weight
    options: dict[str, dict] = field(default_factory=dict)  # reward name -> kwargs for its factory (e.g. weights path)


@dataclass
class CreditConfig:
    name: str = "grpo"  # credit function: credit.CREDIT (grpo | dense | turning_point | g2rpo | euphonium) or credit.TREE_CREDIT (branchgrpo | treegrpo)
    scale: str = "batch"  # advantage divisor: 'group' std | 'batch' std (flow_grpo global_std) | 'none'
    eps: float = 1e-4  # added to the std (flow_grpo: 1e-4)
    unbiased: bool = False  # ddof=1 std (FastVideo repos) instead of the population std (flow_grpo)
    filter_zero_std: bool = True  # mask out groups whose rewards are all equal (DAPO-style; they carry no signal)
    ladder_steps: int = 0  # dense / turning_point: ODE steps of each completion (0 = all remaining: DenseGRPO's n = t)
    ladder_stride: int = 0  # dense / turning_point: complete on every stride-th grid point instead (0 = off)
    dense_reward: str = "gain"  # dense: 'gain' d_j = R_{j+1} - R_j (DenseGRPO) | 'level' R_{j+1} (its dense baseline)
    tp_constraint: bool = True  # turning_point: consistency constraint (Def. 5.1, the released runs) or Def. 4.1
    tp_balance: bool = True  # turning_point: balance +/- turning points within each sampling batch (App. D)
    strides: list[int] = field(
        default_factory=lambda: [1, 2, 3]
    )  # g2rpo: completion granularities Lambda (paper {1,2,3}; code {1,2})
    granular_completion: str = "paper"  # g2rpo: strided grid 'paper' | 'reference' (released code)
    fusion: str = (
        "mean"  # branchgrpo: internal-node reward fusion 'mean' (code) | 'path_softmax' (paper) | 'edge_softmax'
    )
    tree_beta: float = 1.0  # tree credit softmax temperature (BranchGRPO path/edge fusion; TreeGRPO bottom-up weights)
    prune_depths: list[int] = field(
        default_factory=list
    )  # tree credit: child depths (= step index + 1) whose edges are not trained
    prune_slide_every: int = (
        0  # move prune_depths one step shallower every this many iterations (BranchGRPO; 0 = fixed)
    )
    width_pruning: str = (
        ""  # tree credit: '' (off) | 'parent_top' | 'extreme' (BranchGRPO width pruning of the last layer)
    )
    width_ratio: float = 0.5  # tree credit: fraction of last-layer edges width pruning keeps
    process_reward: str = ""  # euphonium: differentiable reward in rewards.REWARDS scored on x0_pred (guidance + process credit); '' = the training reward
    process_options: dict[str, Any] = field(
        default_factory=dict
    )  # euphonium: kwargs of the process reward's factory (e.g. {"output": "soft"})
    guidance_kappa: float = (
        0.0  # euphonium: reward-gradient guidance scale kappa (0 = unguided; KL-optimal eta^2 / (2 beta))
    )
    guidance_steps: list[int] = field(default_factory=list)  # euphonium: steps that get guidance ([] = every SDE step)
    c_outcome: float = 1.0  # euphonium: weight of the outcome (final-reward) advantage
    c_process: float = 1.0  # euphonium: weight of the per-step process advantage
    calibrate_iterations: int = (
        0  # DenseGRPO Alg. 1 before training: rounds of psi(t) calibration (0 = off); result -> sample.noise_table
    )
    calibrate_samples: int = 16  # trajectories per calibration round (prompts drawn from the training set)
    calibrate_eps1: float = 2.0  # |#pos - #neg| below this raises psi_j (paper: 2)
    calibrate_eps2: float = 0.01  # psi step per round (paper: 0.01)
    options: dict[str, Any] = field(
        default_factory=dict
    )  # any further keyword for the credit function (e.g. {"first_step": false})


@dataclass
class LossConfig:
    clip_range: float = 1e-4  # PPO epsilon on the ratio (flow_grpo 1e-4; Fast 1e-5)
    clip_range_high: float | None = None  # upper epsilon if asymmetric (None = clip_range)
    adv_clip: float = 5.0  # advantages clamped to +-adv_clip (flow_grpo adv_clip_max)
    beta: float = 0.04  # KL weight to the reference (adapter off) (paper: 0.04 GenEval/OCR, 0.01 PickScore, 0 Flux)
    kl_mode: str = "flow_grpo"  # 'flow_grpo' (x|dt|, keeps the published betas) | 'exact' (closed-form per-step KL)
    objective: str = (
        "flow_grpo"  # 'flow_grpo' (per-step log-prob ratio) | 'nft' (DiffusionNFT forward-process loss; objectives.py)
    )
    nft_beta: float = (
        1.0  # nft: b of the implicit policies v+- (paper: 1.0; 0.1 for OCR); beta is then the weight of |v - v_ref|^2
    )
    nft_cfg: bool = (
        True  # nft: train the guided velocity (the policy that samples) | false: the conditional one (paper, CFG-free)
    )


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
    max_nfe: int = (
        0  # stop (and checkpoint) once the sampler NFEs (rollouts + completions, all ranks) reach this; 0 = no limit
    )
    cpu: bool = False  # force CPU even when a GPU is present


@dataclass
class EvalConfig:
    every: int = 20  # evaluate every this many iterations (and before the first and after the last); 0 = never
    every_nfe: int = (
        0  # also evaluate each time this many more sampler NFEs are spent (NFE-budgeted comparisons); 0 = off
    )
    num_prompts: int = 64  # held-out prompts per eval (prefix of the eval set)
    num_steps: int = 40  # ODE steps at eval (paper: 40)
    guidance_scale: float = 4.5  # CFG at eval
    batch_size: int = 16  # images per device per eval batch
    seed: int = 1234  # fixed per-prompt noise, so evals are comparable across iterations
    grid_images: int = 16  # images in the logged grid (PNG + tensorboard)
    metrics: dict[str, dict] = field(
        default_factory=dict
    )  # extra eval-only scores: log name -> {"reward": REWARDS name, **its options}


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


def __getattr__(name: str):  # the presets live in flowalign/presets.py (imported lazily: no cycle)
    if name in ("PRESETS", "get_preset"):
        from . import presets

        return getattr(presets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
                    raise ValueError(f"override {key!r}: nothing below {'.'.join(parts[: depth + 1])!r}.")
                node[part] = (
                    json.loads(value)
                    if value.strip()[:1] in "{["
                    else coerce(value, float)
                    if _is_number(value)
                    else value
                )
                break
            names = [f.name for f in dataclasses.fields(node)]
            if part not in names:
                close = difflib.get_close_matches(part, names, n=3)
                where = ".".join(parts[:depth]) or "the config"
                raise ValueError(
                    f"unknown config key {key!r}: {where} has no field {part!r}"
                    f"{f' (did you mean {close})' if close else ''}; valid: {names}."
                )
            tp = _hints(type(node))[part]
            if depth == len(parts) - 1:
                try:
                    setattr(node, part, coerce(value, tp))
                except (ValueError, TypeError, json.JSONDecodeError) as err:
                    raise ValueError(f"override {item!r}: cannot read {value!r} as {tp} ({err}).") from None
            else:
                node = getattr(node, part)
                if not dataclasses.is_dataclass(node) and not isinstance(node, dict):
                    raise ValueError(f"override {key!r}: {'.'.join(parts[: depth + 1])} is a value, not a section.")
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


from .batching import WINDOWS, Derived, check_window, derived, trained_steps  # noqa: E402,F401  (batch arithmetic; re-exported)
