"""Flux (FLUX.1-dev / -schnell style) as a ``FlowModel`` over any ``FluxPipeline``'s components.

Reproduces diffusers' ``FluxPipeline.__call__``: the pipeline's ``encode_prompt``, noise drawn and
packed as its ``prepare_latents``, ``linspace(1, 1/N, N)`` sigmas with the resolution-dependent
shift ``mu``, the timestep passed as ``t / 1000`` (= sigma) and the distilled guidance value fed to
the guidance embedding (no CFG doubling).
Departures: "true CFG" with negative prompts (``true_cfg_scale``) and IP-adapters are not supported;
the timestep is passed in fp32 (the pipeline first rounds ``1000 sigma`` to the latents' dtype) and
states between steps stay fp32 (the pipeline keeps them in the weights' dtype): both only matter
in half precision.

Latents are packed tokens ``[B, (h/2)(w/2), 4C]`` with ``h = H / f``; the image size of a token
count is remembered by ``initial_noise`` (or given to ``encode``, which wins), else a square image
is assumed. Alternating two sizes with the same token count (32x64 / 64x32): pass them to ``encode``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..sampling.schedule import flux_mu, flux_sigmas
from ..types import Cond
from .base import NUM_TRAIN_TIMESTEPS, as_sigma, check_generators, check_prompts, check_size, sigma_to_timestep
from .common import DiffusersFlowModel, check_pipeline, is_plain_flow_scheduler, packed_size, scheduler_sigmas

_NEEDS = ("transformer", "vae", "scheduler", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")


def scheduler_mu(config: Any, image_seq_len: int, max_shift_default: float = 1.15) -> float:
    """``calculate_shift`` with the scheduler config's values and the pipelines' defaults."""
    return flux_mu(
        image_seq_len,
        config.get("base_image_seq_len", 256),
        config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5),
        config.get("max_shift", max_shift_default),
    )


class FluxModel(DiffusersFlowModel):
    """``v(x, sigma | prompt)`` of Flux with the guidance embedding inside.

    ``Cond.embeds``: ``prompt_embeds`` [B, L, D] (T5) and ``pooled`` [B, P] (CLIP);
    ``Cond.static``: ``txt_ids`` [L, 3] and, when ``encode`` got a size, ``img_ids`` [N, 3] and
    ``size`` (height, width).
    """

    pipeline_class_name = "FluxPipeline"
    default_steps = 28
    default_guidance = 3.5  # FluxPipeline's default guidance_scale

    def __init__(self, pipe: Any, guidance_scale: float | None = None, max_sequence_length: int = 512):
        check_pipeline(pipe, _NEEDS, "flux", "FluxModel")
        super().__init__(pipe, guidance_scale, max_sequence_length)
        self.vae_scale_factor = int(pipe.vae_scale_factor)
        self.latent_channels = int(self.transformer_config.in_channels) // 4
        self._sizes: dict[int, tuple[int, int]] = {}  # packed token count -> (height, width) in pixels
        self._img_ids: dict[tuple[int, int], Tensor] = {}

    @property
    def default_size(self) -> int:
        return int(self.pipe.default_sample_size) * self.vae_scale_factor

    @property
    def size_factor(self) -> int:
        return self.vae_scale_factor * 2  # VAE factor x the 2x2 packing

    def _latent_hw(self, height: int, width: int) -> tuple[int, int]:
        return 2 * (height // self.size_factor), 2 * (width // self.size_factor)

    def _size_of(self, tokens: int) -> tuple[int, int]:
        return packed_size(self._sizes, tokens, self.size_factor, "Flux")

    def image_ids(self, height: int, width: int) -> Tensor:
        """[(h/2)(w/2), 3] positions of the packed tokens, as ``FluxPipeline._prepare_latent_image_ids``."""
        key = (height, width)
        if key not in self._img_ids:
            h, w = self._latent_hw(height, width)
            self._img_ids[key] = self.pipe._prepare_latent_image_ids(
                1, h // 2, w // 2, self.device, self.pipe.text_encoder_2.dtype
            )
        return self._img_ids[key]

    # --- encode --------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(
        self,
        prompts: str | Sequence[str],
        guidance_scale: float | None = None,
        negative_prompts: str | Sequence[str] | None = None,
        *,
        height: int | None = None,
        width: int | None = None,
    ) -> Cond:
        prompts = check_prompts(prompts)
        if negative_prompts is not None:
            raise ValueError(
                "FluxModel does not support negative_prompts (true CFG); Flux uses the "
                "distilled guidance value instead: pass guidance_scale=3.5 and no negatives."
            )
        w = self.default_guidance if guidance_scale is None else float(guidance_scale)
        pe, pooled, txt_ids = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, device=self.device, max_sequence_length=self.max_sequence_length
        )
        static: dict[str, Any] = {"txt_ids": txt_ids}
        if height is not None or width is not None:
            height, width = height or width, width or height
            check_size(height, width, self.size_factor, "Flux: VAE scale factor x 2 (latent packing)")
            static.update(img_ids=self.image_ids(height, width), size=(height, width))
        return Cond(embeds={"prompt_embeds": pe, "pooled": pooled}, guidance_scale=w, static=static, prompts=prompts)

    # --- velocity ------------------------------------------------------------------------------
    def velocity(self, x: Tensor, sigma: Tensor | float, cond: Cond) -> Tensor:
        """x [B, N, 4C] packed, sigma scalar or [B] -> v [B, N, 4C] fp32."""
        b, dtype = x.shape[0], self.dtype
        if cond.embeds["prompt_embeds"].shape[0] != b:
            raise ValueError(
                f"latents have batch {b} but the conditioning has "
                f"{cond.embeds['prompt_embeds'].shape[0]} rows; select/repeat the Cond."
            )
        img_ids = cond.static.get("img_ids")
        if img_ids is None or img_ids.shape[0] != x.shape[1]:
            img_ids = self.image_ids(*self._size_of(x.shape[1]))
        sigma = as_sigma(sigma, b, x.device)
        t = sigma_to_timestep(sigma) / NUM_TRAIN_TIMESTEPS  # the Flux transformer takes t / 1000
        guidance = None
        if self.transformer_config.guidance_embeds:
            guidance = torch.full([b], float(cond.guidance_scale), device=x.device, dtype=torch.float32)
        out = self.transformer(
            hidden_states=x.to(dtype),
            timestep=t,
            guidance=guidance,
            pooled_projections=cond.embeds["pooled"].to(dtype),
            encoder_hidden_states=cond.embeds["prompt_embeds"].to(dtype),
            txt_ids=cond.static["txt_ids"],
            img_ids=img_ids,
            return_dict=False,
        )[0]
        self.count(b)
        return out.float()

    # --- latents <-> images --------------------------------------------------------------------
    def unpack(self, x: Tensor, height: int | None = None, width: int | None = None) -> Tensor:
        """Packed [B, N, 4C] -> VAE latents [B, C, h, w]."""
        if height is None or width is None:
            height, width = self._size_of(x.shape[1])
        return self.pipe._unpack_latents(x, height, width, self.vae_scale_factor)

    def decode(self, x: Tensor, height: int | None = None, width: int | None = None) -> Tensor:
        """Packed latents -> images [B, 3, H, W] in [0, 1] (differentiable)."""
        return self._vae_decode(self.unpack(x, height, width))

    def initial_noise(
        self, batch_size: int, height: int, width: int, generator: torch.Generator | list[torch.Generator] | None = None
    ) -> Tensor:
        """[B, (h/2)(w/2), 4C] fp32 drawn and packed exactly as ``FluxPipeline.prepare_latents``."""
        from diffusers.utils.torch_utils import randn_tensor

        check_size(height, width, self.size_factor, "Flux: VAE scale factor x 2 (latent packing)")
        check_generators(generator, batch_size)
        h, w = self._latent_hw(height, width)
        shape = (batch_size, self.latent_channels, h, w)
        noise = randn_tensor(shape, generator=generator, device=self.device, dtype=self.pipe.text_encoder_2.dtype)
        packed = self.pipe._pack_latents(noise, batch_size, self.latent_channels, h, w)
        self._sizes[packed.shape[1]] = (height, width)
        return packed.float()

    # --- schedule ------------------------------------------------------------------------------
    def sigmas(self, num_steps: int, height: int, width: int) -> Tensor:
        """The pipeline's grid [T+1]: ``flux_sigmas(T, mu)`` with ``mu`` from the packed sequence
        length; non-default scheduler configs are read off a fresh copy of the scheduler."""
        check_size(height, width, self.size_factor, "Flux: VAE scale factor x 2 (latent packing)")
        h, w = self._latent_hw(height, width)
        config = self.pipe.scheduler.config
        mu = scheduler_mu(config, (h // 2) * (w // 2))
        if (
            is_plain_flow_scheduler(config)
            and config.get("use_dynamic_shifting", False)
            and not config.get("use_flow_sigmas", False)
        ):
            return flux_sigmas(num_steps, mu)
        import numpy as np

        grid = None if config.get("use_flow_sigmas", False) else np.linspace(1.0, 1 / num_steps, num_steps)
        return scheduler_sigmas(self.pipe.scheduler, num_steps, sigmas=grid, mu=mu)
