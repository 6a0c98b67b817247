"""Search baselines over the one rollout loop: best-of-N and beam / SVDD-style per-step selection.

* ``best_of_n``: N independent samples per prompt (any sampler, the ODE included), keep the argmax
  of the reward. Cost N T model evaluations and N reward calls per prompt.
* ``beam_search``: K = W M particles per prompt; after each selection step the look-ahead value of
  every particle is computed (x0_pred of the post-step state, as SVDD-PM, Li et al. arXiv 2408.08252;
  its velocity is reused by the next step, so the look-ahead costs no NFE), W survivors per prompt
  are kept (top-W, or drawn prop. to exp(lam v) as SVDD's soft selection when ``lam`` is given) and
  each is copied M times; the stochastic steps until the next selection make the copies differ.
  ``beam_width=1`` with every step selected is SVDD; the default selects at the FK schedule.
  Departure from SVDD: children are drawn by independent continuations of copies, so at a selection
  step the M children of a beam come from the last step's kernel (as SVDD) but beams also keep their
  own history since the previous selection step.
Both take an NFE budget per prompt (``nfe_budget``): N or M is derived from it; a budget below one
rollout (T evaluations) is one clear error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..sampling.rollout import StepContext, rollout
from .common import (
    LatentReward,
    Setup,
    SteerResult,
    check_budget,
    check_lam,
    check_particles,
    check_steps_in_grid,
    default_schedule,
    noise_levels,
    prepare,
    side_generator,
    stochastic_levels,
)
from .resample import flat_index
from .velocity_cache import VelocityCache


def _grid_len(model: Any, num_steps: int | None, sigmas: Any) -> int:
    if sigmas is not None:
        return len(sigmas) - 1
    return num_steps if num_steps is not None else model.default_steps


def _samples_per_prompt(n: int | None, nfe_budget: int | None, t: int) -> int:
    """Best-of-N's N: ``n``, capped by (or, without ``n``, set to) ``nfe_budget // T``."""
    if n is None and nfe_budget is None:
        raise ValueError("best_of_n needs n= (samples per prompt) or nfe_budget= (model evaluations per prompt).")
    if nfe_budget is not None:
        check_budget(nfe_budget, t, "best-of-N")
        n = nfe_budget // t if n is None else min(n, nfe_budget // t)
    return check_particles(n, "n")


def _rollout_in_chunks(
    model: Any, setup: Setup, step: str, levels: Tensor, generator: Any, max_batch: int, callback: Callable | None
) -> Tensor:
    """Final latents [P * N, *S] of independent rollouts, ``max_batch`` rows at a time."""
    finals = []
    with torch.no_grad():
        for i in range(0, setup.x.shape[0], max_batch):
            rows = list(range(i, min(i + max_batch, setup.x.shape[0])))
            gen = generator[i : i + max_batch] if isinstance(generator, (list, tuple)) else generator
            cond = setup.cond.select(rows)
            ro = rollout(model, cond, setup.x[rows], setup.sigmas, step, levels, generator=gen, on_step=callback)
            finals.append(ro.final)
    return torch.cat(finals)


def best_per_prompt(final: Tensor, rewards: Tensor, p: int, k: int, **fields: Any) -> SteerResult:
    """P groups of K final candidates [P * K, *S] with rewards [P * K] -> the argmax of each group as a
    ``SteerResult`` (``fields``: its other entries)."""
    cands, cr = final.reshape(p, k, *final.shape[1:]), rewards.reshape(p, k)
    pick, rows = cr.argmax(-1), torch.arange(p)
    return SteerResult(
        latents=cands[rows, pick], rewards=cr[rows, pick], candidates=cands, candidate_rewards=cr, **fields
    )


def best_of_n(
    model: Any,
    prompts: Any,
    reward: Any,
    *,
    n: int | None = None,
    nfe_budget: int | None = None,
    num_steps: int | None = None,
    sigmas: Any = None,
    step: str = "ode",
    noise_level: Any = None,
    noise_steps: Any = None,
    cfg: float | None = None,
    negative_prompts: Any = None,
    height: int | None = None,
    width: int | None = None,
    generator: Any = None,
    cond: Any = None,
    max_batch: int = 256,
    callback: Callable[[StepContext], None] | None = None,
) -> SteerResult:
    """Best of ``n`` samples per prompt (or ``n = nfe_budget // T``); ``callback(ctx)`` runs after
    every step (rows in chunks of ``max_batch``)."""
    n = _samples_per_prompt(n, nfe_budget, _grid_len(model, num_steps, sigmas))
    rew = LatentReward(reward, model)
    setup = prepare(
        model,
        prompts,
        n,
        num_steps=num_steps,
        sigmas=sigmas,
        guidance=cfg,
        negative_prompts=negative_prompts,
        height=height,
        width=width,
        generator=generator,
        cond=cond,
    )
    levels = noise_levels(noise_level, setup.sigmas.numel() - 1, "best-of-N", noise_steps)
    nfe0 = model.nfe
    final = _rollout_in_chunks(model, setup, step, levels, generator, max_batch, callback)
    r = rew(final, setup.cond.prompts)
    return best_per_prompt(
        final, r, len(setup.prompts), n, nfe=model.nfe - nfe0, method="bon", reward_calls=rew.calls, info={"n": n}
    )


