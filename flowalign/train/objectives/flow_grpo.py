"""Flow-GRPO's objective (Liu et al. 2025, arXiv 2505.05470): recompute step ``j`` of the stored SDE
trajectory under the current weights (``log_prob_at``) and hand it to the per-step loss
(``losses.flow_grpo_loss``: clipped ratio + ``beta`` x KL to the adapter-off reference)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...ranges import ranged
from ...sampling.rollout import log_prob_at
from ...types import LossOut
from ..losses import flow_grpo_loss
from .common import Unit, UnitInputs, once_per_rows, reference


@dataclass
class FlowGRPOOptions:
    clip_range: float = ranged(1e-4, "(0, inf)")  # PPO epsilon on the ratio (flow_grpo 1e-4; Fast 1e-5)
    clip_range_high: float | None = ranged(None, "(0, inf)")  # upper epsilon if asymmetric (None = clip_range)
    adv_clip: float = ranged(5.0, "(0, inf)")  # advantages clamped to +-adv_clip (flow_grpo adv_clip_max)
    # KL weight to the reference (adapter off) (paper: 0.04 GenEval/OCR, 0.01 PickScore, 0 Flux)
    beta: float = ranged(0.04, "[0, inf)")
    kl_mode: str = "flow_grpo"  # 'flow_grpo' (x|dt|, keeps the published betas) | 'exact' (closed-form per-step KL)

    def loss_kwargs(self) -> dict:
        return {
            "clip_range": self.clip_range,
            "clip_range_high": self.clip_range_high,
            "adv_clip": self.adv_clip,
            "beta": self.beta,
            "kl_mode": self.kl_mode,
        }


def recompute(inp: UnitInputs, c, r, j: int, beta: float):
    """(step j under the current weights, the reference's step j or None when beta == 0)."""
    out = log_prob_at(inp.model, c, r, j)
    ref = None
    if beta > 0:
        with torch.no_grad(), reference(inp):
            ref = log_prob_at(inp.ref_model or inp.model, c, r, j)
    return out, ref


def flow_grpo_unit(inp: UnitInputs, o: FlowGRPOOptions) -> Unit:
    kw = o.loss_kwargs()
    loss_fn = inp.loss_fn or flow_grpo_loss
    select = once_per_rows(lambda rows: (inp.cond.select(rows), inp.rollout.select(rows)))

    def unit(rows: Tensor, j: int, adv: Tensor, mask: Tensor) -> LossOut:
        c, r = select(rows)
        out, ref = recompute(inp, c, r, j, o.beta)
        dt = float(r.sigmas[j + 1] - r.sigmas[j])
        return loss_fn(out, ref, r.log_probs[:, j], adv, mask, dt, **kw)

    return unit
