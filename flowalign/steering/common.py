"""Pieces shared by every steering / search method: the reward seen as a function of latents, the
result record, the boundary checks and the batch set-up (``prepare``).

* ``LatentReward`` wraps a reward name (``rewards.load_reward``), a ``Reward`` module or any callable
  ``(images, prompts) -> [B]`` (a one-argument callable ``(images) -> [B]`` is accepted too, e.g. a
  plain function of analytic latents, whose decode is the identity) and scores *latents*:
  decode -> reward, in chunks, counting the images scored.
The ``FlowModel`` proxy that serves velocities a look-ahead already computed is
``velocity_cache.VelocityCache``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..sampling.rollout import as_noise_levels
from ..sampling.schedule import parse_steps, steps_noise_table
from ..sampling.sde import step_name
from ..types import Cond


# --- rewards of latents --------------------------------------------------------------------------
def _positional_arity(fn: Callable) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 2
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return 2
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


class LatentReward:
    """r(decode(x), prompts) for latents x [B, *S] -> fp32 [B]; ``calls`` counts images scored."""

    def __init__(self, reward: Any, model: Any, max_batch: int = 64):
        if isinstance(reward, str):
            from ..rewards import load_reward

            reward = load_reward(reward)
        if not callable(reward):
            raise ValueError(
                f"reward must be a reward name, a flowalign Reward or a callable "
                f"(images, prompts) -> [B], got {type(reward).__name__}."
            )
        self.reward, self.model, self.max_batch = reward, model, max_batch
        self.name = getattr(reward, "name", getattr(reward, "__name__", type(reward).__name__))
        self.differentiable = getattr(reward, "differentiable", None)  # None = unknown (plain callable)
        fn = reward.forward if isinstance(reward, torch.nn.Module) else reward
        self._one_arg = _positional_arity(fn) == 1
        self.calls = 0

    def images(self, x: Tensor) -> Tensor:
        return self.model.decode(x)

    def score_images(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        out = self.reward(images) if self._one_arg else self.reward(images, list(prompts))
        return torch.as_tensor(out).float().reshape(-1)

    def __call__(self, x: Tensor, prompts: Sequence[str], grad: bool = False) -> Tensor:
        prompts = list(prompts)
        if len(prompts) != x.shape[0]:
            raise ValueError(f"{len(prompts)} prompts for {x.shape[0]} latents.")
        self.calls += x.shape[0]
        if grad:  # one piece, graph kept
            return self.score_images(self.images(x), prompts)
        outs = []
        with torch.no_grad():
            for i in range(0, x.shape[0], self.max_batch):
                sl = slice(i, i + self.max_batch)
                outs.append(self.score_images(self.images(x[sl]), prompts[sl]).cpu())
        return torch.cat(outs)


# --- velocity cache --------------------------------------------------------------------------------
# --- result record and checks --------------------------------------------------------------------
@dataclass
class SteerResult:
    """What every steering / search method returns, one chosen sample per prompt (group)."""

    latents: Tensor  # [P, *S] fp32 chosen final latents
    rewards: Tensor  # [P] fp32 terminal reward of the chosen samples
    nfe: int  # velocity evaluations spent, all prompts together (CFG counted once)
    method: str
    reward_calls: int = 0  # images decoded and scored (intermediate look-aheads included)
    candidates: Tensor | None = None  # [P, K, *S] fp32 final particles / beams / leaves
    candidate_rewards: Tensor | None = None  # [P, K] fp32 terminal rewards of the candidates
    log_weights: Tensor | None = None  # [P, K] float64 final importance log-weights (FK, DTS)
    info: dict[str, Any] = field(default_factory=dict)  # method-specific diagnostics


def check_particles(n: Any, what: str = "num_particles") -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{what}={n!r} must be an int >= 1; use e.g. {what}=4.")
    return n


def check_lam(lam: Any) -> float:
    if not isinstance(lam, (int, float)) or isinstance(lam, bool) or not lam >= 0 or lam == float("inf"):
        raise ValueError(
            f"lam={lam!r} must be a finite float >= 0 (the inverse temperature of the "
            f"tilt p(x) exp(lam r(x))); use lam=0 for the base model or e.g. lam=10."
        )
    return float(lam)


def noise_levels(noise_level: Any, num_steps: int, method: str, noise_steps: Any = None) -> Tensor:
    """The [T] noise table of ``noise_level`` on ``noise_steps`` (the 0-based steps that get noise, e.g.
    ``"6-15"``; None = every step but the last) and ODE steps elsewhere."""
    if noise_steps is None:
        return as_noise_levels(noise_level, num_steps)
    if noise_level is None:
        raise ValueError(
            f"{method}: noise_steps={noise_steps!r} needs a noise level; pass e.g. step='flow_sde', noise_level=0.7."
        )
    return steps_noise_table(num_steps, noise_level, noise_steps)


def stochastic_levels(step: Any, noise_level: Any, num_steps: int, method: str, noise_steps: Any = None) -> Tensor:
    """``noise_levels``, with one clear error when the sampler is deterministic (a resampled or
    branched copy of a particle would then stay identical to its source forever)."""
    levels = noise_levels(noise_level, num_steps, method, noise_steps)
    if step_name(step) == "ode" or not bool((levels > 0).any()):
        raise ValueError(
            f"{method} needs a stochastic sampler, but step={step_name(step)!r} with "
            f"noise_level={noise_level!r} is deterministic (copies of a particle would "
            f"stay identical); pass e.g. step='flow_sde', noise_level=0.7."
        )
    return levels


def check_budget(nfe_budget: Any, one_rollout: int, method: str) -> int | None:
    if nfe_budget is None:
        return None
    if isinstance(nfe_budget, bool) or not isinstance(nfe_budget, int) or nfe_budget < one_rollout:
        raise ValueError(
            f"nfe_budget={nfe_budget!r} is smaller than one rollout ({one_rollout} model "
            f"evaluations per prompt for this grid) so {method} cannot return a sample; "
            f"pass nfe_budget >= {one_rollout}."
        )
    return nfe_budget


def check_steps_in_grid(steps: Sequence[int] | str, num_steps: int, what: str = "resample_steps") -> list[int]:
    """0-based steps (ints, or a string such as '7-14', '4,8,12' or 'all') checked against a T-step grid."""
    if isinstance(steps, str):
        parsed = parse_steps(steps, what)
        steps = list(range(num_steps)) if parsed is None else parsed
    steps = list(steps)
    bad = [j for j in steps if isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < num_steps]
    if bad:
        raise ValueError(
            f"{what}={steps} has {bad} outside the schedule: steps are 0-based indices "
            f"in [0, {num_steps - 1}] for a {num_steps}-step grid."
        )
    return sorted(set(steps))


def default_schedule(num_steps: int, start: float = 0.2, every: float = 0.2, end: float = 0.8) -> list[int]:
    """FK steering's schedule scaled to the grid: steps start, start+every, ..., end (fractions of
    T; 20, 40, 60, 80 of 100) plus the last step (the final correction)."""
    first = max(1, round(start * num_steps))
    stride = max(1, round(every * num_steps))
    last = min(num_steps - 2, round(end * num_steps))
    return sorted(set(range(first, last + 1, stride)) | {num_steps - 1}) if num_steps > 1 else [0]


def expected_best_of_n(pool: Tensor) -> Tensor:
    """Candidate rewards [P, M] -> [P, M] whose column n-1 is the unbiased estimate of E[max of n
    draws] (n draws without replacement from the pool, averaged over all C(M, n) subsets): with the
    rewards sorted r_(1) <= ... <= r_(M), sum_i r_(i) C(i-1, n-1) / C(M, n) (the pass@k estimator)."""
    import math

    m = pool.shape[1]
    w = torch.tensor(
        [[math.comb(i - 1, n - 1) / math.comb(m, n) for i in range(1, m + 1)] for n in range(1, m + 1)],
        dtype=torch.float64,
    )  # [n, i]; each row sums to 1
    return pool.double().sort(-1).values @ w.T


def group_argmax(values: Tensor, k: int) -> Tensor:
    """Flat rows [P * K] -> within-group argmax [P]."""
    return values.reshape(-1, k).argmax(-1)


@dataclass
class Setup:
    """Everything a method needs before its first step, for P prompts x K rows each."""

    cond: Cond  # [P * K] rows, groups contiguous
    x: Tensor  # [P * K, *S] initial noise at sigmas[0] (empty when draw_noise=False)
    sigmas: Tensor  # [T+1]
    prompts: list[str]  # [P]
    height: int
    width: int


def prepare(
    model: Any,
    prompts: Any,
    k: int,
    *,
    num_steps: int | None = None,
    sigmas: Any = None,
    guidance: float | None = None,
    negative_prompts: Any = None,
    height: int | None = None,
    width: int | None = None,
    generator: Any = None,
    cond: Cond | None = None,
    x: Tensor | None = None,
    draw_noise: bool = True,
    images: Any = None,
) -> Setup:
    """Encode P prompts once (or take ``cond`` with P rows), repeat each K times, draw the P * K
    initial latents as the matching diffusers pipeline would (or take ``x``), build the grid.
    ``images``: the source images of an editing model ([P, 3, H, W] in [0, 1]), passed to ``encode``;
    ``steer(..., cond=encode_prompts(model, prompts, cfg, images=...))`` carries them through any method."""
    from ..models.base import check_prompts

    if cond is None:
        prompts = check_prompts(prompts)
        cond = encode_prompts(model, prompts, guidance, negative_prompts, images)
    else:
        prompts = list(cond.prompts) if cond.prompts is not None else check_prompts(prompts)
    p = cond.batch_size
    height = height or int(getattr(model, "default_size", 0) or 0)
    width = width or height
    if x is None:
        x = model.initial_noise(p * k, height, width, generator) if draw_noise else torch.zeros(0)
    elif x.shape[0] != p * k:
        raise ValueError(f"x has {x.shape[0]} rows; expected prompts x particles = {p} x {k} = {p * k}.")
    if sigmas is None:
        steps = num_steps if num_steps is not None else model.default_steps
        sigmas = model.sigmas(steps, height, width)
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).cpu()
    return Setup(cond=cond.repeat(k), x=x.float(), sigmas=sigmas, prompts=list(prompts), height=height, width=width)


def encode_prompts(model: Any, prompts: list[str], guidance: Any, negative_prompts: Any = None, images: Any = None):
    """``model.encode`` with the negatives and the source images only where given (text-to-image
    adapters take no ``images=``)."""
    kw = {} if images is None else {"images": images}
    if negative_prompts is not None:
        return model.encode(prompts, guidance, negative_prompts, **kw)
    return model.encode(prompts, guidance, **kw)


class WithSources:
    """A reward ``(images, prompts, **metadata)`` seen as ``(images, prompts)`` that adds each row's
    source image (looked up by its prompt) as the metadata column ``source_images`` [B, 3, H, W]."""

    def __init__(self, reward: Any, prompts: list[str], sources: Tensor):
        by_prompt: dict[str, Tensor] = {}
        for p, src in zip(prompts, sources):
            if p in by_prompt and not torch.equal(by_prompt[p], src):
                raise ValueError(f"prompt {p!r} is given twice with different source images; steer them separately.")
            by_prompt[p] = src
        self.reward, self.sources = reward, by_prompt
        self.name = getattr(reward, "name", getattr(reward, "__name__", type(reward).__name__))
        self.differentiable = getattr(reward, "differentiable", None)

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        src = torch.stack([self.sources[p] for p in prompts]).to(images.device)
        return self.reward(images, list(prompts), source_images=src)


def side_generator(generator: Any, salt: int) -> torch.Generator:
    """A generator for a method's own choices (resampling, selection) that never consumes draws
    from the sampling ``generator``: seeded from its initial seed + ``salt``."""
    g = generator[0] if isinstance(generator, (list, tuple)) else generator
    seed = g.initial_seed() if isinstance(g, torch.Generator) else int(torch.randint(2**62, (1,)))
    return torch.Generator().manual_seed((seed + salt) % (2**63))
