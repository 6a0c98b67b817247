"""FLUX.2 (``Flux2KleinPipeline`` and ``Flux2Pipeline`` [dev]) as a text-to-image ``FlowModel``.

Reproduces both pipelines' ``__call__`` without reference images (tested bit-exact on tiny offline
copies of each, ``tiny_flux2.py``): the pipeline's ``encode_prompt`` (Qwen3 / Mistral-3 hidden
layers stacked, the pipeline's default layers) and ``_prepare_text_ids``; noise drawn as
``prepare_latents`` (``[B, 4C, h/2, w/2]``, ``4C`` the transformer's ``in_channels``, flattened to
tokens ``[B, (h/2)(w/2), 4C]``) with the 4-D ``(t, h, w, l)`` ids of ``_prepare_latent_ids``; the grid
``linspace(1, 1/N, N)`` shifted by the scheduler with ``mu = compute_empirical_mu(seq_len, N)``; the
timestep passed as ``t / 1000`` (= sigma); Klein's true CFG ``neg + w (cond - neg)`` with the
negative prompt "" when ``guidance_scale > 1`` and the pipeline is not ``is_distilled`` (two
transformer calls, as the pipeline; counted as one NFE per row), or dev's guidance embedding.
Decoding undoes the VAE batch-norm statistics and the 2x2 patchify before ``vae.decode`` and maps
[-1, 1] to [0, 1] as ``postprocess(output_type="pt")``. ``from_pretrained`` goes through
``DiffusionPipeline``, so a saved directory or hub id yields whichever of the two it holds.

Departures: reference / edit images (``image=``) are refused (text-to-image only); the negative
prompt may be set (Klein hard-codes ""); caption upsampling is not supported; the guidance
combination and states between steps are fp32 (the pipeline keeps the weights' dtype: only matters
in half precision); tokens are un-flattened by a reshape instead of scattering by ids (the same
values for the pipeline's row-major ids); sigma grids are always read off a fresh scheduler copy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..types import Cond
from .base import NUM_TRAIN_TIMESTEPS, as_sigma, check_generators, check_prompts, check_size, sigma_to_timestep
from .common import DiffusersFlowModel, check_pipeline, packed_size, scheduler_sigmas

_NEEDS = ("transformer", "vae", "scheduler", "text_encoder", "tokenizer")
_WHAT = "FLUX.2: VAE scale factor x 2 (2x2 patchify)"

# peft suffixes of the Flux2Transformer2DModel's projections. The single blocks' output
# projection ("attn.to_out") is left out: as a suffix it also names the double blocks'
# ``to_out`` ModuleList, which peft cannot wrap.
FLUX2_LORA_TARGETS = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"]
FLUX2_LORA_TARGETS += ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out"]
FLUX2_LORA_TARGETS += ["attn.to_qkv_mlp_proj", "ff.linear_in", "ff.linear_out"]
FLUX2_LORA_TARGETS += ["ff_context.linear_in", "ff_context.linear_out"]


def is_flux2_pipeline(pipe: Any) -> bool:
    return any(c.__name__.startswith("Flux2") for c in type(pipe).__mro__)


def refuse_images(images: Any, family: str) -> None:
    """Text-to-image families take no source image: one clear error."""
    if images is not None:
        raise ValueError(
            f"{family} is a text-to-image family here and takes no source images (got images= of type "
            f"{type(images).__name__}); drop images=, or use family 'flux_kontext' for image editing."
        )


class Flux2Model(DiffusersFlowModel):
    """``v(x, sigma | prompt)`` of FLUX.2 with Klein's true CFG (or dev's guidance embedding) inside.

    ``Cond.embeds``: ``prompt_embeds`` [B, L, D] and, when true CFG runs, ``negative_embeds``
    [B, L, D]; ``Cond.static``: ``txt_ids`` [L, 4] and, when ``encode`` got a size, ``size``.
    """

    pipeline_class_name = "DiffusionPipeline"  # reads the saved class (Klein or dev) from model_index.json
    default_steps = 50  # both pipelines' default num_inference_steps
    default_guidance = 4.0  # both pipelines' default guidance_scale
    lora_targets = FLUX2_LORA_TARGETS

    def __init__(
        self,
        pipe: Any,
        guidance_scale: float | None = None,
        max_sequence_length: int = 512,
        text_encoder_out_layers: Sequence[int] | None = None,
    ):
        if not is_flux2_pipeline(pipe):
            raise ValueError(
                f"Flux2Model needs a Flux2KleinPipeline or Flux2Pipeline, got a {type(pipe).__name__}; "
                f"use flowalign.models.load_model(pipe), which picks the adapter."
            )
        check_pipeline(pipe, _NEEDS, "flux", "Flux2Model")
        super().__init__(pipe, guidance_scale, max_sequence_length)
        self.vae_scale_factor = int(pipe.vae_scale_factor)
        self.guidance_embeds = bool(self.transformer_config.guidance_embeds)
        # Klein: true CFG unless step-distilled; dev (no is_distilled): the guidance embedding
        self.true_cfg = "is_distilled" in pipe.config and not pipe.config.is_distilled
        if text_encoder_out_layers is None:  # the pipeline's own default
            import inspect

            default = inspect.signature(pipe.encode_prompt).parameters["text_encoder_out_layers"].default
            text_encoder_out_layers = default
        self.text_encoder_out_layers = tuple(int(i) for i in text_encoder_out_layers)
        self._sizes: dict[int, tuple[int, int]] = {}  # token count -> (height, width) in pixels
        self._img_ids: dict[tuple[int, int], Tensor] = {}

    @property
    def default_size(self) -> int:
        return int(self.pipe.default_sample_size) * self.vae_scale_factor

    @property
    def size_factor(self) -> int:
        return self.vae_scale_factor * 2  # VAE factor x the 2x2 patchify

    def _grid(self, height: int, width: int) -> tuple[int, int]:
        """Token grid (h/2, w/2) of an image size."""
        return height // self.size_factor, width // self.size_factor

    def _size_of(self, tokens: int) -> tuple[int, int]:
        return packed_size(self._sizes, tokens, self.size_factor, "FLUX.2")

    def image_ids(self, height: int, width: int) -> Tensor:
        """[(h/2)(w/2), 4] (t, h, w, l) positions, as ``_prepare_latent_ids``."""
        key = (height, width)
        if key not in self._img_ids:
            grid = torch.empty(1, 0, *self._grid(height, width))
            self._img_ids[key] = self.pipe._prepare_latent_ids(grid)[0].to(self.device)
        return self._img_ids[key]

    # --- encode --------------------------------------------------------------------------------
    def _embed(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        pe, ids = self.pipe.encode_prompt(
            prompt=prompts,
            device=self.device,
            max_sequence_length=self.max_sequence_length,
            text_encoder_out_layers=self.text_encoder_out_layers,
        )
        return pe, ids[0]

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
        refuse_images(images, "flux2")
        w = self.default_guidance if guidance_scale is None else float(guidance_scale)
        cfg = self.true_cfg and w > 1
        if negative_prompts is not None and not cfg:
            why = "this pipeline uses the guidance embedding" if not self.true_cfg else f"guidance_scale={w} <= 1"
            raise ValueError(f"negative_prompts need true CFG, which does not run here ({why}); drop them.")
        pe, txt_ids = self._embed(prompts)
        embeds = {"prompt_embeds": pe}
        if cfg:
            negs = (
                [""] * len(prompts) if negative_prompts is None else check_prompts(negative_prompts, "negative_prompts")
            )
            if len(negs) == 1:
                negs = negs * len(prompts)
            if len(negs) != len(prompts):
                raise ValueError(f"got {len(negs)} negative_prompts for {len(prompts)} prompts; pass one or one each.")
            embeds["negative_embeds"] = self._embed(negs)[0]
        static: dict[str, Any] = {"txt_ids": txt_ids}
        if height is not None or width is not None:
            height, width = height or width, width or height
            check_size(height, width, self.size_factor, _WHAT)
            self._sizes[math.prod(self._grid(height, width))] = (height, width)
            static["size"] = (height, width)
        return Cond(embeds=embeds, guidance_scale=w, static=static, prompts=prompts)

    # --- velocity ------------------------------------------------------------------------------
    def _forward(self, x: Tensor, t: Tensor, guidance: Tensor | None, embeds: Tensor, cond: Cond, ids: Tensor):
        return self.transformer(
            hidden_states=x.to(self.dtype),
            timestep=t,
            guidance=guidance,
            encoder_hidden_states=embeds.to(self.dtype),
            txt_ids=cond.static["txt_ids"],
            img_ids=ids,
            return_dict=False,
        )[0]

    def velocity(self, x: Tensor, sigma: Tensor | float, cond: Cond) -> Tensor:
        """x [B, N, 4C] tokens, sigma scalar or [B] -> v [B, N, 4C] fp32."""
        b, w = x.shape[0], float(cond.guidance_scale)
        rows = cond.embeds["prompt_embeds"].shape[0]
        if rows != b:
            raise ValueError(f"latents have batch {b} but the conditioning has {rows} rows; select/repeat the Cond.")
        cfg = self.true_cfg and w > 1
        if cfg and "negative_embeds" not in cond.embeds:
            raise ValueError(
                f"guidance_scale={w} > 1 needs negative embeddings, but the Cond was encoded without "
                f"them; encode with this guidance_scale instead of changing it afterwards."
            )
        ids = self.image_ids(*self._size_of(x.shape[1]))
        t = sigma_to_timestep(as_sigma(sigma, b, x.device)) / NUM_TRAIN_TIMESTEPS  # the transformer takes t / 1000
        guidance = torch.full([b], w, device=x.device, dtype=torch.float32) if self.guidance_embeds else None
        out = self._forward(x, t, guidance, cond.embeds["prompt_embeds"], cond, ids)
        if cfg:
            neg = self._forward(x, t, guidance, cond.embeds["negative_embeds"], cond, ids)
            out = neg + w * (out - neg)
        self.count(b)
        return out.float()

    # --- latents <-> images --------------------------------------------------------------------
    def unpack(self, x: Tensor, height: int | None = None, width: int | None = None) -> Tensor:
        """Tokens [B, N, 4C] -> VAE latents [B, C, h, w] (batch-norm statistics undone)."""
        if height is None or width is None:
            height, width = self._size_of(x.shape[1])
        gh, gw = self._grid(height, width)
        z = x.permute(0, 2, 1).reshape(x.shape[0], x.shape[2], gh, gw)
        bn, eps = self.vae.bn, self.vae.config.batch_norm_eps
        mean = bn.running_mean.view(1, -1, 1, 1).to(z.device, z.dtype)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + eps).to(z.device, z.dtype)
        return self.pipe._unpatchify_latents(z * std + mean)

    def decode(self, x: Tensor, height: int | None = None, width: int | None = None) -> Tensor:
        """Tokens -> images [B, 3, H, W] in [0, 1] (differentiable)."""
        z = self.unpack(x.float(), height, width)
        image = self.vae.decode(z.to(self.vae.dtype), return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1)

    def initial_noise(
        self, batch_size: int, height: int, width: int, generator: torch.Generator | list[torch.Generator] | None = None
    ) -> Tensor:
        """[B, (h/2)(w/2), 4C] fp32 drawn exactly as the pipeline's ``prepare_latents``."""
        from diffusers.utils.torch_utils import randn_tensor

        check_size(height, width, self.size_factor, _WHAT)
        check_generators(generator, batch_size)
        shape = (batch_size, int(self.transformer_config.in_channels), *self._grid(height, width))
        noise = randn_tensor(shape, generator=generator, device=self.device, dtype=self.pipe.text_encoder.dtype)
        tokens = self.pipe._pack_latents(noise)
        self._sizes[tokens.shape[1]] = (height, width)
        return tokens.float()

    # --- schedule ------------------------------------------------------------------------------
    def sigmas(self, num_steps: int, height: int, width: int) -> Tensor:
        """The pipeline's grid [T+1]: ``linspace(1, 1/T, T)`` through the scheduler with
        ``mu = compute_empirical_mu((h/2)(w/2), T)`` (the scheduler's own grid with flow sigmas)."""
        import numpy as np
        from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

        check_size(height, width, self.size_factor, _WHAT)
        mu = compute_empirical_mu(image_seq_len=math.prod(self._grid(height, width)), num_steps=num_steps)
        config = self.pipe.scheduler.config
        grid = None if config.get("use_flow_sigmas", False) else np.linspace(1.0, 1 / num_steps, num_steps)
        return scheduler_sigmas(self.pipe.scheduler, num_steps, sigmas=grid, mu=mu)


