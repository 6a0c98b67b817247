"""G^2RPO / Granular-GRPO (arXiv 2510.01982, CVPR 2026; code bcmi/Granular-GRPO, ``train_g2rpo_hps.py``).

Singular stochastic sampling (``singular_sde_rollout``). One initial noise per prompt; a deterministic
ODE *anchor* trajectory is computed once; at the optimised step j the shared anchor state x_j takes
ONE SDE step (one velocity evaluation, broadcast to the k branches, which differ only in noise), and
each branch x_{j+1}^i is ODE-completed. All within-group reward variance comes from the noise of
step j. For every granularity lambda in ``strides`` the branch is completed on a strided sub-grid and
scored: R_{j,lambda}^i.

Multi-granularity advantage integration (``g2rpo``): z-score per (prompt group, step j, lambda) and
sum over lambda (an unweighted sum, not a mean); several reward models are normalised separately
and summed too (optionally weighted, ``reward_weights``). With one stride this is "G^2RPO w/o MGAI".

Completion grids (``completion``): ``"paper"`` (default) completes x_{j+1} on sigma indices
j+1, j+1+lambda, j+1+2 lambda, ... and, when that skips sigma = 0, takes the x0 prediction at the last
strided point (= one Euler step to 0) — ``rollout.completion_grid`` exactly. ``"reference"`` is the
released code: prefix sigma[:j+2] then sigma[j+2::lambda] (so the first ODE step after the SDE step is
never strided) and the image is the x0 prediction at the *second-to-last* grid point when the last
point is not 0 (the code evaluates the last step and discards it; here that wasted NFE is skipped).
Strides: paper Lambda = {1, 2, 3} (``PAPER_STRIDES``, default) vs code {1, 2} (``CODE_STRIDES``).
Departures: std epsilon / ddof come from the caller (code: unbiased std + 1e-8); the code's one
optimiser step per j is the trainer's business; stride 1 is required because the branch's stride-1
path is the trajectory the trainer stores (its final image is the usual sample).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..ranges import ranged
from ..sampling.rollout import rollout
from ..sampling.sde import get_step, ode, step_name
from ..types import Advantages, Cond, Rollout, StepOut
from .dense import as_step_mask
from .group import normalize

PAPER_STRIDES = (1, 2, 3)
CODE_STRIDES = (1, 2)
COMPLETIONS = ("paper", "reference")


def check_strides(strides: Sequence[int], num_steps: int | None = None) -> tuple[int, ...]:
    strides = tuple(strides)
    if not strides or any(not isinstance(s, int) or s < 1 for s in strides) or len(set(strides)) != len(strides):
        raise ValueError(f"strides={list(strides)} must be distinct ints >= 1, e.g. {list(PAPER_STRIDES)}.")
    if 1 not in strides:
        raise ValueError(f"strides={list(strides)} must include 1 (the trained trajectory's own completion).")
    if num_steps is not None and max(strides) > num_steps:
        raise ValueError(f"stride {max(strides)} is larger than the {num_steps}-step grid.")
    return strides


def granular_grid(num_steps: int, start: int, stride: int, completion: str = "paper") -> list[int]:
    """Indices into sigmas [T+1] of the ODE completion of a state at index ``start``; ends at T."""
    if completion not in COMPLETIONS:
        raise ValueError(f"completion={completion!r} must be one of {COMPLETIONS}.")
    if start >= num_steps:
        return [num_steps]
    if completion == "paper":
        idx = list(range(start, num_steps + 1, stride))
    else:
        idx = [start] + list(range(start + 1, num_steps + 1, stride))
        if idx[-1] != num_steps:
            idx = idx[:-1]  # the code's x0 prediction at the second-to-last point
    return idx if idx[-1] == num_steps else idx + [num_steps]


@dataclass
class SingularRollout:
    """Branches of one optimised step j; rows are ordered prompt-major: row b * k + i."""

    rollout: Rollout  # [B*k] anchor prefix, x_{j+1}, stride-1 ODE path; only step j stochastic
    finals: Tensor  # [J, B*k, *S] fp32 clean latents, one per stride (order of ``strides``)
    strides: tuple[int, ...]
    group_ids: Tensor  # [B*k] long prompt row of each branch
    cond: Cond  # [B*k] conditioning rows of the branches
    anchor: Tensor  # [B, j+1, *S] fp32 ODE anchor states 0..j (reusable for later j)
    j: int
    nfe: int  # velocity evaluations of this call (anchor only if computed here)


def _ode_on(model, cond: Cond, x: Tensor, sigmas: Tensor, idx: list[int]) -> Tensor:
    for a, b in zip(idx[:-1], idx[1:]):
        x = ode(x, model.velocity(x, sigmas[a], cond), sigmas[a], sigmas[b]).x_next
    return x


@torch.no_grad()
def singular_sde_rollout(
    model,
    cond: Cond,
    x: Tensor,
    sigmas: Tensor,
    j: int,
    k: int,
    step: str | Callable = "flow_sde",
    noise_level: float = 0.7,
    generator=None,
    strides: Sequence[int] = PAPER_STRIDES,
    *,
    anchor: Tensor | None = None,
    completion: str = "paper",
) -> SingularRollout:
    """x [B, *S] initial noise (one per prompt); cond [B]; sigmas [T+1]; j the SDE step; k branches.
    ``anchor`` [B, >= j+1, *S] reuses ODE anchor states of an earlier call."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).cpu()
    t = sigmas.numel() - 1
    strides = check_strides(strides, t)
    if not isinstance(j, int) or not 0 <= j < t:
        raise ValueError(f"j={j} must be a step index in [0, {t - 1}].")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k} branches must be an int >= 1.")
    if noise_level <= 0:
        raise ValueError(f"noise_level={noise_level} must be > 0: the SDE step is the only source of variance.")
    nfe0, b = model.nfe, x.shape[0]
    if anchor is None:
        anchor = x.float()[:, None] if j == 0 else rollout(model, cond, x, sigmas[: j + 1], "ode").latents
    anchor = anchor[:, : j + 1].float()
    if anchor.shape[1] != j + 1:
        raise ValueError(f"anchor holds {anchor.shape[1]} states; step j={j} needs {j + 1}.")
    xj = anchor[:, j]
    v = model.velocity(xj, sigmas[j], cond)
    rep = torch.arange(b).repeat_interleave(k)
    out = get_step(step)(xj[rep], v[rep], sigmas[j], sigmas[j + 1], noise_level, generator=generator)
    crep = cond.select(rep)
    path = rollout(model, crep, out.x_next, sigmas[j + 1 :], "ode").latents if j + 1 < t else out.x_next[:, None]
    finals = []
    for s in strides:
        idx = granular_grid(t, j + 1, s, completion)
        full = idx == list(range(j + 1, t + 1))  # the stride-1 path already holds this completion
        finals.append(path[:, -1] if full else _ode_on(model, crep, out.x_next, sigmas, idx))
    latents = torch.cat([anchor[rep], path], 1)
    log_probs = torch.zeros(b * k, t)
    log_probs[:, j] = out.log_prob
    levels = torch.zeros(t)
    levels[j] = noise_level
    nfe = model.nfe - nfe0
    r = Rollout(latents=latents, log_probs=log_probs, sigmas=sigmas, noise_levels=levels, step=step_name(step), nfe=nfe)
    return SingularRollout(
        rollout=r, finals=torch.stack(finals), strides=strides, group_ids=rep, cond=crep, anchor=anchor, j=j, nfe=nfe
    )


