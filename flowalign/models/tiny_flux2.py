"""Tiny, offline, real diffusers pipelines for the FLUX.2 and Kontext families (tests, benchmarks).

Built like ``tiny.py`` (fp32, ``.eval()``, fixed seeds, the global RNG untouched), nothing downloaded;
all survive ``save_pretrained`` / ``from_pretrained(local_dir)`` offline.

* ``build_qwen_tokenizer``: a byte-level BPE ``Qwen2Tokenizer`` (Qwen3's tokenizer class) in which
  every word of a list is one token (with and without the leading-space symbol), Qwen's specials
  (``<|endoftext|>`` pads) and a chat template rendering what Qwen3's renders for user turns,
  including the empty think block of ``enable_thinking=False``.
* ``build_mistral_processor``: a ``PixtralProcessor`` over the same kind of BPE with Mistral's
  specials and a Mistral-Small-3 chat layout (``<s>[SYSTEM_PROMPT]..[/SYSTEM_PROMPT][INST]..[/INST]``);
  the words of FLUX.2's system message are single tokens. (The real tokenizer is Tekken; only the
  token ids differ, which a random-init encoder does not care about.)
* ``tiny_flux2_klein_pipeline``: ``Flux2KleinPipeline`` with a 27-layer, width-16 Qwen3 (so the
  pipeline's default ``text_encoder_out_layers=(9, 18, 27)`` applies), a 2-channel
  ``AutoencoderKLFlux2`` (scale factor 2, random batch-norm statistics), a one double + one single
  block ``Flux2Transformer2DModel`` without guidance embedding, ``is_distilled=False`` (true CFG
  with the negative prompt "" for ``guidance_scale > 1``).
* ``tiny_flux2_pipeline``: ``Flux2Pipeline`` (FLUX.2 [dev]) with a 30-layer ``Mistral3ForConditional
  Generation`` (default layers (10, 20, 30)), the same VAE and a transformer with the guidance embedding.
* ``tiny_flux_kontext_pipeline``: ``FluxKontextPipeline`` over ``tiny.tiny_flux_pipeline``'s components.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from .tiny import _ready, _seed, tiny_flux_pipeline
from .tiny_tokenizers import DEFAULT_WORDS, _bpe, _bytes_to_unicode, _split_words

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
MISTRAL_SPECIALS = ["<pad>", "<s>", "</s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"]
MISTRAL_SPECIALS += ["[IMG]", "[IMG_BREAK]", "[IMG_END]"]
MISTRAL_CHAT_TEMPLATE = (  # Mistral-Small-3.x layout for system + user turns with text content parts
    "{{- bos_token }}{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set text = message['content'] %}"
    "{%- else %}{%- set text = message['content'] | selectattr('type', 'equalto', 'text') "
    "| map(attribute='text') | join('') %}{%- endif %}"
    "{%- if message['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' + text + '[/SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'user' %}{{- '[INST]' + text + '[/INST]' }}"
    "{%- else %}{{- text + eos_token }}{%- endif %}{%- endfor %}"
)


def _byte_bpe(words: Iterable[str], specials: list[str], chat_template: str, **kw: Any):
    """A byte-level BPE ``Qwen2Tokenizer`` in which each (lower-case, alphabetic) word of ``words``
    is one token, with or without a leading space; other text falls back to byte symbols."""
    from transformers import Qwen2Tokenizer

    table = _bytes_to_unicode()
    space = table[ord(" ")]
    vocab = list(table.values())
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    pieces = _split_words(words)
    for piece in pieces + [space + w for w in pieces]:
        while True:
            symbols = _bpe(list(piece), ranks)
            if len(symbols) == 1:
                break
            pair = (symbols[0], symbols[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            vocab.append(pair[0] + pair[1])
    vocab = list(dict.fromkeys(vocab)) + specials
    tok = Qwen2Tokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, **kw)
    tok.chat_template = chat_template
    return tok


def build_qwen_tokenizer(words: Iterable[str] | None = None, model_max_length: int = 512):
    """Qwen3's tokenizer class and specials (``<|endoftext|>`` pads) with a Qwen3-style chat template."""
    words = list(DEFAULT_WORDS if words is None else words) + ["user", "assistant", "system"]
    return _byte_bpe(
        words,
        QWEN_SPECIALS,
        QWEN_CHAT_TEMPLATE,
        model_max_length=model_max_length,
        additional_special_tokens=QWEN_SPECIALS[1:],
    )


def build_mistral_processor(words: Iterable[str] | None = None, model_max_length: int = 512):
    """A ``PixtralProcessor`` (what ``Flux2Pipeline`` loads as its tokenizer) over a byte-level BPE
    with Mistral's specials and chat layout; FLUX.2's system message words are single tokens too."""
    from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE
    from transformers import PixtralImageProcessor, PixtralProcessor

    words = list(DEFAULT_WORDS if words is None else words) + [SYSTEM_MESSAGE]
    tok = _byte_bpe(
        words,
        MISTRAL_SPECIALS,
        MISTRAL_CHAT_TEMPLATE,
        model_max_length=model_max_length,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token=None,
        additional_special_tokens=MISTRAL_SPECIALS[3:],
    )
    return PixtralProcessor(
        image_processor=PixtralImageProcessor(), tokenizer=tok, patch_size=16, chat_template=MISTRAL_CHAT_TEMPLATE
    )


