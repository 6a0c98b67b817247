"""Tiny random-weight instances of every scorer, built offline from config (tests, benchmarks, smoke
runs). They are the real reward classes with small towers: same preprocessing, tokenisation and
scoring code as the published models, only the weights are random and the widths small.
``build(name, seed)`` returns one; ``full=True`` builds the published architecture (random weights,
for throughput measurements).
"""

from __future__ import annotations

import json
import os
import tempfile
from functools import cache

import torch

from .base import Reward

TINY_OPEN_CLIP = "flowalign-tiny-clip"
TINY_OPEN_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TINY_VIT = dict(width=128, depth=2, heads=2, patch=16, image_size=224)  # BLIP ViT, 64-dim heads
WORDS = (
    ["a", "an", "the", "of", "on", "in", "with", "and", "left", "right", "above", "below"]
    + ["red", "green", "blue", "yellow", "white", "black", "cat", "dog"]
    + ["circle", "circles", "square", "squares", "triangle", "triangles", "two", "three"]
    + ["photo", "painting", "hill", "sky"]
)


@cache
def scratch_dir() -> str:
    return tempfile.mkdtemp(prefix="flowalign-tiny-")


@cache
def register_open_clip(name: str = TINY_OPEN_CLIP, cfg_json: str = json.dumps(TINY_OPEN_CLIP_CFG)) -> str:
    """Register an open_clip model config under ``name`` (idempotent) and return the name."""
    import open_clip

    path = os.path.join(scratch_dir(), f"{name}.json")
    with open(path, "w") as f:
        f.write(cfg_json)
    open_clip.add_model_config(path)
    return name


@cache
def bert_vocab() -> str:
    """A small bert-style vocab.txt (special tokens at BERT's ids, a few words, single characters)."""
    path = os.path.join(scratch_dir(), "vocab.txt")
    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    tokens = (
        ["[PAD]"]
        + [f"[unused{i}]" for i in range(99)]
        + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        + list(WORDS)
        + chars
        + ["##" + c for c in chars if c.isalnum()]
    )
    with open(path, "w") as f:
        f.write("\n".join(dict.fromkeys(tokens)) + "\n")
    return path


def tiny_med_config(vocab_file: str | None = None, encoder_width: int = TINY_VIT["width"]) -> dict:
    """A med_config.json-style dict (BLIP fields) for a 2-layer, 64-wide BERT."""
    with open(vocab_file or bert_vocab()) as f:
        n = sum(1 for line in f if line.strip())
    return {
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": 128,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 64,
        "model_type": "bert",
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "vocab_size": n + 2,
        "encoder_width": encoder_width,
        "add_cross_attention": True,
    }


@cache
def clip_tokenizer_dir() -> str:
    """A byte-level BPE CLIP tokenizer (vocab.json + merges.txt, no merges): the 256 byte symbols,
    the same with ``</w>``, then ``<|startoftext|>`` / ``<|endoftext|>`` as the last ids."""
    d = os.path.join(scratch_dir(), "clip_tokenizer")
    os.makedirs(d, exist_ok=True)
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]  # GPT-2's byte -> unicode map
    symbols = [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]
    vocab = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(d, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f)
    with open(os.path.join(d, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    return d


def clip_processor():
    from transformers import CLIPImageProcessor, CLIPProcessor, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(clip_tokenizer_dir())
    ip = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    return CLIPProcessor(image_processor=ip, tokenizer=tok)


def clip_model(full: bool = False, vocab_size: int | None = None):
    """transformers CLIPModel: tiny, or PickScore's ViT-H/14 shape (random weights)."""
    from transformers import CLIPConfig, CLIPModel

    proc = clip_processor()
    n = vocab_size or len(proc.tokenizer)
    ids = dict(
        eos_token_id=proc.tokenizer.eos_token_id,
        bos_token_id=proc.tokenizer.bos_token_id,
        pad_token_id=proc.tokenizer.pad_token_id,
    )
    if full:
        text = dict(
            vocab_size=49408,
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            hidden_act="gelu",
            **ids,
        )
        vision = dict(
            hidden_size=1280,
            intermediate_size=5120,
            num_hidden_layers=32,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
            hidden_act="gelu",
        )
        cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=1024)
    else:
        text = dict(
            vocab_size=n,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            **ids,
        )
        vision = dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=224,
            patch_size=32,
        )
        cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)
    return CLIPModel(cfg).eval(), proc


def build(name: str, seed: int = 0, full: bool = False) -> Reward:
    """A random-weight scorer ``name`` (tiny unless ``full``)."""
    torch.manual_seed(seed)
    arch = None if full else register_open_clip()
    if name == "hpsv2":
        from .hpsv2 import build_hpsv2

        return build_hpsv2(arch or "ViT-H-14")
    if name == "imagereward":
        from .blip import MedConfig
        from .imagereward import build_imagereward, make_tokenizer

        tok = make_tokenizer(bert_vocab())
        if full:
            return build_imagereward(tokenizer=tok)
        med = MedConfig(**{k: v for k, v in tiny_med_config().items() if k in MedConfig.__dataclass_fields__})
        return build_imagereward(med, dict(TINY_VIT), tok)
    if name == "pickscore":
        from .pickscore import build_pickscore

        return build_pickscore(*clip_model(full))
    if name == "clip":
        from .clip import build_clip_score

        return build_clip_score(arch or "ViT-L-14")
    if name == "aesthetic":
        from .aesthetic import build_aesthetic

        return build_aesthetic(arch or "ViT-L-14")
    if name == "artifact":
        from .artifact import ArtifactHead, ArtifactReward
        from .clip import OpenClipFeatures, random_open_clip, tokenizer_for

        model = random_open_clip(arch or "ViT-B-32")
        feats = OpenClipFeatures(model, tokenizer_for(arch or "ViT-B-32", None))
        return ArtifactReward(feats, ArtifactHead(model.visual.output_dim, 64))
    raise ValueError(f"no tiny build for {name!r}; choose hpsv2, imagereward, pickscore, clip, aesthetic, artifact.")