def shared_log_prob(model, cond: Cond, sr: SingularRollout, step: str | Callable | None = None) -> StepOut:
    """Training-time recomputation of step j with the velocity evaluated once per prompt (``cond`` [B],
    the per-prompt rows) and broadcast to its k branches, as G^2RPO trains; grads flow if enabled."""
    r, j = sr.rollout, sr.j
    k = r.latents.shape[0] // cond.batch_size
    v = model.velocity(r.latents[::k, j], r.sigmas[j], cond)
    return get_step(step or r.step)(
        r.latents[:, j],
        v[sr.group_ids],
        r.sigmas[j],
        r.sigmas[j + 1],
        float(r.noise_levels[j]),
        x_next=r.latents[:, j + 1],
    )


def g2rpo(
    rewards: Tensor,
    group_ids: Tensor,
    step_mask: Tensor,
    *,
    granular: Tensor | None = None,
    reward_weights: Sequence[float] | None = None,
    scale: str = "group",
    eps: float = 1e-8,
    unbiased: bool = True,
    filter_zero_std: bool = True,
) -> Advantages:
    """G^2RPO advantages. rewards [B] (used when ``granular`` is None: one granularity); group_ids [B]
    prompt groups; step_mask [T] or [B, T] with exactly one trained step per row (its j);
    granular [B, J] or [B, J, R] rewards per stride (and per reward model) -> Advantages [B, T]."""
    b = group_ids.shape[0]
    vals = torch.as_tensor(rewards if granular is None else granular, dtype=torch.float32)
    vals = vals.reshape(b, 1, 1) if vals.ndim == 1 else vals
    vals = vals[..., None] if vals.ndim == 2 else vals
    if vals.ndim != 3 or vals.shape[0] != b:
        raise ValueError(f"granular rewards have shape {tuple(vals.shape)}; expected ({b}, J) or ({b}, J, R).")
    t = step_mask.shape[-1]
    mask = as_step_mask(step_mask, b, t)
    if bool((mask.sum(1) != 1).any()):
        raise ValueError("G^2RPO trains exactly one step per sample: every step_mask row needs one True.")
    j = mask.float().argmax(1)
    _, key = torch.unique(torch.stack([group_ids.long(), j.long()], 1), dim=0, return_inverse=True)
    w = torch.ones(vals.shape[2]) if reward_weights is None else torch.as_tensor(reward_weights, dtype=torch.float32)
    if w.shape != (vals.shape[2],):
        raise ValueError(f"reward_weights has {w.numel()} values for {vals.shape[2]} reward models.")
    flat = vals.reshape(b, -1)  # [B, J*R]
    adv, std = normalize(flat, key, scale, eps, unbiased)
    total = (adv.reshape(vals.shape) * w).sum((1, 2))  # sum over granularities, weighted over rewards
    keep = (std > 0).any(1) if filter_zero_std else torch.ones(b, dtype=torch.bool)
    mask = mask & keep[:, None]
    advantages = torch.where(mask, total[:, None].expand(b, t), torch.zeros(b, t))
    stats = {
        "zero_std_frac": float((~(std > 0).any(1)).float().mean()),
        "adv_abs_mean": float(total.abs().mean()),
        "granularities": float(vals.shape[1]),
    }
    return Advantages(advantages=advantages, mask=mask, stats=stats)


