"""Reward-gradient-guided SDE and dual-reward credit: Euphonium (arXiv 2602.04928; code
zerzerzerz/Euphonium, ``grpo_sampling/flux_step.py``, ``sampling.py``).

Guided rollouts (``RewardGuidance``, ``guided_rollout``): at every guided step the mean of the SDE
kernel gets ``kappa * |dt| * grad_x R(x_j)`` added (kappa is ``reward_grad_scale``; ``scale_by_dt``,
on in the release), where R is a differentiable *process* reward of the current noisy state:
``process_reward(x [B, *S], ctx) -> [B]`` with ``ctx`` the rollout's ``StepContext`` (sigma, v,
cond). ``x0_process_reward`` turns an image reward into one by scoring ``decode(x - sigma * v)``
with v held fixed (no model Jacobian). kappa = eta^2 / (2 beta) (``kl_optimal_kappa``) is the
KL-optimal tilt for the Dance-SDE with diffusion eta: the score gains grad R / beta and the mean
carries (eta^2 / 2) |dt| score. The transition is sampled from the guided kernel but its log-prob is
recorded under the *unguided* kernel (``USE_REWARD_GUIDED_MEAN_FOR_LOGPROB=false`` in the release),
so training with ``log_prob_at`` (no drift) is on-policy for the policy's own kernel: the guidance
is distilled into it. With kappa = 0 the drift is exactly zero and the rollout is the unguided
Flow-GRPO (``flow_sde``) or DanceGRPO (``dance_sde``) rollout bit for bit.

Dual-reward credit: outcome advantages (each outcome reward z-scored in its group, weighted sum,
broadcast over the trained steps) and process advantages (the process score recorded at each guided
step z-scored per step within the group; unguided steps record 0 and get advantage 0), trained as
two clipped terms ``c_outcome * L(A_out) + c_process * L(A_proc)`` (``train.losses.dual_reward_loss``). The CREDIT
entry ``euphonium`` returns the single advantage ``c_outcome A_out + c_process A_proc``, which gives the
same loss while no ratio is clipped (on-policy), not in general.

Departures: the release normalises the gradient by the norm of the whole batch tensor; here
``normalize=True`` normalises per sample. Guidance is applied on SDE steps only (noise level > 0)
within ``steps``. The process score of step j is R at the step's start state x_j, as the code records.
SPSA gradients and the optional velocity KL are not reproduced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..ranges import ranged
from ..sampling.rollout import StepContext, as_noise_levels, rollout
from ..sampling.sde import get_step, ode
from ..types import Advantages, Cond, Rollout
from .dense import as_step_mask, per_step_advantages
from .group import normalize


def check_process_reward(reward, differentiable: bool | None = None) -> None:
    """One clear error at config time when the guided SDE cannot take grad R."""
    if not callable(reward):
        raise ValueError(f"process reward {reward!r} is not callable; pass f(x, ctx) -> [B] or a Reward.")
    declared = getattr(reward, "differentiable", None)
    name = getattr(reward, "name", getattr(reward, "__name__", type(reward).__name__))
    if declared is None and differentiable is None:
        raise ValueError(
            f"process reward {name!r} does not say whether it is differentiable; set its "
            f"`differentiable` attribute or pass differentiable=True if grad flows through it."
        )
    if declared is False or (declared is None and not differentiable):
        raise ValueError(
            f"process reward {name!r} is not differentiable, so the reward-gradient-guided SDE "
            f"cannot use it; choose a differentiable reward or turn guidance off."
        )


def kl_optimal_kappa(noise_level: float, beta: float) -> float:
    """Euphonium's KL-optimal scale eta^2 / (2 beta) for the Dance-SDE with diffusion eta."""
    if beta <= 0:
        raise ValueError(f"KL coefficient beta={beta} must be > 0.")
    return noise_level**2 / (2 * beta)


def x0_process_reward(
    reward,
    decode: Callable[[Tensor], Tensor] | None = None,
    prompts: Sequence[str] | None = None,
    differentiable: bool | None = None,
) -> Callable:
    """Image reward -> process reward f(x, ctx) = reward(decode(x - sigma v), prompts), v fixed."""
    check_process_reward(reward, differentiable)

    def process_reward(x: Tensor, ctx: StepContext) -> Tensor:
        images = (decode or (lambda z: z))(x - ctx.sigma * ctx.v.detach())
        return reward(images, list(prompts) if prompts is not None else ctx.cond.prompts)

    process_reward.differentiable = True
    process_reward.name = f"x0[{getattr(reward, 'name', 'reward')}]"
    return process_reward


