"""FMTT: test-time scaling with flow maps, as tempered SMC over the FK machinery.

Paper: Sabour, Albergo, Domingo-Enrich, Boffi, Fidler, Kreis, Vanden-Eijnden, "Test-time scaling of
diffusions with flow maps", arXiv 2511.22688 (Flow Map Trajectory Tilting). The sampler is tilted by
the reward of a *look-ahead through a flow map* X_{sigma,0}(x) (where the trajectory through x lands)
instead of the one-step denoiser x0_pred: the intermediate targets are

    gamma_sigma(x) ∝ p_sigma(x) exp(lam beta(sigma) r(X_{sigma,0}(x))),   beta = 1 - sigma ("linear": the
    paper's t r(X_{t,1}) with t = 1 - sigma), or beta = 1 ("none"),

and the particles carry importance weights, so the weighted final particles target p(x0) exp(lam r(x0))
exactly (``mode="weights"``), or are selected greedily for high look-ahead reward (``mode="search"``:
keep the top ``beam_width`` particles of each prompt at every scheduled step and copy them).

Flow map (``flow_map``): ``"ode"`` = the project's k-step ODE completion (``sampling.rollout.complete``'s
grid, ``flow_map_steps`` = k; k = 1 is x0_pred; its first velocity is reused by the next sampler step),
or any callable ``(x, sigma, cond) -> x0`` (a distilled flow map; its model calls are counted by the
model's NFE counter). ``reward_grad_scale`` > 0 adds the gradient proposal: at a stochastic step the
kernel mean moves by ``scale * std^2 * grad_x [lam beta(sigma_next) r(X_{sigma,0}(x))]`` (autograd through
the flow map: k extra evaluations per stochastic step), corrected by log p(x'|x) - log q(x'|x).

Departures: the weights are the discrete-time SMC increments lam (beta_j r_j - beta_{j-1} r_{j-1}) of the
FK ``diff`` potential on the flow-map values (plus the proposal's kernel ratio and FK's final correction
lam r(x0) - sum), i.e. exact for the discretised sampler, instead of the paper's continuous-time
Jarzynski weight; the flow map is an ODE completion of the same model (the paper also uses a distilled
flow map, which a callable can supply); search keeps top-W by look-ahead value instead of the paper's
search schedule. ``das.py`` (DAS) is the same engine with x0_pred and DAS's tempering.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..sampling.rollout import StepContext, completion_grid
from ..sampling.sde import ode
from .common import (
    LatentReward,
    SteerResult,
    check_budget,
    check_lam,
    check_particles,
    prepare,
    side_generator,
    stochastic_levels,
)
from .fk import FINALS, _fit_budget, _result, _sample, fk_schedule
from .fk_hook import FKSteering
from .resample import get_resampler
from .velocity_cache import VelocityCache

MODES = ("weights", "search")
TILTS = ("linear", "none")

__all__ = ["MODES", "TILTS", "fmtt_steer", "ode_flow_map", "tilted_smc"]


def ode_flow_map(model: Any, sigmas: Tensor, num_steps: int | None = None) -> Callable[[Tensor, Any, Any], Tensor]:
    """The k-step ODE completion X_{sigma,0} from a point of ``sigmas`` (``completion_grid``), as a
    differentiable callable ``(x, sigma, cond) -> x0`` (gradients flow when enabled)."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).cpu()

    def flow_map(x: Tensor, sigma: Any, cond: Any) -> Tensor:
        start = int((sigmas - float(sigma)).abs().argmin())
        grid = completion_grid(sigmas, start, num_steps)
        for s, s_next in zip(grid[:-1], grid[1:]):
            x = ode(x, model.velocity(x, s, cond), s, s_next).x_next
        return x

    return flow_map


def tilt_betas(tilt: str, sigmas: Tensor) -> Tensor:
    """beta at every grid point [T+1] float64: ``linear`` 1 - sigma, ``none`` 1."""
    if tilt not in TILTS:
        raise ValueError(f"unknown tilt {tilt!r}; choose one of {list(TILTS)}.")
    s = sigmas.double()
    return 1 - s if tilt == "linear" else torch.ones_like(s)


