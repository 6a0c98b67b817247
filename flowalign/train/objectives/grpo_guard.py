"""GRPO-Guard (Wang et al. 2025, "GRPO-Guard: Mitigating Implicit Over-Optimization in Flow Matching
via Regulated Clipping", arXiv 2510.22319) on Flow-GRPO's objective (``flow_grpo.py``).

Flow-GRPO's step kernel is ``N(mu, s^2 I)`` with ``s = sigma_t sqrt(Delta)`` independent of the
weights, so with ``d = mu_theta - mu_old`` and the stored draw ``x' = mu_old + s z`` the per-element
log-ratio is ``l_theta - l_old = mean(d z) / s - mean(d^2) / (2 s^2)``: its mean is negative and its
spread ``~ |d| / s`` grows as sigma -> 0, so ratios of positive-advantage samples rarely reach
``1 + eps`` and the clip constrains one side only. Two changes, advantages / clip / KL untouched:

* **RatioNorm** (``ratio_norm``): ``log rho = s (l_theta - l_old + b)`` with
  ``b = mean_elem(d^2) / (2 s^2)``, which equals ``mean_elem(d z)`` exactly: centred at 0 (rho = 1
  on-policy and in expectation over z) with a spread that no longer depends on the step's noise;
* **gradient reweighting** (``reweight``): step ``j``'s policy loss is divided by
  ``Delta_j = sigma_j - sigma_{j+1}``. ``d mu / d v = -Delta (1 + a^2 / 2)`` for the ``flow_sde``
  kernel, so the gradient of the normalised log-ratio is ``~ Delta`` and the division makes every
  step contribute alike (with ``ratio_norm`` off the vanilla gradient ``~ sqrt(Delta) / sigma_t`` is
  not equalised by it; the switch is kept for ablations).

These follow the authors' public implementation (in flow_grpo): the bias-corrected log-ratio is
scaled by the step's noise scale ``s`` (the product of the batch means of the kernel's ``sigma_t`` and
``sqrt(Delta)``) before the exponential, and the policy loss is divided by ``Delta`` (the mean
``sqrt(Delta)`` squared), which the paper describes as restoring a mean-1, step-consistent ratio and a
``1 / dt`` gradient reweighting. An earlier, never-wired reading in ``losses.py`` (bias added, log-ratio
scaled by ``std / mean(std)``, which is 1 for a flat rollout) was removed.

Departures:

* ``mu_old``: the paper stores the sampling kernel means with the rollout; ``Rollout`` keeps no means,
  so the unit recomputes them once, under the unchanged weights, when it is built (before the first
  update, as ``nft.py`` does for its old velocities): one extra no-grad forward per trained
  (sample, step) per iteration, not counted as sampler NFE. SD3 outputs depend slightly on the batch
  composition, so on-policy ``d`` is ~1e-7 rather than exactly 0 on the real pipeline.
* ``s`` and ``Delta`` are per row (the code uses the batch means of ``std_dev_t`` and ``sqrt_dt``): equal
  for every flat rollout, since all rows of a unit share step ``j``; per-row values stay right for
  trajectories whose rows sit at different steps.
* masked means (``losses.weighted_mean``) as in Flow-GRPO here; the reweighting scales the policy term
  only, not the KL (as in the code); ``clip_range`` keeps Flow-GRPO's default (the paper's RatioNorm
  runs use 2e-6, a scale that only makes sense for the normalised ratio); ``inp.loss_fn`` (Flow-GRPO's
  per-step loss hook) is not used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...ranges import ranged
from ...sampling.rollout import log_prob_at
from ...types import LossOut
from ..losses import clipped_policy_loss, gaussian_kl, total_loss
from .common import Unit, UnitInputs, once_per_rows
from .flow_grpo import recompute


@dataclass
class GRPOGuardOptions:
    # PPO epsilon on the ratio (flow_grpo 1e-4; GRPO-Guard's RatioNorm runs 2e-6)
    clip_range: float = ranged(1e-4, "(0, inf)")
    clip_range_high: float | None = ranged(None, "(0, inf)")  # upper epsilon if asymmetric (None = clip_range)
    adv_clip: float = ranged(5.0, "(0, inf)")  # advantages clamped to +-adv_clip (flow_grpo adv_clip_max)
    beta: float = ranged(0.04, "[0, inf)")  # KL weight to the reference (adapter off) (GRPO-Guard runs use 0)
    kl_mode: str = "flow_grpo"  # 'flow_grpo' (x|dt|, keeps the published betas) | 'exact' (closed-form per-step KL)
    ratio_norm: bool = True  # RatioNorm: log rho = s (l - l_old + mean(d^2) / (2 s^2)) = mean(d z), centred per step
    reweight: bool = True  # divide step j's policy loss by Delta_j = sigma_j - sigma_{j+1} (step-uniform gradient)


def check_grpo_guard(o: GRPOGuardOptions, cfg) -> None:
    """One ValueError naming the first bad ``objective.options`` key, its value and the fix."""
    step = getattr(getattr(cfg, "sample", None), "step", "flow_sde")
    checks = [
        ("clip_range", o.clip_range, o.clip_range > 0, "must be > 0 (flow_grpo 1e-4; GRPO-Guard 2e-6)"),
        (
            "clip_range_high",
            o.clip_range_high,
            o.clip_range_high is None or o.clip_range_high > 0,
            "must be > 0 or null (= clip_range)",
        ),
        ("adv_clip", o.adv_clip, o.adv_clip > 0, "must be > 0 (flow_grpo 5.0)"),
        ("beta", o.beta, o.beta >= 0, "must be >= 0 (0 = no KL; GRPO-Guard runs use 0)"),
        ("kl_mode", o.kl_mode, o.kl_mode in ("flow_grpo", "exact"), "must be 'flow_grpo' or 'exact'"),
        (
            "ratio_norm",
            o.ratio_norm,
            not (o.ratio_norm and step == "cps_flowgrpo"),
            "needs a Gaussian log-prob, which sample.step=cps_flowgrpo does not give: use sample.step=cps "
            "or objective.options.ratio_norm=false",
        ),
    ]
    for name, value, ok, fix in checks:
        if not ok:
            raise ValueError(f"objective.options.{name}={value!r} {fix}.")


def guard_log_ratio(log_prob: Tensor, old_log_prob: Tensor, mean: Tensor, old_mean: Tensor, std: Tensor) -> Tensor:
    """[b] RatioNorm's log-ratio ``s (l - l_old + mean_elem((mu - mu_old)^2) / (2 s^2))`` (0 where s == 0).
    log_prob / old_log_prob / std [b]; mean / old_mean [b, *S] (the kernel means, current / sampling)."""
    pos = std > 0
    s = torch.where(pos, std, torch.ones_like(std))
    bias = (mean - old_mean).pow(2).flatten(1).mean(1) / (2 * s**2)
    return torch.where(pos, (log_prob - old_log_prob + bias) * s, torch.zeros_like(log_prob))


def grpo_guard_loss(
    out,
    ref,
    old_log_prob: Tensor,
    old_mean: Tensor | None,
    advantages: Tensor,
    mask: Tensor | None,
    dt: float,
    o: GRPOGuardOptions,
) -> LossOut:
    """GRPO-Guard's loss of one (micro-batch, step): the clipped surrogate on the normalised ratio
    (``o.ratio_norm``; else Flow-GRPO's ratio), divided by ``|dt|`` (``o.reweight``), + ``beta`` x KL.
    out / ref: ``StepOut`` (current weights with grad / reference, None when beta == 0); old_mean
    [b, *S] the sampling kernel means (needed with ratio_norm); the rest as ``losses.flow_grpo_loss``."""
    clip = o.clip_range if o.clip_range_high is None else (o.clip_range, o.clip_range_high)
    if o.ratio_norm:
        log_ratio = guard_log_ratio(out.log_prob, old_log_prob, out.mean, old_mean, out.std)
        policy = clipped_policy_loss(log_ratio, torch.zeros_like(log_ratio), advantages, clip, o.adv_clip, mask)
    else:
        policy = clipped_policy_loss(out.log_prob, old_log_prob, advantages, clip, o.adv_clip, mask)
    if o.reweight:
        weight = 1.0 / abs(dt)
        loss = policy.loss * weight
        policy = LossOut(
            loss=loss, stats={**policy.stats, "policy_loss": loss.detach(), "step_weight": torch.tensor(weight)}
        )
    kl = None if ref is None else gaussian_kl(out.mean, ref.mean, out.std, dt, o.kl_mode)
    return total_loss(policy, kl, o.beta, mask)


@torch.no_grad()
def old_means(inp: UnitInputs) -> dict[int, Tensor]:
    """{j: [N, *S]} the sampling policy's kernel means at the trained steps, computed before any update
    in sampling-sized batches (``sample.batch_size``)."""
    ro, n, bs = inp.rollout, inp.rollout.latents.shape[0], inp.cfg.sample.batch_size
    out = {}
    for j in inp.steps:
        chunks = []
        for i in range(0, n, bs):
            idx = torch.arange(i, min(i + bs, n))
            chunks.append(log_prob_at(inp.model, inp.cond.select(idx), ro.select(idx), j).mean)
        out[j] = torch.cat(chunks)
    return out


def grpo_guard_unit(inp: UnitInputs, o: GRPOGuardOptions) -> Unit:
    mu_old = old_means(inp) if o.ratio_norm else {}
    select = once_per_rows(lambda rows: (inp.cond.select(rows), inp.rollout.select(rows)))

    def unit(rows: Tensor, j: int, adv: Tensor, mask: Tensor) -> LossOut:
        c, r = select(rows)
        out, ref = recompute(inp, c, r, j, o.beta)
        old_mean = mu_old[j][rows.to(mu_old[j].device)] if o.ratio_norm else None
        dt = float(r.sigmas[j + 1] - r.sigmas[j])
        return grpo_guard_loss(out, ref, r.log_probs[:, j], old_mean, adv, mask, dt, o)

    return unit
