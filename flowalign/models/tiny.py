"""Tiny, offline, real diffusers pipelines (SD3 and Flux) for tests, benchmarks and the testbed.

diffusers' own tests download tiny tokenizers from the hub; here every piece is built locally:

* the offline CLIP BPE and T5 Unigram tokenizers (every word of a given list is one token) are
  built in ``tiny_tokenizers.py``.
* ``tiny_sd3_pipeline`` / ``tiny_flux_pipeline``: fp32, ``.eval()`` components built from configs
  under fixed seeds (the global RNG is left untouched). Both survive ``save_pretrained`` /
  ``from_pretrained(local_dir)`` offline.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .tiny_tokenizers import build_clip_tokenizer, build_t5_tokenizer


@contextmanager
def _seed(seed: int) -> Iterator[None]:
    """Deterministic init without touching the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _ready(module: torch.nn.Module) -> torch.nn.Module:
    return module.float().eval()


def _clip(tok, seed: int, hidden: int, with_projection: bool, projection_dim: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        projection_dim=projection_dim,
        max_position_embeddings=tok.model_max_length,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with _seed(seed):
        return _ready((CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg))


def _t5(tok, seed: int, d_model: int = 32, umt5: bool = False):
    """A 2-layer T5 encoder over ``tok`` (``umt5``: the UMT5 variant Wan uses), seeded."""
    import transformers

    config_cls, model_cls = ("UMT5Config", "UMT5EncoderModel") if umt5 else ("T5Config", "T5EncoderModel")
    cfg = getattr(transformers, config_cls)(
        vocab_size=len(tok),
        d_model=d_model,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    with _seed(seed):
        return _ready(getattr(transformers, model_cls)(cfg))


def _vae(seed: int, latent_channels: int, **overrides: Any):
    from diffusers import AutoencoderKL

    kw: dict[str, Any] = dict(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    kw.update(overrides)
    with _seed(seed):
        return _ready(AutoencoderKL(**kw))


def tiny_sd3_pipeline(
    seed: int = 0,
    text_encoder_3: bool = False,
    words: Iterable[str] | None = None,
    transformer_kwargs: dict | None = None,
    vae_kwargs: dict | None = None,
    shift: float = 3.0,
):
    """A real ``StableDiffusion3Pipeline`` with ~100k parameters: one-layer transformer
    (patch 1, 4 latent channels), VAE with scale factor 2 (32 px -> 16x16 latents), two tiny CLIP
    encoders (hidden 16, projection 32), optional tiny T5 (else its embeddings are zeros),
    ``FlowMatchEulerDiscreteScheduler(shift=3)`` as SD3 / SD3.5."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tok = build_clip_tokenizer(words)
    kw: dict[str, Any] = dict(
        sample_size=16,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=64,
        out_channels=4,
    )
    kw.update(transformer_kwargs or {})
    with _seed(seed):
        transformer = _ready(SD3Transformer2DModel(**kw))
    t5_tok = build_t5_tokenizer(words) if text_encoder_3 else None
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=shift),
        vae=_vae(seed + 1, kw["in_channels"], **(vae_kwargs or {})),
        text_encoder=_clip(tok, seed + 2, 16, True),
        tokenizer=tok,
        text_encoder_2=_clip(tok, seed + 3, 16, True),
        tokenizer_2=tok,
        text_encoder_3=_t5(t5_tok, seed + 4, kw["joint_attention_dim"]) if text_encoder_3 else None,
        tokenizer_3=t5_tok,
    )


def tiny_flux_pipeline(
    seed: int = 0,
    words: Iterable[str] | None = None,
    guidance_embeds: bool = True,
    transformer_kwargs: dict | None = None,
    vae_kwargs: dict | None = None,
):
    """A real ``FluxPipeline``: one double + one single block transformer with the guidance
    embedding (FLUX.1-dev style), 1-channel VAE with scale factor 2 (32 px -> 16x16 latents ->
    64 packed tokens of width 4), tiny CLIP (pooled, hidden 32) and tiny T5 (d_model 32), and the
    dynamic-shift scheduler config of FLUX.1. Call with ``max_sequence_length=32``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    kw: dict[str, Any] = dict(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
        guidance_embeds=guidance_embeds,
    )
    kw.update(transformer_kwargs or {})
    with _seed(seed):
        transformer = _ready(FluxTransformer2DModel(**kw))
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    tok, t5_tok = build_clip_tokenizer(words), build_t5_tokenizer(words)
    return FluxPipeline(
        scheduler=scheduler,
        vae=_vae(seed + 1, kw["in_channels"] // 4, **(vae_kwargs or {})),
        text_encoder=_clip(tok, seed + 2, kw["pooled_projection_dim"], False),
        tokenizer=tok,
        text_encoder_2=_t5(t5_tok, seed + 3, kw["joint_attention_dim"]),
        tokenizer_2=t5_tok,
        transformer=transformer,
    )
