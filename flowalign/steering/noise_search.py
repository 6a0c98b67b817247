"""Search over the initial noise: random search and an evolutionary variant, at equal NFE.

Papers: Ma et al., "Inference-Time Scaling for Diffusion Models beyond Scaling Denoising Steps",
arXiv 2501.09732 (random search over initial noises scored by a verifier; a zero-order search in the
neighbourhood of the best noise), and He et al., "Scaling Image and Video Generation via Test-Time
Evolutionary Search" (EvoSearch), arXiv 2505.17618 (a population of initial noises, elites selected by
reward and mutated generation after generation).

* ``mode="random"``: N noises per prompt, each scored, the best kept (with the full sampler as the
  verifier this is best-of-N over the noise, bit for bit).
* ``mode="evolution"``: generation 0 is ``population`` random noises; each next generation mutates the
  ``elites`` best noises found so far (round robin) as x' = sqrt(1 - a^2) x + a eps, eps ~ N(0, I), a =
  ``mutation`` in (0, 1]: for x ~ N(0, I) independent of eps, x' ~ N(0, (1 - a^2) + a^2) = N(0, I), so
  every candidate is still a draw of the sampler's prior.
Scoring (the verifier): ``verifier_steps=None`` rolls each noise out with the sampler (T evaluations; the
returned sample is that rollout); ``verifier_steps=k`` scores the reward of a k-step ODE completion
(``sampling.rollout.complete``, k evaluations) and rolls the best noise of each prompt out once at the end
(T more). Every velocity evaluation counts against ``nfe_budget`` (per prompt): verifier completions and
the final rollout included; the search stops when the next generation would exceed it.
Departures: EvoSearch also evolves intermediate states and uses its own selection / mutation schedule;
here only the initial noise evolves, with elites kept across generations ((mu + lambda) selection) and
one mutation strength.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..sampling.rollout import StepContext, complete, rollout
from .common import LatentReward, SteerResult, check_budget, check_particles, noise_levels, prepare

MODES = ("random", "evolution")

__all__ = ["MODES", "mutate", "noise_search"]


def mutate(x: Tensor, eps: Tensor, a: float) -> Tensor:
    """x' = sqrt(1 - a^2) x + a eps (keeps N(0, I))."""
    return math.sqrt(1 - a * a) * x + a * eps


def _check(mode: str, population: int, elites: int | None, mutation: float, verifier_steps: int | None) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown noise search mode {mode!r}; choose one of {list(MODES)}.")
    check_particles(population, "population")
    if elites is not None and (check_particles(elites, "elites") > population):
        raise ValueError(f"elites={elites} must be <= population={population} (the parents of each generation).")
    if not 0 < mutation <= 1:
        raise ValueError(f"mutation={mutation} must be in (0, 1] (x' = sqrt(1 - a^2) x + a eps); use e.g. 0.5.")
    if verifier_steps is not None:
        check_particles(verifier_steps, "verifier_steps")


