"""R0 (Luo et al. 2025, "Rewards Are Enough for Fast Photo-Realistic Text-to-image Generation", arXiv
2503.13070): a few-step generator trained by regularised reward maximisation, with no diffusion or
distillation loss. The authors' repository (Luo-Yihong/R0) publishes no code; this follows the paper's
description.

Generator: the base flow model itself (LoRA on it, so training starts at the base) sampled with
``sample.num_steps`` = 2-4 steps of its grid. Step k predicts the image ``x0_k = x - sigma_k v(x)`` and
moves to the next sigma by re-noising it, ``x_{k+1} = (1 - sigma_{k+1}) x0_k + sigma_{k+1}
(sqrt(1 - eta^2) eps_hat + eta eps_new)``, ``eps_hat = x + (1 - sigma_k) v`` the model's own noise
estimate and eps_new fresh noise. eta = 0 is exactly the Euler (ODE) step, so the trained generator
samples with the ordinary few-step sampler (``flowalign steer`` / ``gallery`` with ``num_steps`` 2 / 4,
its saved LoRA loading like any other checkpoint).

Regularisers (the paper's, as we read them): (1) random eta-sampling: eta ~ U[0, eta_max] per sample
and iteration for the training chains, so the generator sees states off its own deterministic path;
(2) intermediate supervision: the reward of every step's prediction x0_k, not only the last
(``intermediate=false``: the last only); (3) weight regularisation toward the base:
``weight_reg * sum_layers |Delta W|_F^2`` with Delta W = scale * B A of each LoRA layer (the adapter's
whole deviation from the base; with full fine-tuning and a reference model, sum |theta - theta_ref|^2).
The loss is ``-reward_scale * mean_k mean reward(decode(x0_k)) + weight regulariser``.

Departures: the state passed between steps is detached (each step's prediction is trained by its own
reward; ``backprop_chain=true`` keeps the whole chain's graph instead, DRaFT-K with K = T); the chain
starts from the rollout's initial noise; R0's high-resolution / guidance-scale conditioning and its
gradient normalisation across several rewards are not reproduced. The advantages are ignored
(``credit.kind=grpo`` computed but unused); the unit does not depend on the trained step j (the preset
uses a one-step window).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...ranges import ranged
from ...types import LossOut
from ..data import generators
from .common import Unit, UnitInputs, once_per_rows
from .reward_grad import check_differentiable, check_reward_config, fresh_noise, latent_reward, velocity


@dataclass
class R0Options:
    reward_scale: float = ranged(1.0, "(0, inf)")  # the loss is -reward_scale x mean reward (+ the weight term)
    eta_max: float = ranged(0.5, "[0, 1]")  # random eta-sampling: eta ~ U[0, eta_max] per sample (0 = ODE chains)
    intermediate: bool = True  # reward every step's x0 prediction (R0's intermediate supervision) | the last only
    weight_reg: float = ranged(1e-2, "[0, inf)")  # weight of sum |Delta W|_F^2 of the adapter (deviation from the base)
    backprop_chain: bool = False  # keep the graph through the whole chain (else each step's state is detached)
    checkpoint: bool = False  # recompute each step's activations in backward (with backprop_chain)


def check_r0(o: R0Options, cfg) -> None:
    check_reward_config(cfg, "r0")
    t = cfg.sample.num_steps
    if not 1 <= t <= 8:
        raise ValueError(
            f"objective.kind='r0' trains a few-step generator: sample.num_steps={t} must be in [1, 8] "
            f"(R0 uses 2-4 steps)."
        )
    if not 0 <= o.eta_max <= 1:
        raise ValueError(f"objective.options.eta_max={o.eta_max} must be in [0, 1].")


def lora_deviation(transformer, ref_model=None) -> Tensor:
    """sum over LoRA layers of |scale B A|_F^2 (peft), or sum |theta - theta_ref|^2 with a reference."""
    if ref_model is not None:
        ref = dict(ref_model.transformer.named_parameters())
        diffs = [(p - ref[n].detach()).pow(2).sum() for n, p in transformer.named_parameters() if p.requires_grad]
        return torch.stack(diffs).sum()
    terms = []
    for m in transformer.modules():
        if hasattr(m, "lora_A") and hasattr(m, "lora_B"):
            for name in m.lora_A:
                delta = m.lora_B[name].weight @ m.lora_A[name].weight * m.scaling[name]
                terms.append(delta.float().pow(2).sum())
    if not terms:
        raise ValueError("objective.options.weight_reg > 0 needs LoRA adapters (model.lora=true) or a reference model.")
    return torch.stack(terms).sum()


def renoise(x: Tensor, v: Tensor, sigma, sigma_next, eta: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
    """(x0_k, x_{k+1}): the step's image prediction and the next state with a fraction eta [b] of fresh noise."""
    v = v.float()
    x0, eps_hat = x - sigma * v, x + (1 - sigma) * v
    e = eta.reshape(-1, *[1] * (x.ndim - 1))
    return x0, (1 - sigma_next) * x0 + sigma_next * ((1 - e**2).sqrt() * eps_hat + e * noise)


ETA_INDEX = -(4 * 10**7)  # generator indices of the per-sample eta draws


def eta_generators(cfg, inp: UnitInputs) -> list[torch.Generator]:
    """One CPU generator per row, seeded by (seed, iteration, global sample index): any rank count replays."""
    return generators(cfg.train.seed, inp.iteration, [ETA_INDEX - i for i in inp.sample_index], torch.device("cpu"))


def r0_unit(inp: UnitInputs, o: R0Options) -> Unit:
    check_differentiable(inp.reward_fn, "r0")
    ro, cfg, model = inp.rollout, inp.cfg, inp.model
    t, shape, dev = ro.num_steps, ro.final.shape[1:], ro.final.device
    eta = o.eta_max * torch.cat([torch.rand(1, generator=g) for g in eta_generators(cfg, inp)])  # [N]
    select = once_per_rows(inp.cond.select)

    def unit(rows: Tensor, j: int, adv: Tensor, mask: Tensor) -> LossOut:
        c, x = select(rows), ro.latents[rows, 0].detach()
        index = [inp.sample_index[i] for i in rows.tolist()]
        rewards = []
        for k in range(t):
            v = velocity(model, x, ro.sigmas[k], c, o.checkpoint and o.backprop_chain)
            noise = fresh_noise(cfg.train.seed, inp.iteration, index, k, t, shape, dev)
            x0, x = renoise(x, v, ro.sigmas[k], ro.sigmas[k + 1], eta[rows.cpu()].to(dev), noise)
            if o.intermediate or k == t - 1:
                rewards.append(latent_reward(model, inp.reward_fn, x0, c.prompts))
            x = x if o.backprop_chain else x.detach()
        r = torch.stack(rewards)  # [steps rewarded, b]
        reg = o.weight_reg * lora_deviation(model.transformer, inp.ref_model) if o.weight_reg > 0 else r.new_zeros(())
        loss = -o.reward_scale * r.mean() + reg
        stats = {"reward_grad": r[-1].detach().mean(), "reward_first": r[0].detach().mean(), "weight_reg": reg.detach()}
        return LossOut(loss, {**stats, "eta": eta[rows.cpu()].mean()})

    return unit
