"""Exponential moving average of the trainable parameters (Flow-GRPO's ``EMAModuleWrapper``).

``decay_n = min(max_decay, (1 + n) / (10 + n))`` at optimizer step ``n``, applied every ``every``
steps, on the trainable (LoRA) parameters only; the shadow is fp32. ``swapped`` temporarily puts
the EMA weights into the model (eval, LoRA export) and restores the live weights bit for bit.
Under FSDP2 the shadow is sharded like the parameters (the update is elementwise, so each rank
averages its own shard); checkpoints hold it gathered (``distributed.gather_state``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

from .distributed import shard_like


class EMA:
    def __init__(self, params: list[torch.nn.Parameter], max_decay: float = 0.9, every: int = 8):
        if not 0.0 <= max_decay < 1.0:
            raise ValueError(f"ema decay {max_decay} must be in [0, 1).")
        if every < 1:
            raise ValueError(f"ema every={every} must be >= 1.")
        self.params = list(params)
        self.shadow = [p.detach().float().clone() for p in self.params]  # fp32 copies
        self.max_decay, self.every = max_decay, every

    def decay(self, step: int) -> float:
        return min(self.max_decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Call after optimizer step ``step`` (0-based count of steps taken before this one)."""
        if step % self.every:
            return
        d = self.decay(step)
        for s, p in zip(self.shadow, self.params):
            s.mul_(d).add_(p.detach().float(), alpha=1 - d)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        live = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                p.copy_(s.to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for p, x in zip(self.params, live):
                    p.copy_(x)

    def state_dict(self) -> dict[str, Tensor]:
        return {str(i): s for i, s in enumerate(self.shadow)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if len(state) != len(self.shadow):
            raise ValueError(f"EMA state has {len(state)} tensors, the model {len(self.shadow)} trainable ones.")
        for i, s in enumerate(self.shadow):
            s.copy_(shard_like(state[str(i)], s))  # (a checkpoint's full tensor; cut like an FSDP2 shard)