def _plan(population: int, generations: int | None, nfe_budget: int | None, per: int, final: int, t: int):
    """Generations and the size of each (the last may be smaller) from the budget: every candidate costs
    ``per`` evaluations, plus ``final`` once (the best noise's full rollout)."""
    if nfe_budget is None:
        return [population] * (generations or 1)
    check_budget(nfe_budget, t, "noise search")
    total = (nfe_budget - final) // per
    if total < 1:
        raise ValueError(
            f"nfe_budget={nfe_budget} pays for no candidate ({per} evaluations each + {final} for the final "
            f"rollout); pass nfe_budget >= {per + final}."
        )
    sizes = [population] * (total // population) + ([total % population] if total % population else [])
    return sizes[:generations] if generations else sizes


class _Scorer:
    """Scores noises [R, *S] of P prompts (rows grouped by prompt) -> (rewards [R], finals or None)."""

    def __init__(self, model: Any, rew: LatentReward, setup: Any, step: Any, levels: Tensor, k: int | None, gen: Any):
        self.model, self.rew, self.setup, self.step, self.levels, self.k, self.gen = (
            model,
            rew,
            setup,
            step,
            levels,
            k,
            gen,
        )

    def cond(self, n: int) -> Any:
        return self.setup.cond.repeat(n)  # P rows -> P * n rows, prompt-major

    def __call__(self, x: Tensor, n: int) -> tuple[Tensor, Tensor | None]:
        cond, s = self.cond(n), self.setup.sigmas
        with torch.no_grad():
            if self.k is None:
                final = rollout(self.model, cond, x, s, self.step, self.levels, generator=self.gen).final
                return self.rew(final, cond.prompts), final
            x0, _ = complete(self.model, cond, x, s, 0, num_steps=self.k)
        return self.rew(x0, cond.prompts), None


def noise_search(
    model: Any,
    prompts: Any,
    reward: Any,
    *,
    mode: str = "evolution",
    population: int = 4,
    generations: int | None = None,
    elites: int | None = None,
    mutation: float = 0.5,
    verifier_steps: int | None = None,
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
    callback: Callable[[StepContext], None] | None = None,
) -> SteerResult:
    """Search the initial noise of each prompt (see the module doc); ``population`` candidates per
    generation (random search: per draw), ``generations`` (default: 1, or as many as ``nfe_budget``
    allows), ``elites`` parents (default population / 2). Returns the best sample per prompt."""
    _check(mode, population, elites, mutation, verifier_steps)
    if callback is not None:
        raise ValueError("noise_search takes no per-step callback (its candidates are whole rollouts); drop it.")
    rew = LatentReward(reward, model)
    enc = dict(num_steps=num_steps, sigmas=sigmas, guidance=cfg, negative_prompts=negative_prompts)
    setup = prepare(model, prompts, 1, height=height, width=width, cond=cond, draw_noise=False, **enc)
    t, p = setup.sigmas.numel() - 1, len(setup.prompts)
    k = None if verifier_steps is None or verifier_steps >= t else verifier_steps
    levels = noise_levels(noise_level, t, "noise search", noise_steps)
    per = t if k is None else k  # evaluations per candidate
    sizes = _plan(population, generations, nfe_budget, per, 0 if k is None else t, t)
    score = _Scorer(model, rew, setup, step, levels, k, generator)
    nfe0 = model.nfe
    parents = elites or max(1, population // 2)
    noises, rewards, finals = _evolve(model, setup, score, sizes, mode, parents, mutation, generator)
    rows, best = torch.arange(p), rewards.argmax(-1)
    chosen = noises[rows, best]
    if k is None:
        latents, final_r = finals[rows, best], rewards[rows, best]
    else:  # the best noise of each prompt, rolled out once with the sampler
        with torch.no_grad():
            latents = rollout(model, setup.cond, chosen, setup.sigmas, step, levels, generator=generator).final
        final_r = rew(latents, setup.prompts)
    info = {"mode": mode, "generations": len(sizes), "candidates": int(rewards.shape[1]), "verifier_steps": k}
    return SteerResult(
        latents=latents, rewards=final_r, nfe=model.nfe - nfe0, method=f"noise_{mode}", reward_calls=rew.calls,
        candidate_rewards=rewards, info=info | {"noises": chosen},
    )  # fmt: skip


def _evolve(model: Any, setup: Any, score: _Scorer, sizes: list[int], mode: str, elites: int, a: float, gen: Any):
    """Run the generations -> (noises [P, M, *S], rewards [P, M], final samples [P, M, *S] or None)."""
    p, xs, rs, fs = len(setup.prompts), [], [], []
    for g, n in enumerate(sizes):
        fresh = model.initial_noise(p * n, setup.height, setup.width, gen).float()
        shape = fresh.shape[1:]
        if g == 0 or mode == "random":
            x = fresh
        else:  # mutate the elites found so far, round robin
            pool_x, pool_r = torch.cat(xs, 1), torch.cat(rs, 1)
            top = pool_r.topk(min(elites, pool_r.shape[1]), dim=-1).indices  # [P, E]
            pick = top[:, torch.arange(n) % top.shape[1]]  # [P, n]
            parents = pool_x[torch.arange(p)[:, None], pick]  # [P, n, *S]
            x = mutate(parents.reshape(p * n, *shape), fresh, a)
        r, f = score(x, n)
        xs.append(x.reshape(p, n, *shape))
        rs.append(r.reshape(p, n))
        fs.append(None if f is None else f.reshape(p, n, *f.shape[1:]))
    finals = None if fs[0] is None else torch.cat(fs, 1)
    return torch.cat(xs, 1), torch.cat(rs, 1), finals
