"""ReFL (Xu et al. 2023, ImageReward, arXiv 2304.05977): reward feedback learning. Sample without
gradients down to a random late step, predict the clean image in one step from there with gradients,
and ascend the reward of that prediction.

The random late step is the SDE window's trained step ``j`` (the presets draw it uniformly in the last
quarter of the grid with a one-step ``random`` window, as ReFL's t in [T1, T2] near the end): the unit
takes the rollout's state ``latents[:, j]`` (no gradient), computes ``x0_pred = x - sigma_j v(x)``
under the current weights and returns ``-reward_scale * mean reward(decode(x0_pred))``
(``reward_grad.py``: advantages and mask ignored; ``credit.kind=grpo`` computed but unused).

Departures: ImageReward's ReFL loss is ``lambda * relu(2 - r)`` for its own reward's scale; here the
reward is ascended linearly (``reward_scale`` is lambda) for any differentiable reward; ReFL's
interleaved pre-training (denoising) loss on a dataset is not reproduced (no data in the loop: use
``beta`` to regularise toward the base model's velocity instead, 0 = off); the prefix is the sampling
phase's (see ``draft.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...ranges import ranged
from ...types import LossOut
from .common import Unit, UnitInputs, once_per_rows, reference
from .reward_grad import check_differentiable, check_reward_config, latent_reward, reward_loss


@dataclass
class ReFLOptions:
    reward_scale: float = ranged(1.0, "(0, inf)")  # lambda: the loss is -reward_scale x mean reward (paper 1e-3)
    beta: float = ranged(0.0, "[0, inf)")  # weight of |v - v_ref|^2 to the base model at the same state (0 = off)


def check_refl(o: ReFLOptions, cfg) -> None:
    check_reward_config(cfg, "refl")


def velocity_regulariser(inp: UnitInputs, v: Tensor, x: Tensor, sigma, c, beta: float) -> Tensor:
    """beta x mean |v - v_ref|^2 at the same state (0 when beta == 0)."""
    if beta <= 0:
        return v.new_zeros(())
    with torch.no_grad(), reference(inp):
        v_ref = (inp.ref_model or inp.model).velocity(x, sigma, c)
    return beta * (v - v_ref).float().pow(2).mean()


def refl_unit(inp: UnitInputs, o: ReFLOptions) -> Unit:
    check_differentiable(inp.reward_fn, "refl")
    ro = inp.rollout
    select = once_per_rows(inp.cond.select)

    def unit(rows: Tensor, j: int, adv: Tensor, mask: Tensor) -> LossOut:
        c, x, sigma = select(rows), ro.latents[rows, j].detach(), ro.sigmas[j]
        v = inp.model.velocity(x, sigma, c)
        x0_pred = x - sigma * v.float()
        r = latent_reward(inp.model, inp.reward_fn, x0_pred, c.prompts)
        reg = velocity_regulariser(inp, v, x, sigma, c, o.beta)
        out = reward_loss(r, o.reward_scale, sigma=sigma.float(), velocity_reg=reg)
        out.loss = out.loss + reg
        return out

    return unit
