"""AC-Flow (arXiv 2510.18072, "Fine-tuning Flow Matching Generative Models with Intermediate
Feedback"): actor-critic credit with a learned value of the intermediate states.

Critic. ``V(x_j, sigma_j, prompt)`` is a small MLP trained alongside the policy. It sees, per state:
the latent average-pooled to 2x2 per channel (``C * 4`` numbers; packed token latents ``[L, D]``:
the mean over tokens, ``D`` numbers), a sinusoidal embedding of ``sigma_j`` (sigma, sin and cos of
``k pi sigma`` for k = 1..4) and the pooled prompt embedding (the model's ``pooled`` conditioning,
or the mean of ``prompt_embeds`` over tokens); a LayerNorm, then 64 -> 64 -> 1 with SiLU.
The sampler's collector ``critic_states`` (``train/collect.py``) provides them per row, packed as
``[B, T+1, F + D + 1]`` (state features, prompt features, sigma; ``critic_states``).

Reward shaping. The critic regresses the *shaped* terminal reward, the group z-score
``r~_i = (r_i - mean_group) / (std_group + eps)`` (the same normalisation as GRPO), so values stay
in a few units whatever the reward model's scale: loss ``mean_{i, j < T} (V(x_ij) - r~_i)^2``
(every state of the rollout, every valid row), ``critic_steps`` Adam steps of ``critic_lr`` per
iteration with gradient norm clipped to 1.

Advantages (per step, TD-style with GAE): with ``V(x_T) := r~`` (the final state's value is its
shaped reward), ``delta_j = V(x_{j+1}) - V(x_j)`` is step j's intermediate feedback and

    A_j = sum_{k >= j} lambda^(k - j) delta_k        (lambda = ``gae_lambda``)

so ``lambda = 1`` gives the Monte-Carlo baseline ``r~ - V(x_j)`` and ``lambda = 0`` the one-step
TD error. Advantage clipping: ``A_j`` is clamped to ``[-adv_clip, adv_clip]``. Warm-up: for the
first ``warmup_iterations`` calls the critic is trained but the advantages are Flow-GRPO's
(``group.grpo``, unclipped), so an untrained critic never steers the actor. Advantages use the
critic *before* this iteration's update (its targets are this batch's rewards).

Wasserstein-2 regulariser: the paper's W2 term bounds W2^2 by the squared velocity difference to
the reference model, ``E ||v_theta - v_ref||^2`` per step. On flowalign's clipped-ratio objective
the KL to the adapter-off reference (``objective.options.beta``, ``losses.gaussian_kl``) is
``mean (mu_theta - mu_ref)^2 / (2 std^2)``, and the kernel means differ only through the velocity,
``mu_theta - mu_ref = c_j (v_theta - v_ref)``, so that KL *is* the W2 bound up to a positive
per-step factor. It is therefore not added a second time: the preset keeps the testbed's beta.

Departures: (1) the paper's critic weights a reward-weighted flow-matching loss (its "generalized
critic weighting"); here the critic's advantages feed Flow-GRPO's clipped-ratio objective
unchanged; (2) the critic architecture / inputs above are ours (the paper gives none we could
check); (3) the critic is rebuilt (and re-warmed) when a run resumes: its weights are not in the
checkpoint; (4) every rank trains an identical copy on the gathered batch (no critic all-reduce).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from ..ranges import ranged
from ..types import Advantages
from .group import grpo, normalize

SIGMA_FREQS = 4


def sigma_embedding(sigmas: Tensor) -> Tensor:
    """[..., ] sigma -> [..., 1 + 2 K]: sigma, sin(k pi sigma), cos(k pi sigma) for k = 1..K."""
    k = torch.arange(1, SIGMA_FREQS + 1, dtype=torch.float32) * math.pi
    s = sigmas.float()[..., None]
    return torch.cat([s, torch.sin(k * s), torch.cos(k * s)], -1)


def critic_states(latents: Tensor, prompt: Tensor, sigmas: Tensor) -> Tensor:
    """pooled states [B, T+1, F], pooled prompt [B, D], sigmas [T+1] -> the ``critic_states`` input
    [B, T+1, F + D + 1]: each state's features, the prompt's, and the state's sigma last."""
    b, n = latents.shape[:2]
    p = prompt.float()[:, None].expand(b, n, -1)
    return torch.cat([latents.float(), p, sigmas.float().reshape(1, n, 1).expand(b, n, 1)], -1)


