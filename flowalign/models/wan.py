"""Wan 2.1 text-to-video as a ``FlowModel`` over any diffusers ``WanPipeline``'s components.

Reproduces ``WanPipeline.__call__`` (diffusers 0.42.1): the pipeline's own ``encode_prompt`` (UMT5,
embeddings zero-padded to ``max_sequence_length``; negative prompt "" by default), initial noise
drawn as its ``prepare_latents`` (fp32 ``randn_tensor`` of ``[B, C, (F - 1) / 4 + 1, H / 8, W / 8]``),
true classifier-free guidance as two transformer calls ``v = v_u + w (v_c - v_u)`` (cond first, as the
pipeline), the timestep passed raw (0-1000), and the decode path (per-channel ``latents_mean`` /
``latents_std`` de-normalisation, ``AutoencoderKLWan.decode``, ``x / 2 + 0.5`` clamped).

Layouts: latents ``[B, C, F', H', W']`` (C = 16 for Wan 2.1, F' = (F - 1) / 4 + 1 latent frames);
``decode`` returns videos ``[B, F, 3, H, W]`` float in [0, 1] -- the layout of the pipeline's
``output_type="pt"`` -- except a one-frame video (``num_frames=1``: Wan used as a text-to-image
model), which is returned as images ``[B, 3, H, W]`` so image-only callers (image rewards, the
gallery) work unchanged; ``decode_video`` always returns ``[B, F, 3, H, W]``.

Sampler and sigma grid: flowalign's steps (Euler / SDE) need a flow-matching grid, which is the
pipeline scheduler's own ``sigmas`` after ``set_timesteps(T)`` -- what flow_grpo's
``train_wan2_1.py`` uses. With ``FlowMatchEulerDiscreteScheduler`` (the tiny pipeline, diffusers'
Wan tests) the pipeline's sampler is that same Euler step, so the ODE rollout reproduces it. The
released Wan 2.1 checkpoints ship ``UniPCMultistepScheduler(use_flow_sigmas=True)``, a 2nd-order
predictor-corrector: the ODE rollout is then Euler on UniPC's grid, i.e. UniPC with
``solver_order=1`` and the corrector disabled (algebraically Euler), not the stock 2nd-order sampler.

Departures: (1) UniPC's grid starts at 1 - 1e-6 (its guard against log 0); ``sigmas()[0]`` is set
back to 1 so that ``flow_sde`` treats the first step as starting from pure noise (at 1 - 1e-6 its
g = a sqrt(sigma / (1 - sigma)) would be 1000 a); the first step moves 1e-6 further. (2) For
schedulers that hand the transformer int64 timesteps (UniPC) the timestep of a sigma of a grid
built by ``sigmas()`` is the scheduler's own int64 timestep (kept in a table); any other sigma gets
the scheduler's rule ``trunc(1000 min(sigma, 1 - 1e-6))`` from the fp32 sigma, which can be off by
one where 1000 sigma is within fp32 rounding of an integer (unshifted grids); without the
truncation the tiny UniPC (order 1) parity breaks by 3e-2 on latents. (3) A frame count that is
not 4k+1 or a size that is not a multiple of 16 is a ValueError (the pipeline rounds down with a
warning). (4) The guidance combination and the states between steps stay in fp32 (the pipeline
keeps the combination in the transformer's dtype). (5) flow_grpo's Wan-only SDE std
(sigma_min + (sigma_max - sigma_min) sigma, no noise level) is not added: the steps are
``sampling.sde.STEPS``. (6) Not supported: Wan 2.2's second transformer (``boundary_ratio``) and
``expand_timesteps``, the image/video-to-video Wan pipelines, diffusers' ``cache_context`` hooks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..types import Cond
from .base import NUM_TRAIN_TIMESTEPS, as_sigma, check_generators, check_prompts, sigma_to_timestep
from .common import DiffusersFlowModel, check_pipeline
from .sd3 import broadcast_negatives

_NEEDS = ("transformer", "vae", "scheduler", "text_encoder", "tokenizer")
UNIPC_SIGMA_MAX = 1 - 1e-6  # UniPCMultistepScheduler.set_timesteps lowers a first sigma of 1 to this
# peft target-module suffixes: self- (attn1) and cross-attention (attn2) projections of every block
WAN_LORA_TARGETS = [f"attn{i}.{m}" for i in (1, 2) for m in ("to_q", "to_k", "to_v", "to_out.0")]


def wan_family(obj: Any) -> str | None:
    """'wan' for a ``WanPipeline`` (object, subclass or class name) or a hub id / directory whose base
    name starts with 'wan' (e.g. 'Wan-AI/Wan2.1-T2V-1.3B-Diffusers'); else None. Unsupported Wan
    variants found by name are refused with a clear error by ``WanModel``."""
    if isinstance(obj, (str, os.PathLike)):
        name = os.fspath(obj)
        return "wan" if name == "WanPipeline" or os.path.basename(name.rstrip("/")).lower().startswith("wan") else None
    return "wan" if any(c.__name__ == "WanPipeline" for c in type(obj).__mro__) else None


def check_num_frames(num_frames: Any, factor: int = 4) -> int:
    """Frames the Wan VAE can encode: ``factor * k + 1`` (time is compressed ``factor``x after the
    first frame); anything else is one ValueError naming the nearest valid counts."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(
            f"num_frames={num_frames!r} must be a positive int of the form {factor}k+1; use num_frames=1 (an image) "
            f"or {factor + 1}."
        )
    if (num_frames - 1) % factor:
        lo = (num_frames - 1) // factor * factor + 1
        raise ValueError(
            f"num_frames={num_frames} cannot be encoded by the Wan VAE, which compresses time {factor}x after the "
            f"first frame (frames must be {factor}k+1: 1, {factor + 1}, {2 * factor + 1}, ...); the nearest valid "
            f"counts are {lo} and {lo + factor}."
        )
    return num_frames


