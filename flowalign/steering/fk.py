"""Feynman-Kac (FK) particle steering as an ``on_step`` hook of the one rollout loop.

Paper: Singhal et al., "A General Framework for Inference-time Scaling and Steering of Diffusion
Models", arXiv 2501.06848 (ICML 2025). K particles per prompt follow the stochastic sampler; at the
scheduled steps each gets a potential G_t computed from an intermediate reward r_phi(x_t), the
weights are multiplied by it and the particles of each prompt are resampled. The product of the
potentials along a particle's ancestry equals exp(lam r(x0)), so the weighted final particles
target p(x0) exp(lam r(x0)) / Z.

Potentials (``POTENTIALS``; lam r_phi with r_phi the look-ahead reward):
  * ``diff``: lam (r_t - r_prev) (telescopes; r_prev starts at 0, a per-group constant that the
    normalisation removes);
  * ``max``: lam max_{s >= t} r_s over the particle's resampling history (running max from -inf:
    negative rewards stay comparable, the paper code's 0 start is pitfall 1 of the reference);
  * ``sum``: lam sum_{s >= t} r_s;
  * ``rt``: lam r_t (the later "current reward" potential).
  At the last step every potential is replaced by the final correction lam r(x0) - sum of the
  particle's earlier log-potentials, so that the product is exactly exp(lam r(x0)).

Look-ahead rewards (``lookahead``): ``x0`` scores x0_pred of the post-step state (its velocity is
kept in a ``VelocityCache`` and reused by the next step: no extra NFE); ``x0_prev`` the pre-step
x0_pred the step already computed (the FK code's choice); ``ode`` an ODE completion of the
post-step state with ``lookahead_steps`` steps (the reward ladder's "ode" mode; its first velocity
is reused too).

Departures from the paper code: weights live in log space (no clamp to [0, 1e10]) and accumulate
across steps where resampling is skipped because the ESS is high (the code discards them,
pitfall 2); systematic resampling by default; the final step applies the correction and the final
choice (``final``) instead of a last resample: ``max_reward`` (the FK evaluation picks the top-reward
particle), ``argmax`` of the log-weight (DAS) or ``sample`` one particle by weight.
Optional gradient-guided proposal (TDS / DAS style, "FK with a gradient proposal"): at stochastic
steps the kernel mean moves by ``guidance_scale * std^2 * grad_x r(x0_pred(x))`` (one extra NFE
with autograd through the model, decoder and reward) and the weight gets log p(x'|x) - log q(x'|x).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..sampling.rollout import StepContext, complete, completion_grid, rollout
from ..sampling.sde import get_step, ode
from .common import (
    LatentReward,
    SteerResult,
    VelocityCache,
    check_budget,
    check_lam,
    check_particles,
    check_steps_in_grid,
    default_schedule,
    prepare,
    side_generator,
    stochastic_levels,
)
from .resample import ess, flat_index, get_resampler, normalize


@dataclass(frozen=True)
class Potential:
    init: float  # starting value of the per-particle carry
    update: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]  # (carry, r) -> (log G / lam, carry)


POTENTIALS: dict[str, Potential] = {
    "diff": Potential(0.0, lambda c, r: (r - c, r)),
    "max": Potential(-math.inf, lambda c, r: (torch.maximum(c, r), torch.maximum(c, r))),
    "sum": Potential(0.0, lambda c, r: (c + r, c + r)),
    "rt": Potential(0.0, lambda c, r: (r, c)),
}
LOOKAHEADS = ("x0", "x0_prev", "ode")
FINALS = ("max_reward", "argmax", "sample")


class FKSteering:
    """The per-run particle state and the two rollout hooks (``guidance``, ``on_step``).

    Rows are P groups of K particles, contiguous. State per row (float64): ``log_w`` (reset to 0
    when its group resamples), ``log_prod`` (sum of applied log-potentials: the final correction),
    ``carry`` (the potential's running value), ``ancestor`` (the initial particle it descends from).
    """

    def __init__(
        self,
        model: VelocityCache,
        reward: LatentReward,
        sigmas: Tensor,
        levels: Tensor,
        step: Any,
        groups: int,
        k: int,
        *,
        lam: float,
        potential: str,
        lookahead: str,
        lookahead_steps: int | None,
        resampler: Any,
        schedule: list[int],
        ess_threshold: float,
        guidance_scale: float,
        generator: torch.Generator,
        callback: Callable[[StepContext], None] | None = None,
    ):
        self.model, self.reward, self.sigmas, self.levels = model, reward, sigmas, levels
        self.step_fn, self.groups, self.k = get_step(step), groups, k
        self.lam, self.pot = lam, POTENTIALS[potential]
        self.lookahead, self.lookahead_steps = lookahead, lookahead_steps
        self.resampler, self.schedule = get_resampler(resampler), set(schedule)
        self.ess_threshold, self.kappa, self.gen, self.callback = ess_threshold, guidance_scale, generator, callback
        b = groups * k
        self.log_w = torch.zeros(b, dtype=torch.float64)
        self.log_prod = torch.zeros(b, dtype=torch.float64)
        self.carry = torch.full((b,), self.pot.init, dtype=torch.float64)
        self.ancestor = torch.arange(b)
        self.log_z = torch.zeros(groups, dtype=torch.float64)
        self.final_rewards: Tensor | None = None
        self.history: list[tuple[int, Tensor, Tensor]] = []  # (step, ess [P], flat ancestors [B])
        self._drift: Tensor | None = None

    # --- look-ahead rewards --------------------------------------------------------------------
    def value(self, ctx: StepContext) -> Tensor:
        prompts = ctx.cond.prompts
        if self.lookahead == "x0_prev":
            return self.reward(ctx.out.x0_pred, prompts).double()
        x, s = ctx.out.x_next, ctx.sigma_next
        with torch.no_grad():
            v = self.model.inner.velocity(x, s, ctx.cond)
        self.model.remember(x, s, ctx.cond, v)
        if self.lookahead == "x0":
            return self.reward(x - s * v, prompts).double()
        grid = completion_grid(self.sigmas, ctx.j + 1, self.lookahead_steps)
        x1 = ode(x, v, grid[0], grid[1]).x_next
        if grid.numel() > 2:
            x1, _ = complete(self.model.inner, ctx.cond, x1, grid, 1)
        return self.reward(x1, prompts).double()

    # --- hooks ---------------------------------------------------------------------------------
    def guidance(self, ctx: StepContext) -> Tensor | None:
        level = float(self.levels[ctx.j])
        if self.kappa == 0 or level <= 0:
            return None
        s = ctx.sigma
        with torch.enable_grad():
            x = ctx.x.detach().requires_grad_(True)
            v = self.model.inner.velocity(x, s, ctx.cond)
            r = self.reward(x - s * v, ctx.cond.prompts, grad=True)
            (grad,) = torch.autograd.grad(r.sum(), x)
        std = self.step_fn(ctx.x, ctx.v, s, ctx.sigma_next, level, x_next=ctx.x).std  # no draw
        self._drift = self.kappa * std.reshape(-1, *[1] * (x.ndim - 1)) ** 2 * grad.detach().float()
        return self._drift

    def _proposal_correction(self, ctx: StepContext) -> None:
        """log p(x'|x) - log q(x'|x) for q = p shifted by the drift d: with z = x' - mean_q,
        sum[(z^2 - (z + d)^2)] / (2 std^2) (sums over elements; constants cancel)."""
        out, d = ctx.out, self._drift.double()
        z = out.x_next.double() - out.mean.double()
        var = out.std.double().reshape(-1, *[1] * (z.ndim - 1)) ** 2
        self.log_w += ((z**2 - (z + d) ** 2) / (2 * var)).flatten(1).sum(1).cpu()
        self._drift = None

    def on_step(self, ctx: StepContext) -> Tensor | None:
        if self.callback is not None:
            self.callback(ctx)
        if self._drift is not None:
            self._proposal_correction(ctx)
        j, last = ctx.j, self.sigmas.numel() - 2
        if j not in self.schedule:
            return None
        if j == last:
            r = self.reward(ctx.out.x_next, ctx.cond.prompts).double()
            self.final_rewards = r.float()
            log_g = self.lam * r - self.log_prod
        else:
            pot, self.carry = self.pot.update(self.carry, self.value(ctx))
            log_g = self.lam * pot
        self.log_w += log_g
        self.log_prod += log_g
        if j == last or self.k == 1:
            return None
        grouped = self.log_w.reshape(self.groups, self.k)
        e = ess(grouped)
        do = e <= self.ess_threshold * self.k * (1 + 1e-9)
        if not bool(do.any()):
            return None
        local = torch.arange(self.k).expand(self.groups, self.k).clone()
        local[do] = self.resampler(grouped[do], self.gen)
        self.log_z[do] += torch.logsumexp(grouped[do], -1) - math.log(self.k)
        self.log_w = torch.where(do.repeat_interleave(self.k), torch.zeros_like(self.log_w), self.log_w)
        index = flat_index(local)
        for name in ("log_w", "log_prod", "carry", "ancestor"):
            setattr(self, name, getattr(self, name)[index])
        self.history.append((j, e.float(), index))
        return index

    def final_log_z(self) -> Tensor:
        """log of the SMC estimate of Z = E_p[exp(lam r(x0))] per group [P]."""
        grouped = self.log_w.reshape(self.groups, self.k)
        return self.log_z + torch.logsumexp(grouped, -1) - math.log(self.k)


def fk_cost_per_particle(
    sigmas: Tensor, schedule: list[int], lookahead: str, lookahead_steps: int | None, levels: Tensor, guided: bool
) -> int:
    """Model evaluations one particle costs: T steps, plus the ODE look-ahead steps beyond the first
    (that one is reused), plus one autograd evaluation per guided (stochastic) step."""
    t = sigmas.numel() - 1
    extra = 0
    if lookahead == "ode":
        extra = sum(completion_grid(sigmas, j + 1, lookahead_steps).numel() - 2 for j in schedule if j < t - 1)
    return t + extra + (int((levels > 0).sum()) if guided else 0)


def fk_steer(
    model: Any,
    prompts: Any,
    reward: Any,
    *,
    num_particles: int = 4,
    lam: float = 10.0,
    potential: str = "max",
    lookahead: str = "x0",
    lookahead_steps: int | None = None,
    resampler: str = "systematic",
    resample_steps: Any = None,
    ess_threshold: float = 1.0,
    final: str = "max_reward",
    guidance_scale: float = 0.0,
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
    """FK steering of P prompts with ``num_particles`` particles each -> one sample per prompt.

    ``resample_steps``: 0-based step indices (or '7-14') after which particles are weighted and (if the
    group's ESS <= ``ess_threshold`` K) resampled; default ``default_schedule(T)``; the last step is
    always added (final correction). ``noise_steps``: the steps that get SDE noise (e.g. '6-15';
    default all but the last). ``guidance_scale`` > 0 turns on the gradient proposal (needs a
    differentiable reward). ``cfg`` is the model's guidance scale. ``callback(ctx)`` runs after each
    step before the steering logic (the pipelines use it for ``callback_on_step_end``).
    ``nfe_budget`` (per prompt) sets K to the most particles that fit (look-ahead and guidance
    evaluations included)."""
    k = check_particles(num_particles)
    lam = check_lam(lam)
    for name, value, options in (
        ("potential", potential, POTENTIALS),
        ("lookahead", lookahead, LOOKAHEADS),
        ("final", final, FINALS),
    ):
        if value not in options:
            raise ValueError(f"unknown {name} {value!r}; choose one of {sorted(options)}.")
    if not 0 <= ess_threshold <= 1:
        raise ValueError(f"ess_threshold={ess_threshold} must be in [0, 1] (fraction of K; 1 = always resample).")
    rew = LatentReward(reward, model)
    if guidance_scale and rew.differentiable is False:
        raise ValueError(
            f"the gradient proposal (guidance_scale={guidance_scale}) needs a differentiable "
            f"reward, but {rew.name!r} has differentiable=False; use guidance_scale=0 or a "
            f"differentiable reward."
        )
    if guidance_scale < 0:
        raise ValueError(f"guidance_scale={guidance_scale} must be >= 0.")
    cached = VelocityCache(model)
    setup = prepare(
        model,
        prompts,
        k,
        num_steps=num_steps,
        sigmas=sigmas,
        guidance=cfg,
        negative_prompts=negative_prompts,
        height=height,
        width=width,
        generator=generator,
        cond=cond,
        x=x,
    )
    t = setup.sigmas.numel() - 1
    levels = stochastic_levels(step, noise_level, t, "FK steering", noise_steps)
    schedule = default_schedule(t) if resample_steps is None else check_steps_in_grid(resample_steps, t)
    schedule = sorted(set(schedule) | {t - 1})
    if nfe_budget is not None:
        check_budget(nfe_budget, t, "FK steering")
        per = fk_cost_per_particle(setup.sigmas, schedule, lookahead, lookahead_steps, levels, guidance_scale > 0)
        k_fit = nfe_budget // per
        if k_fit < 1:
            raise ValueError(
                f"nfe_budget={nfe_budget} is smaller than one FK particle ({per} evaluations with "
                f"this look-ahead / guidance); pass nfe_budget >= {per}."
            )
        if k_fit != k:
            k = k_fit
            setup = prepare(
                model,
                prompts,
                k,
                num_steps=num_steps,
                sigmas=setup.sigmas,
                guidance=cfg,
                negative_prompts=negative_prompts,
                height=height,
                width=width,
                generator=generator,
                cond=cond,
                x=x if x is not None and x.shape[0] == k * len(setup.prompts) else None,
            )
    p = len(setup.prompts)
    hook = FKSteering(
        cached,
        rew,
        setup.sigmas,
        levels,
        step,
        p,
        k,
        lam=lam,
        potential=potential,
        lookahead=lookahead,
        lookahead_steps=lookahead_steps,
        resampler=resampler,
        schedule=schedule,
        ess_threshold=ess_threshold,
        guidance_scale=guidance_scale,
        generator=side_generator(generator, 7919),
        callback=callback,
    )
    nfe0 = model.nfe
    with torch.no_grad():
        ro = rollout(
            cached,
            setup.cond,
            setup.x,
            setup.sigmas,
            step,
            levels,
            generator=generator,
            on_step=hook.on_step,
            guidance=hook.guidance if guidance_scale else None,
        )
    final_x = ro.final.reshape(p, k, *ro.final.shape[1:])
    rewards = hook.final_rewards.reshape(p, k)
    log_w = hook.log_w.reshape(p, k)
    if final == "max_reward":
        pick = rewards.argmax(-1)
    elif final == "argmax":
        pick = log_w.argmax(-1)
    else:
        pick = torch.multinomial(normalize(log_w), 1, generator=hook.gen).squeeze(-1)
    rows = torch.arange(p)
    info = dict(
        log_z=hook.final_log_z(),
        ancestors=hook.ancestor.reshape(p, k),
        unique_ancestors=[len(set(a.tolist())) for a in hook.ancestor.reshape(p, k)],
        resample_events=[(j, e) for j, e, _ in hook.history],
        schedule=schedule,
        cache_hits=cached.hits,
        sigmas=setup.sigmas,
    )
    return SteerResult(
        latents=final_x[rows, pick],
        rewards=rewards[rows, pick],
        nfe=model.nfe - nfe0,
        method=f"fk_{potential}",
        reward_calls=rew.calls,
        candidates=final_x,
        candidate_rewards=rewards,
        log_weights=log_w,
        info=info,
    )
