"""Qwen-Image-Edit as a ``FlowModel`` over any ``QwenImageEditPipeline``'s components.

Reproduces diffusers' (0.42.1) ``QwenImageEditPipeline.__call__`` on top of ``qwenimage.py``: each
source image is resized (the pipeline's ``image_processor.resize``, Lanczos) to the condition size
``calculate_dimensions(1024 * 1024, W / H)`` (area ~1024^2, multiples of 32 px); the Qwen2.5-VL
sees it through the pipeline's ``encode_prompt`` (edit template, 64 tokens dropped, the image tokens
kept); its VAE latents (the posterior's mode, normalised by ``latents_mean`` / ``latents_std``) are
packed 2x2 and concatenated after the noisy tokens along the sequence, ``img_shapes`` lists the
target and the condition grids, and the transformer's output is cut back to the target tokens.
The condition latents are a row tensor of the ``Cond`` (``image_latents`` [B, Nc, 4C]), so
``select`` / ``repeat`` carry them with the prompts.

Source images: ``images`` = a tensor [B, 3, H, W] in [0, 1] or a list of PIL images (one, used for
every prompt, or one per prompt). Rule: every source image must map to the condition size of the
first (same aspect ratio up to the 32-px rounding), since one Cond holds one condition grid (the
pipeline sizes the whole batch from its first image and would stretch the others).

Departures (besides those of ``qwenimage.py``): tensors are turned into 8-bit PIL images first (the
stock pipeline only takes PIL); each image is resized for the VLM as well, as the stock pipeline does
for one PIL image (given a list it forgets to and shows the VLM the originals): outputs equal the stock
pipeline's for one PIL image, or for a list already at the condition size; ``condition_area`` may be
set (the pipeline hard-codes 1024^2); prompt rows are padded to ``max_sequence_length`` text tokens +
the image's VLM tokens; the output size is whatever ``initial_noise`` is given (the pipeline defaults
to the condition size).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..types import Cond
from .base import check_prompts
from .qwenimage import _NEEDS, QwenImageModel

MISSING = (
    "qwenimage_edit needs a source image per prompt: pass images=[PIL.Image, ...] or a [B, 3, H, W] tensor in [0, 1]"
)


def condition_size(width: int, height: int, area: int = 1024 * 1024) -> tuple[int, int]:
    """(width, height) the edit pipeline resizes a ``width x height`` source to (``calculate_dimensions``)."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import calculate_dimensions

    w, h, _ = calculate_dimensions(area, width / height)
    return int(w), int(h)


def to_pil(images: Any, batch_size: int) -> list:
    """A [B, 3, H, W] tensor in [0, 1], one PIL image or a list of them -> a list of B PIL images."""
    import PIL.Image
    from diffusers.image_processor import VaeImageProcessor

    if images is None:
        raise ValueError(MISSING + ".")
    if torch.is_tensor(images):
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(
                f"source images must be a float [B, 3, H, W] tensor, got {tuple(images.shape)} {images.dtype}."
            )
        lo, hi = float(images.min()), float(images.max())
        if lo < 0 or hi > 1:
            raise ValueError(f"source images must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}].")
        images = VaeImageProcessor.numpy_to_pil(VaeImageProcessor.pt_to_numpy(images.detach()))
    elif isinstance(images, PIL.Image.Image):
        images = [images]
    if not isinstance(images, (list, tuple)) or not all(isinstance(i, PIL.Image.Image) for i in images):
        raise ValueError(f"{MISSING}; got {type(images).__name__}.")
    if len(images) == 1:
        images = list(images) * batch_size
    if len(images) != batch_size:
        raise ValueError(f"got {len(images)} source images for {batch_size} prompts; pass one or exactly {batch_size}.")
    return [im.convert("RGB") for im in images]


