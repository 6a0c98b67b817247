"""GARDO's credit (He et al. 2025, "GARDO: Reinforcing Diffusion Models without Reward Hacking",
arXiv 2512.24138; code ``tinnerhrhe/GARDO``, on flow_grpo): diversity-aware advantages and the gate
that picks the uncertain samples the objective (``train/objectives/gardo.py``) regularises.

* **Diversity-aware advantages.** Per group, ``A_i = (r_i - mean_g r) * m_i`` with
  ``m_i = d_i / mean_g d`` where ``A_i > 0`` and ``m_i = 1`` elsewhere: only samples above their group's
  mean are amplified, by how far they lie from their nearest group member,
  ``d_i = min_{j in g, j != i} (1 - cos(f_i, f_j))``. No division by the group std (the paper's
  "remove std": small reward gaps are not blown up); ``scale="group"`` / ``"batch"`` restore it.
* **Uncertainty (the gate).** Rewards disagree where the proxy over-rates a sample: with the
  within-batch win rate ``w_k(i) = (#{j : r_k(j) < r_k(i)} + #{j != i : r_k(j) = r_k(i)} / 2) / (B - 1)``,
  ``u_i = w_train(i) - mean_k w_aux_k(i)`` over the training reward and the ``auxiliary`` reward
  components. The ``ceil(kl_fraction * B)`` rows with the largest ``u_i > 0`` are uncertain:
  ``Advantages.kl_weight`` is 1 there and 0 elsewhere, and only those rows enter the KL term.

Estimators used here: uncertainty = the disagreement of win rates (rank-based, so reward scales do
not matter) between the training reward and >= 1 auxiliary rewards named in ``credit.options.auxiliary``
(registry names; taken from the training reward's ``Scores`` components when it computes them, e.g.
with weight 0, else scored by the collector: ``auxiliary`` [B, K]); diversity features = the generated
images average-pooled to ``feature_size`` x ``feature_size`` per channel
(``rewards.diversity.pixel_features``), collected as ``features`` [B, F].

Departures from the paper / code:
  * diversity features are pooled pixels, not DINOv3 embeddings (no such model offline);
  * the code ranks with 1 = best and gates ``rank_proxy - mean rank_aux > threshold``, i.e. where the
    proxy ranks a sample *below* the auxiliary models; we gate where it ranks the sample *above* them,
    the over-optimisation direction the paper describes (``u`` in win rates = ranks scaled to [0, 1]);
  * the gated fraction is fixed (``kl_fraction``, the paper's ~10%) instead of the code's
    ``RiskCompensator`` (0.1, moved by +-10% per epoch within [0.02, 0.2] as the mean uncertainty
    rises or falls); it is a fraction of the batch, not of the rows with ``u > 0``;
  * group means are of this iteration only (the code's per-prompt tracker is cleared every epoch too).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..ranges import ranged
from ..types import Advantages
from .group import group_stats, normalize


def win_rates(values: Tensor) -> Tensor:
    """values [B] or [B, K] -> the fraction of the other rows each row beats (ties count 1/2), per column."""
    v = values.float().reshape(values.shape[0], -1)
    b = v.shape[0]
    diff = v[:, None, :] - v[None, :, :]  # [B, B, K]
    wins = (diff > 0).float().sum(1) + 0.5 * ((diff == 0).float().sum(1) - 1)  # minus the self-tie
    return (wins / max(b - 1, 1)).reshape(values.shape)


def uncertainty(rewards: Tensor, auxiliary: Tensor) -> Tensor:
    """[B] ``w_train - mean_k w_aux_k``: > 0 where the training reward rates a row above the auxiliaries."""
    aux = auxiliary.float().reshape(auxiliary.shape[0], -1)
    return win_rates(rewards) - win_rates(aux).mean(1)


def uncertain_rows(u: Tensor, fraction: float) -> Tensor:
    """[B] bool: the ``ceil(fraction * B)`` rows with the largest ``u`` (stable order on ties), if ``u > 0``."""
    k = math.ceil(fraction * u.shape[0])
    order = torch.sort(-u, stable=True).indices[:k]
    out = torch.zeros_like(u, dtype=torch.bool)
    out[order] = True
    return out & (u > 0)


def nearest_distance(features: Tensor, group_ids: Tensor) -> Tensor:
    """[B] cosine distance of each row to its nearest other member of its group (0 for a group of one)."""
    f = torch.nn.functional.normalize(features.float().flatten(1), dim=1)
    dist = (1 - f @ f.T).clamp_min(0)
    same = (group_ids[:, None] == group_ids[None, :]) & ~torch.eye(f.shape[0], dtype=torch.bool)
    d = torch.where(same, dist, torch.full_like(dist, float("inf"))).min(1).values
    return torch.where(torch.isfinite(d), d, torch.zeros_like(d))


def diversity_multiplier(adv: Tensor, distance: Tensor, group_ids: Tensor) -> Tensor:
    """[B] ``d_i / mean_g d`` where ``adv > 0``, else 1 (1 also where the group's mean distance is 0)."""
    mean_d, _ = group_stats(distance, group_ids)
    m = torch.where(mean_d > 0, distance / mean_d.clamp_min(1e-12), torch.ones_like(distance))
    return torch.where(adv > 0, m, torch.ones_like(m))


@functools.lru_cache(maxsize=8)
def auxiliary_reward(name: str, device: str = "cpu"):
    """Reward ``name`` of the registry (``rewards.REWARDS``), loaded once per process and device."""
    from ..rewards import load_reward

    return load_reward(name).to(device).eval()


def gardo(
    rewards: Tensor,
    group_ids: Tensor,
    step_mask: Tensor,
    *,
    auxiliary: Tensor,
    features: Tensor,
    scale: str = "none",
    eps: float = 1e-4,
    unbiased: bool = False,
    filter_zero_std: bool = True,
    kl_fraction: float = 0.1,
    diversity: bool = True,
) -> Advantages:
    """rewards [B]; group_ids [B]; step_mask [T] or [B, T]; auxiliary [B, K] auxiliary reward scores;
    features [B, F] -> Advantages [B, T] with ``kl_weight`` [B] (1 on the uncertain rows)."""
    base, std = normalize(rewards.float(), group_ids, scale, eps, unbiased)
    dist = nearest_distance(features, group_ids)
    mult = diversity_multiplier(base, dist, group_ids) if diversity else torch.ones_like(base)
    adv = base * mult
    b = rewards.shape[0]
    mask = step_mask.bool().expand(b, -1) if step_mask.ndim == 1 else step_mask.bool()
    keep = std > 0 if filter_zero_std else torch.ones(b, dtype=torch.bool)
    mask = mask & keep[:, None]
    u = uncertainty(rewards, auxiliary)
    gate = uncertain_rows(u, kl_fraction)
    stats = {
        "zero_std_frac": float((std == 0).float().mean()),
        "adv_abs_mean": float(adv.abs().mean()),
        "uncertain_frac": float(gate.float().mean()),
        "uncertainty_max": float(u.max()),
        "diversity_mean": float(dist.mean()),
        "diversity_mult_max": float(mult.max()),
    }
    out = adv[:, None].expand_as(mask).clone() * mask
    return Advantages(out, mask, stats, kl_weight=gate.float())


gardo.needs = ("auxiliary", "features")


@dataclass
class GARDOOptions:
    """GARDO's credit: the auxiliary reward components that expose the proxy's uncertainty, the gated
    fraction, the diversity features. Set ``credit.scale=none`` for the paper's std-free advantages."""

    auxiliary: list[str] = field(default_factory=list)  # rewards (REWARDS names) whose disagreement gates the KL
    kl_fraction: float = ranged(0.1, "(0, 1]")  # fraction of the batch gated into the KL term (paper ~10%)
    diversity: bool = True  # amplify above-mean samples by their distance to the nearest group member
    feature_size: int = ranged(8, "[1, inf)")  # images average-pooled to this many pixels a side (the features)

    def kwargs(self) -> dict:
        return {"kl_fraction": self.kl_fraction, "diversity": self.diversity}


def check_gardo(o: GARDOOptions, cfg) -> None:
    """One ValueError for GARDO without an uncertainty source (no auxiliary reward, or an unknown one)."""
    from ..rewards.registry import REWARDS

    weights = dict(getattr(getattr(cfg, "reward", None), "weights", {}) or {})
    if not o.auxiliary:
        raise ValueError(
            f"credit.kind=gardo needs an uncertainty source: one reward (reward.weights={weights}) and "
            "credit.options.auxiliary is empty. Name >= 1 other reward to disagree with, e.g. "
            """credit.options.auxiliary='["testbed_artifact"]'."""
        )
    unknown = [a for a in o.auxiliary if a not in REWARDS and a not in weights]
    if unknown:
        raise ValueError(
            f"credit.options.auxiliary={o.auxiliary}: {unknown} is not a reward; choose from {sorted(REWARDS)}."
        )
    if set(o.auxiliary) >= set(weights) and len(weights) == 1:
        raise ValueError(
            f"credit.options.auxiliary={o.auxiliary} only repeats the training reward {list(weights)}: it cannot "
            """disagree with itself; name another reward, e.g. credit.options.auxiliary='["testbed_artifact"]'."""
        )
    if o.feature_size < 1:
        raise ValueError(f"credit.options.feature_size={o.feature_size} must be >= 1 (pixels a side of the features).")