def critic_features(states: Tensor) -> Tensor:
    """``critic_states`` [B, T, F + D + 1] -> critic inputs [B, T, F + D + 9] (sigma embedded)."""
    return torch.cat([states[..., :-1].float(), sigma_embedding(states[..., -1])], -1)


def make_critic(in_dim: int, hidden: int = 64, seed: int = 0) -> nn.Module:
    """The value MLP; its initial weights depend on ``seed`` only (every rank builds the same one)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.LayerNorm(in_dim),
            nn.Linear(in_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 1),
        )


def gae(values: Tensor, final: Tensor, lam: float) -> Tensor:
    """values [B, T] = V(x_j), final [B] = V(x_T) -> A [B, T], A_j = sum_{k>=j} lam^(k-j) delta_k."""
    nxt = torch.cat([values[:, 1:], final[:, None]], 1)
    delta = nxt - values
    out = torch.zeros_like(values)
    run = torch.zeros_like(final)
    for j in range(values.shape[1] - 1, -1, -1):
        run = delta[:, j] + lam * run
        out[:, j] = run
    return out


@dataclass
class CriticState:
    """The critic of one run: built lazily at the first call (its input size comes from the data)."""

    lr: float
    steps: int
    seed: int = 0
    net: nn.Module | None = None
    optimizer: Any = None
    calls: int = 0  # credit calls so far (= iterations with a valid row)
    losses: list[float] = field(default_factory=list)  # critic loss before each update

    def values(self, x: Tensor) -> Tensor:
        if self.net is None:
            self.net = make_critic(x.shape[-1], seed=self.seed)
            self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        with torch.no_grad():
            return self.net(x).squeeze(-1)

    def fit(self, x: Tensor, target: Tensor) -> tuple[float, float]:
        """``steps`` Adam steps of MSE(V(x), target) -> (loss before, loss after)."""
        first = last = float("nan")
        for i in range(self.steps + 1):
            loss = (self.net(x).squeeze(-1) - target).pow(2).mean()
            if i == 0:
                first = float(loss.detach())
            if i == self.steps:
                last = float(loss.detach())
                break
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
            self.optimizer.step()
        self.losses.append(first)
        return first, last


def ac_flow(
    rewards: Tensor,
    group_ids: Tensor,
    step_mask: Tensor,
    *,
    critic_states: Tensor,
    critic: CriticState | None = None,
    gae_lambda: float = 0.9,
    adv_clip: float = 2.0,
    warmup_iterations: int = 3,
    scale: str = "group",
    eps: float = 1e-4,
    unbiased: bool = False,
    filter_zero_std: bool = True,
) -> Advantages:
    """rewards [B]; group_ids [B]; step_mask [T] or [B, T]; critic_states [B, T+1, F + D + 1]
    (``critic_states``) -> Advantages [B, T], and one critic update. The run's ``critic`` is bound
    by ``build_ac_flow``; without one a fresh critic is used (a one-off call stays in warm-up unless
    ``warmup_iterations=0``)."""
    critic = CriticState(lr=1e-3, steps=4) if critic is None else critic
    t = critic_states.shape[1] - 1
    shaped, std = normalize(rewards.float(), group_ids, scale, eps, unbiased)  # r~ [B]
    x = critic_features(critic_states[:, :t])  # [B, T, F + D + 9]
    values = critic.values(x)  # [B, T] before this iteration's update
    warm = critic.calls >= warmup_iterations
    loss0, loss1 = critic.fit(x, shaped[:, None].expand(-1, t))
    critic.calls += 1
    stats = {"critic_loss": loss0, "critic_loss_after": loss1, "critic_warm": float(warm)}
    stats["value_abs_mean"] = float(values.abs().mean())
    if not warm:
        norm = {"scale": scale, "eps": eps, "unbiased": unbiased, "filter_zero_std": filter_zero_std}
        out = grpo(rewards, group_ids, step_mask, **norm)
        out.stats.update(stats)
        return out
    b = rewards.shape[0]
    mask = step_mask.bool().expand(b, -1) if step_mask.ndim == 1 else step_mask.bool()
    if filter_zero_std:
        mask = mask & (std > 0)[:, None]
    raw = gae(values, shaped, gae_lambda)
    adv = torch.where(mask, raw.clamp(-adv_clip, adv_clip), torch.zeros_like(raw))
    stats["clipped_frac"] = float(((raw.abs() > adv_clip) & mask).sum()) / max(int(mask.sum()), 1)
    stats["adv_abs_mean"] = float(adv[mask].abs().mean()) if mask.any() else 0.0
    return Advantages(advantages=adv, mask=mask, stats=stats)


ac_flow.needs = ("critic_states",)


@dataclass
class ACFlowOptions:
    """AC-Flow's critic (Adam lr and steps per iteration), its warm-up, GAE lambda and the advantage clip."""

    critic_lr: float = ranged(1e-3, "(0, inf)")  # Adam learning rate of the value network
    critic_steps: int = ranged(4, "[1, inf)")  # critic updates per iteration (full batch)
    warmup_iterations: int = ranged(3, "[0, inf)")  # iterations whose advantages are GRPO's (critic trains)
    gae_lambda: float = ranged(0.9, "[0, 1]")  # 1 = r~ - V(x_j); 0 = one-step TD error
    adv_clip: float = ranged(2.0, "(0, inf)")  # |A_j| clamp (the paper's advantage clipping)

    def kwargs(self) -> dict:
        return {"gae_lambda": self.gae_lambda, "adv_clip": self.adv_clip, "warmup_iterations": self.warmup_iterations}