class QwenImageEditModel(QwenImageModel):
    """``v(x, sigma | prompt, source image)`` of Qwen-Image-Edit with true CFG inside.

    ``Cond.embeds`` as ``QwenImageModel`` plus ``image_latents`` [B, Nc, 4C]; ``Cond.static`` adds
    ``condition_shape`` (1, hc / 2, wc / 2) (the condition's packed grid) and ``condition_size``
    (width, height) in pixels.
    """

    pipeline_class_name = "QwenImageEditPipeline"
    family = "qwenimage_edit"
    needs = _NEEDS + ("processor",)

    def __init__(
        self,
        pipe: Any,
        guidance_scale: float | None = None,
        max_sequence_length: int = 512,
        condition_area: int = 1024 * 1024,
    ):
        super().__init__(pipe, guidance_scale, max_sequence_length)
        if 32 % self.size_factor:
            raise ValueError(
                f"QwenImageEditModel needs a VAE scale factor of at most 16 (condition sizes are multiples of "
                f"32 px), got {self.vae_scale_factor}."
            )
        if not isinstance(condition_area, int) or condition_area < 32 * 32:
            raise ValueError(
                f"condition_area={condition_area!r} must be an int >= 1024 (px^2); the pipeline uses 1024 * 1024."
            )
        self.condition_area = condition_area

    def source_images(self, images: Any, batch_size: int) -> tuple[list, tuple[int, int]]:
        """The PIL sources resized to their common condition size, and that size (width, height)."""
        pil = to_pil(images, batch_size)
        sizes = [condition_size(*im.size, self.condition_area) for im in pil]
        for i, (im, size) in enumerate(zip(pil, sizes)):
            if size != sizes[0]:
                raise ValueError(
                    f"source image {i} is {im.size[0]}x{im.size[1]} (WxH) -> condition size {size[0]}x{size[1]}, but "
                    f"image 0 is {pil[0].size[0]}x{pil[0].size[1]} -> {sizes[0][0]}x{sizes[0][1]}; one call takes "
                    f"source images of one aspect ratio: resize image {i} to {pil[0].size[0]}x{pil[0].size[1]}."
                )
        cw, ch = sizes[0]
        return [self.pipe.image_processor.resize(im, ch, cw) for im in pil], (cw, ch)

    def _image_tokens(self, image: Any) -> int:
        """How many tokens the VLM spends on one (resized) source image."""
        proc = self.pipe.processor.image_processor
        grid = proc(images=[image], return_tensors="pt")["image_grid_thw"][0]
        return int(grid.prod()) // int(proc.merge_size) ** 2

    @torch.no_grad()
    def _condition_latents(self, resized: list, size: tuple[int, int], dtype: torch.dtype) -> Tensor:
        """Packed, normalised VAE latents [B, Nc, 4C] of the resized sources (``prepare_latents``)."""
        pipe, (cw, ch) = self.pipe, size
        image = pipe.image_processor.preprocess(resized, ch, cw).unsqueeze(2)
        latents = pipe._encode_vae_image(image=image.to(device=self.device, dtype=dtype), generator=None)
        b, c, _, h, w = latents.shape
        return pipe._pack_latents(latents, b, c, h, w)

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
        if images is None:
            raise ValueError(MISSING + ".")
        resized, (cw, ch) = self.source_images(images, len(prompts))
        w = self.default_guidance if guidance_scale is None else float(guidance_scale)
        length = self.max_sequence_length + self._image_tokens(resized[0])
        embeds = self._embeds(prompts, w, negative_prompts, length, image=resized)
        embeds["image_latents"] = self._condition_latents(resized, (cw, ch), embeds["prompt_embeds"].dtype)
        f = self.vae_scale_factor
        static = {**self._static(height, width), "condition_shape": (1, ch // f // 2, cw // f // 2)}
        static["condition_size"] = (cw, ch)
        return Cond(embeds=embeds, guidance_scale=w, static=static, prompts=prompts)

    def _model_input(self, x: Tensor, cond: Cond) -> tuple[Tensor, list]:
        latents, shape = cond.embeds.get("image_latents"), cond.static.get("condition_shape")
        if latents is None or shape is None:
            raise ValueError(MISSING + " to encode (this Cond has no condition latents).")
        if latents.shape[1] != math.prod(shape):
            raise ValueError(
                f"this Cond holds {latents.shape[1]} condition tokens but its condition grid is {shape}; "
                f"Conds of source images of different sizes cannot be concatenated."
            )
        hidden = torch.cat([x, latents.to(x.dtype)], dim=1)
        return hidden, [[self._target_shape(cond, x.shape[1]), tuple(shape)]] * x.shape[0]


def tiny_qwenimage_edit(seed: int = 0, **kw: Any) -> QwenImageEditModel:
    """``QwenImageEditModel`` over ``tiny_qwen.tiny_qwenimage_edit_pipeline(seed)`` ('tiny-qwenimage-edit')."""
    from .tiny_qwen import tiny_qwenimage_edit_pipeline

    return QwenImageEditModel(tiny_qwenimage_edit_pipeline(seed=seed), **kw)
