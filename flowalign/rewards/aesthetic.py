"""LAION aesthetic predictor v2 (Schuhmann, "improved-aesthetic-predictor", 2022): an MLP on the
L2-normalised CLIP ViT-L/14 image embedding, trained on SAC + LAION-logos + AVA ratings (1-10 scale).

The head file is the published ``sac+logos+ava1-l14-linearMSE.pth`` (keys ``layers.{0,2,4,6,7}``),
read with ``weights_only=True``. The CLIP tower is open_clip's ViT-L-14 with OpenAI weights (the
same weights Flow-GRPO loads through transformers' ``openai/clip-vit-large-patch14``), given as
an open_clip checkpoint or hub id (see ``clip.load_open_clip``). Preprocessing is CLIP's
resize-shortest + centre crop + mean/std in torch ops, so the score is differentiable.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from .base import Reward, laion_mlp, load_into, load_state_dict_file, resolve_weights
from .clip import OpenClipFeatures, clip_how, load_open_clip, random_open_clip

HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"
CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HOW = (
    f"download {HEAD_FILE} from the improved-aesthetic-predictor repository and pass "
    f"load_reward('aesthetic', path=FILE_OR_DIR, clip=...); for the CLIP tower " + clip_how("ViT-L-14", "clip")
)


class AestheticReward(Reward):
    name = "aesthetic"
    differentiable = True

    def __init__(self, model: torch.nn.Module, head: torch.nn.Module, batch_size: int = 32):
        super().__init__()
        self.features = OpenClipFeatures(model)
        self.head, self.batch_size = head, batch_size
        self.freeze()

    def score(self, images: Tensor, prompts: list[str], **metadata) -> Tensor:
        feats = self.features.image(images)
        return self.head(feats.to(self.dtype)).float().squeeze(-1)


def _embed_dim(model: torch.nn.Module) -> int:
    proj = getattr(model.visual, "proj", None)
    if proj is not None:
        return int(proj.shape[1])
    return int(model.visual.output_dim)


def build_aesthetic(arch: str = "ViT-L-14", seed: int | None = None) -> AestheticReward:
    """Random weights (tests / benchmarks)."""
    model = random_open_clip(arch, seed)
    return AestheticReward(model, laion_mlp(_embed_dim(model)))


def load_aesthetic(path=None, clip=None, arch: str = "ViT-L-14", device=None, dtype=None) -> AestheticReward:
    """``path``: the head file or a directory holding it (and, if ``clip`` is None, an open_clip
    checkpoint named like ``open_clip_model.safetensors``). ``clip``: the CLIP weights source."""
    files = resolve_weights("aesthetic", path, [HEAD_FILE], HOW)
    if clip is None and path is not None and os.path.isdir(os.path.expanduser(str(path))):
        found = [os.path.join(os.path.expanduser(str(path)), f) for f in CLIP_FILES]
        clip = next((f for f in found if os.path.isfile(f)), None)
    model = load_open_clip("aesthetic", arch, clip, param="clip")
    head = laion_mlp(_embed_dim(model))
    state = load_state_dict_file("aesthetic", files[HEAD_FILE], [HEAD_FILE], HOW)
    state = {k[len("layers.") :] if k.startswith("layers.") else k: v for k, v in state.items()}
    load_into("aesthetic", head, state, [HEAD_FILE], HOW)
    return AestheticReward(model, head).to(device=device, dtype=dtype)