def build_ac_flow(cfg, options: dict[str, Any]):
    """The run's credit function: ``ac_flow`` with one ``CriticState`` bound (it lives as long as the run)."""
    o = cfg.credit.options
    critic = CriticState(lr=o.critic_lr, steps=o.critic_steps, seed=cfg.train.seed)
    return partial(ac_flow, critic=critic, **options)


def check_ac_flow(o: ACFlowOptions, cfg) -> None:
    """One ValueError for a critic learning rate that is not > 0 (also caught by the declared range)."""
    if not o.critic_lr > 0 or not math.isfinite(o.critic_lr):
        raise ValueError(f"credit.options.critic_lr={o.critic_lr} must be > 0 (the critic's Adam learning rate).")


def pool_states(latents: Tensor) -> Tensor:
    """latents [B, T+1, *S] -> [B, T+1, F]: ``[C, H, W]`` average-pooled to 2x2 per channel (F = 4 C),
    packed tokens ``[L, D]`` (or any other shape) averaged over all but the last axis (F = D)."""
    b, n = latents.shape[:2]
    x = latents.detach().float().cpu().flatten(0, 1)
    if x.ndim == 4:
        return torch.nn.functional.adaptive_avg_pool2d(x, 2).reshape(b, n, -1)
    return x.reshape(b * n, -1, x.shape[-1]).mean(1).reshape(b, n, -1)


def pooled_prompt(embeds: dict[str, Tensor]) -> Tensor:
    """The conditioning's pooled prompt embedding [B, D]: ``pooled`` if the model has one, else the
    mean of ``prompt_embeds`` over its tokens."""
    if "pooled" in embeds:
        return embeds["pooled"].detach().float().cpu().flatten(1)
    if "prompt_embeds" not in embeds:
        raise ValueError(f"AC-Flow's critic needs 'pooled' or 'prompt_embeds' conditioning, got {sorted(embeds)}.")
    pe = embeds["prompt_embeds"].detach().float().cpu()
    return pe.reshape(pe.shape[0], -1, pe.shape[-1]).mean(1)
