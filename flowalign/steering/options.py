"""The options of every steering method, one dataclass per kind (``method.options`` of a ``SteerMethod``).

Light to import (no torch): ``flowalign steer`` and the gallery check a method's options against their
declared ranges before anything loads. ``OPTIONS[kind]`` is the options class of ``SEARCH[kind]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ranges import ranged

METHODS = ("fk", "bon", "beam", "svdd", "dts", "dts_star", "fmtt", "das", "noise_search")


@dataclass
class CommonOptions:  # every steering method
    nfe_budget: int | None = ranged(None, "[1, inf)")  # model evaluations per prompt; None: what its size costs
    step: str | None = None  # step function (sampling.sde.STEPS); None: flow_sde (best-of-N: ode)
    noise_level: float | None = ranged(None, "[0, inf)")  # SDE noise level; None: 0.7
    # 0-based steps with SDE noise, ODE elsewhere ('6-15', 'all'); None: all but the last
    noise_steps: str | None = None


@dataclass
class FKOptions(CommonOptions):  # Feynman-Kac particles (steering/fk.py)
    particles: int = ranged(4, "[1, inf)")  # K particles per prompt
    lam: float = ranged(10.0, "[0, inf)")  # inverse temperature of the tilt exp(lam r)
    potential: str = "max"  # diff | max | sum | rt
    resample_steps: str | None = None  # steps after which particles are resampled ('7-14', '4,8,12'); None: default
    # > 0: the reward-gradient proposal (needs a differentiable reward)
    reward_grad_scale: float | None = ranged(None, "[0, inf)")
    lookahead: str | None = None  # x0 | x0_prev | ode; None: x0
    lookahead_steps: int | None = ranged(None, "[1, inf)")  # ODE look-ahead steps (lookahead=ode)
    resampler: str | None = None  # multinomial | stratified | systematic; None: systematic
    ess_threshold: float | None = ranged(None, "[0, 1]")  # resample when ESS <= this fraction of K; None: 1 (always)
    final: str | None = None  # how the returned sample is chosen; None: max_reward


@dataclass
class BoNOptions(CommonOptions):  # best-of-N (steering/search.py)
    particles: int = ranged(4, "[1, inf)")  # N samples per prompt
    max_batch: int | None = ranged(None, "[1, inf)")  # rows per model call; None: 256


@dataclass
class BeamOptions(CommonOptions):  # beam search (steering/search.py)
    particles: int = ranged(4, "[1, inf)")  # beams x children per prompt (2 beams when particles >= 2)
    resample_steps: str | None = None  # selection steps; None: the FK schedule
    lam: float | None = ranged(None, "[0, inf)")  # None: greedy selection; else sampled with weights exp(lam r)
    beam_width: int | None = ranged(None, "[1, inf)")  # None: 2 (1 for a single particle)
    num_children: int | None = ranged(None, "[1, inf)")  # None: particles // beam_width


@dataclass
class SVDDOptions(CommonOptions):  # beam search with one beam, selecting after every step
    particles: int = ranged(4, "[1, inf)")  # children per step
    lam: float | None = ranged(None, "[0, inf)")  # None: greedy selection


@dataclass
class DTSOptions(CommonOptions):  # diffusion tree search DTS / DTS* (steering/dts.py)
    particles: int = ranged(4, "[1, inf)")  # sets the default nfe_budget: the evaluations of FK with this many
    lam: float = ranged(10.0, "[0, inf)")  # inverse temperature of the soft value backup
    resample_steps: str | None = None  # branching steps; None: the FK schedule without the last step
    widen_c: float | None = ranged(None, "(0, inf)")  # progressive widening C N^alpha; None: 2
    widen_alpha: float | None = ranged(None, "(0, 1]")  # None: 0.8
    c_uct: float | None = ranged(None, "[0, inf)")  # exploration constant; None: 1
    batch: int | None = ranged(None, "[1, inf)")  # rollouts per tree and round; None: budget / 16 rollouts, 1 to 8
    final: str | None = None  # None: max_reward (DTS*) / sample (DTS)


@dataclass
class FMTTOptions(CommonOptions):  # FMTT: flow-map look-ahead, weights or search (steering/fmtt.py)
    particles: int = ranged(4, "[1, inf)")  # K particles per prompt
    lam: float = ranged(10.0, "[0, inf)")  # inverse temperature of the tilt exp(lam r)
    mode: str | None = None  # weights | search; None: weights
    flow_map_steps: int | None = ranged(None, "[1, inf)")  # k of the k-step ODE flow map; None: 4
    tilt: str | None = None  # linear (beta = 1 - sigma) | none (beta = 1); None: linear
    reward_grad_scale: float | None = ranged(None, "[0, inf)")  # > 0: gradient proposal through the flow map
    resample_steps: str | None = None  # weighting / selection steps; None: all
    ess_threshold: float | None = ranged(None, "[0, 1]")  # None: 0.5
    resampler: str | None = None  # None: systematic
    beam_width: int | None = ranged(None, "[1, inf)")  # search: survivors per prompt; None: particles / 2
    final: str | None = None  # None: max_reward


@dataclass
class DASOptions(CommonOptions):  # DAS: tempered SMC with the reward-gradient proposal (steering/das.py)
    particles: int = ranged(4, "[1, inf)")  # K particles per prompt
    lam: float = ranged(10.0, "[0, inf)")  # inverse temperature of the tilt exp(lam r)
    tempering_gamma: float | None = ranged(None, "(0, inf)")  # beta_i = min(1, (1+gamma)^i - 1); None: 2^(1/0.88T)-1
    reward_grad_scale: float | None = ranged(None, "[0, inf)")  # None: 1 (needs a differentiable reward); 0: none
    resample_steps: str | None = None  # None: all
    ess_threshold: float | None = ranged(None, "[0, 1]")  # None: 0.5
    resampler: str | None = None  # None: systematic
    final: str | None = None  # None: max_reward


@dataclass
class NoiseSearchOptions(CommonOptions):  # search over the initial noise (steering/noise_search.py)
    particles: int = ranged(4, "[1, inf)")  # candidates per generation
    mode: str | None = None  # random | evolution; None: evolution
    generations: int | None = ranged(None, "[1, inf)")  # None: 1, or as many as nfe_budget pays for
    elites: int | None = ranged(None, "[1, inf)")  # parents of each generation; None: particles / 2
    mutation: float | None = ranged(None, "(0, 1]")  # x' = sqrt(1 - a^2) x + a eps; None: 0.5
    verifier_steps: int | None = ranged(None, "[1, inf)")  # score by a k-step ODE completion; None: the sampler


OPTIONS: dict[str, type] = {
    "fk": FKOptions,
    "bon": BoNOptions,
    "beam": BeamOptions,
    "svdd": SVDDOptions,
    "dts": DTSOptions,
    "dts_star": DTSOptions,
    "fmtt": FMTTOptions,
    "das": DASOptions,
    "noise_search": NoiseSearchOptions,
}
