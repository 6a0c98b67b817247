"""Code shared by the diffusers adapters (``sd3.py``, ``flux.py``): loading a pipeline from a local
directory or hub id with one clear offline error, the LoRA-off reference context, sigma grids read
off a fresh scheduler for configs the closed forms in ``sampling.schedule`` do not cover, and a
``sample`` convenience over ``sampling.rollout``.

diffusers is imported inside functions only, so ``import flowalign.models`` stays light.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..types import Cond, Rollout
from .base import FlowModel, check_prompts


def _offline() -> bool:
    return any(
        os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE")
    )


def _looks_local(path: str) -> bool:
    """Absolute, home- or dot-relative paths, or more than one '/' (hub ids are 'org/name')."""
    return path.startswith(("/", "~", ".")) or path.count("/") > 1 or (os.sep != "/" and os.sep in path)


def null_components(path: str) -> dict[str, None]:
    """Components saved as ``[null, null]`` in a local ``model_index.json`` (e.g. SD3 without T5):
    diffusers' ``from_pretrained`` refuses to load them unless they are passed explicitly as None."""
    index = os.path.join(path, "model_index.json")
    if not os.path.isfile(index):
        return {}
    with open(index, encoding="utf-8") as f:
        config = json.load(f)
    return {
        k: None
        for k, v in config.items()
        if not k.startswith("_") and isinstance(v, list) and all(x is None for x in v)
    }


def load_pipeline(pipeline_cls: type, id_or_dir: str, **kwargs: Any):
    """``pipeline_cls.from_pretrained`` with a local-dir fast path and one clear error when the
    weights are neither on disk nor downloadable (offline)."""
    if not isinstance(id_or_dir, (str, os.PathLike)):
        raise ValueError(
            f"expected a local directory or a hub id (str), got {type(id_or_dir).__name__} "
            f"{id_or_dir!r}; pass e.g. '/path/to/saved_pipeline'."
        )
    path = os.path.expanduser(os.fspath(id_or_dir))
    how = (
        "pass a directory written by `pipeline.save_pretrained(dir)`, or a hub id with "
        "network access (unset HF_HUB_OFFLINE)"
    )
    if os.path.isdir(path):
        kwargs = {**null_components(path), **kwargs}
        return realign(pipeline_cls.from_pretrained(path, **kwargs))
    if _looks_local(path):
        raise ValueError(f"model directory {path!r} does not exist; {how}.")
    try:
        return realign(pipeline_cls.from_pretrained(path, **kwargs))
    except (OSError, ValueError) as err:
        if not _offline():
            raise
        raise ValueError(
            f"{path!r} is not a local directory and HF_HUB_OFFLINE=1 forbids downloading "
            f"it (and it is not in the local hub cache); {how}."
        ) from err


def realign(pipe: Any, alignment: int = 64):
    """Copy CPU weights that safetensors left at unaligned offsets of one mmapped buffer into fresh
    storage. Unaligned operands send CPU BLAS down another summation order (~1e-7 differences), so
    without this a reloaded pipeline is not bit-identical to the one that was saved."""
    for module in getattr(pipe, "components", {}).values():
        if not isinstance(module, torch.nn.Module):
            continue
        for t in list(module.parameters()) + list(module.buffers()):
            if t.device.type == "cpu" and t.numel() and t.data_ptr() % alignment:
                t.data = t.data.clone()
    return pipe


def _peft_layers(module: torch.nn.Module) -> list[Any]:
    if not any(type(m).__module__.startswith("peft.") for m in module.modules()):
        return []
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


