"""The transformer's attention kernel (``model.attention``): PyTorch's scaled-dot-product attention
(every diffusers transformer's default) or xformers' memory-efficient attention (CUDA only)."""

from __future__ import annotations

from typing import Any

import torch

ATTENTION_KINDS = ("sdpa", "xformers")  # model.attention: PyTorch's scaled_dot_product_attention | xformers


def check_attention(kind: str, device: Any = None) -> None:
    """ONE ValueError before anything loads when ``model.attention=kind`` cannot run here."""
    import importlib.util

    if kind not in ATTENTION_KINDS:
        raise ValueError(f"model.attention={kind!r} is unknown; choose one of {ATTENTION_KINDS} (default 'sdpa').")
    if kind == "sdpa":
        return
    why = [] if torch.cuda.is_available() else ["no CUDA device (torch.cuda.is_available() is False)"]
    if device is not None and torch.device(device).type != "cuda" and not why:
        why.append(f"the model runs on {torch.device(device)} (xformers kernels are CUDA-only)")
    if importlib.util.find_spec("xformers") is None:
        why.append("the xformers package is not installed (pip install xformers)")
    if why:
        raise ValueError(f"model.attention=xformers cannot run: {' and '.join(why)}; use model.attention=sdpa.")


def set_attention(model: Any, kind: str = "sdpa", device: Any = None) -> None:
    """Attention kernels of ``model``'s transformer: 'sdpa' (the default: a no-op) or 'xformers'
    (diffusers' ``enable_xformers_memory_efficient_attention``; checked first by ``check_attention``)."""
    check_attention(kind, device)
    if kind == "sdpa":
        return
    transformer = getattr(model, "transformer", model)
    transformer = getattr(transformer, "module", transformer)  # DDP / FSDP wrappers
    if not hasattr(transformer, "enable_xformers_memory_efficient_attention"):
        raise ValueError(f"model.attention=xformers needs a diffusers transformer, got {type(transformer).__name__}.")
    try:
        transformer.enable_xformers_memory_efficient_attention()
    except Exception as err:  # a broken xformers build / an unsupported processor: name the setting
        raise ValueError(
            f"model.attention=xformers failed: {type(err).__name__}: {err}; use model.attention=sdpa."
        ) from err
