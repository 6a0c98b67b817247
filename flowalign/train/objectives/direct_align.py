"""Direct-Align (Shen et al. 2025, SRPO, arXiv 2509.06942): the reward gradient at any timestep by
injecting known noise into a clean sample and recovering the image by interpolation.

For a clean online sample x0 (the iteration's rollout's final latent, no gradient) and the trained
step j of the SDE window: draw eps (seeded per (seed, iteration, sample, step)), form
``x_sigma = (1 - sigma_j) x0 + sigma_j eps``, take ONE model step of the grid under the current weights
``x' = x_sigma + (sigma_{j+1} - sigma_j) v(x_sigma)``, and recover the image with the known noise,
``x0_hat = (x' - sigma_{j+1} eps) / (1 - sigma_{j+1})``. With the exact velocity x0_hat = x0 at any
sigma (the interpolation is exact), and its gradient is ``-(sigma_j - sigma_{j+1}) / (1 - sigma_{j+1})``
times the velocity's, so early (noisy) steps are trainable without backpropagating through the
sampler. The loss is ``-reward_scale * w(sigma_j) * mean reward(decode(x0_hat))`` with the discount
``w(sigma) = s sigma / (1 + (s - 1) sigma)`` (``discount="shift"``, s = ``discount_shift``; ``"none"``:
w = 1): as the release (Tencent-Hunyuan/SRPO ``SRPO_train``: the SD3 time shift with s = 3 of the
trained step's position), late (clean) steps, where reward hacking happens, weigh less, 0 at the clean
end. Advantages and mask are ignored (``reward_grad.py``; ``credit.kind=grpo`` computed but unused).

Departures: the model step is one step of the sampling grid (the release's spans k steps of a finer
grid set by ``groundtruth_ratio``) at the window's step (the release draws it uniformly inside
``train_timestep``); the last step (sigma_{j+1} = 0) degenerates to ReFL's x0_pred. SRPO's semantic
relative preference (the reward of ``(1 + k)`` x a positive-control prompt minus a negative-control
one, and the paper's inversion branch) needs a text-conditioned reward and is not reproduced, nor are
offline real images as x0 or the min-max image normalisation; ``beta`` optionally regularises
|v - v_ref|^2 to the base model at the same state (0 = off).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...ranges import ranged
from ...types import LossOut
from .common import Unit, UnitInputs, once_per_rows
from .refl import velocity_regulariser
from .reward_grad import check_differentiable, check_reward_config, fresh_noise, latent_reward, reward_loss


@dataclass
class DirectAlignOptions:
    reward_scale: float = ranged(1.0, "(0, inf)")  # the loss is -reward_scale x w(sigma) x mean reward
    discount: str = "shift"  # w(sigma) = s sigma / (1 + (s - 1) sigma) (the release's) | 'none': w = 1
    discount_shift: float = ranged(3.0, "(0, inf)")  # s of the shift discount (release: 3)
    beta: float = ranged(0.0, "[0, inf)")  # weight of |v - v_ref|^2 to the base model at the same state (0 = off)


def recover(x_sigma: Tensor, v: Tensor, eps: Tensor, sigma, sigma_next) -> Tensor:
    """One model step sigma -> sigma_next, then the image by interpolation with the known noise eps."""
    x_next = x_sigma + (sigma_next - sigma) * v.float()
    return (x_next - sigma_next * eps) / (1 - sigma_next)


def discount_weight(sigma: float, o: DirectAlignOptions) -> float:
    """w(sigma): 1 at pure noise, 0 at the clean end (``shift``), or 1 everywhere (``none``)."""
    s = o.discount_shift
    return 1.0 if o.discount == "none" else s * sigma / (1 + (s - 1) * sigma)


def check_direct_align(o: DirectAlignOptions, cfg) -> None:
    check_reward_config(cfg, "direct_align")
    if o.discount not in ("shift", "none"):
        raise ValueError(f"objective.options.discount={o.discount!r} must be 'shift' (the release's) or 'none'.")


def direct_align_unit(inp: UnitInputs, o: DirectAlignOptions) -> Unit:
    check_differentiable(inp.reward_fn, "direct_align")
    ro, cfg = inp.rollout, inp.cfg
    x0 = ro.final.detach()
    select = once_per_rows(inp.cond.select)

    def unit(rows: Tensor, j: int, adv: Tensor, mask: Tensor) -> LossOut:
        c, s, s_next = select(rows), ro.sigmas[j], ro.sigmas[j + 1]
        index = [inp.sample_index[i] for i in rows.tolist()]
        eps = fresh_noise(cfg.train.seed, inp.iteration, index, j, ro.num_steps, x0.shape[1:], x0.device)
        x_sigma = (1 - s) * x0[rows] + s * eps
        v = inp.model.velocity(x_sigma, s, c)
        x0_hat = recover(x_sigma, v, eps, s, s_next)
        r = latent_reward(inp.model, inp.reward_fn, x0_hat, c.prompts)
        reg = velocity_regulariser(inp, v, x_sigma, s, c, o.beta)
        w = discount_weight(float(s), o)
        out = reward_loss(r, o.reward_scale, w, sigma=s.float(), velocity_reg=reg, discount=torch.tensor(w))
        out.loss = out.loss + reg
        return out

    return unit
