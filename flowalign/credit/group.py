"""Group-relative advantages (GRPO as used by Flow-GRPO, arXiv 2505.05470; DanceGRPO, arXiv 2505.07818).

``A_i = (r_i - mean_{group(i)} r) / (std + eps)`` where ``std`` is the group's std (``scale="group"``),
the std of the whole gathered batch (``scale="batch"``, flow_grpo's ``global_std=True``, "inspired by
REINFORCE++") or 1 (``scale="none"``). Population std (ddof 0) as numpy in flow_grpo; ``unbiased=True``
for the FastVideo repos. Groups whose rewards are all equal carry no signal: with ``filter_zero_std``
their pairs are masked out (DAPO-style), which flow_grpo does by dropping the samples.
The trajectory advantage is broadcast to every trained step: ``advantages [B, T]``, ``mask [B, T]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..types import Advantages

SCALES = ("group", "batch", "none")


def group_stats(values: Tensor, group_ids: Tensor, unbiased: bool = False) -> tuple[Tensor, Tensor]:
    """Per-row mean and std of the row's group. values [B] (or [B, T]: per step); group_ids [B]."""
    _, inverse = torch.unique(group_ids, return_inverse=True)
    g = int(inverse.max()) + 1
    onehot = torch.nn.functional.one_hot(inverse, g).to(values.dtype)  # [B, G]
    count = onehot.sum(0)  # [G]
    flat = values.reshape(values.shape[0], -1)  # [B, K]
    mean = (onehot.T @ flat) / count[:, None]  # [G, K]
    dev = flat - mean[inverse]
    denom = (count - 1).clamp_min(1) if unbiased else count
    var = (onehot.T @ dev**2) / denom[:, None]
    return mean[inverse].reshape(values.shape), var.sqrt()[inverse].reshape(values.shape)


def normalize(
    values: Tensor, group_ids: Tensor, scale: str = "group", eps: float = 1e-4, unbiased: bool = False
) -> tuple[Tensor, Tensor]:
    """(values - group mean) / (std + eps) and the per-row group std. values [B] or [B, T]."""
    if scale not in SCALES:
        raise ValueError(f"advantage scale {scale!r} must be one of {SCALES}.")
    mean, std = group_stats(values, group_ids, unbiased)
    if scale == "none":
        return values - mean, std
    if scale == "batch":
        flat = values.reshape(values.shape[0], -1)
        std_all = flat.std(0, unbiased=unbiased) if flat.shape[0] > 1 else torch.zeros(flat.shape[1])
        return (values - mean) / (std_all.expand_as(flat).reshape(values.shape) + eps), std
    return (values - mean) / (std + eps), std


def grpo(
    rewards: Tensor,
    group_ids: Tensor,
    step_mask: Tensor,
    *,
    scale: str = "group",
    eps: float = 1e-4,
    unbiased: bool = False,
    filter_zero_std: bool = True,
) -> Advantages:
    """rewards [B]; group_ids [B]; step_mask [T] or [B, T] (trained steps) -> Advantages [B, T]."""
    adv, std = normalize(rewards.float(), group_ids, scale, eps, unbiased)
    b = rewards.shape[0]
    mask = step_mask.bool().expand(b, -1) if step_mask.ndim == 1 else step_mask.bool()
    keep = std > 0 if filter_zero_std else torch.ones(b, dtype=torch.bool)
    mask = mask & keep[:, None]
    stats = {"zero_std_frac": float((std == 0).float().mean()), "adv_abs_mean": float(adv.abs().mean())}
    return Advantages(advantages=adv[:, None].expand_as(mask).clone() * mask, mask=mask, stats=stats)


@dataclass
class GRPOOptions:
    """Flow-GRPO's group-relative advantage has no options beyond the shared normalisation."""

    def kwargs(self) -> dict:
        return {}
