"""The tiny real ``StableDiffusion3Pipeline`` of the shapes world: build, encode, load.

Components (sizes in ``DEFAULT_ARCH``; all fp32):
  * two ``CLIPTokenizer``s built offline from the caption vocabulary (``flowalign.models.tiny``;
    every grammar word is one token), ``model_max_length`` 10 (the longest caption is 8 words);
  * two ``CLIPTextModelWithProjection`` (hidden 64, 3 layers, projection 32). SD3 reads the
    penultimate hidden states of both (64 + 64 = 128 = ``joint_attention_dim``) and the pooled
    projections (32 + 32 = 64 = ``pooled_projection_dim``). They are trained jointly with the
    transformer: frozen random encoders blur word identity (e.g. colour vs. position words) and the
    joint training costs little at this size;
  * ``SD3Transformer2DModel``: patch 2 on 4x16x16 latents = 64 image tokens, width 128;
  * ``AutoencoderKL`` trained here with a 2x downsampling (2 blocks) to 4 latent channels: shapes
    are 7-13 px wide, so a 4x VAE would leave 2-3 latent pixels per object and blur triangle vs.
    circle; 2x keeps edges while patch 2 keeps the token count at 64. ``scaling_factor`` /
    ``shift_factor`` are set from latent statistics so that scaled latents are ~N(0, 1);
  * ``FlowMatchEulerDiscreteScheduler`` with ``shift`` from the config;
  * ``text_encoder_3``: a ZERO-layer ``T5EncoderModel`` (token embeddings + final RMS norm, i.e. a
    bag of words) with a Unigram T5 tokenizer. A real third encoder (rather than None, which SD3
    allows) is there so that the plain ``StableDiffusion3Pipeline.from_pretrained(dir)`` loads:
    diffusers refuses ``[null, null]`` components unless they are passed explicitly.
The pipeline pads the T5 stream to ``max_sequence_length`` (default 256) with ``<pad>``; with no
layers every pad position has the same embedding, so in every attention the pads act as ONE key
whose logit is raised by log(#pads). Training encodes T5_TRAIN_LEN explicit positions plus one pad
token carrying that bias (``RepeatedTokenProcessor``): exact, ~4x cheaper than 256 real tokens,
and the number of pads is randomised so that any ``max_sequence_length`` >= 16 works.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from . import world as W
from .paths import assets_dir, pipeline_dir

TOKENIZER_MAX_LENGTH = 10  # CLIP tokens per prompt (pipeline pads to this): <bos> + 8 words + <eos>
T5_TRAIN_LEN = 9  # explicit T5 positions at training time (8 words + </s>), then one pad token standing for the rest
DEFAULT_ARCH: dict[str, Any] = {
    "clip": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "projection_dim": 32,
    },
    "transformer": {"num_layers": 4, "attention_head_dim": 32, "num_attention_heads": 4},
    "vae": {"block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8},
    "shift": 2.0,
}
DEFAULT_SAMPLING = {"num_inference_steps": 20, "guidance_scale": 6.0}


def vocabulary() -> list[str]:
    words = ["a", "two", "three", "and", *W.COLOR_NAMES, *W.SHAPES, *(s + "s" for s in W.SHAPES)]
    return words + sorted({w for r in W.RELATIONS for w in r.split()})


def build_tokenizer(save_dir: str | None = None):
    from ..models.tiny_tokenizers import build_clip_tokenizer

    return build_clip_tokenizer(vocabulary(), save_dir=save_dir, model_max_length=TOKENIZER_MAX_LENGTH)


def build_t5_tokenizer():
    from ..models.tiny_tokenizers import build_t5_tokenizer as build

    return build(vocabulary())


def build_components(arch: dict[str, Any] | None = None, seed: int = 0) -> dict[str, Any]:
    """Fresh (untrained) components of the testbed pipeline, initialised under ``seed``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    arch = {**DEFAULT_ARCH, **(arch or {})}
    tok = build_tokenizer()
    encoders = _clip_encoders(tok, arch["clip"], seed)
    t5_tok = build_t5_tokenizer()
    t5 = _t5_encoder(len(t5_tok), arch["clip"], seed)
    v = {"latent_channels": 4, **arch["vae"]}
    transformer = _transformer(arch, v, seed)
    vae = _vae(v, seed)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=float(arch["shift"]))
    return {
        "tokenizer": tok,
        "tokenizer_2": tok,
        "text_encoder": encoders[0],
        "text_encoder_2": encoders[1],
        "tokenizer_3": t5_tok,
        "text_encoder_3": t5,
        "transformer": transformer,
        "vae": vae,
        "scheduler": scheduler,
    }