@contextlib.contextmanager
def adapters_disabled(module: torch.nn.Module) -> Iterator[None]:
    """Disable every peft adapter layer of ``module`` (``add_adapter``/``load_lora_adapter`` or
    ``get_peft_model``) and restore each layer's state and the adapters' ``requires_grad`` on exit.
    A no-op when no adapter is attached. Merged adapters are unmerged by peft on first use."""
    layers = _peft_layers(module)
    saved = [
        (layer, bool(layer.disable_adapters), [(p, p.requires_grad) for p in layer.parameters() if p is not None])
        for layer in layers
    ]
    try:
        for layer in layers:
            layer.enable_adapters(False)
        yield
    finally:
        for layer, was_disabled, grads in saved:
            layer.enable_adapters(not was_disabled)
            for p, flag in grads:
                p.requires_grad_(flag)


def scheduler_sigmas(scheduler, num_steps: int, **set_timesteps_kwargs: Any) -> Tensor:
    """The [T+1] fp32 grid a fresh copy of ``scheduler`` gives (the pipeline's own scheduler and its
    hidden step counter are left untouched)."""
    fresh = type(scheduler).from_config(scheduler.config)
    fresh.set_timesteps(num_steps, device="cpu", **set_timesteps_kwargs)
    return fresh.sigmas.detach().float().cpu().clone()


def is_plain_flow_scheduler(config: Any) -> bool:
    """True when only the static/exponential shift applies (no karras/exponential/beta sigmas,
    terminal stretch or inversion), i.e. the closed forms of ``sampling.schedule`` are exact."""
    return (
        config.get("num_train_timesteps", 1000) == 1000
        and not config.get("shift_terminal")
        and not config.get("invert_sigmas", False)
        and not config.get("use_karras_sigmas", False)
        and not config.get("use_exponential_sigmas", False)
        and not config.get("use_beta_sigmas", False)
        and config.get("time_shift_type", "exponential") == "exponential"
    )


_CLASS_TO_FAMILY = {"StableDiffusion3": "sd3", "Flux": "flux"}


def family_of_class(name: str) -> str | None:
    """'sd3' / 'flux' from a diffusers pipeline class name, None if unknown."""
    return next((fam for prefix, fam in _CLASS_TO_FAMILY.items() if name.startswith(prefix)), None)


def pipeline_family(pipe: Any) -> str | None:
    """The family of a pipeline object from its class or any base class (custom subclasses)."""
    return next((f for f in map(family_of_class, (c.__name__ for c in type(pipe).__mro__)) if f), None)


def check_pipeline(pipe: Any, needs: Sequence[str], family: str, adapter: str) -> None:
    """One clear error when ``pipe`` is another family's pipeline or lacks a component."""
    found = pipeline_family(pipe)
    if found is not None and found != family:
        raise ValueError(
            f"{adapter} needs a {family} pipeline, got a {type(pipe).__name__} ({found}); "
            f"use flowalign.models.load_model(pipe), which picks the adapter."
        )
    missing = [n for n in needs if getattr(pipe, n, None) is None]
    if missing:
        raise ValueError(
            f"{type(pipe).__name__} is missing {missing} needed by {adapter}; pass a "
            f"complete diffusers pipeline (or use {adapter}.from_pretrained(dir))."
        )


@dataclass
class Sample:
    """What ``DiffusersFlowModel.sample`` returns."""

    images: Tensor | None  # [B, 3, H, W] fp32 in [0, 1] (None when decode=False)
    rollout: Rollout  # latents [B, T+1, *S], log_probs [B, T], ...
    cond: Cond


