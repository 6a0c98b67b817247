"""Turning-point credit: TP-GRPO / TurningPoint-GRPO (arXiv 2602.06422; code YunzeTong/TurningPoint-GRPO,
``scripts/my_train_sd3_fast_with_op3.py`` with the launch-script flags of ``scripts/*/common_op3.sh``).

Index the trained (SDE-window) steps k = 1..n. From the reward ladder (rewards of ODE completions,
``ladder [B, T+1]``; see ``credit.dense``) with the window starting at step a:
R_0 = ladder[:, a] (the ODE image of the *same* initial noise when the steps before a are ODE),
R_k = ladder[:, a + k], R_n := ladder[:, T] (the final image), and

* incremental reward d_k = R_k - R_{k-1}; global trend Delta = R_n - R_0; s_k = sign(d_k) sign(Delta);
* consistency c_k = sign(d_k) sign(R_n - R_k) > 0 (the reward keeps moving the same way afterwards);
* turning point, with the consistency constraint (Def. 5.1, ``constraint=True``, the released runs):
  k = 1: c_1; k >= 2: s_{k-1} < 0 and s_k > 0 and c_k. Without it (Def. 4.1): k = 1: s_1 > 0;
  k >= 2: s_{k-1} < 0 and s_k > 0. ``any_flip=True`` is the code flag
  ``indicator_wo_delta_global_constraint`` (k >= 2: d_{k-1} d_k < 0, still ANDed with c_k when
  constrained). ``first_step=False`` disables the k = 1 rule (``apply_first_step_bonus=false``).
  The last step can never be a turning point under the constraint (R_n - R_n = 0); a zero gain
  (ties, flat ladders) has sign 0 and is never one;
* aggregated long-term reward at a turning point r_agg_k = R_n - R_{k-1} (``use_sde_minus_rt``);
  the step reward is r_k = r_agg_k at turning points, d_k elsewhere (``drop_original_reward_when_
  having_bonus``, eta = 1);
* balancing (``use_balanced_bonus``): within each balancing batch (``balance_ids``; the code uses its
  sampling mini-batch) turning points are split by sign(Delta); when both signs occur, only
  min(#pos, #neg) of each side are kept, those with the largest |Delta| (ties: earlier sample, then
  earlier step, where the code's ``topk`` order is unspecified); demoted points fall back to d_k;
* advantages: r z-scored per step within each prompt group (``dense.per_step_advantages``);
  pairs of a zero-std (group, step) are masked (the code drops all-zero-advantage samples).

Departures and options: the reference code scores R_0 on a pure-ODE run from a *different* initial
noise (``same_latent=False``, generator None) although its comments and the paper mean the same x_T;
the default here is the same x_T (ladder[:, a]); pass ``baseline`` [B] (the reward of that other ODE
image) to reproduce the reference. The config-file defaults of the repo (``take_delta_global_as_main``:
r = Delta + 1[TP] d_k) are a different method and are not offered. Steps after the window that are
SDE but untrained still count in R_n (it is the final image's reward, as in the code). The trained
steps of a row must be contiguous (an SDE window); ``balance_ids`` default: the whole call is one
balancing batch (the trainer passes each row's sampling-batch id, as the code balances per mini-batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..ranges import ranged
from ..types import Advantages
from .dense import as_step_mask, check_ladder, per_step_advantages


@dataclass
class TurningPoints:
    rewards: Tensor  # [B, T] fp32 per-step rewards r (0 outside the window)
    turning: Tensor  # [B, T] bool turning points kept after balancing
    demoted: Tensor  # [B, T] bool turning points dropped by balancing
    gains: Tensor  # [B, T] fp32 d (0 outside the window)
    aggregated: Tensor  # [B, T] fp32 R_n - R_{k-1} (0 outside the window)
    delta: Tensor  # [B] fp32 R_n - R_0 (0 for rows without trained steps)


def window_bounds(mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """[B, T] bool -> (has [B] bool, first [B], last [B]); each row's trained steps must be contiguous."""
    has = mask.any(1)
    idx = torch.arange(mask.shape[1])
    first = torch.where(mask, idx, mask.shape[1]).min(1).values.clamp_max(mask.shape[1] - 1)
    last = torch.where(mask, idx, -1).max(1).values.clamp_min(0)
    gaps = has & (mask.sum(1) != last - first + 1)
    if bool(gaps.any()):
        row = int(torch.nonzero(gaps)[0])
        raise ValueError(
            f"row {row} trains steps {torch.nonzero(mask[row]).flatten().tolist()}, which are "
            f"not contiguous; turning points need one SDE window per sample."
        )
    return has, first, last


