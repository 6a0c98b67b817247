"""Training objectives: what the TRAIN phase computes for one (micro-batch, trained step) unit.

``OBJECTIVES[cfg.loss.objective](UnitInputs) -> unit(rows, j) -> LossOut`` is built once per iteration,
after credit, and called by the trainer's inner loop (which owns accumulation, clipping and stepping).

* ``flow_grpo`` (Liu et al. 2025, arXiv 2505.05470): recompute step ``j`` of the stored SDE trajectory
  under the current weights (``log_prob_at``) and hand it to ``loss_fn`` (clipped ratio + KL).
* ``nft``: DiffusionNFT (Zheng et al. 2025, arXiv 2509.16117): RL on the forward process. The sample's
  clean latent x0 is noised afresh to ``x_t = (1 - sigma_j) x0 + sigma_j eps`` at the trained steps'
  sigmas, and ``losses.nft_loss`` fits implicit positive / negative velocities built from the current
  and the sampling policy's velocities, weighted by the advantage. Departures from NVlabs/DiffusionNFT:
  the "old" policy is the sampling policy itself (their adapter EMA with decay 0), evaluated once per
  iteration before the first update; the trained velocity is the model's guided one when
  ``loss.nft_cfg`` (so that training sees the policy that samples; the paper samples and trains
  CFG-free, ``loss.nft_cfg=false`` with ``sample.guidance_scale=1``); the timesteps are the trained
  steps of the sampling grid (the SDE window), and each (sample, step) noise is seeded by (seed,
  iteration, global sample index, step) so that runs replay on any number of ranks and on resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .config import Config
from .losses import nft_loss
from .sampling.rollout import log_prob_at
from .train_utils import generators
from .types import Cond, LossOut, Rollout

Unit = Callable[[Tensor, int, Tensor, Tensor], LossOut]  # (rows [b], step j, advantages [b], mask [b]) -> loss
NFT_NOISE_INDEX = -(10**7)  # generator indices below this one are NFT's forward-process noise


@dataclass
class UnitInputs:
    cfg: Config
    model: Any  # the FlowModel being trained
    cond: Cond  # [N] this rank's rows of the iteration
    rollout: Rollout  # [N, T+1] their trajectories
    steps: list[int]  # trained step indices of this iteration
    iteration: int  # seeds NFT's forward-process noise
    sample_index: list[int]  # [N] global sample index of each row
    loss_fn: Callable[..., LossOut]  # flow_grpo's per-step loss (trainer argument)
    ref_model: Any = None  # KL reference when the model cannot disable its adapter (full fine-tuning)


def _reference(inp: UnitInputs):
    return inp.model.reference() if inp.ref_model is None else contextlib.nullcontext()


def _once_per_rows(fn: Callable[[Tensor], Any]) -> Callable[[Tensor], Any]:
    """``fn(rows)`` computed once per micro-batch (the trainer passes the same ``rows`` tensor for all
    of a micro-batch's steps) and reused for its other steps."""
    last: dict[str, Any] = {}

    def cached(rows: Tensor) -> Any:
        if last.get("rows") is not rows:
            last.update(rows=rows, out=fn(rows))
        return last["out"]

    return cached


def flow_grpo_unit(inp: UnitInputs) -> Unit:
    kw = {k: v for k, v in dataclasses.asdict(inp.cfg.loss).items() if k not in NFT_ONLY}
    select = _once_per_rows(lambda rows: (inp.cond.select(rows), inp.rollout.select(rows)))

    def unit(rows: Tensor, j: int, adv: Tensor, mask: Tensor) -> LossOut:
        c, r = select(rows)
        out = log_prob_at(inp.model, c, r, j)
        ref = None
        if inp.cfg.loss.beta > 0:
            with torch.no_grad(), _reference(inp):
                ref = log_prob_at(inp.ref_model or inp.model, c, r, j)
        dt = float(r.sigmas[j + 1] - r.sigmas[j])
        return inp.loss_fn(out, ref, r.log_probs[:, j], adv, mask, dt, **kw)

    return unit


def forward_noise(
    seed: int, iteration: int, sample_index: list[int], j: int, num_steps: int, shape: torch.Size, device: torch.device
) -> Tensor:
    """[N, *shape] the forward-process noise of (sample, step j): one generator per pair."""
    gens = generators(seed, iteration, [NFT_NOISE_INDEX - i * num_steps - j for i in sample_index], device)
    return torch.stack([torch.randn(shape, generator=g, device=device) for g in gens])


def nft_unit(inp: UnitInputs) -> Unit:
    cfg, model, ro = inp.cfg, inp.model, inp.rollout
    cond = inp.cond if cfg.loss.nft_cfg else dataclasses.replace(inp.cond, guidance_scale=1.0)
    x0, bs, T = ro.final, cfg.sample.batch_size, ro.num_steps
    x_t, v_old = {}, {}
    with torch.no_grad():  # the sampling policy's velocities, before any update of this iteration
        for j in inp.steps:
            eps = forward_noise(cfg.train.seed, inp.iteration, inp.sample_index, j, T, x0.shape[1:], x0.device)
            x_t[j] = (1 - ro.sigmas[j]) * x0 + ro.sigmas[j] * eps
            v_old[j] = torch.cat(
                [
                    model.velocity(x_t[j][i : i + bs], ro.sigmas[j], cond.select(torch.arange(i, min(i + bs, len(x0)))))
                    for i in range(0, len(x0), bs)
                ]
            )

    select = _once_per_rows(cond.select)  # NFT needs the rows' conditioning, not their trajectories

    def unit(rows: Tensor, j: int, adv: Tensor, mask: Tensor) -> LossOut:
        c, xt, sigma = select(rows), x_t[j][rows], ro.sigmas[j].expand(len(rows))
        v = model.velocity(xt, ro.sigmas[j], c)
        v_ref = None
        if cfg.loss.beta > 0:
            with torch.no_grad(), _reference(inp):
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
            nft_beta=cfg.loss.nft_beta,
            adv_clip=cfg.loss.adv_clip,
            beta=cfg.loss.beta,
        )

    return unit


def check_objective(cfg: Config) -> None:
    """One clear error for a bad ``loss.objective`` / ``loss.nft_beta`` (start-up check)."""
    if cfg.loss.objective not in OBJECTIVES:
        raise ValueError(f"loss.objective={cfg.loss.objective!r}; choose one of {list(OBJECTIVES)}.")
    if cfg.loss.objective == "nft" and not cfg.loss.nft_beta > 0:
        raise ValueError(f"loss.nft_beta={cfg.loss.nft_beta} must be > 0 (DiffusionNFT uses 1.0; 0.1 for OCR).")


NFT_ONLY = ("objective", "nft_beta", "nft_cfg")  # LossConfig fields that flow_grpo's loss_fn does not take
OBJECTIVES: dict[str, Callable[[UnitInputs], Unit]] = {"flow_grpo": flow_grpo_unit, "nft": nft_unit}
