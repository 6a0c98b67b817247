"""CLIP score (Radford et al. 2021 CLIP; Hessel et al. 2021, "CLIPScore", arXiv 2104.08718) on open_clip.

reward = scale * max(cos(image, text), clip_at) with ``scale = 1`` and no clipping by default,
i.e. the raw cosine that DanceGRPO / MixGRPO use as their "CLIP" reward. ``scale=2.5, clip_at=0``
gives Hessel et al.'s CLIPScore; ``scale=100`` the usual "CLIP score" of T2I papers.

Also the shared open_clip loading used by the aesthetic and artifact rewards: ``load_open_clip``
takes a local checkpoint file, a local open_clip directory (with ``open_clip_config.json``), a hub
id or an open_clip pretrained tag such as ``"openai"``; only the last two touch the network, and
only because the caller named them. Preprocessing follows the model's ``preprocess_cfg``
(size, mean/std, resize mode) with torch ops (``base.preprocess``).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Reward, is_hub_id, preprocess, unique_prompts, weights_error

RESIZE_MODES = {"shortest": "crop", "longest": "pad", "squash": "squash"}


def clip_how(arch: str, param: str = "path", example: str = "hf-hub:timm/vit_large_patch14_clip_224.openai") -> str:
    return (
        f"pass {param}=PATH to an open_clip checkpoint for {arch} (open_clip_pytorch_model.bin, "
        f"open_clip_model.safetensors or a converted .pt), or a directory with open_clip_config.json "
        f"+ weights, or (network) a hub id such as {example!r} or an open_clip tag such as 'openai'."
    )


def load_open_clip(reward: str, arch: str, pretrained, device=None, dtype=None, param: str = "path") -> nn.Module:
    """An open_clip CLIP model with weights from ``pretrained`` (the caller's argument ``param``);
    one clear error when they are missing."""
    import open_clip

    how = clip_how(arch, param)
    expected = ["open_clip_pytorch_model.bin | open_clip_model.safetensors | *.pt (an open_clip state dict)"]
    if pretrained is None:
        raise weights_error(reward, expected, how, "no CLIP weights given (this reward never downloads by default).")
    src = os.path.expanduser(str(pretrained))
    try:
        if os.path.isfile(src):
            model = open_clip.create_model(arch, pretrained=None, load_weights=False)
            open_clip.load_checkpoint(model, src, strict=True)
        elif os.path.isdir(src):
            if not os.path.isfile(os.path.join(src, "open_clip_config.json")):
                raise FileNotFoundError(f"{src} has no open_clip_config.json")
            model = open_clip.create_model("local-dir:" + src)
        elif src.startswith("hf-hub:") or is_hub_id(src):
            model = open_clip.create_model(src if src.startswith("hf-hub:") else "hf-hub:" + src)
        elif src in open_clip.list_pretrained_tags_by_model(arch):
            model = open_clip.create_model(arch, pretrained=src)
        else:
            raise FileNotFoundError(
                f"{pretrained!r} is not a file, a directory, a hub id or an open_clip tag "
                f"for {arch} (tags: {open_clip.list_pretrained_tags_by_model(arch)})"
            )
    except Exception as e:
        raise weights_error(
            reward,
            expected,
            how,
            f"cannot load {arch} weights from {pretrained!r} ({type(e).__name__}: {str(e)[:300]}).",
        ) from e
    return model.to(device=device, dtype=dtype).eval()


def random_open_clip(arch: str, seed: int | None = None) -> nn.Module:
    """Random weights (open_clip's own init); its "no pretrained weights" warning is silenced."""
    import logging

    import open_clip

    if seed is not None:
        torch.manual_seed(seed)
    root, level = logging.getLogger(), logging.getLogger().level
    root.setLevel(logging.ERROR)
    try:
        return open_clip.create_model(arch, pretrained=None, load_weights=False).eval()
    finally:
        root.setLevel(level)


class OpenClipFeatures(nn.Module):
    """Differentiable normalised image features and cached-free text features of an open_clip model."""

    def __init__(self, model: nn.Module, tokenizer=None):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
        size = cfg.get("size", getattr(model.visual, "image_size", 224))
        self.size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean = tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)))
        self.std = tuple(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)))
        self.mode = RESIZE_MODES.get(cfg.get("resize_mode", "shortest"), "crop")

    def image(self, images: Tensor) -> Tensor:
        x = preprocess(images, self.size, self.mean, self.std, mode=self.mode)
        dtype = next(self.model.parameters()).dtype
        return F.normalize(self.model.encode_image(x.to(dtype)).float(), dim=-1)

    @torch.no_grad()
    def text(self, prompts: list[str]) -> Tensor:
        device = next(self.model.parameters()).device
        uniq, inv = unique_prompts(prompts)
        feats = F.normalize(self.model.encode_text(self.tokenizer(uniq).to(device)).float(), dim=-1)
        return feats[inv.to(device)]


class ClipScoreReward(Reward):
    name = "clip"
    differentiable = True

    def __init__(
        self, model: nn.Module, tokenizer, scale: float = 1.0, clip_at: float | None = None, batch_size: int = 32
    ):
        super().__init__()
        self.features = OpenClipFeatures(model, tokenizer)
        self.scale, self.clip_at, self.batch_size = scale, clip_at, batch_size
        self.freeze()

    def score(self, images: Tensor, prompts: list[str], **metadata) -> Tensor:
        cos = (self.features.image(images) * self.features.text(prompts)).sum(-1)
        if self.clip_at is not None:
            cos = cos.clamp_min(self.clip_at)
        return self.scale * cos


def tokenizer_for(arch: str, pretrained) -> object:
    """open_clip's tokenizer for a built-in arch, a local open_clip directory or a hub model."""
    import open_clip

    src = os.path.expanduser(str(pretrained)) if pretrained is not None else ""
    if os.path.isdir(src):
        return open_clip.get_tokenizer("local-dir:" + src)
    if src.startswith("hf-hub:") or (src and is_hub_id(src)):
        return open_clip.get_tokenizer(src if src.startswith("hf-hub:") else "hf-hub:" + src)
    return open_clip.get_tokenizer(arch)


def build_clip_score(arch: str = "ViT-L-14", seed: int | None = None, **kw) -> ClipScoreReward:
    """Random weights (tests / benchmarks)."""
    return ClipScoreReward(random_open_clip(arch, seed), tokenizer_for(arch, None), **kw)


def load_clip_score(
    path=None, arch: str = "ViT-L-14", scale: float = 1.0, clip_at: float | None = None, device=None, dtype=None
) -> ClipScoreReward:
    """CLIP score with open_clip weights from ``path`` (see ``load_open_clip``)."""
    model = load_open_clip("clip", arch, path)
    reward = ClipScoreReward(model, tokenizer_for(arch, path), scale=scale, clip_at=clip_at)
    return reward.to(device=device, dtype=dtype)