def _balance(turning: Tensor, delta: Tensor, ids: Tensor) -> Tensor:
    """Turning points kept by the balancing rule (see module docstring)."""
    keep = turning.clone()
    for g in torch.unique(ids):
        rows = ids == g
        cand = turning & rows[:, None]
        flat = torch.nonzero(cand.flatten()).flatten()  # row-major: earlier sample, then earlier step
        d = delta[flat // turning.shape[1]]
        pos, neg = flat[d > 0], flat[d < 0]
        n_keep = min(pos.numel(), neg.numel())
        if n_keep == 0:
            continue
        for side in (pos, neg):
            mag = delta[side // turning.shape[1]].abs()
            order = torch.sort(-mag, stable=True).indices
            drop = side[order[n_keep:]]
            keep.view(-1)[drop] = False
    return keep


def turning_points(
    ladder: Tensor,
    step_mask: Tensor,
    *,
    constraint: bool = True,
    first_step: bool = True,
    any_flip: bool = False,
    balance: bool = True,
    balance_ids: Tensor | None = None,
    baseline: Tensor | None = None,
) -> TurningPoints:
    """Per-step TP-GRPO rewards from ladder [B, T+1] and the trained steps step_mask [T] or [B, T]."""
    b, t = ladder.shape[0], ladder.shape[1] - 1
    mask = as_step_mask(step_mask, b, t)
    has, first, last = window_bounds(mask)
    rows = torch.arange(b)
    need = torch.zeros(b, t + 1, dtype=torch.bool)
    span = (torch.arange(t + 1)[None] >= first[:, None]) & (torch.arange(t + 1)[None] <= last[:, None] + 1)
    need |= span & has[:, None]
    need[:, t] |= has
    if baseline is not None:
        need[rows, first] = False
    lad = check_ladder(ladder, b, need).clone()
    if baseline is not None:
        base = torch.as_tensor(baseline, dtype=torch.float32).reshape(-1)
        if base.numel() != b:
            raise ValueError(f"baseline has {base.numel()} values for {b} samples.")
        lad[rows, first] = torch.where(has, base, lad[rows, first])
    lad = torch.where(need | (torch.arange(t + 1)[None] == first[:, None]), lad, torch.zeros_like(lad))
    final = lad[:, t]
    d = lad[:, 1:] - lad[:, :-1]  # [B, T]
    delta = torch.where(has, final - lad[rows, first], torch.zeros_like(final))
    sd = torch.sign(d)
    s = sd * torch.sign(delta)[:, None]
    consistent = sd * torch.sign(final[:, None] - lad[:, 1:]) > 0
    s_prev = torch.cat([torch.zeros(b, 1), s[:, :-1]], 1)
    if any_flip:
        inter = torch.cat([torch.zeros(b, 1, dtype=torch.bool), d[:, :-1] * d[:, 1:] < 0], 1)
    else:
        inter = (s_prev < 0) & (s > 0)
    if constraint:
        inter = inter & consistent
    first_rule = (consistent if constraint else s > 0) & first_step
    is_first = torch.arange(t)[None] == first[:, None]
    turning = torch.where(is_first, first_rule, inter) & mask
    kept = (
        _balance(
            turning, delta, torch.zeros(b, dtype=torch.long) if balance_ids is None else torch.as_tensor(balance_ids)
        )
        if balance
        else turning
    )
    agg = final[:, None] - lad[:, :-1]
    zero = torch.zeros_like(d)
    rewards = torch.where(mask, torch.where(kept, agg, d), zero)
    return TurningPoints(
        rewards=rewards,
        turning=kept,
        demoted=turning & ~kept,
        gains=torch.where(mask, d, zero),
        aggregated=torch.where(mask, agg, zero),
        delta=delta,
    )


def tp_grpo(
    rewards: Tensor,
    group_ids: Tensor,
    step_mask: Tensor,
    *,
    ladder: Tensor,
    constraint: bool = True,
    first_step: bool = True,
    any_flip: bool = False,
    balance: bool = True,
    balance_ids: Tensor | None = None,
    baseline: Tensor | None = None,
    scale: str = "group",
    eps: float = 1e-4,
    unbiased: bool = False,
    filter_zero_std: bool = True,
) -> Advantages:
    """TP-GRPO advantages. rewards [B] (unused: ladder[:, T] is the final reward); group_ids [B];
    step_mask [T] or [B, T] (contiguous window per row); ladder [B, T+1] -> Advantages [B, T]."""
    ladder = check_ladder(ladder, group_ids.shape[0])
    tp = turning_points(
        ladder,
        step_mask,
        constraint=constraint,
        first_step=first_step,
        any_flip=any_flip,
        balance=balance,
        balance_ids=balance_ids,
        baseline=baseline,
    )
    mask = as_step_mask(step_mask, ladder.shape[0], ladder.shape[1] - 1)
    stats = {
        "turning_points": float(tp.turning.sum()),
        "turning_demoted": float(tp.demoted.sum()),
        "turning_frac": float(tp.turning.sum()) / max(int(mask.sum()), 1),
        "delta_pos_frac": float((tp.delta > 0).float().mean()),
    }
    return per_step_advantages(
        tp.rewards,
        group_ids,
        mask,
        scale=scale,
        eps=eps,
        unbiased=unbiased,
        filter_zero_std=filter_zero_std,
        stats=stats,
    )


tp_grpo.needs = ("ladder", "balance_ids")


@dataclass
class TurningPointOptions:
    constraint: bool = True  # consistency constraint (Def. 5.1, the released runs) or Def. 4.1
    balance: bool = True  # balance +/- turning points within each sampling batch (App. D)
    ladder_steps: int = ranged(0, "[0, inf)")  # ODE steps of each ladder completion (0 = all remaining)
    ladder_stride: int = ranged(0, "[0, inf)")  # complete on every stride-th grid point instead (0 = off)

    def kwargs(self) -> dict:
        return {"constraint": self.constraint, "balance": self.balance}