class RewardGuidance:
    """Hooks for ``rollout``: ``guidance`` adds the drift, ``on_step`` records the unguided log-prob
    and the process score of every step. ``noise_levels`` [T] is the table given to the rollout."""

    def __init__(
        self,
        process_reward: Callable,
        reward_grad_scale: float,
        *,
        step: str | Callable = "dance_sde",
        noise_levels: Tensor,
        steps: Sequence[int] | None = None,
        scale_by_dt: bool = True,
        normalize: bool = False,
        differentiable: bool | None = None,
    ):
        check_process_reward(process_reward, differentiable)
        self.process_reward, self.reward_grad_scale = process_reward, float(reward_grad_scale)
        self.step_fn, self.levels = get_step(step), torch.as_tensor(noise_levels, dtype=torch.float32)
        t = self.levels.numel()
        self.guided = (self.levels > 0) & (
            torch.ones(t, dtype=torch.bool)
            if steps is None
            else torch.isin(torch.arange(t), torch.as_tensor(list(steps), dtype=torch.long))
        )
        self.scale_by_dt, self.normalize = scale_by_dt, normalize
        self.log_probs: dict[int, Tensor] = {}
        self.scores: dict[int, Tensor] = {}

    def guidance(self, ctx: StepContext) -> Tensor | None:
        if not bool(self.guided[ctx.j]):
            return None
        with torch.enable_grad():
            x = ctx.x.detach().float().requires_grad_(True)
            r = self.process_reward(x, ctx)
            if not (torch.is_tensor(r) and r.requires_grad):
                raise ValueError(
                    "the process reward returned no gradient w.r.t. the state; it is not "
                    "differentiable in practice (detached or under no_grad)."
                )
            (grad,) = torch.autograd.grad(r.float().sum(), x)
        self.scores[ctx.j] = r.detach().float().reshape(-1)
        if self.normalize:
            grad = grad / (grad.flatten(1).norm(dim=1).reshape(-1, *[1] * (grad.ndim - 1)) + 1e-8)
        scale = self.reward_grad_scale * (float(ctx.sigma - ctx.sigma_next) if self.scale_by_dt else 1.0)
        return scale * grad

    def on_step(self, ctx: StepContext) -> None:
        level = float(self.levels[ctx.j])
        fn = self.step_fn if level > 0 else ode
        self.log_probs[ctx.j] = fn(ctx.x, ctx.v, ctx.sigma, ctx.sigma_next, level, x_next=ctx.out.x_next).log_prob
        return None

    def table(self, values: dict[int, Tensor], batch: int) -> Tensor:
        """{step: [B]} -> [B, T] (0 where nothing was recorded)."""
        out = torch.zeros(batch, self.levels.numel())
        for j, val in values.items():
            out[:, j] = val.float().cpu()
        return out


@dataclass
class GuidedRollout:
    rollout: Rollout  # log_probs under the unguided kernel (default) or the guided one
    process: Tensor  # [B, T] fp32 process reward at the start of each guided step, 0 elsewhere
    guided: Tensor  # [T] bool steps that received guidance


def guided_rollout(
    model,
    cond: Cond,
    x: Tensor,
    sigmas: Tensor,
    process_reward: Callable,
    reward_grad_scale: float,
    step: str | Callable = "dance_sde",
    noise_levels: Tensor | float | None = 0.25,
    *,
    generator=None,
    steps: Sequence[int] | None = None,
    scale_by_dt: bool = True,
    normalize: bool = False,
    logprob: str = "unguided",
    differentiable: bool | None = None,
) -> GuidedRollout:
    """Rollout from x [B, *S] with the reward-gradient-guided kernel (see module docstring)."""
    if logprob not in ("unguided", "guided"):
        raise ValueError(f"logprob={logprob!r} must be 'unguided' (Euphonium release) or 'guided'.")
    levels = as_noise_levels(noise_levels, torch.as_tensor(sigmas).numel() - 1)
    hook = RewardGuidance(
        process_reward,
        reward_grad_scale,
        step=step,
        noise_levels=levels,
        steps=steps,
        scale_by_dt=scale_by_dt,
        normalize=normalize,
        differentiable=differentiable,
    )
    r = rollout(
        model,
        cond,
        x,
        sigmas,
        step,
        levels,
        generator=generator,
        guidance=hook.guidance,
        on_step=hook.on_step if logprob == "unguided" else None,
    )
    if logprob == "unguided":
        r.log_probs = hook.table(hook.log_probs, x.shape[0])
    return GuidedRollout(rollout=r, process=hook.table(hook.scores, x.shape[0]), guided=hook.guided.clone())