def _clip_encoders(tok, c: dict[str, Any], seed: int) -> list:
    """The two CLIP text encoders (seeds ``seed + 1``, ``seed + 2``)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    encoders = []
    for k in range(2):
        cfg = CLIPTextConfig(
            vocab_size=len(tok),
            max_position_embeddings=TOKENIZER_MAX_LENGTH,
            hidden_act="gelu",
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            **c,
        )
        torch.manual_seed(seed + 1 + k)
        encoders.append(CLIPTextModelWithProjection(cfg))
    return encoders


def _t5_encoder(vocab_size: int, c: dict[str, Any], seed: int):
    """The zero-layer T5 encoder (seed ``seed + 5``), as wide as the two CLIP streams together."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed + 5)
    return T5EncoderModel(
        T5Config(
            vocab_size=vocab_size,
            d_model=2 * c["hidden_size"],
            num_layers=0,
            num_heads=2,
            d_kv=8,
            d_ff=8,
            dropout_rate=0.0,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )


def _transformer(arch: dict[str, Any], v: dict[str, Any], seed: int):
    """The SD3 transformer (seed ``seed + 3``) on the VAE's latents."""
    from diffusers import SD3Transformer2DModel

    c = arch["clip"]
    t = {"patch_size": 2, **arch["transformer"]}
    blocks = len(v["block_out_channels"])
    torch.manual_seed(seed + 3)
    return SD3Transformer2DModel(
        sample_size=W.IMAGE_SIZE // 2 ** (blocks - 1),
        in_channels=v["latent_channels"],
        out_channels=v["latent_channels"],
        joint_attention_dim=2 * c["hidden_size"],
        caption_projection_dim=t["attention_head_dim"] * t["num_attention_heads"],
        pooled_projection_dim=2 * c["projection_dim"],
        pos_embed_max_size=16,
        **t,
    )


def _vae(v: dict[str, Any], seed: int):
    """The VAE (seed ``seed + 4``): one 2x downsampling per block after the first."""
    from diffusers import AutoencoderKL

    blocks = len(v["block_out_channels"])
    torch.manual_seed(seed + 4)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        sample_size=W.IMAGE_SIZE,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=1.0,
        shift_factor=0.0,
        **v,
    )


def assemble(components: dict[str, Any]):
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline(**components)


def load_pipeline(path: str | Path | None = None, device: str | torch.device = "cpu"):
    """The shipped pipeline (``assets/testbed/pipeline``), offline, fp32, eval mode."""
    from diffusers import StableDiffusion3Pipeline

    root = Path(path) if path is not None else pipeline_dir()
    if not (root / "model_index.json").exists():
        raise ValueError(
            f"{root} holds no saved pipeline (model_index.json missing); pass the "
            "folder written by scripts/train_testbed.py (assets/testbed/pipeline)."
        )
    pipe = StableDiffusion3Pipeline.from_pretrained(str(root), local_files_only=True, torch_dtype=torch.float32)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        getattr(pipe, name).eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_config(directory: str | Path | None = None) -> dict[str, Any]:
    """``assets/testbed/config.json``: default sampling settings and training provenance."""
    path = assets_dir(directory, "config.json") / "config.json"
    return json.loads(path.read_text())