g2rpo.needs = ("granular",)


@dataclass
class G2RPOOptions:
    strides: list[int] = ranged(list(PAPER_STRIDES), "[1, inf)")  # completion granularities (code {1,2})
    completion: str = "paper"  # strided grid 'paper' | 'reference' (released code)

    def kwargs(self) -> dict:
        return {}


def check_g2rpo(o: G2RPOOptions, cfg) -> None:
    """Singular sampling: one SDE step per iteration from a shared initial noise; valid strides."""
    from ..sampling.windows import WINDOWS

    s, t = cfg.sample, cfg.sample.num_steps
    w = s.window
    if w.kind == "all" or WINDOWS[w.kind].trained(w.options, t) != 1 or not s.same_noise:
        raise ValueError(
            f"credit.kind=g2rpo samples singularly: one SDE step per iteration from a shared initial "
            f"noise; set sample.window.kind=random|fixed|progressive, sample.window.options.size=1 and "
            f"sample.same_noise=true (got window {w.kind!r}, same_noise={s.same_noise})."
        )
    lo, hi = WINDOWS[w.kind].span(w.options, t)
    steps = list(range(lo, hi))
    if any(not 0 <= j < t for j in steps) or not steps:
        raise ValueError(f"G^2RPO steps {steps} must be a non-empty list in [0, {t - 1}].")
    check_strides([int(v) for v in o.strides], t)
    if s.group_size < 2:
        raise ValueError(f"sample.group_size={s.group_size}: a group needs >= 2 branches for a z-score.")
    if o.completion not in COMPLETIONS:
        raise ValueError(f"credit.options.completion={o.completion!r}; choose one of {COMPLETIONS}.")
