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
steps the kernel mean moves by ``reward_grad_scale * std^2 * grad_x r(x0_pred(x))`` (one extra NFE
with autograd through the model, decoder and reward) and the weight gets log p(x'|x) - log q(x'|x).
(``guidance_scale`` elsewhere, and ``cfg`` here, is the classifier-free guidance of the model.)
The particle state and its rollout hooks are ``fk_hook.FKSteering``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..sampling.rollout import StepContext, completion_grid, rollout
from .common import (
    LatentReward,
    Setup,
    SteerResult,
    check_budget,
    check_lam,
    check_particles,
    check_steps_in_grid,
    default_schedule,
    prepare,
    side_generator,
    stochastic_levels,
)
from .fk_hook import LOOKAHEADS, POTENTIALS, FKSteering
from .resample import get_resampler, normalize
from .velocity_cache import VelocityCache

FINALS = ("max_reward", "argmax", "sample")

__all__ = ["FINALS", "LOOKAHEADS", "POTENTIALS", "FKSteering", "fk_cost_per_particle", "fk_steer"]


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
    reward_grad_scale: float = 0.0,
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
    default all but the last). ``reward_grad_scale`` > 0 turns on the gradient proposal (needs a
    differentiable reward). ``cfg`` is the model's classifier-free guidance scale. ``callback(ctx)``
    runs after each step before the steering logic (the pipelines use it for ``callback_on_step_end``).
    ``nfe_budget`` (per prompt) sets K to the most particles that fit (look-ahead and guidance
    evaluations included)."""
    k, lam = check_particles(num_particles), check_lam(lam)
    opts = _hook_options(lam, potential, lookahead, lookahead_steps, resampler, final, ess_threshold, reward_grad_scale)
    rew = LatentReward(reward, model)
    _check_reward_grad_scale(reward_grad_scale, rew)
    cached = VelocityCache(model)
    enc = dict(num_steps=num_steps, guidance=cfg, negative_prompts=negative_prompts, height=height, width=width)
    setup = prepare(model, prompts, k, sigmas=sigmas, generator=generator, cond=cond, x=x, **enc)
    t = setup.sigmas.numel() - 1
    levels = stochastic_levels(step, noise_level, t, "FK steering", noise_steps)
    schedule = fk_schedule(resample_steps, t)
    if nfe_budget is not None:
        check_budget(nfe_budget, t, "FK steering")
        per = fk_cost_per_particle(setup.sigmas, schedule, lookahead, lookahead_steps, levels, reward_grad_scale > 0)
        k, setup = _fit_budget(model, prompts, k, setup, nfe_budget, per, x=x, generator=generator, cond=cond, **enc)
    opts.update(schedule=schedule, generator=side_generator(generator, 7919), callback=callback)
    hook = FKSteering(cached, rew, setup.sigmas, levels, step, len(setup.prompts), k, **opts)
    final_x, nfe = _sample(hook, cached, setup, step, levels, generator, bool(reward_grad_scale))
    return _result(hook, final_x, final, f"fk_{potential}", nfe, schedule, setup.sigmas, rew.calls, cached.hits)


# --- fk_steer's pieces ---------------------------------------------------------------------------
def _hook_options(
    lam: float,
    potential: str,
    lookahead: str,
    lookahead_steps: int | None,
    resampler: Any,
    final: str,
    ess_threshold: float,
    reward_grad_scale: float,
) -> dict[str, Any]:
    """Check the FK options (``final`` included); returns ``FKSteering``'s keyword options."""
    for name, value, options in (
        ("potential", potential, POTENTIALS),
        ("lookahead", lookahead, LOOKAHEADS),
        ("final", final, FINALS),
    ):
        if value not in options:
            raise ValueError(f"unknown {name} {value!r}; choose one of {sorted(options)}.")
    if not 0 <= ess_threshold <= 1:
        raise ValueError(f"ess_threshold={ess_threshold} must be in [0, 1] (fraction of K; 1 = always resample).")
    get_resampler(resampler)  # an unknown resampler is refused before the prompts are encoded
    return dict(
        lam=lam,
        potential=potential,
        lookahead=lookahead,
        lookahead_steps=lookahead_steps,
        resampler=resampler,
        ess_threshold=ess_threshold,
        reward_grad_scale=reward_grad_scale,
    )


