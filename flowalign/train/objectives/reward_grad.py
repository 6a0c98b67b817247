"""What the reward-gradient objectives (``draft``, ``refl``, ``direct_align``, ``r0``) share: the check
that the training reward is differentiable, the reward of a clean latent with its gradient, and a
model step that can recompute its activations in backward (gradient checkpointing).

The reward of a clean latent is scored as Euphonium's ``x0_process_reward`` scores x0_pred
(``credit/guided.py``): ``reward(decode(x0), prompts)``, the total of a ``Scores`` record or the
tensor itself; unlike the guided rollout, the velocity is not detached, so the gradient reaches the
trained weights through the model's Jacobian. The rewards see the prompts only (no metadata columns).

How these objectives plug into the update phase without a branch in the trainer: the unit ignores the
advantages and the mask of the credit scheme (``credit.kind=grpo``, computed and logged but unused)
and returns ``-reward_scale * mean reward`` of its own recomputation from the iteration's rollout, so
accumulation, clipping and stepping are the update phase's as for every objective.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ...types import Cond, LossOut
from ..data import generators

# generator indices of the fresh noise drawn by the gradient objectives (far from sample / NFT indices)
REWARD_GRAD_NOISE_INDEX = -(3 * 10**7)


def check_differentiable(reward_fn, kind: str) -> None:
    """One clear error when objective ``kind`` is given a reward it cannot differentiate."""
    name = getattr(reward_fn, "name", getattr(reward_fn, "__name__", type(reward_fn).__name__))
    if reward_fn is None:
        raise ValueError(f"objective.kind={kind!r} needs the training reward (UnitInputs.reward_fn is None).")
    if getattr(reward_fn, "differentiable", None) is not True:
        raise ValueError(
            f"objective.kind={kind!r} backpropagates the reward, but reward {name!r} is not differentiable "
            f"(differentiable={getattr(reward_fn, 'differentiable', None)}); use a differentiable reward "
            f'(e.g. reward.weights={{"testbed_aesthetic": 1}} or compositional with reward.options='
            f'{{"compositional": {{"output": "soft"}}}}) or a policy-gradient objective (flow_grpo, nft).'
        )


def check_reward_config(cfg, kind: str) -> None:
    """At config time, the one reward known not to be differentiable by name: the testbed's checker
    unless ``output=soft`` (every other reward is checked when the update builds the unit)."""
    reward = getattr(cfg, "reward", None)
    if reward is None or "compositional" not in reward.weights:
        return
    output = dict(reward.options.get("compositional", {})).get("output", "fraction")
    if output != "soft":
        raise ValueError(
            f"objective.kind={kind!r} backpropagates the reward, but reward 'compositional' with "
            f"output={output!r} is a hard verdict (not differentiable); set reward.options="
            f'{{"compositional": {{"output": "soft"}}}} or use a policy-gradient objective (flow_grpo, nft).'
        )


def latent_reward(model, reward_fn: Callable, x0: Tensor, prompts: list[str]) -> Tensor:
    """[b] reward of clean latents x0 [b, *S] (decoded), differentiable w.r.t. x0."""
    out = reward_fn(model.decode(x0), list(prompts))
    total = out.total if hasattr(out, "total") else torch.as_tensor(out)
    if not total.requires_grad and x0.requires_grad:
        raise ValueError(
            "the reward returned no gradient w.r.t. the image; it is not differentiable in practice "
            "(detached, under no_grad, or a hard verdict)."
        )
    return total.float().reshape(-1)


def velocity(model, x: Tensor, sigma: Tensor, cond: Cond, use_checkpoint: bool = False) -> Tensor:
    """The model's velocity at x; with ``use_checkpoint`` its activations are recomputed in backward
    (memory ~ one step instead of one step per backpropagated step)."""
    if not use_checkpoint:
        return model.velocity(x, sigma, cond)
    return checkpoint(lambda z: model.velocity(z, sigma, cond), x, use_reentrant=False)


def reward_loss(reward: Tensor, scale: float, weight: float | Tensor = 1.0, **stats: Tensor) -> LossOut:
    """-scale * mean(weight * reward) with the mean reward logged."""
    loss = -scale * (weight * reward).mean()
    return LossOut(loss, {"reward_grad": reward.detach().mean(), **{k: v.detach() for k, v in stats.items()}})


def fresh_noise(seed: int, iteration: int, sample_index: list[int], j: int, num_steps: int, shape, device) -> Tensor:
    """[N, *shape] noise of (sample, step j), one generator per pair, seeded by (seed, iteration, global
    sample index, step) so that a run replays on any number of ranks."""
    gens = generators(seed, iteration, [REWARD_GRAD_NOISE_INDEX - i * num_steps - j for i in sample_index], device)
    return torch.stack([torch.randn(shape, generator=g, device=device) for g in gens])