class DiffusersFlowModel(FlowModel):
    """Shared half of the SD3 / Flux adapters: holds the pipeline, its device, the LoRA-off
    reference context and the trainable parameters (those of the transformer).

    ``self.transformer`` is the module called in ``velocity``; it may be replaced by a wrapper
    (``model.transformer = accelerator.prepare(model.transformer)`` for DDP / FSDP): its config is
    read once at construction into ``self.transformer_config``."""

    pipeline_class_name: str = ""

    def __init__(self, pipe: Any, guidance_scale: float | None = None, max_sequence_length: int = 256):
        self.pipe = pipe
        self.transformer = pipe.transformer
        self.transformer_config = pipe.transformer.config
        self.vae = pipe.vae
        self.nfe = 0
        if guidance_scale is not None:
            self.default_guidance = float(guidance_scale)
        if not isinstance(max_sequence_length, int) or not 1 <= max_sequence_length <= 512:
            raise ValueError(
                f"max_sequence_length={max_sequence_length!r} must be an int in [1, 512]; "
                f"use e.g. 256 (SD3) or 512 (Flux)."
            )
        self.max_sequence_length = max_sequence_length

    @classmethod
    def from_pretrained(
        cls,
        id_or_dir: str,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        guidance_scale: float | None = None,
        max_sequence_length: int | None = None,
        **pipeline_kwargs: Any,
    ):
        """Load ``id_or_dir`` (a saved pipeline directory or a hub id) into this adapter."""
        import diffusers

        if torch_dtype is not None:
            pipeline_kwargs["torch_dtype"] = torch_dtype
        pipe = load_pipeline(getattr(diffusers, cls.pipeline_class_name), id_or_dir, **pipeline_kwargs)
        if device is not None:
            pipe = pipe.to(device)
        kw = {} if max_sequence_length is None else {"max_sequence_length": max_sequence_length}
        return cls(pipe, guidance_scale=guidance_scale, **kw)

    # --- contract pieces that do not depend on the family -------------------------------------
    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        with adapters_disabled(self.transformer):
            yield

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.transformer.parameters() if p.requires_grad]

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype inputs are cast to: the transformer's (its first parameter's when wrapped)."""
        dtype = getattr(self.transformer, "dtype", None)
        return dtype if isinstance(dtype, torch.dtype) else next(self.transformer.parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
        self.pipe.to(device=device, dtype=dtype)
        return self

    def _vae_decode(self, latents: Tensor) -> Tensor:
        """Unscaled VAE latents [B, C, h, w] -> images [B, 3, H, W] fp32 in [0, 1] (differentiable)."""
        cfg = self.vae.config
        z = latents.float() / cfg.scaling_factor + (cfg.shift_factor or 0.0)
        image = self.vae.decode(z.to(self.vae.dtype), return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1)

    # --- convenience --------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        prompts: str | Sequence[str],
        num_steps: int | None = None,
        guidance_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        step: str = "ode",
        noise_level: float = 0.0,
        negative_prompts: str | Sequence[str] | None = None,
        decode: bool = True,
    ) -> Sample:
        """encode -> initial_noise -> ``sampling.rollout.rollout`` -> decode, like the pipeline's
        ``__call__`` (noise_level 0 = ODE, i.e. the pipeline's sampler)."""
        from ..sampling.rollout import rollout

        prompts = check_prompts(prompts)
        if noise_level and step == "ode":
            raise ValueError(
                f"noise_level={noise_level} needs a stochastic step kind, but step='ode'; "
                f"pass e.g. step='flow_sde' (or noise_level=0 for the pipeline's sampler)."
            )
        height = self.default_size if height is None else height
        width = self.default_size if width is None else width
        x = self.initial_noise(len(prompts), height, width, generator)
        cond = self.encode(prompts, guidance_scale, negative_prompts)
        sigmas = self.sigmas(self.default_steps if num_steps is None else num_steps, height, width)
        ro = rollout(self, cond, x, sigmas, step=step, noise_levels=noise_level or None, generator=generator)
        images = self.decode(ro.final, height, width) if decode else None
        return Sample(images=images, rollout=ro, cond=cond)

    @property
    def default_size(self) -> int:
        raise NotImplementedError


def packed_size(sizes: dict[int, tuple[int, int]], tokens: int, factor: int, family: str) -> tuple[int, int]:
    """(height, width) in pixels of ``tokens`` packed latent tokens: the size ``initial_noise`` recorded
    for that count, else a square; one clear error when the count is not a square."""
    if tokens in sizes:
        return sizes[tokens]
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(
            f"cannot tell the image size of {tokens} packed {family} tokens; create the latents with "
            f"initial_noise(batch, height, width) or pass height/width."
        )
    return side * factor, side * factor
