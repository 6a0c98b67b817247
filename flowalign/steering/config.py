"""The config of a steering job (``flowalign steer``) and of one steering method (also a gallery column).

    flowalign steer testbed_fk_tuned prompts='["two red circles"]' method.options.particles=8

``SteerConfig`` holds the model, prompts, reward, sampling settings and a ``SteerMethod``: a variant
section (``kind`` + ``options``, see ``flowalign.overrides``) whose options class depends on the kind
(``FKOptions``, ``BoNOptions``, ``BeamOptions``, ``SVDDOptions``, ``DTSOptions``). ``method_kwargs``
turns a method into the keyword arguments of ``flowalign.steering.SEARCH[kind]``; an option left at
None is not passed (the method's own default applies). ``STEER_PRESETS`` are the named starting points.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

METHODS = ("fk", "bon", "beam", "svdd", "dts", "dts_star")


@dataclass
class CommonOptions:  # every steering method
    nfe_budget: int | None = None  # model evaluations per prompt; None: what the method's own size costs
    step: str | None = None  # step function (sampling.sde.STEPS); None: flow_sde (best-of-N: ode)
    noise_level: float | None = None  # SDE noise level; None: 0.7
    noise_steps: str | None = (
        None  # 0-based steps with SDE noise, ODE elsewhere ('6-15', 'all'); None: all but the last
    )


@dataclass
class FKOptions(CommonOptions):  # Feynman-Kac particles (steering/fk.py)
    particles: int = 4  # K particles per prompt
    lam: float = 10.0  # inverse temperature of the tilt exp(lam r)
    potential: str = "max"  # diff | max | sum | rt
    resample_steps: str | None = None  # steps after which particles are resampled ('7-14', '4,8,12'); None: default
    reward_grad_scale: float | None = None  # > 0: the reward-gradient proposal (needs a differentiable reward)
    lookahead: str | None = None  # x0 | x0_prev | ode; None: x0
    lookahead_steps: int | None = None  # ODE look-ahead steps (lookahead=ode)
    resampler: str | None = None  # multinomial | stratified | systematic; None: systematic
    ess_threshold: float | None = None  # resample when ESS <= this fraction of K; None: 1 (always)
    final: str | None = None  # how the returned sample is chosen; None: max_reward


@dataclass
class BoNOptions(CommonOptions):  # best-of-N (steering/search.py)
    particles: int = 4  # N samples per prompt
    max_batch: int | None = None  # rows per model call; None: 256


@dataclass
class BeamOptions(CommonOptions):  # beam search (steering/search.py)
    particles: int = 4  # beams x children per prompt (2 beams when particles >= 2)
    resample_steps: str | None = None  # selection steps; None: the FK schedule
    lam: float | None = None  # None: greedy selection; else sampled with weights exp(lam r)
    beam_width: int | None = None  # None: 2 (1 for a single particle)
    num_children: int | None = None  # None: particles // beam_width


@dataclass
class SVDDOptions(CommonOptions):  # beam search with one beam, selecting after every step
    particles: int = 4  # children per step
    lam: float | None = None  # None: greedy selection


@dataclass
class DTSOptions(CommonOptions):  # diffusion tree search DTS / DTS* (steering/dts.py)
    particles: int = 4  # sets the default nfe_budget: as many evaluations as FK with this many particles
    lam: float = 10.0  # inverse temperature of the soft value backup
    resample_steps: str | None = None  # branching steps; None: the FK schedule without the last step
    widen_c: float | None = None  # progressive widening C N^alpha; None: 2
    widen_alpha: float | None = None  # None: 0.8
    c_uct: float | None = None  # exploration constant; None: 1
    batch: int | None = None  # rollouts per tree and round; None: budget / 16 rollouts, 1 to 8
    final: str | None = None  # None: max_reward (DTS*) / sample (DTS)


OPTIONS: dict[str, type] = {
    "fk": FKOptions,
    "bon": BoNOptions,
    "beam": BeamOptions,
    "svdd": SVDDOptions,
    "dts": DTSOptions,
    "dts_star": DTSOptions,
}


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
    max_sequence_length: int | None = None  # T5 tokens; None: the pipeline's 256 (the testbed works with >= 16)
    prompts: list[str] = field(default_factory=list)  # the prompts (with prompts_file's)
    prompts_file: str | None = None  # a text file with one prompt per line
    reward: str = "compositional"  # a name in flowalign.rewards.REWARDS
    reward_path: str | None = None  # weights of the reward (file or directory)
    method: SteerMethod = field(default_factory=SteerMethod)
    steps: int | None = None  # sampling steps; None: the model's (testbed: its assets' config)
    cfg: float | None = None  # classifier-free guidance scale; None: the model's
    size: int | None = None  # image height = width in pixels; None: the model's
    seed: int = 0  # torch.Generator seed of the initial noise and the steering draws
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
    else:
        kw = {"lam": o.lam, "branch_steps": steps, **_given(o, "widen_c", "widen_alpha", "c_uct", "batch", "final")}
        kw["nfe_budget"] = o.nfe_budget if o.nfe_budget is not None or not num_steps else o.particles * num_steps
    kw |= _given(o, "nfe_budget", "step", "noise_level")
    if o.noise_steps is not None:
        kw["noise_steps"] = parse_step_list(o.noise_steps, "noise_steps") or "all"
    return kw


def _given(options: Any, *names: str) -> dict[str, Any]:
    return {n: getattr(options, n) for n in names if getattr(options, n) is not None}


def load_model_with_defaults(name: str, max_seq: int | None) -> tuple[Any, int, float | None]:
    """(model, default steps, default guidance): the testbed's sampling defaults come from its assets."""
    from ..models import MODELS, load_model

    kw = {} if max_seq is None else {"max_sequence_length": max_seq}
    if name == "testbed":
        from ..testbed.paths import pipeline_dir
        from ..testbed.pipeline import default_sampling

        model, cfg = load_model(str(pipeline_dir()), **kw), default_sampling()
        return model, cfg["num_inference_steps"], cfg["guidance_scale"]
    model = load_model(name) if name in MODELS else load_model(name, **kw)
    return model, model.default_steps, None
