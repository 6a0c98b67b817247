"""BLIP's image-grounded text encoder (Li et al. 2022, "BLIP", arXiv 2201.12086), as ImageReward uses it.

ImageReward scores the ``[CLS]`` state of a BERT whose every layer does bidirectional self-attention
over the prompt, then cross-attention to the ViT image tokens, then the feed-forward block. The
upstream definition (BLIP's ``med.py``, a fork of transformers 4.15's BERT) no longer imports with
transformers 5, and transformers' own ``BertModel`` cannot express it: it only adds cross-attention
to causal decoders, its cross-attention keys/values read ``hidden_size`` (BLIP's read the ViT width,
1024 for ViT-L) and it adds token-type embeddings BLIP lacks. So this module defines that encoder
directly, with the same parameter names as ``med.py`` (the checkpoint converter is then a prefix
rename), on torch's ``scaled_dot_product_attention``; the image tower is timm's
``VisionTransformer``, whose parameter names equal BLIP's ViT. Inference only: no dropout, no
KV cache, no decoder mode. The padding mask uses BLIP's additive ``-10000``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class MedConfig:
    """The fields of BLIP's ``med_config.json`` the encoder uses."""

    vocab_size: int = 30524
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    encoder_width: int = 768  # replaced by the ViT width, as BLIP does

    @classmethod
    def from_json(cls, path: str, encoder_width: int | None = None) -> MedConfig:
        with open(path) as f:
            raw = json.load(f)
        cfg = cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})
        if encoder_width is not None:
            cfg.encoder_width = encoder_width
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ValueError(
                f"med_config: hidden_size={cfg.hidden_size} is not a multiple of "
                f"num_attention_heads={cfg.num_attention_heads}."
            )
        if not cfg.hidden_act.startswith("gelu"):
            raise ValueError(f"med_config: hidden_act={cfg.hidden_act!r} unsupported; BLIP uses 'gelu'.")
        return cfg


class _Embeddings(nn.Module):
    def __init__(self, cfg: MedConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: Tensor) -> Tensor:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(pos)[None])


class _SelfAttention(nn.Module):
    """q from the text; k, v from the text (self) or from the image tokens (cross)."""

    def __init__(self, cfg: MedConfig, kv_width: int):
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(kv_width, cfg.hidden_size)
        self.value = nn.Linear(kv_width, cfg.hidden_size)

    def _split(self, x: Tensor) -> Tensor:  # [B, L, H*d] -> [B, H, L, d]
        return x.view(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)

    def forward(self, x: Tensor, kv: Tensor, mask: Tensor | None) -> Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(kv)), self._split(self.value(kv))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return out.transpose(1, 2).reshape(x.shape)


class _Output(nn.Module):
    """dense -> LayerNorm(h + residual): BERT's SelfOutput and Output blocks."""

    def __init__(self, d_in: int, d_out: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)

    def forward(self, h: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(h) + residual)


class _Attention(nn.Module):
    def __init__(self, cfg: MedConfig, kv_width: int):
        super().__init__()
        self.self = _SelfAttention(cfg, kv_width)
        self.output = _Output(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: Tensor, kv: Tensor, mask: Tensor | None) -> Tensor:
        return self.output(self.self(x, kv, mask), x)


class _Intermediate(nn.Module):
    def __init__(self, cfg: MedConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.approximate = "tanh" if cfg.hidden_act in ("gelu_new", "gelu_pytorch_tanh") else "none"

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x), approximate=self.approximate)


class _Layer(nn.Module):
    def __init__(self, cfg: MedConfig):
        super().__init__()
        self.attention = _Attention(cfg, cfg.hidden_size)
        self.crossattention = _Attention(cfg, cfg.encoder_width)
        self.intermediate = _Intermediate(cfg)
        self.output = _Output(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: Tensor, mask: Tensor, image_tokens: Tensor) -> Tensor:
        x = self.attention(x, x, mask)
        x = self.crossattention(x, image_tokens, None)
        return self.output(self.intermediate(x), x)


class _Encoder(nn.Module):
    def __init__(self, cfg: MedConfig):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_hidden_layers))


class BlipTextEncoder(nn.Module):
    """BLIP's multimodal BERT (``mode='multimodal'``, no pooler). Parameter names match ``med.py``."""

    def __init__(self, cfg: MedConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = _Embeddings(cfg)
        self.encoder = _Encoder(cfg)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, image_tokens: Tensor) -> Tensor:
        """input_ids, attention_mask [B, L]; image_tokens [B, N, encoder_width] -> hidden [B, L, D]."""
        x = self.embeddings(input_ids)
        # BLIP's extended mask: 0 where attended, -10000 at padding, broadcast over heads and queries
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.encoder.layer:
            x = layer(x, mask, image_tokens)
        return x


def build_vit(
    width: int = 1024, depth: int = 24, heads: int = 16, patch: int = 16, image_size: int = 224, mlp_ratio: float = 4.0
) -> nn.Module:
    """BLIP's ViT as timm's ``VisionTransformer`` (class token, learned positions incl. the class
    token, pre-norm blocks, final LayerNorm eps 1e-6); ``forward_features`` returns all tokens."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=image_size,
        patch_size=patch,
        embed_dim=width,
        depth=depth,
        num_heads=heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=True,
        num_classes=0,
        global_pool="",
        class_token=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
    )


def vit_shape_from_state(state: dict[str, Tensor], prefix: str, head_dim: int = 64) -> dict[str, int]:
    """Infer the ViT's width / depth / patch / image size from checkpoint tensors (heads assume
    BLIP's 64-dim heads unless told otherwise)."""
    w = state[prefix + "patch_embed.proj.weight"]  # [width, 3, patch, patch]
    width, patch = int(w.shape[0]), int(w.shape[-1])
    depth = 1 + max(int(k[len(prefix) + 7 :].split(".")[0]) for k in state if k.startswith(prefix + "blocks."))
    grid = int(math.isqrt(int(state[prefix + "pos_embed"].shape[1]) - 1))
    hidden = int(state[prefix + "blocks.0.mlp.fc1.weight"].shape[0])
    return dict(
        width=width,
        depth=depth,
        heads=max(1, width // head_dim),
        patch=patch,
        image_size=grid * patch,
        mlp_ratio=hidden / width,
    )
