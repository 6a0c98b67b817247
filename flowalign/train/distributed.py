"""Accelerate set-up and tear-down, the wrapped transformer seen as the bare one, and FSDP2's shards
gathered to full tensors (checkpoints, EMA, exports) and cut again (resume).

FSDP2 (``fully_shard``, what accelerate's FSDP plugin runs with ``fsdp_version: 2``) replaces every
parameter by a DTensor shard. A checkpoint stores the full tensors (weights, optimizer state, EMA):
every rank takes part in each all-gather, rank 0 writes; so a checkpoint has one layout whatever the
number of processes or the strategy, and resume cuts the full state again like the parameters.
CPU (gloo) processes get FSDP2 when the launch asks for FSDP (``choose_fsdp``): accelerate itself
keeps them on DDP."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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

    acc = Accelerator(
        cpu=cfg.train.cpu or not torch.cuda.is_available(),
        mixed_precision=cfg.train.mixed_precision,
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
    )
    choose_fsdp(acc)
    return acc


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


# --- FSDP2 (fully_shard): every trainable parameter a DTensor shard -------------------------------
def choose_fsdp(acc) -> None:
    """Run FSDP where the launch asked for it. ``accelerate launch --use_fsdp`` (or a config file with
    ``distributed_type: FSDP``, e.g. scripts/accelerate/fsdp.yaml) sets ACCELERATE_USE_FSDP=true, but
    accelerate 1.16 turns it into ``DistributedType.FSDP`` only for GPU-like processes: CPU (gloo)
    processes stay MULTI_CPU and would train with DDP without a word. Here they get the FSDP2
    plugin accelerate builds from the launch's FSDP_* variables; GPU processes are left as they are."""
    import os

    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if not asked or acc.distributed_type != DistributedType.MULTI_CPU:
        return
    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise ValueError(
            f"FSDP version {plugin.fsdp_version} on CPU processes: the trainer runs FSDP2 (fully_shard); "
            f"launch with --fsdp_version 2 (fsdp_version: 2 in the config file, as scripts/accelerate/fsdp.yaml)."
        )
    if acc.mixed_precision != "no":
        plugin.set_mixed_precision(acc.mixed_precision)
    acc.state.distributed_type, acc.state.fsdp_plugin = DistributedType.FSDP, plugin
    # (as accelerate's own FSDP selection does: every later AcceleratorState() copies PartialState's)
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def is_fsdp(acc) -> bool:
    return acc.distributed_type.value == "FSDP"


def check_fsdp(acc) -> None:
    """The trainer keeps FSDP2's parameter names and DTensor shards; FSDP1 wraps and renames them."""
    if is_fsdp(acc) and acc.state.fsdp_plugin.fsdp_version != 2:
        raise ValueError(
            f"fsdp_version={acc.state.fsdp_plugin.fsdp_version}: flowalign train runs FSDP2 only; set "
            f"fsdp_version: 2 in the accelerate config (scripts/accelerate/fsdp.yaml) or --fsdp_version 2."
        )


def is_dtensor(x: Any) -> bool:
    if not (torch.distributed.is_available() and torch.is_tensor(x)):
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(x, DTensor)


def full(x: Any) -> Any:
    """A DTensor shard's full tensor (a collective: call on every rank); anything else as it is."""
    return x.full_tensor() if is_dtensor(x) else x


def gather_state(obj: Any) -> Any:
    """A nested state (``optimizer.state_dict()``, EMA) with every DTensor gathered to its full tensor,
    in the order of the structure (so every rank issues the same collectives): the layout a
    1-process run has, which is what a checkpoint stores."""
    if isinstance(obj, dict):
        return {k: gather_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(gather_state(v) for v in obj)
    return full(obj).detach() if torch.is_tensor(obj) else obj


def shard_like(x: Any, like: Any) -> Any:
    """The full tensor ``x`` cut like the DTensor ``like`` (same mesh and placements; every rank holds
    the same ``x``, so no data moves); ``x`` itself unless ``like`` is a DTensor of its shape."""
    if not is_dtensor(like) or not torch.is_tensor(x) or is_dtensor(x) or x.shape != like.shape:
        return x
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(x.to(like.device), like.device_mesh, like.placements, src_data_rank=None)


def shard_optimizer_state(state: dict, optimizer) -> dict:
    """A full ``optimizer.state_dict()`` (a checkpoint's) with each per-parameter tensor cut like its
    parameter, ready for ``optimizer.load_state_dict`` under FSDP2."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    per = {i: {k: shard_like(v, params[int(i)]) for k, v in s.items()} for i, s in state["state"].items()}
    return {**state, "state": per}


@contextlib.contextmanager
def gathered(module: torch.nn.Module, names: list[str]) -> Iterator[None]:
    """Inside: the named DTensor parameters of ``module`` replaced by full plain parameters (one
    all-gather each, on every rank), so code that reads the module (a LoRA export, save_pretrained)
    sees full weights; the shards are put back on exit. A no-op for plain parameters."""
    swapped = []
    try:
        with torch.no_grad():
            for name in names:
                owner_name, _, leaf = name.rpartition(".")
                owner = module.get_submodule(owner_name)
                p = owner._parameters[leaf]
                if is_dtensor(p):
                    owner._parameters[leaf] = torch.nn.Parameter(p.full_tensor(), requires_grad=p.requires_grad)
                    swapped.append((owner, leaf, p))
        yield
    finally:
        for owner, leaf, p in swapped:
            owner._parameters[leaf] = p
