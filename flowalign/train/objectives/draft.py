"""DRaFT-K (Clark et al. 2023, arXiv 2309.17400): backpropagate a differentiable reward through the
last K steps of the sampler; the earlier steps carry no gradient.

The unit takes the state ``latents[:, T - K]`` that the iteration's rollout reached (sampled without
gradients, as DRaFT-K's truncated steps), re-runs the last K steps with the deterministic sampler
(Euler / DDIM-like ODE steps, as DRaFT's) under the current weights with gradients, decodes the clean
latent and returns ``-reward_scale * mean reward`` (``reward_grad.py``: the advantages and the mask of
the credit scheme are ignored; ``credit.kind=grpo`` is computed but unused). ``checkpoint=true``
recomputes each step's activations in backward (DRaFT's gradient checkpointing), so memory grows with
one step, not K.

Departures: the truncated prefix is the sampling phase's (SDE steps where its noise level is > 0; the
testbed preset samples with the ODE, noise level 0), so after the first optimizer step of an iteration
the prefix comes from slightly older weights (DRaFT samples a fresh prefix per step); the unit's loss
does not depend on the trained step j, so each trained step of the SDE window repeats it (the update
phase averages the repeats): the presets use a one-step window. DRaFT-LV (the low-variance K = 1
variant with extra noised copies) is not reproduced. LoRA, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...ranges import ranged
from ...sampling.sde import ode
from ...types import LossOut
from .common import Unit, UnitInputs, once_per_rows
from .reward_grad import check_differentiable, check_reward_config, latent_reward, reward_loss, velocity


@dataclass
class DRaFTOptions:
    k: int = ranged(1, "[1, inf)")  # steps the reward gradient flows through (DRaFT-K; K = T is full backprop)
    reward_scale: float = ranged(1.0, "(0, inf)")  # the loss is -reward_scale x mean reward
    checkpoint: bool = False  # recompute each step's activations in backward (memory of one step, not K)


def check_draft(o: DRaFTOptions, cfg) -> None:
    check_reward_config(cfg, "draft")
    t = cfg.sample.num_steps
    if not 1 <= o.k <= t:
        raise ValueError(
            f"objective.options.k={o.k} is larger than the {t} sampler steps (sample.num_steps={t}); "
            f"DRaFT-K backpropagates through the last K steps: use 1 <= k <= {t}."
        )


def last_k_steps(model, x: Tensor, sigmas: Tensor, k: int, cond, use_checkpoint: bool = False) -> Tensor:
    """ODE steps from x at ``sigmas[T - k]`` to ``sigmas[T]`` with gradients -> the clean latent."""
    t = sigmas.numel() - 1
    for j in range(t - k, t):
        v = velocity(model, x, sigmas[j], cond, use_checkpoint)
        x = ode(x, v, sigmas[j], sigmas[j + 1]).x_next
    return x


def draft_unit(inp: UnitInputs, o: DRaFTOptions) -> Unit:
    check_differentiable(inp.reward_fn, "draft")
    ro = inp.rollout
    if o.k > ro.num_steps:
        raise ValueError(f"objective.options.k={o.k} is larger than the rollout's {ro.num_steps} steps.")
    select = once_per_rows(lambda rows: (inp.cond.select(rows), ro.latents[rows, ro.num_steps - o.k]))

    def unit(rows: Tensor, j: int, adv: Tensor, mask: Tensor) -> LossOut:
        c, x = select(rows)
        x0 = last_k_steps(inp.model, x.detach(), ro.sigmas, o.k, c, o.checkpoint)
        r = latent_reward(inp.model, inp.reward_fn, x0, c.prompts)
        return reward_loss(r, o.reward_scale, k=torch.tensor(float(o.k)))

    return unit
