"""Batch arithmetic: a ``Config`` and a world size -> per-device numbers (``derived``), with one
ValueError naming the numbers that do not divide (ranks, sampling batches, optimizer steps, SDE
windows, tree layouts). The vocabulary is in ``flowalign/train/config.py``'s docstring.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..credit import check_credit
from ..sampling.windows import window_kind

if TYPE_CHECKING:
    from .config import Config, SampleConfig


@dataclass
class Derived:
    world_size: int  # processes (devices)
    images_per_iteration: int  # groups_per_iteration x group_size, over all ranks
    images_per_rank: int  # images_per_iteration / world_size
    batches_per_rank: int  # sampling batches (= training micro-batches) per rank per iteration
    grad_accum: int  # micro-batches accumulated into one optimizer step (per rank)
    trained_steps: int  # trained (stochastic) steps per sample per iteration
    backward_per_step: int  # backward passes (micro-batch x step) per optimizer step

    def table(self) -> str:
        rows = [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)]
        return "\n".join(f"  {k:<22} {v}" for k, v in rows)


def trained_steps(cfg: Config) -> int:
    """Trained (stochastic) steps per sample per iteration (the window's size)."""
    w = cfg.sample.window
    return window_kind(w.kind).trained(w.options, cfg.sample.num_steps)


def check_window(s: SampleConfig) -> None:
    """One ValueError for an SDE window that does not fit the step count (or an unknown kind)."""
    window_kind(s.window.kind).check(s.window.options, s.num_steps)


def check_tree_layout(cfg: Config, per_rank: int) -> None:
    """A tree grows from one root per group: whole trees per sampling batch and per process."""
    s, o = cfg.sample, cfg.credit.options
    leaves = 1
    for k in o.branch * len(o.splits) if len(o.branch) == 1 else o.branch:
        leaves *= k
    if leaves != s.group_size or s.batch_size % s.group_size or per_rank % s.group_size:
        raise ValueError(
            f"tree rollouts: credit.options.branch={o.branch} over {len(o.splits)} splits give {leaves} "
            f"leaves per tree; need sample.group_size = {leaves} leaves and sample.batch_size "
            f"({s.batch_size}) and the {per_rank} images per process to be multiples of it (each batch "
            f"holds whole trees)."
        )


def derived(cfg: Config, world_size: int = 1) -> Derived:
    """Per-device numbers for ``world_size`` processes; one ValueError naming the bad numbers."""
    s, o = cfg.sample, cfg.optim
    for name, value in (
        ("sample.group_size", s.group_size),
        ("sample.groups_per_iteration", s.groups_per_iteration),
        ("sample.batch_size", s.batch_size),
        ("sample.num_steps", s.num_steps),
        ("optim.steps_per_iteration", o.steps_per_iteration),
        ("train.inner_epochs", cfg.train.inner_epochs),
        ("world_size", world_size),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be an integer >= 1.")
    total = s.groups_per_iteration * s.group_size
    if total % world_size:
        raise ValueError(
            f"{s.groups_per_iteration} groups x {s.group_size} images = {total} images per "
            f"iteration do not split over {world_size} processes; make "
            f"sample.groups_per_iteration x sample.group_size a multiple of {world_size}."
        )
    per_rank = total // world_size
    if per_rank % s.batch_size:
        fits = [b for b in range(1, per_rank + 1) if per_rank % b == 0 and b <= max(s.batch_size, 1) * 2]
        raise ValueError(
            f"{per_rank} images per process ({total} / {world_size}) are not a whole number of "
            f"sampling batches of sample.batch_size={s.batch_size}; use one of {fits[-4:]}."
        )
    batches = per_rank // s.batch_size
    micro = batches * cfg.train.inner_epochs
    if micro % o.steps_per_iteration:
        raise ValueError(
            f"{micro} micro-batches per iteration ({batches} batches x {cfg.train.inner_epochs} "
            f"inner epochs) do not split into optim.steps_per_iteration={o.steps_per_iteration} "
            f"optimizer steps; use a divisor of {micro}."
        )
    t = trained_steps(cfg)
    check_window(s)
    if "tree" in check_credit(cfg.credit.kind).needs:
        check_tree_layout(cfg, per_rank)
    grad_accum = micro // o.steps_per_iteration
    return Derived(world_size, total, per_rank, batches, grad_accum, t, grad_accum * t)
