"""Dynamic-TreeRPO's LayerTuning-RL objective (Fu et al. 2025, "Dynamic-TreeRPO: Breaking the
Independent Trajectory Bottleneck with Structured Sampling", arXiv 2509.23352; no public code) on
Flow-GRPO's clipped ratio (``flow_grpo.py``). The tree part (prefix-sharing tree rollouts with a
noise level growing with depth, GRPO credit on the leaves) is the existing ``treegrpo`` credit with
``credit.options.depth_noise`` (``credit/tree.py``); this objective adds the two LayerTuning-RL terms:

* **SFT loss as a weighted process reward.** At every trained step ``j`` the current one-step clean
  prediction is pulled toward the row's own final latent, weighted by how good the row is:
  ``L_sft = lambda_it * sum_i p_i |x0_pred_i(theta) - x_T,i|^2 / sum_i 1`` (element means; masked
  rows excluded), ``p_i = clamp(A_i / adv_clip, 0, 1)`` (the row's process-reward weight: 0 for
  below-mean rows) and ``lambda_it = sft_weight * sft_decay ** iteration`` (the dynamic weight).
* **Dynamic-adaptive clip bounds.** Each row's clip range widens on the side its advantage pushes:
  ``eps_hi,i = eps_high * (1 + clip_gain * relu(a_i))``, ``eps_lo,i = eps * (1 + clip_gain * relu(-a_i))``
  with ``a_i = clamp(A_i / adv_clip, -1, 1)``: a good row may raise its ratio further, a bad row may
  lower it further, and ``clip_gain = 0`` is Flow-GRPO's fixed clip.

Departures (stated plainly): the paper's equations for the PRM weight and the clip bounds could not
be retrieved here; the two formulas above are this project's reading of its description ("the SFT
loss reformulated as a dynamically weighted PRM", "dynamic-adaptive clipping bounds" tied to it),
not a transcription. The SFT target is the row's own sampled latent (no external SFT data set); the
depth-dependent noise is ``treegrpo``'s linear ``1 + depth_noise * depth / #splits``, not the paper's
per-layer table; KL to the adapter-off reference as Flow-GRPO (``beta``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ...ranges import ranged
from ...types import LossOut
from ..losses import clipped_policy_loss, gaussian_kl, total_loss, weighted_mean
from .common import Unit, UnitInputs, once_per_rows
from .flow_grpo import recompute


@dataclass
class DynamicTreeRPOOptions:
    clip_range: float = ranged(1e-4, "(0, inf)")  # base PPO epsilon (lower side)
    clip_range_high: float | None = ranged(None, "(0, inf)")  # base upper epsilon (None = clip_range)
    adv_clip: float = ranged(5.0, "(0, inf)")  # advantages clamped to +-adv_clip; also scales a_i and p_i
    beta: float = ranged(0.04, "[0, inf)")  # KL weight to the adapter-off reference
    kl_mode: str = "flow_grpo"  # 'flow_grpo' (x|dt|) | 'exact'
    clip_gain: float = ranged(1.0, "[0, inf)")  # adaptive clip: eps x (1 + clip_gain x relu(+-a_i)); 0 = fixed
    sft_weight: float = ranged(0.1, "[0, inf)")  # lambda_0 of the SFT process term (0 = off)
    sft_decay: float = ranged(0.98, "(0, 1]")  # lambda_it = sft_weight x sft_decay ** iteration


def check_dynamic_treerpo(o: DynamicTreeRPOOptions, cfg) -> None:
    if o.kl_mode not in ("flow_grpo", "exact"):
        raise ValueError(f"objective.options.kl_mode={o.kl_mode!r} must be 'flow_grpo' or 'exact'.")
    if not 0 < o.sft_decay <= 1:
        raise ValueError(f"objective.options.sft_decay={o.sft_decay} must be in (0, 1] (1 = a constant SFT weight).")


def adaptive_clip(advantages: Tensor, o: DynamicTreeRPOOptions) -> tuple[Tensor, Tensor]:
    """[b] advantages -> per-row (eps_lo, eps_hi)."""
    a = (advantages.float() / o.adv_clip).clamp(-1, 1)
    hi0 = o.clip_range if o.clip_range_high is None else o.clip_range_high
    return o.clip_range * (1 + o.clip_gain * (-a).clamp_min(0)), hi0 * (1 + o.clip_gain * a.clamp_min(0))


def sft_term(x0_pred: Tensor, x_final: Tensor, advantages: Tensor, mask: Tensor | None, o, lam: float) -> Tensor:
    """``lambda * masked mean_i p_i |x0_pred_i - x_T,i|^2`` with ``p_i = clamp(A_i / adv_clip, 0, 1)``."""
    p = (advantages.float() / o.adv_clip).clamp(0, 1)
    err = (x0_pred - x_final.detach()).pow(2).flatten(1).mean(1)
    return lam * weighted_mean(p * err, mask)


def dynamic_treerpo_loss(out, ref, old_log_prob, advantages, mask, dt: float, x_final, o, lam: float) -> LossOut:
    """Clipped surrogate with per-row adaptive bounds + ``beta`` KL + the weighted SFT process term."""
    lo, hi = adaptive_clip(advantages, o)
    policy = clipped_policy_loss(out.log_prob, old_log_prob, advantages, (lo, hi), o.adv_clip, mask)
    kl = None if ref is None else gaussian_kl(out.mean, ref.mean, out.std, dt, o.kl_mode)
    extra = {"sft": sft_term(out.x0_pred, x_final, advantages, mask, o, lam)} if lam > 0 else {}
    res = total_loss(policy, kl, o.beta, mask, extra)
    res.stats["clip_hi_mean"] = weighted_mean(hi, mask).detach()
    return res


def dynamic_treerpo_unit(inp: UnitInputs, o: DynamicTreeRPOOptions) -> Unit:
    lam = o.sft_weight * o.sft_decay**inp.iteration
    select = once_per_rows(lambda rows: (inp.cond.select(rows), inp.rollout.select(rows)))

    def unit(rows: Tensor, j: int, adv: Tensor, mask: Tensor) -> LossOut:
        c, r = select(rows)
        out, ref = recompute(inp, c, r, j, o.beta)
        dt = float(r.sigmas[j + 1] - r.sigmas[j])
        return dynamic_treerpo_loss(out, ref, r.log_probs[:, j], adv, mask, dt, r.latents[:, -1], o, lam)

    return unit


__all__ = ["DynamicTreeRPOOptions", "check_dynamic_treerpo", "dynamic_treerpo_unit", "adaptive_clip"]
