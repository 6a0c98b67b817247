"""A tiny, offline, real diffusers ``WanPipeline`` (Wan 2.1 text-to-video) for tests and smoke runs.

Reproduces the component layout of ``Wan-AI/Wan2.1-T2V-*-Diffusers`` at toy width, built from
configs under fixed seeds (the global RNG is left untouched), fp32, ``.eval()``:

* text encoder: ``UMT5EncoderModel`` (d_model 32, 2 layers) from a ``UMT5Config``; the tokenizer is
  the offline T5-style Unigram tokenizer of ``tiny_tokenizers`` (UMT5 uses the T5 tokenizer format;
  every word of the shapes-world vocabulary is one token). Call with a short
  ``max_sequence_length`` (the factory in ``flowalign.models`` uses 16).
* transformer: ``WanTransformer3DModel`` with Wan's patch (1, 2, 2), 16 latent channels, 2 blocks of
  2 heads x 12 dims (rope split 4/4/4 over time/height/width).
* VAE: ``AutoencoderKLWan`` with Wan 2.1's compression (4x in time keeping the first frame, 8x in
  space, ``z_dim`` 16) at base width 3, and its default per-channel ``latents_mean`` / ``latents_std``.
  So frames must be 4k+1 and sizes multiples of 16: 32x32 px, 9 frames -> latents [16, 3, 4, 4].
* scheduler: ``FlowMatchEulerDiscreteScheduler(shift=flow_shift)`` by default, the scheduler
  ``WanPipeline`` is annotated with and the one diffusers' own Wan tests use; the released Wan 2.1
  checkpoints ship ``UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=...)``, built by
  ``wan_unipc_scheduler`` (pass ``scheduler=wan_unipc_scheduler()``). See ``wan.py`` for how each
  is turned into flowalign's sigma grid.

``tiny_wan(seed, **kw)`` (``MODELS["tiny-wan"]``) wraps the pipeline in a ``WanModel`` with 16-token
prompts and 5-frame 32 px clips by default.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .tiny import _ready, _seed, _t5
from .tiny_tokenizers import build_t5_tokenizer
from .wan import WanModel

TINY_WAN_TRANSFORMER: dict[str, Any] = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=16,
    out_channels=16,
    text_dim=32,
    freq_dim=32,
    ffn_dim=32,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=32,
)
TINY_WAN_VAE: dict[str, Any] = dict(
    base_dim=3,
    z_dim=16,
    dim_mult=[1, 1, 1, 1],
    num_res_blocks=1,
    temperal_downsample=[False, True, True],
)


def wan_unipc_scheduler(flow_shift: float = 3.0, **overrides: Any):
    """The scheduler config the Wan 2.1 T2V checkpoints ship (UniPC, 2nd order, bh2, flow sigmas,
    final sigma 0); ``flow_shift`` 3.0 for 480p, 5.0 for 720p (diffusers' docs)."""
    from diffusers import UniPCMultistepScheduler

    kw: dict[str, Any] = dict(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=flow_shift,
        num_train_timesteps=1000,
        solver_order=2,
        solver_type="bh2",
        predict_x0=True,
        lower_order_final=True,
        final_sigmas_type="zero",
    )
    kw.update(overrides)
    return UniPCMultistepScheduler(**kw)


def tiny_wan_pipeline(
    seed: int = 0,
    words: Iterable[str] | None = None,
    scheduler: Any = None,
    flow_shift: float = 3.0,
    transformer_kwargs: dict | None = None,
    vae_kwargs: dict | None = None,
):
    """A real ``WanPipeline`` with ~56k parameters (transformer 23k, VAE 14k, UMT5 19k).
    ``scheduler=None`` -> ``FlowMatchEulerDiscreteScheduler(shift=flow_shift)``."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    kw = {**TINY_WAN_TRANSFORMER, **(transformer_kwargs or {})}
    with _seed(seed):
        transformer = _ready(WanTransformer3DModel(**kw))
    with _seed(seed + 1):
        vae = _ready(AutoencoderKLWan(**{**TINY_WAN_VAE, **(vae_kwargs or {})}))
    tok = build_t5_tokenizer(words)
    return WanPipeline(
        tokenizer=tok,
        text_encoder=_t5(tok, seed + 2, kw["text_dim"], umt5=True),
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=flow_shift) if scheduler is None else scheduler,
        transformer=transformer,
    )


def tiny_wan(seed: int = 0, **kw: Any) -> WanModel:
    """``WanModel`` over ``tiny_wan_pipeline(seed)`` (``scheduler`` / ``flow_shift`` go to the
    pipeline): 16-token prompts, 5-frame 32 px clips by default (latents [16, 2, 4, 4])."""
    pipe_kw = {k: kw.pop(k) for k in ("scheduler", "flow_shift") if k in kw}
    for key, value in (("max_sequence_length", 16), ("num_frames", 5), ("default_size", 32)):
        kw.setdefault(key, value)
    return WanModel(tiny_wan_pipeline(seed=seed, **pipe_kw), **kw)
