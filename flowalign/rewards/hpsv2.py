"""HPSv2 / HPSv2.1 (Wu et al. 2023, "Human Preference Score v2", arXiv 2306.09341).

The score is the cosine similarity of open_clip ViT-H-14 image and text embeddings after fine-tuning
on human preferences, exactly as ``hpsv2.img_score.score`` computes it (``image_features @
text_features.T`` of normalised features, no logit scale; typical values 0.2-0.35).

Departures from the ``hpsv2`` package (which is not a runtime dependency: it pins pytest 7.2 and
protobuf<4, and downloads the 3.9 GB LAION weights before loading the HPS checkpoint):
* the model is ``open_clip.create_model(arch, pretrained=None)`` + the HPS checkpoint's
  ``state_dict`` (the keys match strictly); open_clip's bundled tokenizer gives identical ids;
* preprocessing is the HPS validation transform (``ResizeMaxSize``: longest side to 224 with bicubic
  antialiasing, zero padding, OpenAI mean/std) done with torch ops, so it is differentiable and
  takes tensors instead of PIL images; for square images it equals the reference bit for bit
  on the same float input (the reference converts PIL -> float first);
* fp32 by default (the reference runs under CUDA autocast); pass ``dtype`` for half precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    Reward,
    load_into,
    load_state_dict_file,
    preprocess,
    resolve_weights,
    unique_prompts,
)

CHECKPOINTS = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
HUB_ID = "xswu/HPSv2"
HOW = (
    f"download {CHECKPOINTS['v2.1']} (or {CHECKPOINTS['v2.0']}) from the hub repo {HUB_ID} and pass "
    f"load_reward('hpsv2', path='/dir/or/file.pt'), or pass path='{HUB_ID}' to let huggingface_hub "
    "download it (network)."
)


class HPSv2Reward(Reward):
    name = "hpsv2"
    differentiable = True

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        image_size: int = 224,
        mean=OPENAI_CLIP_MEAN,
        std=OPENAI_CLIP_STD,
        batch_size: int = 16,
    ):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.image_size, self.mean, self.std, self.batch_size = image_size, mean, std, batch_size
        self.freeze()

    def image_features(self, images: Tensor) -> Tensor:
        x = preprocess(images, self.image_size, self.mean, self.std, mode="pad")
        return F.normalize(self.model.encode_image(x.to(self.dtype)).float(), dim=-1)

    @torch.no_grad()
    def text_features(self, prompts: list[str]) -> Tensor:
        tokens = self.tokenizer(prompts).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def score(self, images: Tensor, prompts: list[str], **metadata) -> Tensor:
        uniq, inv = unique_prompts(prompts)
        text = self.text_features(uniq)[inv.to(self.device)]
        return (self.image_features(images) * text).sum(-1)


def build_hpsv2(arch: str = "ViT-H-14", device=None, dtype=None, seed: int | None = None) -> HPSv2Reward:
    """The architecture with random weights (tests, benchmarks); ``seed`` makes them reproducible."""
    import open_clip

    from .clip import random_open_clip

    model = random_open_clip(arch, seed)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    reward = HPSv2Reward(model, open_clip.get_tokenizer(arch), image_size=int(size))
    return reward.to(device=device, dtype=dtype)


def load_hpsv2(
    path=None, version: str = "v2.1", arch: str = "ViT-H-14", device=None, dtype=None, batch_size: int = 16
) -> HPSv2Reward:
    """HPSv2 from a checkpoint file, a directory holding it, or the hub id ``xswu/HPSv2``.

    The file is the published ``{"state_dict": ...}`` dict, read with ``weights_only=True``."""
    if version not in CHECKPOINTS:
        raise ValueError(f"hpsv2 version={version!r}; use one of {sorted(CHECKPOINTS)}.")
    files = resolve_weights(
        "hpsv2",
        path,
        [CHECKPOINTS[version]],
        HOW + f" (version={version!r} expects {CHECKPOINTS[version]}; pass version='v2.0' for the other file)",
    )
    file = next(iter(files.values()))
    reward = build_hpsv2(arch)
    state = load_state_dict_file("hpsv2", file, list(CHECKPOINTS.values()), HOW)
    load_into("hpsv2", reward.model, state, list(CHECKPOINTS.values()), HOW)
    reward.batch_size = batch_size
    return reward.to(device=device, dtype=dtype)
