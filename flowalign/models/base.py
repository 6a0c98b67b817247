"""The one contract every model family implements, and the boundary checks shared by adapters.

Everything outside ``flowalign/models/`` sees a ``FlowModel`` and nothing else: it never knows
whether SD3, Flux or an analytic mixture is underneath. This module is also the only place the
flow time ``sigma`` in [0, 1] is converted to a diffusers model timestep (``1000 * sigma``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from ..types import Cond

NUM_TRAIN_TIMESTEPS = 1000  # diffusers FlowMatchEulerDiscreteScheduler default


def sigma_to_timestep(sigma: Tensor) -> Tensor:
    """Flow time in [0, 1] -> diffusers model timestep in [0, 1000]."""
    return sigma * NUM_TRAIN_TIMESTEPS


class FlowModel:
    """A rectified-flow text-to-image model seen as ``v(x, sigma | cond)``.

    Subclasses implement the methods below. ``velocity`` returns fp32 whatever the weights' dtype,
    applies classifier-free guidance (SD3) or the distilled guidance embedding (Flux) inside, and
    counts evaluations in ``self.nfe`` (one per batch row, CFG counted once).
    """

    nfe: int = 0
    default_steps: int = 28
    default_guidance: float = 1.0

    # --- the contract -------------------------------------------------------------------------
    def encode(
        self,
        prompts: str | Sequence[str],
        guidance_scale: float | None = None,
        negative_prompts: str | Sequence[str] | None = None,
    ) -> Cond:
        raise NotImplementedError

    def velocity(self, x: Tensor, sigma: Tensor | float, cond: Cond) -> Tensor:
        raise NotImplementedError

    def decode(self, x: Tensor, height: int | None = None, width: int | None = None) -> Tensor:
        """Latents [B, *S] -> images [B, 3, H, W] float in [0, 1] (differentiable). Packed-latent
        families (Flux) need the image size for non-square images."""
        raise NotImplementedError

    def initial_noise(
        self, batch_size: int, height: int, width: int, generator: torch.Generator | list[torch.Generator] | None = None
    ) -> Tensor:
        """Initial latents [B, *S] at sigma = 1, drawn exactly as the matching diffusers pipeline."""
        raise NotImplementedError

    def sigmas(self, num_steps: int, height: int, width: int) -> Tensor:
        """The model's default sigma grid [T+1] (shifted as its scheduler does), ending at 0."""
        raise NotImplementedError

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Inside this context the model is the frozen reference (LoRA adapters disabled)."""
        yield

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return []

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    # --- helpers shared by all adapters -------------------------------------------------------
    def count(self, rows: int) -> None:
        self.nfe += int(rows)


def check_prompts(prompts: object, name: str = "prompt") -> list[str]:
    """A str or a list of str -> list of str; anything else is one clear ValueError."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, (list, tuple)) and prompts and all(isinstance(p, str) for p in prompts):
        return list(prompts)
    raise ValueError(
        f"`{name}` must be a str or a non-empty list of str, got {type(prompts).__name__}"
        f" {str(prompts)[:80]!r}; pass e.g. {name}=['a red circle']."
    )


def check_size(height: int, width: int, factor: int, what: str) -> None:
    """Image sizes must be multiples of the VAE (and patch) factor."""
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value <= 0 or value % factor:
            fixed = max(factor, (int(value) // factor) * factor) if isinstance(value, (int, float)) else factor
            raise ValueError(f"{name}={value!r} is not a positive multiple of {factor} ({what}); use {name}={fixed}.")


def check_generators(generator: object, batch_size: int) -> None:
    if isinstance(generator, (list, tuple)) and len(generator) != batch_size:
        raise ValueError(
            f"got a list of {len(generator)} generators for a batch of {batch_size}; "
            f"pass one torch.Generator, or exactly {batch_size} of them."
        )


def as_sigma(sigma: Tensor | float, batch_size: int, device: torch.device) -> Tensor:
    """A scalar or [B] flow time -> fp32 tensor [B]."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=device)
    return sigma.expand(batch_size) if sigma.ndim == 0 else sigma