# --- registry helpers (used by models/__init__.py) -----------------------------------------------
_SUBFAMILIES = {"FluxKontext": "flux_kontext", "Flux2": "flux2"}  # checked before common's 'Flux' -> 'flux'


def subfamily_of_class(name: str) -> str | None:
    """'flux2' / 'flux_kontext' from a diffusers pipeline class name, else None."""
    return next((fam for prefix, fam in _SUBFAMILIES.items() if name.startswith(prefix)), None)


def subfamily_of_pipeline(pipe: Any) -> str | None:
    return next((f for f in map(subfamily_of_class, (c.__name__ for c in type(pipe).__mro__)) if f), None)


def subfamily_of_name(name: str) -> str | None:
    """From a hub id / directory name: 'FLUX.1-Kontext-dev' -> flux_kontext, 'FLUX.2-klein-4B' -> flux2."""
    low = name.lower()
    if "kontext" in low:
        return "flux_kontext"
    return "flux2" if "flux.2" in low or "flux2" in low else None


def tiny_flux2(seed: int = 0, variant: str = "klein", **kw: Any) -> Flux2Model:
    """Flux2Model over a tiny offline pipeline (``tiny_flux2.py``): ``variant='klein'``
    (Flux2KleinPipeline: Qwen3, true CFG) or ``'dev'`` (Flux2Pipeline: Mistral-3, guidance embedding)."""
    from . import tiny_flux2 as tiny

    builders = {"klein": (tiny.tiny_flux2_klein_pipeline, 32), "dev": (tiny.tiny_flux2_pipeline, 64)}
    if variant not in builders:
        raise ValueError(f"variant={variant!r} is not a tiny FLUX.2 pipeline; choose one of {sorted(builders)}.")
    build, max_len = builders[variant]
    kw.setdefault("max_sequence_length", max_len)
    return Flux2Model(build(seed=seed), **kw)
