"""Tiny, offline, real diffusers pipelines (SD3 and Flux) for tests, benchmarks and the testbed.

diffusers' own tests download tiny tokenizers from the hub; here every piece is built locally:

* ``build_clip_tokenizer``: a byte-level BPE ``CLIPTokenizer`` (vocab.json + merges.txt) in which
  every word of a given list is a single token. The vocabulary is the 256 byte symbols, the same
  with ``</w>``, one entry per merge, then ``<|startoftext|>`` and ``<|endoftext|>`` as the *last*
  ids: ``CLIPTextModel`` pools at ``argmax(input_ids)`` when its config keeps the legacy
  ``eos_token_id == 2``, which is only the end-of-text position if that token has the largest id.
  Any other text still encodes (it falls back to byte symbols).
* ``build_t5_tokenizer``: a ``tokenizers`` Unigram model (Metaspace pre-tokenizer, ``</s>``
  appended by the post-processor) wrapped in ``PreTrainedTokenizerFast``; unknown characters map
  to ``<unk>``.
* ``tiny_sd3_pipeline`` / ``tiny_flux_pipeline``: fp32, ``.eval()`` components built from configs
  under fixed seeds (the global RNG is left untouched). Both survive ``save_pretrained`` /
  ``from_pretrained(local_dir)`` offline.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

DEFAULT_WORDS: tuple[str, ...] = (
    # colours, shapes, counts, relations and fillers of the shapes world, plus a few common words
    "red green blue yellow purple orange white black pink brown gray cyan magenta "
    "circle circles square squares triangle triangles star stars rectangle rectangles ellipse "
    "cross heart hexagon shape shapes a an one two three four five six many no "
    "left right of above below on under the top bottom next to and with in middle center "
    "big small large tiny photo image picture background of a cat dog painting"
).split()

START, END = "<|startoftext|>", "<|endoftext|>"
_WORD = re.compile(r"[a-z]+")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable unicode symbol table (256 entries)."""
    keep = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges by rank (lowest first) to a list of symbols."""
    while len(symbols) > 1:
        pairs = [(ranks.get(p, 1 << 62), i, p) for i, p in enumerate(zip(symbols[:-1], symbols[1:]))]
        rank, i, pair = min(pairs)
        if rank == 1 << 62:
            break
        symbols = symbols[:i] + [pair[0] + pair[1]] + symbols[i + 2 :]
    return symbols


def _split_words(words: Iterable[str]) -> list[str]:
    if isinstance(words, str):
        words = [words]
    out: list[str] = []
    for w in words:
        for piece in _WORD.findall(str(w).lower()):
            if piece not in out:
                out.append(piece)
    return out


@contextmanager
def _tmp_or(save_dir: str | None) -> Iterator[str]:
    if save_dir is not None:
        os.makedirs(save_dir, exist_ok=True)
        yield save_dir
    else:
        with tempfile.TemporaryDirectory() as d:
            yield d


def build_clip_tokenizer(words: Iterable[str] | None = None, save_dir: str | None = None, model_max_length: int = 77):
    """A ``CLIPTokenizer`` in which each (lower-case, alphabetic) word of ``words`` is one token.

    Merges are added greedily: a word is first tokenized with the merges so far, then its remaining
    symbols are merged left to right with new (lowest-priority) merges. New merges never change how
    earlier words tokenize, since BPE always prefers the existing lower-rank merge while one applies.
    """
    from transformers import CLIPTokenizer

    byte_syms = list(_bytes_to_unicode().values())
    vocab = byte_syms + [s + "</w>" for s in byte_syms]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in _split_words(DEFAULT_WORDS if words is None else words):
        while True:
            symbols = _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)
            if len(symbols) == 1:
                break
            pair = (symbols[0], symbols[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            vocab.append(pair[0] + pair[1])
    vocab = list(dict.fromkeys(vocab)) + [START, END]
    with _tmp_or(save_dir) as d:
        with open(os.path.join(d, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump({tok: i for i, tok in enumerate(vocab)}, f, ensure_ascii=False)
        with open(os.path.join(d, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        tok = CLIPTokenizer.from_pretrained(d, model_max_length=model_max_length)
        if save_dir is not None:
            tok.save_pretrained(d)
    return tok


def build_t5_tokenizer(words: Iterable[str] | None = None, save_dir: str | None = None, model_max_length: int = 512):
    """A T5-style Unigram tokenizer: ``<pad>``=0, ``</s>``=1, ``<unk>``=2, "▁" + each word, then
    single characters (a-z, 0-9, punctuation) as low-score fallbacks; lower-cases its input."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import PreTrainedTokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -1.0) for w in _split_words(DEFAULT_WORDS if words is None else words)]
    pieces += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"-()"]
    model = Tokenizer(Unigram(pieces, unk_id=2, byte_fallback=False))
    model.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    model.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    model.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    model.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=model,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )
    if save_dir is not None:
        tok.save_pretrained(save_dir)
    return tok


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


def _t5(tok, seed: int, d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(
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
        return _ready(T5EncoderModel(cfg))


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