class _BeamHook:
    def __init__(
        self,
        model: VelocityCache,
        reward: LatentReward,
        groups: int,
        w: int,
        m: int,
        steps: set[int],
        last: int,
        lam: float | None,
        gen: torch.Generator,
        callback: Callable | None = None,
    ):
        self.model, self.reward, self.groups, self.w, self.m = model, reward, groups, w, m
        self.steps, self.last, self.lam, self.gen, self.callback = steps, last, lam, gen, callback
        self.final_rewards: Tensor | None = None
        self.values: list[Tensor] = []

    def __call__(self, ctx: StepContext) -> Tensor | None:
        if self.callback is not None:
            self.callback(ctx)
        if ctx.j == self.last:
            self.final_rewards = self.reward(ctx.out.x_next, ctx.cond.prompts)
            return None
        if ctx.j not in self.steps:
            return None
        x, s = ctx.out.x_next, ctx.sigma_next
        with torch.no_grad():
            v = self.model.inner.velocity(x, s, ctx.cond)
        self.model.remember(x, s, ctx.cond, v)
        val = self.reward(x - s * v, ctx.cond.prompts).double().reshape(self.groups, -1)  # [P, K]
        self.values.append(val.max(-1).values.float())
        if self.lam is None:
            keep = val.topk(self.w, dim=-1).indices  # [P, W]
        else:
            probs = torch.softmax(self.lam * val, -1)
            keep = torch.multinomial(probs, self.w, replacement=True, generator=self.gen)
        return flat_index(keep.repeat_interleave(self.m, dim=-1))


def _beam_sizes(w: int, num_children: int | None, nfe_budget: int | None, t: int) -> tuple[int, int]:
    """(beams W, children M) per prompt: ``nfe_budget // T`` rollouts cap W and set (or cap) M."""
    if nfe_budget is not None:
        check_budget(nfe_budget, t, "beam search")
        total = nfe_budget // t
        w = min(w, total)
        num_children = total // w if num_children is None else min(num_children, total // w)
    if num_children is None:
        raise ValueError("beam_search needs num_children= or nfe_budget=.")
    return w, check_particles(num_children, "num_children")


def beam_search(
    model: Any,
    prompts: Any,
    reward: Any,
    *,
    beam_width: int = 2,
    num_children: int | None = 4,
    nfe_budget: int | None = None,
    select_steps: Any = None,
    lam: float | None = None,
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
    callback: Callable[[StepContext], None] | None = None,
) -> SteerResult:
    """Beam search with ``beam_width`` beams x ``num_children`` copies per prompt (or as many
    children as ``nfe_budget`` allows); ``select_steps`` default: the FK schedule; ``"all"`` = SVDD."""
    t = _grid_len(model, num_steps, sigmas)
    w = check_particles(beam_width, "beam_width")
    lam = None if lam is None else check_lam(lam)
    w, m = _beam_sizes(w, num_children, nfe_budget, t)
    rew = LatentReward(reward, model)
    cached = VelocityCache(model)
    setup = prepare(
        model,
        prompts,
        w * m,
        num_steps=num_steps,
        sigmas=sigmas,
        guidance=cfg,
        negative_prompts=negative_prompts,
        height=height,
        width=width,
        generator=generator,
        cond=cond,
    )
    t = setup.sigmas.numel() - 1
    levels = stochastic_levels(step, noise_level, t, "beam search", noise_steps)
    steps = default_schedule(t)[:-1] if select_steps is None else check_steps_in_grid(select_steps, t, "select_steps")
    p = len(setup.prompts)
    hook = _BeamHook(cached, rew, p, w, m, set(steps) - {t - 1}, t - 1, lam, side_generator(generator, 31337), callback)
    nfe0 = model.nfe
    with torch.no_grad():
        ro = rollout(cached, setup.cond, setup.x, setup.sigmas, step, levels, generator=generator, on_step=hook)
    name = "svdd" if w == 1 and len(steps) >= t - 1 else "beam"
    info = {"beam_width": w, "num_children": m, "select_steps": steps, "cache_hits": cached.hits}
    return best_per_prompt(
        ro.final, hook.final_rewards, p, w * m, nfe=model.nfe - nfe0, method=name, reward_calls=rew.calls, info=info
    )
