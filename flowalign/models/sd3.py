"""Stable Diffusion 3 / 3.5 as a ``FlowModel`` over any ``StableDiffusion3Pipeline``'s components.

Reproduces diffusers' ``StableDiffusion3Pipeline.__call__``: the pipeline's own ``encode_prompt``
(so embeddings are identical), initial noise drawn as its ``prepare_latents``, the scheduler's sigma
grid, and classifier-free guidance as one batched forward on ``cat([x, x])`` with
``cat([negative, positive])`` embeddings and ``v = v_u + w (v_c - v_u)``.
Departures: the guidance combination and the states between steps stay in fp32 (the pipeline
keeps both in the weights' dtype, so bf16 runs differ by bf16 rounding: 0.05 on latents of
magnitude 5 for the tiny model); skip-layer guidance and IP-adapters are not supported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..sampling.schedule import shifted_sigmas
from ..types import Cond
from .base import as_sigma, check_generators, check_prompts, check_size, sigma_to_timestep
from .common import DiffusersFlowModel, check_pipeline, is_plain_flow_scheduler, scheduler_sigmas

_NEEDS = ("transformer", "vae", "scheduler", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")


def broadcast_negatives(negative_prompts: Any, batch_size: int) -> list[str]:
    """None -> [""] * B (the pipeline's default); one str -> repeated; else exactly B strings."""
    if negative_prompts is None:
        return [""] * batch_size
    negs = check_prompts(negative_prompts, "negative_prompts")
    if len(negs) == 1:
        return negs * batch_size
    if len(negs) != batch_size:
        raise ValueError(
            f"got {len(negs)} negative_prompts for {batch_size} prompts; pass one str or exactly {batch_size}."
        )
    return negs


class SD3Model(DiffusersFlowModel):
    """``v(x, sigma | prompt)`` of SD3 / SD3.5 with CFG inside.

    Latents are ``[B, C, H / f, W / f]`` with ``f`` the VAE scale factor (8 for real SD3).
    ``Cond.embeds`` holds ``prompt_embeds`` [B, L, D], ``pooled`` [B, P] and, when the guidance
    scale is > 1, ``negative_prompt_embeds`` / ``negative_pooled`` of the same shapes.
    """

    pipeline_class_name = "StableDiffusion3Pipeline"
    default_steps = 28
    default_guidance = 7.0  # StableDiffusion3Pipeline's default guidance_scale

    def __init__(self, pipe: Any, guidance_scale: float | None = None, max_sequence_length: int = 256):
        check_pipeline(pipe, _NEEDS, "sd3", "SD3Model")
        super().__init__(pipe, guidance_scale, max_sequence_length)
        self.vae_scale_factor = int(pipe.vae_scale_factor)
        self.patch_size = int(self.transformer_config.patch_size)
        self.latent_channels = int(self.transformer_config.in_channels)

    @property
    def default_size(self) -> int:
        return int(self.transformer_config.sample_size) * self.vae_scale_factor

    @property
    def size_factor(self) -> int:
        return self.vae_scale_factor * self.patch_size

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
        cfg = w > 1
        negs = broadcast_negatives(negative_prompts, len(prompts)) if cfg else None
        pe, npe, pooled, npooled = self.pipe.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            do_classifier_free_guidance=cfg,
            negative_prompt=negs,
            max_sequence_length=self.max_sequence_length,
        )
        embeds = {"prompt_embeds": pe, "pooled": pooled}
        if cfg:
            embeds.update(negative_prompt_embeds=npe, negative_pooled=npooled)
        return Cond(embeds=embeds, guidance_scale=w, prompts=prompts)

    # --- velocity ------------------------------------------------------------------------------
    def velocity(self, x: Tensor, sigma: Tensor | float, cond: Cond) -> Tensor:
        """x [B, C, h, w], sigma scalar or [B] -> v [B, C, h, w] fp32 (CFG applied)."""
        b, dtype, w = x.shape[0], self.dtype, float(cond.guidance_scale)
        t = sigma_to_timestep(as_sigma(sigma, b, x.device))
        e = cond.embeds
        if e["prompt_embeds"].shape[0] != b:
            raise ValueError(
                f"latents have batch {b} but the conditioning has "
                f"{e['prompt_embeds'].shape[0]} rows; select/repeat the Cond to match."
            )
        cfg = w > 1
        if cfg and "negative_prompt_embeds" not in e:
            raise ValueError(
                f"guidance_scale={w} > 1 needs negative embeddings, but this Cond was "
                f"encoded without CFG; call encode(prompts, guidance_scale={w})."
            )
        if cfg:
            hidden, t = torch.cat([x, x]), torch.cat([t, t])
            text = torch.cat([e["negative_prompt_embeds"], e["prompt_embeds"]])
            pooled = torch.cat([e["negative_pooled"], e["pooled"]])
        else:
            hidden, text, pooled = x, e["prompt_embeds"], e["pooled"]
        out = self.transformer(
            hidden_states=hidden.to(dtype),
            timestep=t,
            encoder_hidden_states=text.to(dtype),
            pooled_projections=pooled.to(dtype),
            return_dict=False,
        )[0].float()
        self.count(b)
        if not cfg:
            return out
        v_u, v_c = out.chunk(2)
        return v_u + w * (v_c - v_u)

    # --- latents <-> images --------------------------------------------------------------------
    def decode(self, x: Tensor, height: int | None = None, width: int | None = None) -> Tensor:
        """Latents [B, C, h, w] -> images [B, 3, h f, w f] in [0, 1] (differentiable)."""
        return self._vae_decode(x)

    def initial_noise(
        self, batch_size: int, height: int, width: int, generator: torch.Generator | list[torch.Generator] | None = None
    ) -> Tensor:
        """[B, C, H / f, W / f] fp32 drawn exactly as ``StableDiffusion3Pipeline.prepare_latents``."""
        from diffusers.utils.torch_utils import randn_tensor

        check_size(height, width, self.size_factor, "SD3: VAE scale factor x transformer patch size")
        check_generators(generator, batch_size)
        shape = (batch_size, self.latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        return randn_tensor(shape, generator=generator, device=self.device, dtype=self._embed_dtype).float()

    @property
    def _embed_dtype(self) -> torch.dtype:
        """The pipeline draws its noise in the prompt embeddings' dtype (the CLIP encoder's)."""
        return self.pipe.text_encoder.dtype

    # --- schedule ------------------------------------------------------------------------------
    def sigmas(self, num_steps: int, height: int, width: int) -> Tensor:
        """The pipeline's grid [T+1]: ``shifted_sigmas(T, shift)`` for the static-shift SD3 / SD3.5
        scheduler; other scheduler configs are read off a fresh copy of the scheduler."""
        check_size(height, width, self.size_factor, "SD3: VAE scale factor x transformer patch size")
        config = self.pipe.scheduler.config
        if is_plain_flow_scheduler(config) and not config.get("use_dynamic_shifting", False):
            return shifted_sigmas(num_steps, float(config.get("shift", 1.0)))
        kwargs = {}
        if config.get("use_dynamic_shifting", False):  # as StableDiffusion3Pipeline.__call__
            from .flux import scheduler_mu

            p = self.patch_size
            seq = (height // self.vae_scale_factor // p) * (width // self.vae_scale_factor // p)
            kwargs["mu"] = scheduler_mu(config, seq, max_shift_default=1.16)
        return scheduler_sigmas(self.pipe.scheduler, num_steps, **kwargs)