# --- dual-reward credit ----------------------------------------------------------------------------
def dual_reward_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    step_mask: Tensor,
    *,
    process: Tensor,
    outcome_weights: Sequence[float] | None = None,
    scale: str = "group",
    eps: float = 1e-8,
    unbiased: bool = False,
    filter_zero_std: bool = True,
) -> dict[str, Advantages]:
    """rewards [B] or [B, R] outcome rewards; process [B, T] recorded process scores ->
    {"outcome": Advantages [B, T], "process": Advantages [B, T]}."""
    r = torch.as_tensor(rewards, dtype=torch.float32)
    r = r[:, None] if r.ndim == 1 else r
    b, t = r.shape[0], torch.as_tensor(process).shape[-1]
    mask = as_step_mask(step_mask, b, t)
    w = torch.ones(r.shape[1]) if outcome_weights is None else torch.as_tensor(outcome_weights, dtype=torch.float32)
    if w.shape != (r.shape[1],):
        raise ValueError(f"outcome_weights has {w.numel()} values for {r.shape[1]} outcome rewards.")
    adv, std = normalize(r, group_ids, scale, eps, unbiased)
    total = (adv * w).sum(1)
    keep = (std > 0).any(1) if filter_zero_std else torch.ones(b, dtype=torch.bool)
    out_mask = mask & keep[:, None]
    outcome = Advantages(
        advantages=torch.where(out_mask, total[:, None].expand(b, t), torch.zeros(b, t)),
        mask=out_mask,
        stats={"zero_std_frac": float((~keep).float().mean())},
    )
    proc = per_step_advantages(
        torch.as_tensor(process, dtype=torch.float32),
        group_ids,
        mask,
        scale=scale,
        eps=eps,
        unbiased=unbiased,
        filter_zero_std=filter_zero_std,
    )
    return {"outcome": outcome, "process": proc}


def euphonium(
    rewards: Tensor,
    group_ids: Tensor,
    step_mask: Tensor,
    *,
    process: Tensor,
    c_outcome: float = 1.0,
    c_process: float = 1.0,
    outcome_weights: Sequence[float] | None = None,
    scale: str = "group",
    eps: float = 1e-8,
    unbiased: bool = False,
    filter_zero_std: bool = True,
) -> Advantages:
    """Single-advantage form c_outcome A_out + c_process A_proc (mask: either term trained)."""
    d = dual_reward_advantages(
        rewards,
        group_ids,
        step_mask,
        process=process,
        outcome_weights=outcome_weights,
        scale=scale,
        eps=eps,
        unbiased=unbiased,
        filter_zero_std=filter_zero_std,
    )
    o, p = d["outcome"], d["process"]
    adv = c_outcome * o.advantages + c_process * p.advantages
    return Advantages(
        advantages=adv,
        mask=o.mask | p.mask,
        stats={
            "outcome_abs_mean": float(o.advantages.abs().mean()),
            "process_abs_mean": float(p.advantages.abs().mean()),
        },
    )


euphonium.needs = ("process",)


@dataclass
class EuphoniumOptions:
    process_reward: str = ""  # differentiable reward in rewards.REWARDS scored on x0_pred; '' = the training reward
    process_options: dict[str, Any] = field(default_factory=dict)  # kwargs of its factory (e.g. {"output": "soft"})
    reward_grad_scale: float = ranged(0.0, "[0, inf)")  # kappa: reward-gradient scale of the guided SDE (0 = unguided)
    # steps that get the gradient ([] = every SDE step)
    reward_grad_steps: list[int] = ranged([], "[0, inf)")
    c_outcome: float = ranged(1.0, "free")  # weight of the outcome (final-reward) advantage
    c_process: float = ranged(1.0, "free")  # weight of the per-step process advantage

    def kwargs(self) -> dict:
        return {"c_outcome": self.c_outcome, "c_process": self.c_process}


def check_euphonium(o: EuphoniumOptions, cfg) -> None:
    t = cfg.sample.num_steps
    if o.reward_grad_scale < 0 or any(not 0 <= int(j) < t for j in o.reward_grad_steps):
        raise ValueError(
            f"credit.options.reward_grad_scale={o.reward_grad_scale} must be >= 0 and "
            f"credit.options.reward_grad_steps={o.reward_grad_steps} step indices in [0, {t - 1}]."
        )