def check_video_size(height: Any, width: Any, factors: tuple[int, int]) -> None:
    """Heights / widths must be positive multiples of VAE scale x transformer patch (and of 16, which
    ``WanPipeline.check_inputs`` demands); one ValueError naming the nearest valid values."""
    for name, value, factor in (("height", height, factors[0]), ("width", width, factors[1])):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % factor:
            lo = value // factor * factor if isinstance(value, int) and value > factor else 0
            near = f"{lo} or {lo + factor}" if lo else f"{factor}"
            raise ValueError(
                f"{name}={value!r} is not a positive multiple of {factor} (Wan: VAE spatial scale x transformer "
                f"patch size, and 16); use {name}={near}."
            )


def check_flow_scheduler(scheduler: Any) -> bool:
    """The scheduler must give a flow-matching grid (sigmas in [0, 1] ending at 0, timesteps =
    1000 sigma up to truncation). Returns True when its timesteps are integers (UniPC)."""
    name = type(scheduler).__name__
    try:
        fresh = type(scheduler).from_config(scheduler.config)
        fresh.set_timesteps(4, device="cpu")
        sig, ts = fresh.sigmas.double().cpu(), fresh.timesteps.double().cpu()
        ok = (
            sig.numel() == ts.numel() + 1
            and float(sig[-1]) == 0.0
            and bool((sig <= 1).all() and (sig >= 0).all())
            and bool(((ts - NUM_TRAIN_TIMESTEPS * sig[:-1]).abs() <= 1).all())
        )
    except Exception:  # e.g. a scheduler that needs arguments WanPipeline never passes
        ok = False
    if not ok:
        raise ValueError(
            f"WanModel needs a flow-matching scheduler (sigmas in [0, 1] ending at 0, timesteps 1000 sigma), got "
            f"{name}; use FlowMatchEulerDiscreteScheduler(shift=...) or UniPCMultistepScheduler(use_flow_sigmas=True, "
            f"prediction_type='flow_prediction', final_sigmas_type='zero')."
        )
    return not fresh.timesteps.is_floating_point()


def _check_supported(pipe: Any) -> None:
    if wan_family(pipe) is None:
        raise ValueError(f"WanModel needs a diffusers WanPipeline (text-to-video), got a {type(pipe).__name__}.")
    cfg = getattr(pipe, "config", {})
    bad = {
        "transformer_2 / boundary_ratio (Wan 2.2)": getattr(pipe, "transformer_2", None) is not None
        or cfg.get("boundary_ratio") is not None,
        "expand_timesteps (Wan 2.2 TI2V)": bool(cfg.get("expand_timesteps", False)),
        "an image-to-video transformer (image_dim)": pipe.transformer.config.get("image_dim") is not None,
    }
    if any(bad.values()):
        raise ValueError(
            f"WanModel supports Wan 2.1-style text-to-video only; this pipeline has {[k for k, v in bad.items() if v]}."
        )


