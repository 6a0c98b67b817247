"""PickScore (Kirstain et al. 2023, "Pick-a-Pic", arXiv 2305.01569): a CLIP-H fine-tuned on human
preferences; reward = logit_scale.exp() * cos(image, text) as in the authors' snippet (about 18-23).

Loaded with transformers' ``CLIPModel`` + ``CLIPProcessor`` from a local directory (or hub ids, which
download only because the caller named them: model ``yuvalkirstain/PickScore_v1``, processor
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``). Departures: the processor's PIL resize / crop /
rescale / normalise is replaced by torch ops with the processor's own size, mean and std
(``base.preprocess``), so the score is differentiable; ``divisor`` rescales the score (Flow-GRPO
divides by 26 to land near [0, 1]).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Reward, is_hub_id, preprocess, unique_prompts, weights_error

MODEL_HUB_ID = "yuvalkirstain/PickScore_v1"
PROCESSOR_HUB_ID = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
EXPECTED = [
    "config.json + model.safetensors | pytorch_model.bin (CLIPModel)",
    "preprocessor_config.json | processor_config.json + tokenizer files (tokenizer.json | vocab.json + "
    "merges.txt) (CLIPProcessor)",
]
HOW = (
    f"save the model ({MODEL_HUB_ID}) and the processor ({PROCESSOR_HUB_ID}) locally and pass "
    f"load_reward('pickscore', path=MODEL_DIR, processor=PROCESSOR_DIR) (one directory may hold both); "
    f"or pass the hub ids (network)."
)


def _features(out) -> Tensor:
    """transformers 4.x returns a tensor from get_*_features, 5.x an output object."""
    return out if torch.is_tensor(out) else out.pooler_output


class PickScoreReward(Reward):
    name = "pickscore"
    differentiable = True

    def __init__(self, model, processor, divisor: float = 1.0, batch_size: int = 16):
        super().__init__()
        self.model, self.processor = model.eval(), processor
        ip = processor.image_processor
        crop = getattr(ip, "crop_size", None) or {"height": 224}  # dict (4.x) or SizeDict (5.x)
        self.size = int(crop if isinstance(crop, int) else getattr(crop, "height", None) or crop["height"])
        self.mean, self.std = tuple(ip.image_mean), tuple(ip.image_std)
        self.divisor, self.batch_size = divisor, batch_size
        self.freeze()

    @torch.no_grad()
    def text_features(self, prompts: list[str]) -> Tensor:
        uniq, inv = unique_prompts(prompts)
        tok = self.processor.tokenizer(uniq, padding=True, truncation=True, max_length=77, return_tensors="pt")
        tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
        feats = F.normalize(_features(self.model.get_text_features(**tok)).float(), dim=-1)
        return feats[inv.to(self.device)]

    def score(self, images: Tensor, prompts: list[str], **metadata) -> Tensor:
        x = preprocess(images, self.size, self.mean, self.std, mode="crop").to(self.dtype)
        img = F.normalize(_features(self.model.get_image_features(pixel_values=x)).float(), dim=-1)
        scale = self.model.logit_scale.exp().float()
        return scale * (img * self.text_features(prompts)).sum(-1) / self.divisor


def _check_dir(path: str, need: list[list[str]], what: str) -> None:
    if not os.path.isdir(path):
        return
    if not any(all(os.path.isfile(os.path.join(path, f)) for f in option) for option in need):
        raise weights_error(
            "pickscore",
            EXPECTED,
            HOW,
            f"{what} directory {path} lacks "
            f"{' or '.join(' + '.join(o) for o in need)} (it has {sorted(os.listdir(path))[:20]}).",
        )


def load_pickscore(path=None, processor=None, divisor: float = 1.0, device=None, dtype=None) -> PickScoreReward:
    """PickScore from a local CLIPModel directory (+ processor directory) or hub ids."""
    from transformers import CLIPModel, CLIPProcessor

    if path is None:
        raise weights_error("pickscore", EXPECTED, HOW, "no weights given (this reward never downloads by default).")
    path = os.path.expanduser(str(path))
    processor = os.path.expanduser(str(processor)) if processor is not None else path
    for p in (path, processor):
        if not os.path.isdir(p) and not is_hub_id(p):
            raise weights_error("pickscore", EXPECTED, HOW, f"{p!r} is neither a directory nor a hub id.")
    _check_dir(path, [["config.json", "model.safetensors"], ["config.json", "pytorch_model.bin"]], "model")
    _check_dir(
        processor,
        [
            [cfg, *tok]
            for cfg in ("preprocessor_config.json", "processor_config.json")
            for tok in (["tokenizer.json"], ["vocab.json", "merges.txt"])
        ],
        "processor",
    )
    try:
        model = CLIPModel.from_pretrained(path)
        proc = CLIPProcessor.from_pretrained(processor)
    except Exception as e:
        raise weights_error(
            "pickscore",
            EXPECTED,
            HOW,
            f"cannot load from {path!r} / {processor!r} ({type(e).__name__}: {str(e)[:300]}).",
        ) from e
    return PickScoreReward(model, proc, divisor=divisor).to(device=device, dtype=dtype)


def build_pickscore(model, processor, **kw) -> PickScoreReward:
    """From in-memory transformers objects (tests / benchmarks with random weights)."""
    return PickScoreReward(model, processor, **kw)
