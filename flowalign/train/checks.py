"""Start-up checks that need no model: every one raises ONE ValueError naming the key, the value
and the fix, before anything is loaded or any run directory is created."""

from __future__ import annotations

from ..credit import check_credit
from ..ranges import check_ranges
from ..sampling.windows import window_kind
from .batching import derived
from .objectives import objective_kind

DTYPES = ("fp32", "bf16", "fp16")


def check_variants(cfg, custom_credit: bool = False) -> None:
    """Declared ranges, then the SDE window, the credit scheme and the objective, each by its own
    registry entry's check, and the relations between sections."""
    check_ranges(cfg)
    s, t = cfg.sample, cfg.sample.num_steps
    if (
        s.group_size < 2 and not custom_credit
    ):  # every built-in scheme is group-relative: a group of one has no baseline
        raise ValueError(
            f"sample.group_size={s.group_size}: credit {cfg.credit.kind!r} compares the images of a prompt's "
            f"group with each other, so a group needs >= 2 images (Flow-GRPO uses 24); set sample.group_size >= 2."
        )
    window_kind(s.window.kind).check(s.window.options, t)
    scheme = check_credit(cfg.credit.kind)
    if s.noise_levels and (len(s.noise_levels) != t or min(s.noise_levels) < 0):
        raise ValueError(
            f"sample.noise_levels has {len(s.noise_levels)} values (min {min(s.noise_levels):g}); give "
            f"{t} levels >= 0 (one per step) or [] for sample.noise_level everywhere."
        )
    if scheme.check is not None:
        scheme.check(cfg.credit.options, cfg)
    objective = objective_kind(cfg.objective.kind)
    if objective.check is not None:
        objective.check(cfg.objective.options, cfg)


def check_rewards(cfg) -> None:
    """Named rewards exist (or are 'module:factory'), eval metrics name rewards, options have weights."""
    from ..rewards import REWARDS
    from .build import import_factory

    unknown = [n for n in cfg.reward.weights if n not in REWARDS and ":" not in n]
    if unknown:
        raise ValueError(
            f"unknown reward(s) {unknown}; choose from {sorted(REWARDS)} or give your own as "
            f"'package.module:factory' (set them with reward.weights.<name>=<weight>)."
        )
    for name in cfg.reward.weights:
        if ":" in name:
            import_factory(name)
    if not cfg.reward.weights:
        raise ValueError("reward.weights is empty; set e.g. reward.weights.compositional=1.")
    for name, spec in cfg.eval.metrics.items():
        if not isinstance(spec, dict) or spec.get("reward") not in REWARDS:
            raise ValueError(f"eval.metrics.{name}={spec!r} must be a dict whose 'reward' is one of {sorted(REWARDS)}.")
    extra = [n for n in cfg.reward.options if n not in cfg.reward.weights]
    if extra:
        raise ValueError(f"reward.options has entries {extra} without a weight in reward.weights.")


def check_process_reward(cfg) -> None:
    """Euphonium's guided SDE takes grad R: refuse an unknown or non-differentiable reward now."""
    from ..credit.checks import check_guidance
    from ..rewards import REWARDS
    from .build import build_process_reward, build_reward

    o = cfg.credit.options
    if o.process_reward and o.process_reward not in REWARDS:
        raise ValueError(
            f"credit.options.process_reward={o.process_reward!r} is unknown; choose one of {sorted(REWARDS)}."
        )
    check_guidance(build_process_reward(cfg) or build_reward(cfg), o.reward_grad_scale)


def validate(cfg, world_size: int = 1) -> None:
    """Every start-up check that needs no model (the model path is resolved, not loaded)."""
    from ..sampling.sde import STEPS
    from .build import resolve_model_path
    from .early_stop import check_early_stop
    from .families import check_model_options

    check_variants(cfg)
    derived(cfg, world_size)
    check_rewards(cfg)
    if cfg.sample.step not in STEPS:
        raise ValueError(f"sample.step={cfg.sample.step!r} is unknown; choose one of {sorted(STEPS)}.")
    if cfg.credit.kind == "euphonium":
        check_process_reward(cfg)
    if cfg.model.dtype not in DTYPES:
        raise ValueError(f"model.dtype={cfg.model.dtype!r}; choose one of {DTYPES}.")
    check_early_stop(cfg)
    check_paths(cfg)
    resolve_model_path(cfg.model.path)
    check_model_options(cfg)


def check_paths(cfg) -> None:
    """What must hold before the accelerator starts: precision, the run and runs folders."""
    from ..inputs import check_output

    if cfg.train.mixed_precision not in ("no", "fp16", "bf16"):
        raise ValueError(f"train.mixed_precision={cfg.train.mixed_precision!r}; choose no, fp16 or bf16.")
    if cfg.train.budget_clock not in ("wall", "cpu"):
        raise ValueError(f"train.budget_clock={cfg.train.budget_clock!r}; choose wall or cpu.")
    if cfg.train.output_dir is not None:
        check_output(cfg.train.output_dir, "train.output_dir")
    check_output(cfg.train.runs_dir, "train.runs_dir")