class WanModel(DiffusersFlowModel):
    """``v(x, sigma | prompt)`` of Wan 2.1 T2V with true CFG inside; see the module docstring.

    ``Cond.embeds`` holds ``prompt_embeds`` [B, L, D] and, when the guidance scale is > 1,
    ``negative_prompt_embeds`` of the same shape. ``num_frames`` (4k+1) is the clip length
    ``initial_noise`` draws when not told otherwise; ``default_size`` the square side used by
    ``sample`` and steering when no size is given (the pipeline's own default is 480 x 832).
    """

    pipeline_class_name = "WanPipeline"
    default_steps = 50  # WanPipeline.__call__ defaults
    default_guidance = 5.0

    def __init__(
        self,
        pipe: Any,
        guidance_scale: float | None = None,
        max_sequence_length: int = 512,
        num_frames: int = 81,
        default_size: int = 480,
    ):
        check_pipeline(pipe, _NEEDS, "wan", "WanModel")
        _check_supported(pipe)
        super().__init__(pipe, guidance_scale, max_sequence_length)
        self.temporal_factor = int(pipe.vae_scale_factor_temporal)
        self.spatial_factor = int(pipe.vae_scale_factor_spatial)
        self.patch_size = tuple(int(p) for p in self.transformer_config.patch_size)
        self.latent_channels = int(self.transformer_config.in_channels)
        self.integer_timesteps = check_flow_scheduler(pipe.scheduler)
        self._timestep_table: dict[float, float] = {}  # fp32 sigma -> the scheduler's int timestep
        self.num_frames = num_frames
        check_video_size(default_size, default_size, self.size_factors)
        self._default_size = default_size

    @classmethod
    def from_pretrained(cls, id_or_dir: str, num_frames: int = 81, default_size: int = 480, **kw: Any):
        model = super().from_pretrained(id_or_dir, **kw)
        model.num_frames, model._default_size = num_frames, default_size
        return model

    @property
    def num_frames(self) -> int:
        return self._num_frames

    @num_frames.setter
    def num_frames(self, value: int) -> None:
        self._num_frames = check_num_frames(value, self.temporal_factor)

    @property
    def default_size(self) -> int:
        return self._default_size

    @property
    def size_factors(self) -> tuple[int, int]:
        s, (_, ph, pw) = self.spatial_factor, self.patch_size
        return math.lcm(16, s * ph), math.lcm(16, s * pw)

    def latent_frames(self, num_frames: int) -> int:
        return (check_num_frames(num_frames, self.temporal_factor) - 1) // self.temporal_factor + 1

    # --- encode --------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(
        self,
        prompts: str | Sequence[str],
        guidance_scale: float | None = None,
        negative_prompts: str | Sequence[str] | None = None,
    ) -> Cond:
        prompts = check_prompts(prompts)
        w = self.default_guidance if guidance_scale is None else float(guidance_scale)
        cfg, negs = w > 1, broadcast_negatives(negative_prompts, len(prompts)) if w > 1 else None
        pe, npe = self.pipe.encode_prompt(
            prompt=prompts,
            negative_prompt=negs,
            do_classifier_free_guidance=cfg,
            max_sequence_length=self.max_sequence_length,
            device=self.device,
        )
        embeds = {"prompt_embeds": pe, **({"negative_prompt_embeds": npe} if cfg else {})}
        return Cond(embeds=embeds, guidance_scale=w, prompts=prompts)

    # --- velocity ------------------------------------------------------------------------------
    def timestep(self, sigma: Tensor) -> Tensor:
        """Flow time [B] -> the raw timestep the pipeline hands the transformer (see departure 2)."""
        if not self.integer_timesteps:
            return sigma_to_timestep(sigma)
        rule = torch.trunc(sigma.double().clamp(max=UNIPC_SIGMA_MAX) * NUM_TRAIN_TIMESTEPS)
        if not self._timestep_table:
            return rule.to(sigma.dtype)
        table = self._timestep_table
        values = [table.get(s, r) for s, r in zip(sigma.tolist(), rule.tolist())]
        return torch.tensor(values, dtype=sigma.dtype, device=sigma.device)

    def _forward(self, x: Tensor, t: Tensor, text: Tensor) -> Tensor:
        kw = dict(hidden_states=x, timestep=t, encoder_hidden_states=text.to(x.dtype), return_dict=False)
        return self.transformer(**kw)[0].float()

    def velocity(self, x: Tensor, sigma: Tensor | float, cond: Cond) -> Tensor:
        """x [B, C, F', H', W'], sigma scalar or [B] -> v [B, C, F', H', W'] fp32 (CFG applied)."""
        b, w, e = x.shape[0], float(cond.guidance_scale), cond.embeds
        if x.ndim != 5:
            raise ValueError(f"Wan latents are [B, C, F', H', W'], got shape {tuple(x.shape)}.")
        if e["prompt_embeds"].shape[0] != b:
            raise ValueError(f"latents have batch {b}, the Cond {e['prompt_embeds'].shape[0]} rows; select/repeat it.")
        if w > 1 and "negative_prompt_embeds" not in e:
            raise ValueError(
                f"guidance_scale={w} > 1 needs a Cond encoded with CFG: encode(prompts, guidance_scale={w})."
            )
        t = self.timestep(as_sigma(sigma, b, x.device))
        hidden = x.to(self.dtype)
        v = self._forward(hidden, t, e["prompt_embeds"])
        self.count(b)
        if w <= 1:
            return v
        v_u = self._forward(hidden, t, e["negative_prompt_embeds"])
        return v_u + w * (v - v_u)

    # --- latents <-> videos --------------------------------------------------------------------
    def decode_video(self, x: Tensor) -> Tensor:
        """Latents [B, C, F', H', W'] -> videos [B, F, 3, H, W] in [0, 1] (differentiable)."""
        cfg = self.vae.config
        if x.ndim != 5 or x.shape[1] != cfg.z_dim:
            raise ValueError(f"Wan latents are [B, {cfg.z_dim}, F', H', W'], got shape {tuple(x.shape)}.")
        z = x.to(self.vae.dtype)
        mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(z.device, z.dtype)
        inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(z.device, z.dtype)
        video = self.vae.decode(z / inv_std + mean, return_dict=False)[0]  # [B, 3, F, H, W] in [-1, 1]
        return (video.float() / 2 + 0.5).clamp(0, 1).transpose(1, 2)

    def decode(self, x: Tensor, height: int | None = None, width: int | None = None) -> Tensor:
        """Videos [B, F, 3, H, W] in [0, 1]; a one-frame video comes back as images [B, 3, H, W]."""
        video = self.decode_video(x)
        return video[:, 0] if video.shape[1] == 1 else video

    def initial_noise(
        self,
        batch_size: int,
        height: int,
        width: int,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_frames: int | None = None,
    ) -> Tensor:
        """[B, C, (F - 1) / 4 + 1, H / 8, W / 8] fp32 drawn exactly as ``WanPipeline.prepare_latents``."""
        from diffusers.utils.torch_utils import randn_tensor

        frames = self.latent_frames(self.num_frames if num_frames is None else num_frames)
        check_video_size(height, width, self.size_factors)
        check_generators(generator, batch_size)
        s = self.spatial_factor
        shape = (batch_size, self.latent_channels, frames, height // s, width // s)
        return randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)

    # --- schedule ------------------------------------------------------------------------------
    def sigmas(self, num_steps: int, height: int, width: int) -> Tensor:
        """The pipeline scheduler's grid [T+1] (a fresh copy's ``set_timesteps(T)``), first value set
        back to 1 where UniPC lowered it to 1 - 1e-6 (departure 1)."""
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps={num_steps!r} must be an int >= 1; use e.g. num_steps=20.")
        check_video_size(height, width, self.size_factors)
        fresh = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
        fresh.set_timesteps(num_steps, device="cpu")
        grid = fresh.sigmas.detach().float().cpu().clone()
        if 0 < 1 - float(grid[0]) <= 1e-5:
            grid[0] = 1.0
        if self.integer_timesteps:
            self._timestep_table.update(zip(grid[:-1].tolist(), fresh.timesteps.double().tolist()))
        return grid