def default_sampling(directory: str | Path | None = None) -> dict[str, Any]:
    try:
        return {**DEFAULT_SAMPLING, **load_config(directory).get("sampling", {})}
    except ValueError:
        return dict(DEFAULT_SAMPLING)


# ---------------------------------------------------------------- training-time encoding
ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


def tokenize(tok, prompts: list[str], length: int | None = None) -> Tensor:
    """Token ids [B, L] padded as the pipeline pads them (CLIP: to model_max_length)."""
    return tok(
        prompts, padding="max_length", max_length=length or tok.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def encode_train(encoders: dict[str, Any], clip_ids: Tensor, t5_ids: Tensor) -> tuple[Tensor, Tensor]:
    """(prompt_embeds [B, 10 + T5_TRAIN_LEN + 1, D], pooled [B, P]) as ``encode_prompt`` builds them,
    except that the T5 stream stops after one pad token (see ``RepeatedTokenProcessor``)."""
    embeds, pooled = [], []
    for name in ENCODERS[:2]:
        out = encoders[name](clip_ids, output_hidden_states=True)
        embeds.append(out.hidden_states[-2])
        pooled.append(out[0])
    t5 = encoders["text_encoder_3"](t5_ids)[0]
    e = torch.cat(embeds, -1)
    e = F.pad(e, (0, t5.shape[-1] - e.shape[-1]))
    return torch.cat([e, t5], 1), torch.cat(pooled, -1)


class RepeatedTokenProcessor:
    """SD3 joint attention in which the LAST context token stands for ``n`` identical copies.

    Mirrors diffusers' ``JointAttnProcessor2_0`` (no qk-norm in this model) and adds ``log n`` to
    that key's logit: a softmax over n equal keys = a softmax over one key with logit + log n.
    Set ``log_n`` [B] before each forward.
    """

    def __init__(self):
        self.log_n: Tensor | None = None  # [B]

    def __call__(
        self,
        attn,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *args,
        **kwargs,
    ):
        if attn.norm_q is not None or attn.norm_added_q is not None:
            raise ValueError("RepeatedTokenProcessor assumes an SD3 transformer without qk_norm")
        b, n_img = hidden_states.shape[:2]
        heads = attn.heads

        def split(t: Tensor) -> Tensor:
            return t.view(b, -1, heads, t.shape[-1] // heads).transpose(1, 2)

        q = torch.cat([split(attn.to_q(hidden_states)), split(attn.add_q_proj(encoder_hidden_states))], 2)
        k = torch.cat([split(attn.to_k(hidden_states)), split(attn.add_k_proj(encoder_hidden_states))], 2)
        v = torch.cat([split(attn.to_v(hidden_states)), split(attn.add_v_proj(encoder_hidden_states))], 2)
        bias = torch.zeros(b, 1, 1, k.shape[2], dtype=q.dtype, device=q.device)
        bias[:, 0, 0, -1] = self.log_n.to(q)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.transpose(1, 2).reshape(b, -1, heads * q.shape[-1])
        img, ctx = out[:, :n_img], out[:, n_img:]
        img = attn.to_out[1](attn.to_out[0](img))
        if attn.context_pre_only:
            return img, ctx
        return img, attn.to_add_out(ctx)


def use_repeated_token(transformer) -> RepeatedTokenProcessor:
    proc = RepeatedTokenProcessor()
    transformer.set_attn_processor(proc)
    return proc


def sample_n_pad(b: int, g: torch.Generator, default: int = 256, p_default: float = 0.7) -> Tensor:
    """Per-row number of T5 pad positions the last token stands for: those of the pipeline default
    ``max_sequence_length`` 256 mostly, else of a log-uniform length in 16..512."""
    rand = torch.exp(math.log(16) + torch.rand(b, generator=g) * math.log(32)).round()
    length = torch.where(torch.rand(b, generator=g) < p_default, torch.full((b,), float(default)), rand)
    return length - T5_TRAIN_LEN
