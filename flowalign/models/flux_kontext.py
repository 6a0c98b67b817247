"""FLUX.1 Kontext (``FluxKontextPipeline``) as an image-editing ``FlowModel``: ``FluxModel`` plus the
source image's latents concatenated to the token sequence.

Reproduces ``FluxKontextPipeline.__call__`` with ``_auto_resize=False`` and ``max_area = height *
width``: the source image goes through the pipeline's ``image_processor.resize`` / ``preprocess``
and ``_encode_vae_image`` (the posterior mode, scaled and shifted), is packed 2x2 like the noise and
appended after the noisy tokens, with the ids of ``_prepare_latent_image_ids`` whose first coordinate
is set to 1; the transformer's output is cut back to the noisy tokens. Text encoding, noise,
sigmas (shift ``mu`` from the noisy tokens only), timestep ``sigma`` and the guidance embedding are
``FluxModel``'s (default guidance 3.5, 28 steps, as the pipeline).

Size rule (departure): the output has the source image's size. ``encode(..., images=...)`` takes
``[B, 3, H, W]`` tensors in [0, 1] or PIL images (one per prompt, or one for all), all of one size
``H x W``, a multiple of ``size_factor`` (VAE factor x 2); nothing is resized. ``height`` / ``width``
given to ``encode`` must equal the source size, and latents of another token count are refused in
``velocity``. The stock pipeline instead snaps the source to a preferred Kontext resolution and the
output to ``max_area``, each independently.
Other departures: as ``FluxModel`` (no true CFG / negative prompts, no IP-adapter, fp32 timestep and
states); a batch of sources is VAE-encoded in one call, where the pipeline encodes one image per
generator when given a list of generators (the posterior mode needs no randomness either way).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from ..types import Cond
from .base import check_prompts, check_size
from .flux import FluxModel

_WHAT = "Flux Kontext: VAE scale factor x 2 (latent packing)"


def is_kontext_pipeline(pipe: Any) -> bool:
    return any(c.__name__.startswith("FluxKontext") for c in type(pipe).__mro__)


def _image_size(image: Any) -> tuple[int, int]:
    if isinstance(image, torch.Tensor):
        return int(image.shape[-2]), int(image.shape[-1])
    if hasattr(image, "size") and hasattr(image, "convert"):  # PIL.Image
        return int(image.size[1]), int(image.size[0])
    raise ValueError(
        f"a source image must be a [B, 3, H, W] tensor in [0, 1] or a PIL image, got {type(image).__name__}."
    )


def _as_batch(images: Any, batch: int) -> tuple[Any, tuple[int, int]]:
    """Source images -> (a [B, 3, H, W] tensor or a list of B PIL images, their common (H, W))."""
    if isinstance(images, torch.Tensor):
        if images.ndim == 3:
            images = images.unsqueeze(0)
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"source images must be [B, 3, H, W] in [0, 1], got shape {tuple(images.shape)}.")
        items = list(images)
    else:
        items = list(images) if isinstance(images, (list, tuple)) else [images]
    if len(items) not in (1, batch):
        raise ValueError(f"got {len(items)} source images for {batch} prompts; pass one per prompt (or one for all).")
    sizes = {_image_size(im) for im in items}
    if len(sizes) > 1:
        raise ValueError(f"source images have different sizes {sorted(sizes)}; resize them to one height x width.")
    if len(items) == 1 and batch > 1:
        items = items * batch
    out = torch.stack(items) if isinstance(images, torch.Tensor) else items
    return out, sizes.pop()


class FluxKontextModel(FluxModel):
    """``v(x, sigma | prompt, source image)`` of Flux Kontext.

    ``Cond.embeds``: FluxModel's plus ``context`` [B, Nc, 4C] (the packed source latents, a row entry,
    so ``select`` / ``repeat`` carry it); ``Cond.static``: FluxModel's plus ``context_ids`` [Nc, 3]
    and ``size`` = the source (and output) ``(height, width)``.
    """

    pipeline_class_name = "FluxKontextPipeline"
    default_guidance = 3.5  # FluxKontextPipeline's default guidance_scale

    def __init__(self, pipe: Any, guidance_scale: float | None = None, max_sequence_length: int = 512):
        if not is_kontext_pipeline(pipe):
            raise ValueError(
                f"FluxKontextModel needs a FluxKontextPipeline, got a {type(pipe).__name__}; use "
                f"flowalign.models.load_model(pipe), which picks the adapter."
            )
        super().__init__(pipe, guidance_scale, max_sequence_length)

    @torch.no_grad()
    def encode_source(self, images: Any, batch: int) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """Source images -> (packed latents [B, Nc, 4C], ids [Nc, 3], (H, W)) as the pipeline."""
        images, (h, w) = _as_batch(images, batch)
        check_size(h, w, self.size_factor, _WHAT + "; the source image sets the output size")
        proc = self.pipe.image_processor
        pixels = proc.preprocess(proc.resize(images, h, w), h, w)
        pixels = pixels.to(device=self.device, dtype=self.pipe.text_encoder_2.dtype)
        lat = self.pipe._encode_vae_image(pixels, generator=None)
        c, lh, lw = lat.shape[1:]
        packed = self.pipe._pack_latents(lat, lat.shape[0], c, lh, lw)
        ids = self.pipe._prepare_latent_image_ids(1, lh // 2, lw // 2, self.device, self.pipe.text_encoder_2.dtype)
        ids[..., 0] = 1
        return packed, ids, (h, w)

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
        if images is None:
            raise ValueError(
                "flux_kontext needs a source image per prompt: pass images=... ([B, 3, H, W] in [0, 1] or PIL "
                "images; the output has the source image's size)."
            )
        n = len(check_prompts(prompts))
        context, ids, (h, w) = self.encode_source(images, n)
        if (height is not None and height != h) or (width is not None and width != w):
            raise ValueError(
                f"the source image is {h}x{w} (height x width) but height={height}, width={width} were asked: "
                f"Kontext here generates at the source image's size without resizing it; resize the source "
                f"to {height or h}x{width or w} or pass height={h}, width={w}."
            )
        cond = super().encode(prompts, guidance_scale, negative_prompts, height=h, width=w)
        self._sizes[context.shape[1]] = (h, w)
        return replace(cond, embeds={**cond.embeds, "context": context}, static={**cond.static, "context_ids": ids})

    def velocity(self, x: Tensor, sigma: Tensor | float, cond: Cond) -> Tensor:
        """x [B, N, 4C] packed noisy tokens -> v [B, N, 4C] fp32 (the context tokens' output dropped)."""
        context = cond.embeds.get("context")
        if context is None:
            raise ValueError("this Cond has no source image; build it with FluxKontextModel.encode(..., images=...).")
        n = x.shape[1]
        if context.shape[1] != n:
            h, w = cond.static["size"]
            raise ValueError(
                f"latents have {n} tokens but the source image is {h}x{w} ({context.shape[1]} tokens): Kontext here "
                f"generates at the source size; draw the noise with initial_noise(batch, {h}, {w})."
            )
        if context.shape[0] != x.shape[0]:
            raise ValueError(
                f"latents have batch {x.shape[0]} but the conditioning has {context.shape[0]} rows; "
                f"select/repeat the Cond."
            )
        ids = torch.cat([self.image_ids(*cond.static["size"]), cond.static["context_ids"]], dim=0)
        joint = torch.cat([x, context.to(x.dtype)], dim=1)
        return super().velocity(joint, sigma, replace(cond, static={**cond.static, "img_ids": ids}))[:, :n]


def tiny_flux_kontext(seed: int = 0, **kw: Any) -> FluxKontextModel:
    """FluxKontextModel over the tiny offline FluxKontextPipeline (``tiny_flux2.py``)."""
    from .tiny_flux2 import tiny_flux_kontext_pipeline

    kw.setdefault("max_sequence_length", 32)
    return FluxKontextModel(tiny_flux_kontext_pipeline(seed=seed), **kw)
