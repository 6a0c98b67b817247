"""Pref-GRPO (arXiv 2508.20751; code ``CodeGoat24/Pref-GRPO``): pairwise win rates as the GRPO reward.

Each sample's reward is replaced by its **win rate inside its group**: the fraction of the other
members of its group it beats under a pairwise preference judge,
``w_i = sum_{j in group(i), j != i} p(i beats j) / (|group(i)| - 1)``; the win rates are then
group-normalised exactly as GRPO does (``group.grpo``: mean / std per group, masked like it). Win
rates are bounded in [0, 1] and average 1/2 over every group, so near-ties of the pointwise scores
no longer become large z-scores (the paper's "illusory advantage").

Departures from the paper's code:
  * the judge compares **scalar scores**: ``judge="hard"`` gives ``p(i beats j) = 1[r_i > r_j] +
    0.5 * 1[r_i == r_j]`` (a tie splits the point, as the code does for an unparseable answer);
    ``judge="bradley_terry"`` gives ``sigmoid((r_i - r_j) / tau)``. With a VLM judge (UnifiedReward-
    Think) the pairwise preferences come from the rewards issue, not from here;
  * every unordered pair is judged once and symmetrically (no image order, hence no position bias);
  * win rates are not rounded to 3 decimals; the normalisation's eps is the config's ``credit.eps``
    (the code: std + 1e-8) and ``credit.scale`` / ``unbiased`` / ``filter_zero_std`` apply as for GRPO;
  * a group of one has no comparison: its win rate is 1/2 (and its std 0, so it is masked).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..ranges import ranged
from ..types import Advantages
from .group import grpo

JUDGES = ("hard", "bradley_terry")


def pairwise_preferences(rewards: Tensor, judge: str = "hard", tau: float = 0.1) -> Tensor:
    """rewards [B] -> P [B, B] with P[i, j] = p(i beats j) (P + P.T = 1 off the diagonal)."""
    if judge not in JUDGES:
        raise ValueError(f"Pref-GRPO judge {judge!r} must be one of {JUDGES}.")
    r = rewards.float()
    diff = r[:, None] - r[None, :]
    if judge == "bradley_terry":
        return torch.sigmoid(diff / tau)
    return (diff > 0).float() + 0.5 * (diff == 0).float()


def win_rates(rewards: Tensor, group_ids: Tensor, judge: str = "hard", tau: float = 0.1) -> Tensor:
    """rewards [B], group_ids [B] -> [B] fraction of the other group members each sample beats."""
    prefs = pairwise_preferences(rewards, judge, tau)
    b = rewards.shape[0]
    others = (group_ids[:, None] == group_ids[None, :]) & ~torch.eye(b, dtype=torch.bool)
    count = others.sum(1)
    wins = (prefs * others).sum(1)
    return torch.where(count > 0, wins / count.clamp_min(1), torch.full_like(wins, 0.5))


def pref_grpo(
    rewards: Tensor,
    group_ids: Tensor,
    step_mask: Tensor,
    *,
    scale: str = "group",
    eps: float = 1e-4,
    unbiased: bool = False,
    filter_zero_std: bool = True,
    judge: str = "hard",
    tau: float = 0.1,
) -> Advantages:
    """rewards [B]; group_ids [B]; step_mask [T] or [B, T] -> Advantages [B, T]: GRPO of the win rates."""
    w = win_rates(rewards, group_ids, judge, tau)
    out = grpo(w, group_ids, step_mask, scale=scale, eps=eps, unbiased=unbiased, filter_zero_std=filter_zero_std)
    out.stats["win_rate_min"] = float(w.min())
    out.stats["win_rate_max"] = float(w.max())
    return out


@dataclass
class PrefGRPOOptions:
    """Pref-GRPO's pairwise judge over the pointwise scores: ``hard`` (win / tie / loss) or
    ``bradley_terry`` (``sigmoid((r_i - r_j) / tau)``, tau in reward units)."""

    judge: str = "hard"
    tau: float = ranged(0.1, "(0, inf)")

    def kwargs(self) -> dict:
        return {"judge": self.judge, "tau": self.tau}


def check_pref(o: PrefGRPOOptions, cfg) -> None:
    """One ValueError for an unknown judge."""
    if o.judge not in JUDGES:
        raise ValueError(f"credit.options.judge={o.judge!r}; choose one of {JUDGES}.")
