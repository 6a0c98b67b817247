"""A tiny random Qwen2-VL (2 text layers of width 32, a 2-block vision tower) with an HPSv3 reward
head, written offline to a local directory in the published formats (tests, benchmarks).

``write_tiny_hpsv3(dir, seed)`` lays out what the hub holds for HPSv3:
* the Qwen2-VL base (``Qwen/Qwen2-VL-7B-Instruct``'s layout): ``config.json`` in the flat format that
  Qwen2-VL was published in (text fields at the top, ``vision_config`` nested, ``rope_scaling``
  ``mrope``), ``model.safetensors`` (transformers-4.x key names: ``model.*``, ``visual.*``,
  ``lm_head.weight``), and a processor: ``tokenizer.json`` + ``tokenizer_config.json`` (a byte-level
  BPE with Qwen2's pre-tokenizer and ~700 merges learned from the HPSv3 instruction, then Qwen2-VL's
  special tokens in Qwen's order; ``Qwen2Tokenizer``),
  ``preprocessor_config.json`` (``Qwen2VLImageProcessor``: patch 14, merge 2, temporal patch 2,
  OpenAI CLIP mean/std) and ``chat_template.json`` (the Qwen2-VL chat format);
* ``HPSv3.safetensors``: the reward model's full state dict as ``hpsv3`` saves it (the base keys with
  the embedding resized for the added ``<|Reward|>`` token, plus ``rm_head.*``).

Every file loads with ``AutoProcessor`` / ``AutoConfig`` in transformers 5.x and in the 4.45 that
the ``hpsv3`` package pins (the reference venv), with no network and no remote code.
"""

from __future__ import annotations

import json
import os

import torch

from .base import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
N_VOCAB = 1000  # byte-level BPE size before the special tokens
HIDDEN = 32

# The Qwen2-VL chat format: a default system turn, then <|im_start|>role\n ... <|im_end|>\n turns;
# an image item renders as <|vision_start|><|image_pad|><|vision_end|>.
CHAT_TEMPLATE = (  # no whitespace control: every newline below is output (HF renders with trim_blocks)
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' or 'image' in c %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' or 'video' in c %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in c %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_tokenizer(vocab_size: int = N_VOCAB):
    """Byte-level BPE with Qwen2's pre-tokenizer, merges learned (deterministically) from the HPSv3
    instruction and a few prompt words, so the instruction is ~500 tokens instead of ~2100 bytes;
    then Qwen2-VL's special tokens, in Qwen's order, after the byte-level vocabulary."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    from .hpsv3 import ASK, INSTRUCTION
    from .tiny import WORDS

    tok = Tokenizer(models.BPE(fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    split = pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator([INSTRUCTION.replace("{text_prompt}", ""), ASK, " ".join(WORDS)], trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok


def write_processor(path: str) -> dict[str, int]:
    """tokenizer.json / tokenizer_config.json / preprocessor_config.json / chat_template.json;
    returns the special tokens' ids."""
    os.makedirs(path, exist_ok=True)
    tok = train_tokenizer()
    tok.save(os.path.join(path, "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    decoder = {
        str(i): {
            "content": t,
            "special": True,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "single_word": False,
        }
        for t, i in ids.items()
    }
    tok_cfg = {
        "tokenizer_class": "Qwen2Tokenizer",
        "processor_class": "Qwen2VLProcessor",
        "added_tokens_decoder": decoder,
        "additional_special_tokens": SPECIAL_TOKENS[1:],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "model_max_length": 32768,
    }
    image_cfg = {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2VLProcessor",
        "do_resize": True,
        "do_rescale": True,
        "do_normalize": True,
        "do_convert_rgb": True,
        "rescale_factor": 1 / 255,
        "resample": 3,
        "image_mean": list(OPENAI_CLIP_MEAN),
        "image_std": list(OPENAI_CLIP_STD),
        "min_pixels": 56 * 56,
        "max_pixels": 28 * 28 * 1280,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
    }
    for name, obj in [
        ("tokenizer_config.json", tok_cfg),
        ("preprocessor_config.json", image_cfg),
        ("chat_template.json", {"chat_template": CHAT_TEMPLATE}),
    ]:
        with open(os.path.join(path, name), "w") as f:
            json.dump(obj, f, indent=1)
    return ids


def tiny_config(ids: dict[str, int], vocab_size: int) -> dict:
    """config.json in Qwen2-VL's published (flat) format, scaled down; ``ids`` of the special tokens."""
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "model_type": "qwen2_vl",
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"],
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 4096,
        "max_window_layers": 2,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},  # head_dim 16 -> 8 frequencies
        "sliding_window": 4096,
        "use_sliding_window": False,
        "tie_word_embeddings": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.2,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": vocab_size,
        "vision_config": {
            "depth": 2,
            "embed_dim": 32,
            "mlp_ratio": 2,
            "num_heads": 2,
            "in_chans": 3,
            "hidden_size": HIDDEN,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "initializer_range": 0.2,
        },
    }


def random_state(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random HPSv3 state dict (transformers-4.x key names) for ``config`` whose ``vocab_size``
    already counts ``<|Reward|>``; the head is hpsv3's ``ranknet`` MLP."""
    from transformers import Qwen2VLConfig, Qwen2VLModel

    from .hpsv3 import reward_head

    gen = torch.Generator().manual_seed(seed)
    state = Qwen2VLModel(Qwen2VLConfig.from_dict(config)).state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():  # 5.x names -> the 4.x names the checkpoint uses
        name = "model." + key[len("language_model.") :] if key.startswith("language_model.") else key
        if value.is_floating_point() and not key.endswith("norm.weight"):
            value = torch.randn(value.shape, generator=gen) * (0.02 if value.ndim == 1 else 0.2)
        out[name] = value.contiguous()
    out["lm_head.weight"] = torch.randn(config["vocab_size"], HIDDEN, generator=gen) * 0.2
    for key, value in reward_head(HIDDEN).state_dict().items():
        out["rm_head." + key] = (torch.randn(value.shape, generator=gen) / value.shape[-1] ** 0.5).contiguous()
    return out


def write_tiny_hpsv3(path: str, seed: int = 0) -> str:
    """Write the tiny base + ``HPSv3.safetensors`` into ``path``; returns ``path``."""
    from safetensors.torch import save_file

    ids = write_processor(path)
    n = max(ids.values()) + 1  # the base vocabulary; the reward model adds <|Reward|>
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(tiny_config(ids, n), f, indent=1)
    state = random_state(tiny_config(ids, n + 1), seed)
    resized = ("model.embed_tokens.weight", "lm_head.weight")
    base = {k: v[:n].clone() if k in resized else v for k, v in state.items() if not k.startswith("rm_head.")}
    save_file(base, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    save_file(state, os.path.join(path, "HPSv3.safetensors"), metadata={"format": "pt"})
    return path