def _qwen3(tok, seed: int, hidden: int = 16, layers: int = 27):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
    )
    with _seed(seed):
        return _ready(Qwen3ForCausalLM(cfg))


def _flux2_vae(seed: int, latent_channels: int, **overrides: Any):
    from diffusers import AutoencoderKLFlux2

    kw: dict[str, Any] = dict(
        sample_size=32,
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=False,
    )
    kw.update(overrides)
    with _seed(seed):
        vae = AutoencoderKLFlux2(**kw)
        channels = vae.bn.num_features  # non-trivial statistics, so the normalisation is exercised
        vae.bn.running_mean.copy_(0.3 * torch.randn(channels))
        vae.bn.running_var.copy_(0.5 + torch.rand(channels))
    return _ready(vae)


def _flux2_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    # FLUX.2's scheduler config (the mu itself comes from compute_empirical_mu in the pipeline)
    return FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
        time_shift_type="exponential",
    )


def _mistral3(processor, seed: int, hidden: int = 16, layers: int = 30):
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, MistralConfig, PixtralVisionConfig

    tok = processor.tokenizer
    text = MistralConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    vision = PixtralVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, head_dim=8, image_size=64
    )
    cfg = Mistral3Config(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("[IMG]"),
        spatial_merge_size=1,
    )
    with _seed(seed):
        return _ready(Mistral3ForConditionalGeneration(cfg))


def _flux2_transformer(seed: int, latent_channels: int, text_width: int, guidance_embeds: bool, **overrides: Any):
    from diffusers import Flux2Transformer2DModel

    kw: dict[str, Any] = dict(
        patch_size=1,
        in_channels=4 * latent_channels,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=3 * text_width,  # three hidden layers stacked
        timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=guidance_embeds,
    )
    kw.update(overrides)
    with _seed(seed):
        return _ready(Flux2Transformer2DModel(**kw))


def tiny_flux2_klein_pipeline(
    seed: int = 0,
    words: Iterable[str] | None = None,
    is_distilled: bool = False,
    transformer_kwargs: dict | None = None,
    vae_kwargs: dict | None = None,
):
    """A real ``Flux2KleinPipeline``: 2-channel VAE (patchified to 8 channels, scale factor 2, so
    32 px -> 16x16 latents -> 8x8 = 64 tokens of width 8), tiny Qwen3 (27 layers x 16 -> prompt
    embeddings of width 48), no guidance embedding. Call with ``max_sequence_length=32``."""
    from diffusers import Flux2KleinPipeline

    tok = build_qwen_tokenizer(words)
    text_encoder = _qwen3(tok, seed + 2)
    vae = _flux2_vae(seed + 1, 2, **(vae_kwargs or {}))
    width = text_encoder.config.hidden_size
    transformer = _flux2_transformer(seed, 2, width, False, **(transformer_kwargs or {}))
    return Flux2KleinPipeline(
        scheduler=_flux2_scheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        transformer=transformer,
        is_distilled=is_distilled,
    )


def tiny_flux2_pipeline(
    seed: int = 0,
    words: Iterable[str] | None = None,
    transformer_kwargs: dict | None = None,
    vae_kwargs: dict | None = None,
):
    """A real ``Flux2Pipeline`` (FLUX.2 [dev]): as the Klein one but with a tiny
    ``Mistral3ForConditionalGeneration`` (30 text layers x 16, one-layer Pixtral vision tower) behind
    a ``PixtralProcessor``, the default system message, and the guidance embedding. Call with
    ``max_sequence_length=64`` (the system message takes ~40 tokens, prompts come after it)."""
    from diffusers import Flux2Pipeline

    processor = build_mistral_processor(words)
    text_encoder = _mistral3(processor, seed + 2)
    vae = _flux2_vae(seed + 1, 2, **(vae_kwargs or {}))
    width = text_encoder.config.text_config.hidden_size
    transformer = _flux2_transformer(seed, 2, width, True, **(transformer_kwargs or {}))
    return Flux2Pipeline(
        scheduler=_flux2_scheduler(), vae=vae, text_encoder=text_encoder, tokenizer=processor, transformer=transformer
    )


def tiny_flux_kontext_pipeline(seed: int = 0, words: Iterable[str] | None = None, **kw: Any):
    """A real ``FluxKontextPipeline`` over ``tiny_flux_pipeline``'s components (VAE scale factor 2,
    so sizes are multiples of 4). Call with ``max_sequence_length=32``, ``max_area=height*width``
    and ``_auto_resize=False`` to keep the source image's size."""
    from diffusers import FluxKontextPipeline

    return FluxKontextPipeline(**tiny_flux_pipeline(seed=seed, words=words, **kw).components)