class _Tilt:
    """The flow-map value ``beta r(X(x))`` and the gradient proposal, installed on an ``FKSteering``
    in place of its own look-ahead (``value``) and proposal (``guidance``)."""

    def __init__(self, hook: FKSteering, cached: VelocityCache, flow_map: Any, k: int | None, betas: Tensor, **kw):
        self.hook, self.cached, self.flow_map, self.k, self.betas = hook, cached, flow_map, k, betas
        self.lam, self.scale, self.correct = kw["lam"], kw["reward_grad_scale"], kw["correct"]

    def lookahead(self, x: Tensor, i: int, cond: Any) -> Tensor:
        """X_{sigma_i,0}(x) without gradients; the ODE map's first velocity is remembered for the next step."""
        s = self.hook.sigmas[i]
        if callable(self.flow_map):
            return self.flow_map(x, s, cond)
        grid = completion_grid(self.hook.sigmas, i, self.k)
        v = self.cached.inner.velocity(x, s, cond)
        self.cached.remember(x, s, cond, v)
        x = ode(x, v, grid[0], grid[1]).x_next
        for a, b in zip(grid[1:-1], grid[2:]):
            x = ode(x, self.cached.inner.velocity(x, a, cond), a, b).x_next
        return x

    def value(self, ctx: StepContext) -> Tensor:
        with torch.no_grad():
            x0 = self.lookahead(ctx.out.x_next, ctx.j + 1, ctx.cond)
            return float(self.betas[ctx.j + 1]) * self.hook.reward(x0, ctx.cond.prompts).double()

    def guidance(self, ctx: StepContext) -> Tensor | None:
        level, weight = float(self.hook.levels[ctx.j]), self.lam * float(self.betas[ctx.j + 1])
        if self.scale == 0 or level <= 0 or weight == 0:
            return None
        fmap = self.flow_map if callable(self.flow_map) else ode_flow_map(self.cached.inner, self.hook.sigmas, self.k)
        with torch.enable_grad():
            x = ctx.x.detach().requires_grad_(True)
            r = self.hook.reward(fmap(x, ctx.sigma, ctx.cond), ctx.cond.prompts, grad=True)
            (grad,) = torch.autograd.grad(r.sum(), x)
        std = self.hook.step_fn(ctx.x, ctx.v, ctx.sigma, ctx.sigma_next, level, x_next=ctx.x).std  # no draw
        drift = self.scale * weight * std.reshape(-1, *[1] * (x.ndim - 1)) ** 2 * grad.detach().float()
        if self.correct:  # FKSteering adds log p(x'|x) - log q(x'|x) for this drift after the step
            self.hook._drift = drift
        return drift


def top_w(w: int) -> Callable[[Tensor, Any], Tensor]:
    """A 'resampler' that keeps the W highest log-weights of each group and copies them: [G, K] -> [G, K]."""

    def select(log_w: Tensor, generator: Any = None) -> Tensor:
        k = log_w.shape[-1]
        keep = log_w.topk(min(w, k), dim=-1).indices
        return keep[:, torch.arange(k) % keep.shape[-1]]

    return select


def _check(mode: str, final: str, ess_threshold: float, reward_grad_scale: float, flow_map: Any, rew: LatentReward):
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {list(MODES)}.")
    if final not in FINALS:
        raise ValueError(f"unknown final {final!r}; choose one of {sorted(FINALS)}.")
    if not 0 <= ess_threshold <= 1:
        raise ValueError(f"ess_threshold={ess_threshold} must be in [0, 1] (fraction of K; 1 = always resample).")
    if not callable(flow_map) and flow_map != "ode":
        raise ValueError(f"flow_map={flow_map!r} must be 'ode' (k-step ODE completion) or a callable (x, sigma, cond).")
    if reward_grad_scale < 0:
        raise ValueError(f"reward_grad_scale={reward_grad_scale} must be >= 0 (0: no gradient proposal).")
    if reward_grad_scale and rew.differentiable is False:
        raise ValueError(
            f"the gradient proposal (reward_grad_scale={reward_grad_scale}) needs a differentiable reward, but "
            f"{rew.name!r} has differentiable=False; use reward_grad_scale=0 or a differentiable reward."
        )


def cost_per_particle(sigmas: Tensor, schedule: list[int], k: int | None, levels: Tensor, guided: bool) -> int:
    """Evaluations one particle costs with the ODE flow map: T steps, the look-ahead steps beyond the
    first (reused) at each scheduled step, and a k-step autograd look-ahead per guided stochastic step."""
    t = sigmas.numel() - 1
    extra = sum(completion_grid(sigmas, j + 1, k).numel() - 2 for j in schedule if j < t - 1)
    grads = sum(completion_grid(sigmas, j, k).numel() - 1 for j in range(t) if levels[j] > 0) if guided else 0
    return t + extra + grads


