"""Tiny, offline, real diffusers ``QwenImagePipeline`` / ``QwenImageEditPipeline`` for tests.

Every piece is built locally from configs (as ``tiny.py`` does for SD3 / Flux), fp32, ``.eval()``,
under fixed seeds that leave the global RNG untouched:

* ``build_qwen_tokenizer``: a byte-level BPE ``Qwen2Tokenizer`` (Qwen2's pre-tokenizer regex, the
  chat special tokens) in which every pre-token of both pipelines' prompt templates and of a word
  list is one token. The templates' prefixes then tokenize to exactly the 34 (text-to-image) and 64
  (edit) tokens the pipelines drop, as with the real Qwen2.5-VL tokenizer.
* ``build_qwen_processor``: a ``Qwen2VLProcessor`` over that tokenizer and a ``Qwen2VLImageProcessor``
  capped at 56 x 56 pixels (4 image tokens per picture; the real one allows ~12.8 MP).
* a tiny ``Qwen2_5_VLForConditionalGeneration`` (text hidden 32 = the transformer's
  ``joint_attention_dim``; a 1-block vision tower for the edit pipeline), a 2-block
  ``QwenImageTransformer2DModel`` (patch 2, 4 latent channels -> 16 packed), an
  ``AutoencoderKLQwenImage`` with 4 latent channels and per-channel ``latents_mean`` / ``latents_std``
  that are not 0 / 1 (so the normalisation is exercised), and the ``FlowMatchEulerDiscreteScheduler``
  config Qwen-Image publishes (dynamic shift 0.5 -> 0.9 over 256 -> 8192 tokens, ``shift_terminal``
  0.02; values as copied by public code, not read from the hub here).

The edit pipeline resizes its source image to ~1024 x 1024 whatever the output size (hard-coded in
``QwenImageEditPipeline.__call__``), so its VAE downsamples 16x (1024 px -> 32 x 32 packed condition
tokens) to keep CPU tests fast; the text-to-image one uses the real 8x.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from .tiny import _ready, _seed
from .tiny_tokenizers import DEFAULT_WORDS, _bpe, _bytes_to_unicode, _split_words

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# the system prompts of QwenImagePipeline / QwenImageEditPipeline (diffusers 0.42.1), for the merges
T2I_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
EDIT_TEMPLATE = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the image. Generate a new image "
    "that meets the user's requirements while maintaining consistency with the original input where appropriate."
    "<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{}<|im_end|>\n<|im_start|>assistant\n"
)
TEXT_HIDDEN = 32  # Qwen2.5-VL hidden size = the transformer's joint_attention_dim
LATENT_CHANNELS = 4


def _pretokens(texts: Iterable[str]) -> list[str]:
    """Byte-level pre-tokens of ``texts`` (special tokens removed) in first-seen order."""
    from tokenizers import Regex, pre_tokenizers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    specials = re.compile("|".join(re.escape(s) for s in SPECIAL_TOKENS + ["{}"]))
    out: dict[str, None] = {}
    for text in texts:
        for piece in specials.split(text):
            out.update((tok, None) for tok, _ in pre.pre_tokenize_str(piece))
    return list(out)


def build_qwen_tokenizer(words: Iterable[str] | None = None, save_dir: str | None = None):
    """A ``Qwen2Tokenizer`` (byte-level BPE) in which each pre-token of the two prompt templates and
    each word of ``words`` (with and without a leading space) is one token; other text falls back to
    smaller pieces / bytes. Padding token ``<|endoftext|>`` (right padding), as Qwen2.5-VL's."""
    from transformers import Qwen2Tokenizer

    word_list = _split_words(DEFAULT_WORDS if words is None else words)
    vocab = list(_bytes_to_unicode().values())
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for token in _pretokens([T2I_TEMPLATE, EDIT_TEMPLATE] + word_list + [" " + w for w in word_list]):
        while True:
            symbols = _bpe(list(token), ranks)
            if len(symbols) == 1:
                break
            pair = (symbols[0], symbols[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            vocab.append(pair[0] + pair[1])
    ids = {tok: i for i, tok in enumerate(dict.fromkeys(vocab))}
    tok = Qwen2Tokenizer(vocab=ids, merges=merges, model_max_length=32768)
    tok.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    if save_dir is not None:
        tok.save_pretrained(save_dir)
    return tok


def build_qwen_processor(tokenizer=None, max_pixels: int = 56 * 56):
    """``Qwen2VLProcessor`` (the edit pipeline's ``processor``) over ``tokenizer``; images are resized
    to at most ``max_pixels`` (multiples of 28 px) before the vision tower."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=max_pixels),
        tokenizer=tokenizer or build_qwen_tokenizer(),
        video_processor=Qwen2VLVideoProcessor(),
    )


def _text_encoder(tok, seed: int):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {name: tok.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    cfg = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": TEXT_HIDDEN,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "rope_scaling": {"mrope_section": [2, 2, 4], "rope_type": "default", "type": "default"},
            "rope_theta": 1000000.0,
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_heads": 2,
            "out_hidden_size": TEXT_HIDDEN,
            "fullatt_block_indexes": [0],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    with _seed(seed):
        return _ready(Qwen2_5_VLForConditionalGeneration(cfg))


def tiny_qwen_vae(seed: int, downsamples: int = 3, num_res_blocks: int = 1, **overrides: Any):
    """``AutoencoderKLQwenImage`` of width 4 at every level, spatial factor ``2 ** downsamples`` and 4
    latent channels with non-trivial per-channel mean / std. ``num_res_blocks=0`` leaves the encoder
    only its strided convolutions (a 1024 px source then encodes in ~0.5 s on one CPU thread)."""
    from diffusers import AutoencoderKLQwenImage

    kw: dict[str, Any] = dict(
        base_dim=4,
        z_dim=LATENT_CHANNELS,
        dim_mult=[1] * (downsamples + 1),
        num_res_blocks=num_res_blocks,
        temperal_downsample=[False] * downsamples,
        latents_mean=[0.1, -0.2, 0.05, 0.3],
        latents_std=[1.5, 0.8, 1.2, 2.0],
    )
    kw.update(overrides)
    with _seed(seed):
        return _ready(AutoencoderKLQwenImage(**kw))


def tiny_qwen_transformer(seed: int, **overrides: Any):
    from diffusers import QwenImageTransformer2DModel

    kw: dict[str, Any] = dict(
        patch_size=2,
        in_channels=LATENT_CHANNELS * 4,
        out_channels=LATENT_CHANNELS,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_HIDDEN,
        guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),
    )
    kw.update(overrides)
    with _seed(seed):
        return _ready(QwenImageTransformer2DModel(**kw))


def qwen_scheduler():
    """The scheduler config Qwen-Image ships (as copied by public code)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=0.9,
        base_image_seq_len=256,
        max_image_seq_len=8192,
        shift_terminal=0.02,
        time_shift_type="exponential",
    )


def tiny_qwenimage_pipeline(
    seed: int = 0,
    words: Iterable[str] | None = None,
    transformer_kwargs: dict | None = None,
    vae_kwargs: dict | None = None,
    scheduler=None,
):
    """A real ``QwenImagePipeline`` (~60k parameters): VAE factor 8 (so images are multiples of 16 px;
    32 x 48 px -> 4 x 6 latents -> 6 packed tokens of width 16)."""
    from diffusers import QwenImagePipeline

    tok = build_qwen_tokenizer(words)
    return QwenImagePipeline(
        scheduler=scheduler or qwen_scheduler(),
        vae=tiny_qwen_vae(seed + 1, **(vae_kwargs or {})),
        text_encoder=_text_encoder(tok, seed + 2),
        tokenizer=tok,
        transformer=tiny_qwen_transformer(seed, **(transformer_kwargs or {})),
    )


def tiny_qwenimage_edit_pipeline(
    seed: int = 0,
    words: Iterable[str] | None = None,
    transformer_kwargs: dict | None = None,
    vae_kwargs: dict | None = None,
    scheduler=None,
):
    """A real ``QwenImageEditPipeline``: as ``tiny_qwenimage_pipeline`` with a ``Qwen2VLProcessor``
    and a VAE of factor 16 (images are multiples of 32 px; the ~1024 px source -> 32 x 32 tokens)."""
    from diffusers import QwenImageEditPipeline

    tok = build_qwen_tokenizer(words)
    vae_kw = {"downsamples": 4, "num_res_blocks": 0, **(vae_kwargs or {})}
    return QwenImageEditPipeline(
        scheduler=scheduler or qwen_scheduler(),
        vae=tiny_qwen_vae(seed + 1, **vae_kw),
        text_encoder=_text_encoder(tok, seed + 2),
        tokenizer=tok,
        processor=build_qwen_processor(tok),
        transformer=tiny_qwen_transformer(seed, **(transformer_kwargs or {})),
    )
