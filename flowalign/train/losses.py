"""Policy-gradient losses on per-(sample, step) log-probs.

* ``clipped_policy_loss``: the PPO clipped surrogate as used by DDPO (Black et al. 2023) and
  Flow-GRPO (Liu et al. 2025, arXiv 2505.05470): ``mean(max(-A r, -A clip(r, 1 - eps_lo, 1 + eps_hi)))``
  with ``r = exp(log_prob - old_log_prob)`` and advantages clipped to ``+-adv_clip``. Asymmetric
  ranges follow the flow_grpo Bagel configs. GRPO-Guard (``objectives/grpo_guard.py``) normalises the
  log-ratio first and passes it here.
* ``gaussian_kl``: closed-form KL between the policy's and the reference's step kernels, which share
  their std: ``mean_elements (mean - ref_mean)^2 / (2 std^2)`` per sample. ``mode="flow_grpo"``
  multiplies by ``|dt|``, which is what the flow_grpo code computes (its KL divides by the diffusion
  coefficient, not the step std; issue #78) so that its published beta values keep their meaning.
* ``nft_loss``: DiffusionNFT's forward-process loss (Zheng et al. 2025, arXiv 2509.16117), which needs
  no log-probs: with r = clamp(A / adv_clip / 2 + 1/2, 0, 1), an implicit positive velocity
  ``v+ = b v + (1 - b) v_old`` and negative ``v- = (1 + b) v_old - b v`` (b = ``nft_beta``) are fitted
  to the sample's clean latent through their x0 predictions ``x_t - sigma v+-``:
  ``adv_clip / b * [r |x0+ - x0|^2 / w+ + (1 - r) |x0- - x0|^2 / w-]`` (element means; w = detached
  mean |x0+- - x0|), plus ``beta`` x mean |v - v_ref|^2. Its minimiser in v for b = 1 and w+ = w- is
  ``v_old + (2r - 1)(u - v_old)`` with u the sample's target velocity (x_t - x0) / sigma: toward a
  good sample, away from a bad one, by a bounded amount (the old policy anchors it).
* ``dual_reward_loss``: Euphonium's two clipped terms (outcome and process advantages, arXiv 2602.04928).
* ``weighted_mean``: masked mean used to reduce everything, so padding/filtered pairs never count.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..types import Advantages, LossOut


def weighted_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return x.mean()
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def clipped_policy_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    clip_range: float | tuple[float, float] = 1e-4,
    adv_clip: float | None = 5.0,
    mask: Tensor | None = None,
) -> LossOut:
    """All tensors [N] (one entry per trained (sample, step) pair). GRPO-Guard's normalised ratio is
    its own objective (``objectives/grpo_guard.py``), which hands this function its log-ratio."""
    lo, hi = clip_range if isinstance(clip_range, (tuple, list)) else (clip_range, clip_range)
    adv = advantages if adv_clip is None else advantages.clamp(-adv_clip, adv_clip)
    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - lo, 1 + hi)
    loss = weighted_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        r = ratio.detach()
        stats = {
            "policy_loss": loss.detach(),
            "approx_kl": weighted_mean(0.5 * log_ratio.detach() ** 2, mask),
            "clipfrac": weighted_mean(((r - 1).abs() > torch.where(r > 1, hi, lo)).float(), mask),
            "clipfrac_gt_one": weighted_mean((r > 1 + hi).float(), mask),
            "clipfrac_lt_one": weighted_mean((r < 1 - lo).float(), mask),
            "ratio_mean": weighted_mean(r, mask),
            "ratio_max": r.max(),
            "ratio_min": r.min(),
        }
    return LossOut(loss=loss, stats=stats)


def gaussian_kl(
    mean: Tensor, ref_mean: Tensor, std: Tensor, dt: Tensor | float | None = None, mode: str = "exact"
) -> Tensor:
    """KL(N(mean, std^2) || N(ref_mean, std^2)) averaged over elements -> [B].
    mean/ref_mean [B, *S]; std [B]; ``mode="flow_grpo"`` multiplies by |dt|."""
    if mode not in ("exact", "flow_grpo"):
        raise ValueError(f"kl mode {mode!r} must be 'exact' or 'flow_grpo'.")
    sq = ((mean - ref_mean) ** 2).flatten(1).mean(1)
    safe = torch.where(std > 0, std, torch.ones_like(std))
    kl = torch.where(std > 0, sq / (2 * safe**2), torch.zeros_like(sq))
    if mode == "flow_grpo":
        if dt is None:
            raise ValueError("kl mode 'flow_grpo' needs the step size dt.")
        kl = kl * torch.as_tensor(dt, dtype=kl.dtype).abs()
    return kl


def total_loss(
    policy: LossOut,
    kl: Tensor | None = None,
    beta: float = 0.0,
    mask: Tensor | None = None,
    extra: dict[str, Tensor] | None = None,
) -> LossOut:
    """policy + beta * KL (+ named extra terms, already weighted)."""
    loss = policy.loss
    stats = dict(policy.stats)
    if kl is not None:
        kl_mean = weighted_mean(kl, mask)
        stats["kl"] = kl_mean.detach()
        if beta:
            loss = loss + beta * kl_mean
    for name, term in (extra or {}).items():
        loss = loss + term
        stats[name] = term.detach()
    stats["loss"] = loss.detach()
    return LossOut(loss=loss, stats=stats)


def flow_grpo_loss(
    out,
    ref,
    old_log_prob: Tensor,
    advantages: Tensor,
    mask: Tensor | None,
    dt: float,
    *,
    clip_range: float = 1e-4,
    clip_range_high: float | None = None,
    adv_clip: float | None = 5.0,
    beta: float = 0.0,
    kl_mode: str = "flow_grpo",
) -> LossOut:
    """Flow-GRPO's loss of one (micro-batch, step): clipped surrogate on the recomputed step ``out``
    (a ``StepOut`` with grad) + ``beta`` x KL to the reference step ``ref`` (``StepOut`` under the
    adapter-off weights, no grad; None when beta == 0). old_log_prob / advantages / mask are [B]."""
    clip = clip_range if clip_range_high is None else (clip_range, clip_range_high)
    policy = clipped_policy_loss(out.log_prob, old_log_prob, advantages, clip, adv_clip, mask)
    kl = None if ref is None else gaussian_kl(out.mean, ref.mean, out.std, dt, kl_mode)
    return total_loss(policy, kl, beta, mask)


def _x0_error(x_t: Tensor, sigma: Tensor, v: Tensor, x0: Tensor) -> Tensor:
    """[B] mean |x_t - sigma v - x0|^2 / w with w = detached mean |x_t - sigma v - x0| (DiffusionNFT's
    adaptive weight, floored at 1e-5)."""
    err = (x_t - sigma.view(-1, *[1] * (x0.dim() - 1)) * v - x0).flatten(1)
    w = err.detach().abs().mean(1).clamp_min(1e-5)
    return err.pow(2).mean(1) / w


def nft_loss(
    v: Tensor,
    v_old: Tensor,
    x_t: Tensor,
    x0: Tensor,
    sigma: Tensor,
    advantages: Tensor,
    mask: Tensor | None = None,
    *,
    v_ref: Tensor | None = None,
    nft_beta: float = 1.0,
    adv_clip: float = 5.0,
    beta: float = 0.0,
) -> LossOut:
    """DiffusionNFT's loss of one (micro-batch, timestep). v (with grad), v_old (the sampling policy),
    v_ref (adapter off; None when beta == 0), x_t, x0: [B, *S]; sigma, advantages, mask: [B]."""
    r = (advantages.clamp(-adv_clip, adv_clip) / adv_clip / 2 + 0.5).clamp(0, 1)
    v_old = v_old.detach()
    pos = _x0_error(x_t, sigma, nft_beta * v + (1 - nft_beta) * v_old, x0)
    neg = _x0_error(x_t, sigma, (1 + nft_beta) * v_old - nft_beta * v, x0)
    policy = weighted_mean((r * pos + (1 - r) * neg) * (adv_clip / nft_beta), mask)
    with torch.no_grad():
        stats = {
            "policy_loss": policy.detach(),
            "old_deviation": weighted_mean((v.detach() - v_old).pow(2).flatten(1).mean(1), mask),
            "r_mean": weighted_mean(r, mask),
        }
    kl = None if v_ref is None else (v - v_ref.detach()).pow(2).flatten(1).mean(1)
    return total_loss(LossOut(loss=policy, stats=stats), kl, beta, mask)


def dual_reward_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    outcome: Advantages,
    process: Advantages,
    *,
    c_outcome: float = 1.0,
    c_process: float = 1.0,
    clip_range: float = 1e-4,
    adv_clip: float | None = 5.0,
) -> LossOut:
    """Euphonium's two-term clipped loss over [B, T] (log_prob / old_log_prob [B, T])."""
    lo = clipped_policy_loss(
        log_prob.flatten(),
        old_log_prob.flatten(),
        outcome.advantages.flatten(),
        clip_range,
        adv_clip,
        outcome.mask.flatten(),
    )
    lp = clipped_policy_loss(
        log_prob.flatten(),
        old_log_prob.flatten(),
        process.advantages.flatten(),
        clip_range,
        adv_clip,
        process.mask.flatten(),
    )
    stats = {**{f"outcome/{k}": v for k, v in lo.stats.items()}, **{f"process/{k}": v for k, v in lp.stats.items()}}
    return LossOut(loss=c_outcome * lo.loss + c_process * lp.loss, stats=stats)
