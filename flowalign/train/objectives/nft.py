"""DiffusionNFT (Zheng et al. 2025, arXiv 2509.16117): RL on the forward process.

The sample's clean latent x0 is noised afresh to ``x_t = (1 - sigma_j) x0 + sigma_j eps`` at the
trained steps' sigmas, and ``losses.nft_loss`` fits implicit positive / negative velocities built from
the current and the sampling policy's velocities, weighted by the advantage. Departures from
NVlabs/DiffusionNFT: the "old" policy is the sampling policy itself (their adapter EMA with decay 0),
evaluated once per iteration before the first update; the trained velocity is the model's guided one
when ``nft_cfg`` (so that training sees the policy that samples; the paper samples and trains
CFG-free: ``nft_cfg=false`` with ``sample.guidance_scale=1``); the timesteps are the trained steps of
the sampling grid (the SDE window), and each (sample, step) noise is seeded by (seed, iteration,
global sample index, step) so that runs replay on any number of ranks and on resume.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from ...ranges import ranged
from ...types import LossOut
from ..data import generators
from ..losses import nft_loss
from .common import Unit, UnitInputs, once_per_rows, reference

NFT_NOISE_INDEX = -(10**7)  # generator indices below this one are NFT's forward-process noise


@dataclass
class NFTOptions:
    nft_beta: float = ranged(1.0, "(0, inf)")  # b of the implicit policies v+- (paper: 1.0; 0.1 for OCR)
    nft_cfg: bool = True  # train the guided velocity (the policy that samples) | false: the conditional one (paper)
    adv_clip: float = ranged(5.0, "(0, inf)")  # advantages clamped to +-adv_clip, then mapped to r in [0, 1]
    beta: float = ranged(0.04, "[0, inf)")  # weight of |v - v_ref|^2 to the reference (adapter off)


def check_nft(o: NFTOptions, cfg) -> None:
    if not o.nft_beta > 0:
        raise ValueError(f"objective.options.nft_beta={o.nft_beta} must be > 0 (DiffusionNFT uses 1.0; 0.1 for OCR).")


def forward_noise(
    seed: int, iteration: int, sample_index: list[int], j: int, num_steps: int, shape: torch.Size, device: torch.device
) -> Tensor:
    """[N, *shape] the forward-process noise of (sample, step j): one generator per pair."""
    gens = generators(seed, iteration, [NFT_NOISE_INDEX - i * num_steps - j for i in sample_index], device)
    return torch.stack([torch.randn(shape, generator=g, device=device) for g in gens])


@torch.no_grad()
def old_velocities(inp: UnitInputs, cond) -> tuple[dict, dict]:
    """The noised states x_t and the sampling policy's velocities there, before any update."""
    cfg, model, ro = inp.cfg, inp.model, inp.rollout
    x0, bs, t = ro.final, cfg.sample.batch_size, ro.num_steps
    x_t, v_old = {}, {}
    for j in inp.steps:
        eps = forward_noise(cfg.train.seed, inp.iteration, inp.sample_index, j, t, x0.shape[1:], x0.device)
        x_t[j] = (1 - ro.sigmas[j]) * x0 + ro.sigmas[j] * eps
        v_old[j] = torch.cat(
            [
                model.velocity(x_t[j][i : i + bs], ro.sigmas[j], cond.select(torch.arange(i, min(i + bs, len(x0)))))
                for i in range(0, len(x0), bs)
            ]
        )
    return x_t, v_old


def nft_unit(inp: UnitInputs, o: NFTOptions) -> Unit:
    model, ro = inp.model, inp.rollout
    cond = inp.cond if o.nft_cfg else dataclasses.replace(inp.cond, guidance_scale=1.0)
    x0 = ro.final
    x_t, v_old = old_velocities(inp, cond)
    select = once_per_rows(cond.select)  # NFT needs the rows' conditioning, not their trajectories

    def unit(rows: Tensor, j: int, adv: Tensor, mask: Tensor) -> LossOut:
        c, xt, sigma = select(rows), x_t[j][rows], ro.sigmas[j].expand(len(rows))
        v = model.velocity(xt, ro.sigmas[j], c)
        v_ref = None
        if o.beta > 0:
            with torch.no_grad(), reference(inp):
                v_ref = (inp.ref_model or model).velocity(xt, ro.sigmas[j], c)
        return nft_loss(
            v,
            v_old[j][rows],
            xt,
            x0[rows],
            sigma,
            adv,
            mask,
            v_ref=v_ref,
            nft_beta=o.nft_beta,
            adv_clip=o.adv_clip,
            beta=o.beta,
        )

    return unit