def _check_reward_grad_scale(reward_grad_scale: float, rew: LatentReward) -> None:
    if reward_grad_scale and rew.differentiable is False:
        raise ValueError(
            f"the gradient proposal (reward_grad_scale={reward_grad_scale}) needs a differentiable "
            f"reward, but {rew.name!r} has differentiable=False; use reward_grad_scale=0 or a "
            f"differentiable reward."
        )
    if reward_grad_scale < 0:
        raise ValueError(f"reward_grad_scale={reward_grad_scale} must be >= 0.")


def fk_schedule(resample_steps: Any, t: int) -> list[int]:
    """The weighting / resampling steps on a T-step grid, the last step (final correction) included."""
    schedule = default_schedule(t) if resample_steps is None else check_steps_in_grid(resample_steps, t)
    return sorted(set(schedule) | {t - 1})


def _fit_budget(
    model: Any, prompts: Any, k: int, setup: Setup, nfe_budget: int, per: int, *, x: Tensor | None, **prep: Any
) -> tuple[int, Setup]:
    """The most particles per prompt that ``nfe_budget`` pays for at ``per`` evaluations each, and the
    setup for them (re-prepared, with fresh initial noise, when K changes)."""
    k_fit = nfe_budget // per
    if k_fit < 1:
        raise ValueError(
            f"nfe_budget={nfe_budget} is smaller than one FK particle ({per} evaluations with "
            f"this look-ahead / guidance); pass nfe_budget >= {per}."
        )
    if k_fit == k:
        return k, setup
    x = x if x is not None and x.shape[0] == k_fit * len(setup.prompts) else None
    return k_fit, prepare(model, prompts, k_fit, sigmas=setup.sigmas, x=x, **prep)


def _sample(
    hook: FKSteering, cached: VelocityCache, setup: Setup, step: Any, levels: Tensor, generator: Any, guided: bool
) -> tuple[Tensor, int]:
    """The particle rollout with the hooks -> (final latents [P * K, *S], NFE spent)."""
    nfe0 = cached.nfe
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
            guidance=hook.guidance if guided else None,
        )
    return ro.final, cached.nfe - nfe0


def _pick(final: str, rewards: Tensor, log_w: Tensor, gen: torch.Generator) -> Tensor:
    """The chosen particle of each group [P] (``FINALS``)."""
    if final == "max_reward":
        return rewards.argmax(-1)
    if final == "argmax":
        return log_w.argmax(-1)
    return torch.multinomial(normalize(log_w), 1, generator=gen).squeeze(-1)


def _result(
    hook: FKSteering,
    final_x: Tensor,
    final: str,
    method: str,
    nfe: int,
    schedule: list[int],
    sigmas: Tensor,
    reward_calls: int,
    cache_hits: int,
) -> SteerResult:
    p, k = hook.groups, hook.k
    final_x = final_x.reshape(p, k, *final_x.shape[1:])
    rewards = hook.final_rewards.reshape(p, k)
    log_w = hook.log_w.reshape(p, k)
    pick, rows = _pick(final, rewards, log_w, hook.gen), torch.arange(p)
    info = dict(
        log_z=hook.final_log_z(),
        ancestors=hook.ancestor.reshape(p, k),
        unique_ancestors=[len(set(a.tolist())) for a in hook.ancestor.reshape(p, k)],
        resample_events=[(j, e) for j, e, _ in hook.history],
        schedule=schedule,
        cache_hits=cache_hits,
        sigmas=sigmas,
    )
    return SteerResult(
        latents=final_x[rows, pick],
        rewards=rewards[rows, pick],
        nfe=nfe,
        method=method,
        reward_calls=reward_calls,
        candidates=final_x,
        candidate_rewards=rewards,
        log_weights=log_w,
        info=info,
    )
