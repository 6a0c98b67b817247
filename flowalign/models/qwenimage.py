"""Qwen-Image as a ``FlowModel`` over any ``QwenImagePipeline``'s components.

Reproduces diffusers' (0.42.1) ``QwenImagePipeline.__call__``: the pipeline's own ``encode_prompt``
(Qwen2.5-VL last hidden state under the system template, its first 34 tokens dropped, the padding
mask kept), noise drawn as ``[B, 1, C, h, w]`` in the text encoder's dtype and packed 2x2 into
``[B, (h/2)(w/2), 4C]``, ``linspace(1, 1/N, N)`` sigmas with the resolution-dependent shift ``mu``
(read off a fresh scheduler when the config has e.g. ``shift_terminal``), the timestep passed as
``t / 1000`` (= sigma), ``img_shapes`` for the RoPE, and true CFG: separate conditional and
negative forwards, ``comb = v_u + w (v_c - v_u)`` rescaled token-wise to the conditional norm
``comb * |v_c| / |comb|``. Decoding unpacks, de-normalises with the VAE's per-channel
``latents_mean`` / ``latents_std`` and drops the frame axis.

Departures: prompt embeddings are stored padded (zeros, mask 0) to ``max_sequence_length`` rows so
Conds of different batches concatenate; ``velocity`` trims them back to the longest prompt of the
batch it is given and passes no mask when none is padded, as the pipeline does. With a guidance
scale > 1 and no negative prompt the negative is ``" "`` (the pipeline would skip CFG; pass
``guidance_scale=1`` for that); guidance-distilled transformers (``guidance_embeds``) are refused;
the CFG combination and states between steps stay fp32 (the pipeline keeps the weights' dtype); a
grid the scheduler makes non-finite (Qwen-Image's ``shift_terminal`` with one step: 0 / 0 in
diffusers) is refused instead of sampled.

Latents are packed tokens; the image size of a token count is remembered by ``initial_noise`` (or
given to ``encode``), else a square image is assumed, as for Flux.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..sampling.schedule import flux_sigmas
from ..types import Cond
from .base import NUM_TRAIN_TIMESTEPS, as_sigma, check_generators, check_prompts, check_size, sigma_to_timestep
from .common import DiffusersFlowModel, check_pipeline, is_plain_flow_scheduler, packed_size, scheduler_sigmas
from .flux import scheduler_mu
from .sd3 import broadcast_negatives

_NEEDS = ("transformer", "vae", "scheduler", "text_encoder", "tokenizer")
_CLASS_TO_FAMILY = {"QwenImagePipeline": "qwenimage", "QwenImageEditPipeline": "qwenimage_edit"}


def qwen_family_of_class(name: str) -> str | None:
    """'qwenimage' / 'qwenimage_edit' for exactly these pipeline classes (the img2img, inpaint,
    controlnet and Edit-Plus variants differ and are not covered)."""
    return _CLASS_TO_FAMILY.get(name)


def qwen_pipeline_family(pipe: Any) -> str | None:
    return next((f for f in map(qwen_family_of_class, (c.__name__ for c in type(pipe).__mro__)) if f), None)


def pad_rows(embeds: Tensor, mask: Tensor | None, length: int) -> tuple[Tensor, Tensor]:
    """[B, L, D] embeddings and their [B, L] mask (None = all valid) -> zero-padded to ``length``."""
    b, n, _ = embeds.shape
    mask = torch.ones(b, n, dtype=torch.long, device=embeds.device) if mask is None else mask.long()
    if n >= length:
        return embeds, mask
    return torch.nn.functional.pad(embeds, (0, 0, 0, length - n)), torch.nn.functional.pad(mask, (0, length - n))


def trim_rows(embeds: Tensor, mask: Tensor) -> tuple[Tensor, Tensor | None]:
    """Drop padding columns no row uses; the mask becomes None when nothing is padded (the pipeline's
    ``encode_prompt`` does the same)."""
    n = max(int(mask.sum(1).max()), 1)
    embeds, mask = embeds[:, :n], mask[:, :n]
    return embeds, (None if bool(mask.all()) else mask)


class QwenImageModel(DiffusersFlowModel):
    """``v(x, sigma | prompt)`` of Qwen-Image with true CFG inside.

    ``Cond.embeds``: ``prompt_embeds`` [B, L, D] and ``prompt_mask`` [B, L] and, when the guidance
    scale is > 1, ``negative_prompt_embeds`` / ``negative_prompt_mask``; ``Cond.static``: ``size``
    (height, width) when ``encode`` got one.
    """

    pipeline_class_name = "QwenImagePipeline"
    family = "qwenimage"
    needs: tuple[str, ...] = _NEEDS
    default_steps = 50  # QwenImagePipeline's num_inference_steps
    default_guidance = 4.0  # QwenImagePipeline's true_cfg_scale

    def __init__(self, pipe: Any, guidance_scale: float | None = None, max_sequence_length: int = 512):
        name = type(self).__name__
        check_pipeline(pipe, self.needs, self.family, name)
        found = qwen_pipeline_family(pipe)
        if found is not None and found != self.family:
            raise ValueError(
                f"{name} needs a {self.family} pipeline, got a {type(pipe).__name__} ({found}); "
                f"use flowalign.models.load_model(pipe), which picks the adapter."
            )
        if not isinstance(max_sequence_length, int) or not 1 <= max_sequence_length <= 1024:
            raise ValueError(
                f"max_sequence_length={max_sequence_length!r} must be an int in [1, 1024] "
                f"(QwenImagePipeline's limit); use e.g. 512 (its default)."
            )
        super().__init__(pipe, guidance_scale, min(max_sequence_length, 512))
        self.max_sequence_length = max_sequence_length
        if self.transformer_config.guidance_embeds:
            raise ValueError(f"{name} does not support guidance-distilled transformers (guidance_embeds=True).")
        self.vae_scale_factor = int(pipe.vae_scale_factor)
        self.latent_channels = int(self.transformer_config.in_channels) // 4
        self._sizes: dict[int, tuple[int, int]] = {}  # packed token count -> (height, width) in pixels

    @property
    def default_size(self) -> int:
        return int(self.pipe.default_sample_size) * self.vae_scale_factor

    @property
    def size_factor(self) -> int:
        return self.vae_scale_factor * 2  # VAE factor x the 2x2 packing

    def check_size(self, height: int, width: int) -> None:
        check_size(height, width, self.size_factor, f"{self.family}: VAE scale factor x 2 (latent packing)")

    def _latent_hw(self, height: int, width: int) -> tuple[int, int]:
        return 2 * (height // self.size_factor), 2 * (width // self.size_factor)

    def _size_of(self, tokens: int) -> tuple[int, int]:
        return packed_size(self._sizes, tokens, self.size_factor, self.family)

    def _target_shape(self, cond: Cond, tokens: int) -> tuple[int, int, int]:
        size = cond.static.get("size")
        h, w = self._latent_hw(*size) if size is not None else (0, 0)
        if size is None or (h // 2) * (w // 2) != tokens:
            h, w = self._latent_hw(*self._size_of(tokens))
        return (1, h // 2, w // 2)

    # --- encode --------------------------------------------------------------------------------
    def _text(self, prompts: list[str], length: int, **kw: Any) -> tuple[Tensor, Tensor]:
        pe, mask = self.pipe.encode_prompt(
            prompt=prompts, device=self.device, max_sequence_length=self.max_sequence_length, **kw
        )
        if pe.shape[1] > length:
            raise ValueError(
                f"the prompt is {pe.shape[1]} tokens long, more than the {length} a Cond row holds; "
                f"pass a larger max_sequence_length (now {self.max_sequence_length})."
            )
        return pad_rows(pe, mask, length)

    def _embeds(self, prompts: list[str], w: float, negative_prompts: Any, length: int, **kw: Any) -> dict:
        pe, mask = self._text(prompts, length, **kw)
        embeds = {"prompt_embeds": pe, "prompt_mask": mask}
        if w > 1:
            negs = broadcast_negatives([" "] if negative_prompts is None else negative_prompts, len(prompts))
            npe, nmask = self._text(negs, length, **kw)
            embeds.update(negative_prompt_embeds=npe, negative_prompt_mask=nmask)
        return embeds

    def _static(self, height: int | None, width: int | None) -> dict[str, Any]:
        if height is None and width is None:
            return {}
        height, width = height or width, width or height
        self.check_size(height, width)
        return {"size": (height, width)}

    @torch.no_grad()
    def encode(
        self,
        prompts: str | Sequence[str],
        guidance_scale: float | None = None,
        negative_prompts: str | Sequence[str] | None = None,
        images: Any = None,
        *,
        height: int | None = None,
        width: int | None = None,
    ) -> Cond:
        prompts = check_prompts(prompts)
        if images is not None:
            raise ValueError(
                "qwenimage is text-to-image and takes no source images (images=...); load the edit "
                "pipeline (QwenImageEditPipeline, family 'qwenimage_edit') to edit images."
            )
        w = self.default_guidance if guidance_scale is None else float(guidance_scale)
        embeds = self._embeds(prompts, w, negative_prompts, self.max_sequence_length)
        return Cond(embeds=embeds, guidance_scale=w, static=self._static(height, width), prompts=prompts)

    # --- velocity ------------------------------------------------------------------------------
    def _forward(self, hidden: Tensor, t: Tensor, embeds: Tensor, mask: Tensor, shapes: list) -> Tensor:
        embeds, mask = trim_rows(embeds, mask)
        dtype = self.dtype
        return self.transformer(
            hidden_states=hidden.to(dtype),
            timestep=t,
            encoder_hidden_states_mask=mask,
            encoder_hidden_states=embeds.to(dtype),
            img_shapes=shapes,
            attention_kwargs={},
            return_dict=False,
        )[0].float()

    def _model_input(self, x: Tensor, cond: Cond) -> tuple[Tensor, list]:
        """The transformer's hidden states and ``img_shapes`` (the edit model appends its condition)."""
        return x, [[self._target_shape(cond, x.shape[1])]] * x.shape[0]

    def velocity(self, x: Tensor, sigma: Tensor | float, cond: Cond) -> Tensor:
        """x [B, N, 4C] packed, sigma scalar or [B] -> v [B, N, 4C] fp32 (true CFG applied)."""
        b, n, e, w = x.shape[0], x.shape[1], cond.embeds, float(cond.guidance_scale)
        if e["prompt_embeds"].shape[0] != b:
            raise ValueError(
                f"latents have batch {b} but the conditioning has "
                f"{e['prompt_embeds'].shape[0]} rows; select/repeat the Cond to match."
            )
        if w > 1 and "negative_prompt_embeds" not in e:
            raise ValueError(
                f"guidance_scale={w} > 1 needs negative embeddings, but this Cond was "
                f"encoded without CFG; call encode(prompts, guidance_scale={w})."
            )
        t = sigma_to_timestep(as_sigma(sigma, b, x.device)) / NUM_TRAIN_TIMESTEPS  # the transformer takes t/1000
        hidden, shapes = self._model_input(x, cond)
        v = self._forward(hidden, t, e["prompt_embeds"], e["prompt_mask"], shapes)[:, :n]
        if w > 1:
            v_u = self._forward(hidden, t, e["negative_prompt_embeds"], e["negative_prompt_mask"], shapes)[:, :n]
            comb = v_u + w * (v - v_u)
            v = comb * (torch.norm(v, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))
        self.count(b)
        return v

    # --- latents <-> images --------------------------------------------------------------------
    def unpack(self, x: Tensor, height: int | None = None, width: int | None = None) -> Tensor:
        """Packed [B, N, 4C] -> VAE latents [B, C, 1, h, w]."""
        if height is None or width is None:
            height, width = self._size_of(x.shape[1])
        return self.pipe._unpack_latents(x, height, width, self.vae_scale_factor)

    def decode(self, x: Tensor, height: int | None = None, width: int | None = None) -> Tensor:
        """Packed latents -> images [B, 3, H, W] in [0, 1] (differentiable), as the pipeline's
        de-normalisation + ``vae.decode`` + ``postprocess``."""
        cfg, vae = self.vae.config, self.vae
        z = self.unpack(x, height, width).to(vae.dtype)
        mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(z.device, z.dtype)
        inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(z.device, z.dtype)
        image = vae.decode(z / inv_std + mean, return_dict=False)[0][:, :, 0]
        return (image.float() * 0.5 + 0.5).clamp(0, 1)

    def initial_noise(
        self, batch_size: int, height: int, width: int, generator: torch.Generator | list[torch.Generator] | None = None
    ) -> Tensor:
        """[B, (h/2)(w/2), 4C] fp32 drawn and packed exactly as the pipeline's ``prepare_latents``."""
        from diffusers.utils.torch_utils import randn_tensor

        self.check_size(height, width)
        check_generators(generator, batch_size)
        h, w = self._latent_hw(height, width)
        shape = (batch_size, 1, self.latent_channels, h, w)
        noise = randn_tensor(shape, generator=generator, device=self.device, dtype=self.pipe.text_encoder.dtype)
        packed = self.pipe._pack_latents(noise, batch_size, self.latent_channels, h, w)
        self._sizes[packed.shape[1]] = (height, width)
        return packed.float()

    # --- schedule ------------------------------------------------------------------------------
    def sigmas(self, num_steps: int, height: int, width: int) -> Tensor:
        """The pipeline's grid [T+1]: ``flux_sigmas(T, mu)`` with ``mu`` from the packed sequence length
        for a plain dynamic-shift config; others (Qwen-Image's ``shift_terminal``) are read off a fresh
        copy of the scheduler."""
        import numpy as np

        self.check_size(height, width)
        h, w = self._latent_hw(height, width)
        config = self.pipe.scheduler.config
        mu = scheduler_mu(config, (h // 2) * (w // 2))
        if is_plain_flow_scheduler(config) and config.get("use_dynamic_shifting", False):
            return flux_sigmas(num_steps, mu)
        grid = np.linspace(1.0, 1 / num_steps, num_steps)
        with np.errstate(divide="ignore", invalid="ignore"):  # refused just below
            sigmas = scheduler_sigmas(self.pipe.scheduler, num_steps, sigmas=grid, mu=mu)
        if not bool(torch.isfinite(sigmas).all()):  # e.g. shift_terminal with one step: 0 / 0 in diffusers
            raise ValueError(
                f"the scheduler gives non-finite sigmas {sigmas.tolist()} for num_steps={num_steps} "
                f"(shift_terminal={config.get('shift_terminal')}); use num_steps >= 2."
            )
        return sigmas


def qwen_family(obj: Any) -> str | None:
    """'qwenimage' / 'qwenimage_edit' from a pipeline object, its class name (exact) or a saved
    pipeline's / hub id's base name ('qwen-image', 'qwen-image-edit'; not Edit-Plus '-2509' / '-2511')."""
    if not isinstance(obj, str):
        return qwen_pipeline_family(obj)
    if obj in _CLASS_TO_FAMILY:
        return _CLASS_TO_FAMILY[obj]
    low = obj.lower().replace("_", "-")
    if "qwen-image" not in low and "qwenimage" not in low or any(s in low for s in ("plus", "2509", "2511")):
        return None
    return "qwenimage_edit" if "edit" in low else "qwenimage"


def tiny_qwenimage(seed: int = 0, **kw: Any) -> QwenImageModel:
    """``QwenImageModel`` over ``tiny_qwen.tiny_qwenimage_pipeline(seed)`` (registered as 'tiny-qwenimage')."""
    from .tiny_qwen import tiny_qwenimage_pipeline

    return QwenImageModel(tiny_qwenimage_pipeline(seed=seed), **kw)
