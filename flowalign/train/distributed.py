"""Accelerate set-up and tear-down, and the wrapped transformer seen as the bare one."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class Prepared:
    """The accelerate-wrapped transformer seen as the bare one: gradient-enabled calls go through the
    wrapper (DDP / FSDP / DeepSpeed hooks), no-grad calls (sampling, reference, eval) through the bare
    module unless the wrapper shards parameters; attributes (config, dtype, modules) are the bare ones."""

    def __init__(self, wrapped: Any, bare: torch.nn.Module, always_wrapped: bool):
        self._wrapped, self._bare, self._always = wrapped, bare, always_wrapped

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        use = self._wrapped if self._always or torch.is_grad_enabled() else self._bare
        return use(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bare, name)


def make_accelerator(cfg):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    return Accelerator(
        cpu=cfg.train.cpu or not torch.cuda.is_available(),
        mixed_precision=cfg.train.mixed_precision,
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
    )


def zero_loss(params: list[torch.nn.Parameter]) -> Tensor:
    """A loss whose gradient is exactly 0 for every parameter (keeps DDP's reducer in step)."""
    return sum(p.sum() for p in params) * 0.0


def finish(acc) -> None:
    """Wait for every rank, then tear the process group down (2-process gloo runs otherwise abort
    at exit now and then; environment.md)."""
    import sys

    acc.wait_for_everyone()
    acc.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