def tilted_smc(model: Any, prompts: Any, reward: Any, *, method: str, betas: Callable[[Tensor], Tensor], **o: Any):
    """The engine of FMTT and DAS: FK particles whose potential is ``lam beta r(flow map)`` (see the
    module doc); ``o`` holds ``fmtt_steer``'s keyword arguments."""
    k, lam, mode = check_particles(o["num_particles"]), check_lam(o["lam"]), o["mode"]
    rew = LatentReward(reward, model)
    _check(mode, o["final"], o["ess_threshold"], o["reward_grad_scale"], o["flow_map"], rew)
    get_resampler(o["resampler"])
    cached = VelocityCache(model)
    enc = {n: o[n] for n in ("num_steps", "negative_prompts", "height", "width")} | {"guidance": o["cfg"]}
    setup = prepare(model, prompts, k, sigmas=o["sigmas"], generator=o["generator"], cond=o["cond"], x=o["x"], **enc)
    t = setup.sigmas.numel() - 1
    levels = stochastic_levels(o["step"], o["noise_level"], t, method, o["noise_steps"])
    schedule = fk_schedule(o["resample_steps"], t)
    guided = o["reward_grad_scale"] > 0
    if o["nfe_budget"] is not None:
        if callable(o["flow_map"]):
            raise ValueError(f"{method}: nfe_budget needs the 'ode' flow map (a callable's cost is unknown); pass K.")
        check_budget(o["nfe_budget"], t, method)
        per = cost_per_particle(setup.sigmas, schedule, o["flow_map_steps"], levels, guided)
        prep = dict(x=o["x"], generator=o["generator"], cond=o["cond"], **enc)
        k, setup = _fit_budget(model, prompts, k, setup, o["nfe_budget"], per, **prep)
    search = mode == "search"
    chooser = top_w(o["beam_width"] or max(1, k // 2)) if search else o["resampler"]
    hook = FKSteering(
        cached, rew, setup.sigmas, levels, o["step"], len(setup.prompts), k, lam=lam,
        potential="rt" if search else "diff", lookahead="x0", lookahead_steps=None, resampler=chooser,
        schedule=schedule, ess_threshold=1.0 if search else o["ess_threshold"],
        reward_grad_scale=o["reward_grad_scale"], generator=side_generator(o["generator"], 7919),
        callback=o["callback"],
    )  # fmt: skip
    b = betas(setup.sigmas)
    tilt = _Tilt(hook, cached, o["flow_map"], o["flow_map_steps"], b, lam=lam, reward_grad_scale=o["reward_grad_scale"],
                 correct=not search)  # fmt: skip
    hook.value, hook.guidance = tilt.value, tilt.guidance  # the flow-map look-ahead replaces FK's own
    final_x, nfe = _sample(hook, cached, setup, o["step"], levels, o["generator"], guided)
    res = _result(hook, final_x, o["final"], method, nfe, schedule, setup.sigmas, rew.calls, cached.hits)
    res.info.update(mode=mode, betas=b, num_particles=k)
    return res


def fmtt_steer(
    model: Any,
    prompts: Any,
    reward: Any,
    *,
    num_particles: int = 4,
    lam: float = 10.0,
    mode: str = "weights",
    flow_map: Any = "ode",
    flow_map_steps: int | None = 4,
    tilt: str = "linear",
    reward_grad_scale: float = 0.0,
    resample_steps: Any = "all",
    ess_threshold: float = 0.5,
    resampler: str = "systematic",
    beam_width: int | None = None,
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
    """FMTT with ``num_particles`` per prompt: weights (``mode="weights"``: exact tilt, adaptive
    resampling at ESS <= ``ess_threshold`` K) or search (``mode="search"``: top ``beam_width``, default
    K/2, copied at every step of ``resample_steps``). ``flow_map_steps``: k of the ODE flow map (None:
    every remaining grid step). ``nfe_budget`` (per prompt) sets K to the most particles that fit,
    look-ahead and gradient evaluations included. Other arguments as ``fk_steer``."""
    tilt_betas(tilt, torch.zeros(1))  # an unknown tilt is refused before anything is encoded
    if flow_map_steps is not None and (isinstance(flow_map_steps, bool) or flow_map_steps < 1):
        raise ValueError(f"flow_map_steps={flow_map_steps!r} must be an int >= 1 (or None: every remaining step).")
    kw = dict(locals())
    for name in ("model", "prompts", "reward", "tilt"):
        kw.pop(name)
    return tilted_smc(model, prompts, reward, method=f"fmtt_{mode}", betas=lambda s: tilt_betas(tilt, s), **kw)
