"""The config of a steering job (``flowalign steer``) and of one steering method (also a gallery column).

    flowalign steer testbed_fk_tuned prompts='["two red circles"]' method.options.particles=8

``SteerConfig`` holds the model, prompts, reward, sampling settings and a ``SteerMethod``: a variant
section (``kind`` + ``options``, see ``flowalign.overrides``) whose options class depends on the kind
(``FKOptions``, ``BoNOptions``, ``BeamOptions``, ``SVDDOptions``, ``DTSOptions``). ``method_kwargs``
turns a method into the keyword arguments of ``flowalign.steering.SEARCH[kind]``; an option left at
None is not passed (the method's own default applies). ``STEER_PRESETS`` are the named starting points.
``validate(cfg)`` is every check that needs no model (declared ranges, names, step lists against the
model's grid, the image size, prompt and weights files, the output folder): ``flowalign steer`` runs it
before loading anything; ``check_method`` is the same for one method (a gallery column).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..inputs import check_model, check_output, check_size, check_testbed_prompts, check_weights
from ..ranges import ranged
from .options import (  # noqa: F401  (re-exported: the steering config and its callers name them)
    METHODS,
    OPTIONS,
    BeamOptions,
    BoNOptions,
    CommonOptions,
    DASOptions,
    DTSOptions,
    FKOptions,
    FMTTOptions,
    NoiseSearchOptions,
    SVDDOptions,
)


@dataclass
class SteerMethod:
    kind: str = "fk"  # one of METHODS (flowalign.steering.SEARCH)
    options: Any = field(default_factory=FKOptions)  # the kind's options class (OPTIONS)

    @classmethod
    def options_for(cls, kind: str) -> type:
        if kind not in OPTIONS:
            raise ValueError(f"unknown steering method {kind!r}; choose one of {list(OPTIONS)}.")
        return OPTIONS[kind]


@dataclass
class SteerConfig:
    preset: str = "testbed"  # the preset this config started from (informational)
    model: str = "testbed"  # 'testbed', a registered name (tiny-sd3, tiny-flux) or a saved pipeline directory
    # T5 tokens; None: the pipeline's 256 (the testbed works with >= 16)
    max_sequence_length: int | None = ranged(None, "[1, 512]")
    prompts: list[str] = field(default_factory=list)  # the prompts (with prompts_file's)
    prompts_file: str | None = None  # a text file with one prompt per line
    reward: str = "compositional"  # a name in flowalign.rewards.REWARDS
    reward_path: str | None = None  # weights of the reward (file or directory)
    method: SteerMethod = field(default_factory=SteerMethod)
    steps: int | None = ranged(None, "[1, inf)")  # sampling steps; None: the model's (testbed: its assets' config)
    cfg: float | None = ranged(None, "[0, inf)")  # classifier-free guidance scale; None: the model's
    size: int | None = ranged(None, "[1, inf)")  # image height = width in pixels; None: the model's
    num_frames: int | None = ranged(None, "[1, inf)")  # frames of a video model (wan: 4k+1); None: the model's
    seed: int = ranged(0, "[0, inf)")  # torch.Generator seed of the initial noise and the steering draws
    out: str = "runs/steer"  # output directory: <i>_<method>.png and steer.json


def _fk(preset: str, reward: str = "compositional", **options: Any) -> SteerConfig:
    return SteerConfig(preset=preset, reward=reward, method=SteerMethod("fk", FKOptions(**options)))


def _dts_star() -> SteerConfig:
    opts = DTSOptions(resample_steps="4,8,12,16", widen_c=1.0, widen_alpha=0.5, c_uct=0.1, batch=1)
    return SteerConfig(preset="testbed_dts_star", method=SteerMethod("dts_star", opts))


STEER_PRESETS: dict[str, Callable[[], SteerConfig]] = {
    # FK with 4 particles, potential max, lam 10 on the shipped testbed pipeline (its 20 steps, CFG 6)
    "testbed": SteerConfig,
    # FK as tuned on the testbed (benchmarks/bench_steering.py): resample after steps 7..14 on the
    # current look-ahead reward, SDE noise only around that window
    "testbed_fk_tuned": lambda: _fk("testbed_fk_tuned", potential="rt", resample_steps="7-14", noise_steps="6-15"),
    # the graded aesthetic proxy improves step by step: resample after every step, noise everywhere
    "testbed_aesthetic_fk": lambda: _fk(
        "testbed_aesthetic_fk", "testbed_aesthetic", noise_level=1.2, noise_steps="all", resample_steps="1-18"
    ),
    # DTS* as benchmarked: branch after steps 4, 8, 12, 16; widening C = 1, alpha = 0.5; c_uct = 0.1
    "testbed_dts_star": _dts_star,
}


def parse_step_list(value: str | None, what: str) -> Any:
    """'7-14' / '4,8,12' -> [steps]; 'all' -> 'all'; None -> None (the method's default)."""
    from ..sampling.schedule import parse_steps

    if value is None or value == "all":
        return value
    return parse_steps(value, what)


def method_kwargs(method: SteerMethod, num_steps: int | None = None) -> dict[str, Any]:
    """The keyword arguments of ``SEARCH[method.kind]`` (options at None are left out). DTS without an
    ``nfe_budget`` gets ``particles x num_steps`` evaluations (what FK with that many particles spends)."""
    o, kind = method.options, method.kind
    if type(o) is not SteerMethod.options_for(kind):
        raise ValueError(f"method.options is a {type(o).__name__}, not the options of {kind!r}.")
    steps = parse_step_list(getattr(o, "resample_steps", None), "resample_steps")
    if kind == "fk":
        kw = {"num_particles": o.particles, "lam": o.lam, "potential": o.potential, "resample_steps": steps}
        kw |= _given(o, "reward_grad_scale", "lookahead", "lookahead_steps", "resampler", "ess_threshold", "final")
    elif kind == "bon":
        kw = {"n": o.particles, **_given(o, "max_batch")}
    elif kind == "beam":
        bw = o.beam_width or (2 if o.particles >= 2 else 1)
        children = o.num_children or max(1, o.particles // bw)
        kw = {"beam_width": bw, "num_children": children, "select_steps": steps, **_given(o, "lam")}
    elif kind == "svdd":
        kw = {"num_children": o.particles, **_given(o, "lam")}
    elif kind in ("fmtt", "das", "noise_search"):
        kw = _new_method_kwargs(o, kind, steps)
    else:
        kw = {"lam": o.lam, "branch_steps": steps, **_given(o, "widen_c", "widen_alpha", "c_uct", "batch", "final")}
        kw["nfe_budget"] = o.nfe_budget if o.nfe_budget is not None or not num_steps else o.particles * num_steps
    kw |= _given(o, "nfe_budget", "step", "noise_level")
    if o.noise_steps is not None:
        kw["noise_steps"] = parse_step_list(o.noise_steps, "noise_steps") or "all"
    return kw


def _new_method_kwargs(o: Any, kind: str, steps: Any) -> dict[str, Any]:
    """FMTT / DAS / noise search: their options as keyword arguments (None left out)."""
    if kind == "noise_search":
        return {"population": o.particles, **_given(o, "mode", "generations", "elites", "mutation", "verifier_steps")}
    kw = {"num_particles": o.particles, "lam": o.lam, **({} if steps is None else {"resample_steps": steps})}
    names = ("mode", "flow_map_steps", "tilt", "beam_width") if kind == "fmtt" else ("tempering_gamma",)
    return kw | _given(o, *names, "reward_grad_scale", "ess_threshold", "resampler", "final")


def _given(options: Any, *names: str) -> dict[str, Any]:
    return {n: getattr(options, n) for n in names if getattr(options, n) is not None}


# --- checks that need no model (``flowalign steer`` and the gallery's steering columns) --------------
def _choices(kind: str) -> dict[str, Any]:
    """The option -> allowed names of a steering method (every kind: its step function)."""
    from ..sampling.sde import STEPS
    from .dts import FINALS as DTS_FINALS
    from .fk import FINALS, LOOKAHEADS, POTENTIALS
    from .resample import RESAMPLERS

    if kind in ("fmtt", "das"):
        from .fmtt import MODES, TILTS

        extra = {"mode": MODES, "tilt": TILTS} if kind == "fmtt" else {}
        return {"step": STEPS, "resampler": RESAMPLERS, "final": FINALS, **extra}
    if kind == "noise_search":
        from .noise_search import MODES as SEARCH_MODES

        return {"step": STEPS, "mode": SEARCH_MODES}
    if kind == "fk":
        return {
            "step": STEPS,
            "potential": POTENTIALS,
            "lookahead": LOOKAHEADS,
            "resampler": RESAMPLERS,
            "final": FINALS,
        }
    return {"step": STEPS, "final": DTS_FINALS} if kind in ("dts", "dts_star") else {"step": STEPS}


def check_method(method: SteerMethod, prefix: str = "method.options.", num_steps: int | None = None, where: str = ""):
    """A method's options: their class, declared ranges, names and step lists, and, on a ``num_steps``
    grid, the steps, the budget and the noise (resampled / branched copies need a stochastic sampler).
    Keys are named ``<prefix><option>``; ``where`` starts the message (a gallery spec)."""
    try:
        _check_options(method, prefix)
        if num_steps is not None:
            _check_grid(method, prefix, num_steps)
    except ValueError as err:
        raise ValueError(f"{where}{err}") from None


def _check_options(method: SteerMethod, prefix: str) -> None:
    from ..ranges import check_ranges

    o, kind = method.options, method.kind
    if type(o) is not SteerMethod.options_for(kind):
        raise ValueError(f"{prefix.rstrip('.')} is a {type(o).__name__}, not the options of {kind!r}.")
    check_ranges(o, prefix)
    for name, table in _choices(kind).items():
        if getattr(o, name) is not None and getattr(o, name) not in table:
            raise ValueError(f"{prefix}{name}={getattr(o, name)!r} is unknown; choose one of {sorted(table)}.")
    for name in ("resample_steps", "noise_steps"):
        parse_step_list(getattr(o, name, None), f"{prefix}{name}")


def _check_grid(method: SteerMethod, prefix: str, t: int) -> None:
    from .common import check_steps_in_grid, noise_levels, stochastic_levels
    from .dts import branch_depths

    o, kind, dts = method.options, method.kind, method.kind in ("dts", "dts_star")
    for name, last in (("resample_steps", t - 2 if dts else t - 1), ("noise_steps", t - 1)):
        if getattr(o, name, None) not in (None, "all"):
            check_steps_in_grid(getattr(o, name), last + 1, f"{prefix}{name}")
    if o.nfe_budget is not None and o.nfe_budget < t:
        raise ValueError(
            f"{prefix}nfe_budget={o.nfe_budget} is less than one rollout ({t} model evaluations per prompt on "
            f"this {t}-step grid); pass nfe_budget >= {t} or leave it unset."
        )
    if kind in ("bon", "noise_search"):
        noise_levels(o.noise_level, t, kind, o.noise_steps)
        return
    level = 0.7 if o.noise_level is None else o.noise_level
    levels = stochastic_levels(o.step or "flow_sde", level, t, kind, o.noise_steps)
    if dts:
        branch_depths(parse_step_list(o.resample_steps, "resample_steps"), levels, t, kind)


def validate(cfg: SteerConfig) -> list[str]:
    """Every check of a steering job that needs no model (nothing is loaded or written) -> the prompts."""
    from ..ranges import check_ranges
    from ..rewards import REWARDS
    from ..train.data import load_prompts

    check_ranges(cfg)
    if cfg.reward not in REWARDS:
        raise ValueError(f"reward={cfg.reward!r} is unknown; choose one of {sorted(REWARDS)}.")
    if cfg.reward_path is not None:
        check_weights(cfg.reward_path, "reward_path")
    facts = check_model(cfg.model)
    check_size(cfg.size, facts, "size")
    if cfg.num_frames is not None:
        from ..train.families import check_frames

        check_frames(cfg.model, cfg.num_frames)
    check_method(cfg.method, "method.options.", cfg.steps or facts.get("steps"))
    if any(not isinstance(p, str) or not p.strip() for p in cfg.prompts):
        raise ValueError(f"prompts={cfg.prompts!r} holds an empty prompt; pass text, e.g. --prompt 'two red circles'.")
    prompts = list(cfg.prompts) + (load_prompts(cfg.prompts_file).prompts if cfg.prompts_file else [])
    if not prompts:
        raise ValueError(
            "no prompts: pass --prompt 'two red circles' (repeatable), prompts='[\"two red circles\"]' or "
            "--prompts-file FILE."
        )
    if cfg.reward == "compositional":
        check_testbed_prompts(prompts, "reward")
    check_output(cfg.out, "out")
    return prompts


def load_model_with_defaults(
    name: str, max_seq: int | None, num_frames: int | None = None
) -> tuple[Any, int, float | None]:
    """(model, default steps, default guidance): the testbed's sampling defaults come from its assets.
    ``num_frames`` goes to video models only (one clear error for an image model)."""
    from ..models import MODELS, load_model
    from ..train.families import check_frames

    kw = {} if max_seq is None else {"max_sequence_length": max_seq}
    if num_frames is not None and check_frames(name, num_frames) is not None:
        kw["num_frames"] = num_frames
    if name == "testbed":
        from ..testbed.paths import pipeline_dir
        from ..testbed.pipeline import default_sampling

        model, cfg = load_model(str(pipeline_dir()), **kw), default_sampling()
        return model, cfg["num_inference_steps"], cfg["guidance_scale"]
    model = load_model(name) if name in MODELS else load_model(name, **kw)
    return model, model.default_steps, None
