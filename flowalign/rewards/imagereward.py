"""ImageReward (Xu et al. 2023, "ImageReward: Learning and Evaluating Human Preferences for
Text-to-Image Generation", arXiv 2304.05977).

reward = (MLP(BERT_multimodal(prompt | ViT-L(image))[CLS]) - 0.16717) / 1.03334, as
``ImageReward.ImageReward.score`` computes it.

Departures from the ``image-reward`` package (which does not import with transformers 5 and pins
timm 0.6.13): the model is our BLIP text encoder (``blip.py``) + timm's ``VisionTransformer`` +
the same 5-layer MLP head, loaded from the published ``ImageReward.pt`` through ``convert_state``
(prefix renames; BLIP's unused ``vision_proj`` / ``text_proj`` / ``position_ids`` are dropped), with
the BLIP ``med_config.json`` and the bert-base-uncased ``vocab.txt`` read locally (the package
always fetches its tokenizer from the hub). Preprocessing is the package's ``Resize(224, bicubic)
+ CenterCrop + CLIP mean/std`` done with torch ops on tensors, so it is differentiable (the package
works on PIL images, i.e. on 8-bit pixels).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from .base import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    Reward,
    laion_mlp,
    load_into,
    load_state_dict_file,
    preprocess,
    resolve_weights,
    weights_error,
)
from .blip import BlipTextEncoder, MedConfig, build_vit, vit_shape_from_state

FILES = ["ImageReward.pt", "med_config.json", "vocab.txt"]
HUB_ID = "THUDM/ImageReward"
BERT_HUB_ID = "google-bert/bert-base-uncased"
HOW = (
    f"put ImageReward.pt and med_config.json (hub repo {HUB_ID}) and vocab.txt (hub repo "
    f"{BERT_HUB_ID}) in one directory and pass load_reward('imagereward', path=DIR); or pass "
    f"path='{HUB_ID}' (network; the vocab then comes from {BERT_HUB_ID} unless vocab=... is given)."
)
REWARD_MEAN, REWARD_STD = 0.16717362830052426, 1.0333394966054072
MAX_LENGTH = 35


def make_tokenizer(vocab_file: str):
    """bert-base-uncased WordPiece from a local vocab.txt, with BLIP's two added tokens."""
    import inspect

    from transformers import BertTokenizer

    kw = "vocab_file" if "vocab_file" in inspect.signature(BertTokenizer.__init__).parameters else "vocab"
    tok = BertTokenizer(**{kw: vocab_file}, do_lower_case=True)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


class ImageRewardModel(nn.Module):
    def __init__(self, med: MedConfig, vit: dict):
        super().__init__()
        self.vision = build_vit(**vit)
        self.text = BlipTextEncoder(med)
        self.head = laion_mlp(med.hidden_size)
        self.image_size = int(vit["image_size"])

    def forward(self, pixels: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        image_tokens = self.vision.forward_features(pixels)  # [B, 1 + N, width]
        cls = self.text(input_ids, attention_mask, image_tokens)[:, 0]
        return (self.head(cls).float().squeeze(-1) - REWARD_MEAN) / REWARD_STD


def convert_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Published ImageReward.pt keys -> ours: blip.visual_encoder.* -> vision.*,
    blip.text_encoder.* -> text.*, mlp.layers.* -> head.*; BLIP's unused projections dropped."""
    out = {}
    for k, v in state.items():
        if k.startswith("blip.visual_encoder."):
            out["vision." + k[len("blip.visual_encoder.") :]] = v
        elif k.startswith("blip.text_encoder."):
            if not k.endswith("embeddings.position_ids"):
                out["text." + k[len("blip.text_encoder.") :]] = v
        elif k.startswith("mlp.layers."):
            out["head." + k[len("mlp.layers.") :]] = v
        elif not k.startswith(("blip.vision_proj.", "blip.text_proj.")):
            out[k] = v  # unknown: reported by the strict load
    return out


class ImageRewardReward(Reward):
    name = "imagereward"
    differentiable = True

    def __init__(self, model: ImageRewardModel, tokenizer, batch_size: int = 16):
        super().__init__()
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.freeze()

    def tokenize(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        t = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        return t["input_ids"].to(self.device), t["attention_mask"].to(self.device)

    def score(self, images: Tensor, prompts: list[str], **metadata) -> Tensor:
        x = preprocess(images, self.model.image_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, mode="crop")
        ids, mask = self.tokenize(prompts)
        return self.model(x.to(self.dtype), ids, mask)


def build_imagereward(
    med: MedConfig | None = None, vit: dict | None = None, tokenizer=None, seed: int | None = None
) -> ImageRewardReward:
    """Random weights of the given shape (defaults: BLIP ViT-L/16 + BERT-base); for tests/benchmarks."""
    if seed is not None:
        torch.manual_seed(seed)
    vit = vit or dict(width=1024, depth=24, heads=16, patch=16, image_size=224)
    med = med or MedConfig(encoder_width=vit["width"])
    return ImageRewardReward(ImageRewardModel(med, vit), tokenizer)


def load_imagereward(
    path=None, vocab: str | None = None, device=None, dtype=None, vit_heads: int | None = None, batch_size: int = 16
) -> ImageRewardReward:
    """ImageReward from a directory with ImageReward.pt + med_config.json + vocab.txt, or a hub id.

    ``vocab``: a vocab.txt (or a directory / hub id holding one) when it is not beside the weights.
    ``vit_heads``: ViT heads when the width is not 64 x heads (BLIP's ViTs are)."""
    if path is None or (os.path.isdir(os.path.expanduser(str(path))) and vocab is None):
        files = resolve_weights("imagereward", path, FILES, HOW)
    else:
        files = resolve_weights("imagereward", path, FILES[:2], HOW)
        vocab_src = vocab if vocab is not None else (BERT_HUB_ID if path is not None else None)
        files.update(resolve_weights("imagereward", vocab_src, ["vocab.txt"], HOW))
    state = convert_state(load_state_dict_file("imagereward", files["ImageReward.pt"], FILES, HOW))
    if "vision.patch_embed.proj.weight" not in state:
        raise weights_error(
            "imagereward",
            FILES,
            HOW,
            f"{files['ImageReward.pt']} has no 'blip.visual_encoder.*' tensors: not an ImageReward checkpoint.",
        )
    vit = vit_shape_from_state(state, "vision.")
    if vit_heads is not None:
        vit["heads"] = vit_heads
    try:
        med = MedConfig.from_json(files["med_config.json"], encoder_width=vit["width"])
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise weights_error("imagereward", FILES, HOW, f"bad med_config.json: {e}") from e
    model = ImageRewardModel(med, vit)
    load_into("imagereward", model, state, FILES, HOW)
    reward = ImageRewardReward(model, make_tokenizer(files["vocab.txt"]), batch_size=batch_size)
    return reward.to(device=device, dtype=dtype)
