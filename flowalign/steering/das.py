"""DAS: tempered SMC with reward-gradient proposals.

Paper: Kim, Kim, Park, "Test-time Alignment of Diffusion Models without Reward Over-optimization",
arXiv 2501.05803 (Diffusion Alignment as Sampling). K particles per prompt target the tempered
intermediate distributions

    gamma_i(x) ∝ p_i(x) exp(lam beta_i r(x0_pred(x))),   beta_i = min(1, (1 + gamma)^i - 1)

after step i of T (i = 0 at the noise, so the tilt starts at 0 and reaches 1 after log 2 / log(1 + gamma)
steps), with the proposal shifted by ``reward_grad_scale * std^2 * grad_x [lam beta_{i+1} r(x0_pred(x))]``
(one autograd evaluation per stochastic step) and weights p gamma_{i+1} / (q gamma_i); particles are
resampled when the ESS falls to ``ess_threshold`` K (0.5 as the paper). The final weights target
p(x0) exp(lam r(x0)) (lam = the paper's 1 / alpha, its KL coefficient).

The engine is ``fmtt.tilted_smc`` (FK particles and resampling, ``fk_hook.FKSteering``) with the
one-step look-ahead x0_pred (the ODE flow map with k = 1, whose velocity the next step reuses).
Departures: ``gamma`` defaults to 2^(1 / ceil(0.88 T)) - 1 (the tilt reaches 1 at 88% of the steps, as
the paper's gamma = 0.008 does at T = 100) instead of a fixed 0.008; the returned sample is the particle
with the highest reward (``final``; the paper returns the weighted population); the weights use the
discrete kernel ratio of our flow_sde sampler (the paper's DDPM / DDIM kernel).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..sampling.rollout import StepContext
from .common import SteerResult
from .fmtt import tilted_smc

__all__ = ["das_betas", "das_steer"]


def das_betas(sigmas: Tensor, gamma: float | None = None) -> Tensor:
    """beta_i = min(1, (1 + gamma)^i - 1) at grid points i = 0..T [T+1] float64."""
    t = sigmas.numel() - 1
    if gamma is None:
        gamma = 2 ** (1 / max(1, math.ceil(0.88 * t))) - 1
    if not (isinstance(gamma, (int, float)) and 0 < gamma < math.inf):
        raise ValueError(f"tempering_gamma={gamma!r} must be a number > 0, e.g. 0.008 for 100 steps.")
    i = torch.arange(t + 1, dtype=torch.float64)
    return ((1 + gamma) ** i - 1).clamp(max=1.0)


def das_steer(
    model: Any,
    prompts: Any,
    reward: Any,
    *,
    num_particles: int = 4,
    lam: float = 10.0,
    tempering_gamma: float | None = None,
    reward_grad_scale: float = 1.0,
    resample_steps: Any = "all",
    ess_threshold: float = 0.5,
    resampler: str = "systematic",
    final: str = "max_reward",
    num_steps: int | None = None,
    sigmas: Any = None,
    step: str = "flow_sde",
    noise_level: Any = 0.7,
    noise_steps: Any = None,
    cfg: float | None = None,
    negative_prompts: Any = None,
    height: int | None = None,
    width: int | None = None,
    generator: Any = None,
    cond: Any = None,
    x: Tensor | None = None,
    callback: Callable[[StepContext], None] | None = None,
    nfe_budget: int | None = None,
) -> SteerResult:
    """DAS with ``num_particles`` per prompt (see the module doc). ``reward_grad_scale`` 0 drops the
    gradient proposal (then any reward works: tempered FK on x0_pred). ``nfe_budget`` (per prompt)
    sets K to the most particles that fit, the gradient evaluations included."""
    das_betas(torch.zeros(2), tempering_gamma)  # a bad gamma is refused before anything is encoded
    kw = dict(locals())
    for name in ("model", "prompts", "reward", "tempering_gamma"):
        kw.pop(name)
    kw.update(mode="weights", flow_map="ode", flow_map_steps=1, beam_width=None)
    return tilted_smc(model, prompts, reward, method="das", betas=lambda s: das_betas(s, tempering_gamma), **kw)
