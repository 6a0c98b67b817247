"""Batch arithmetic: a ``Config`` and a world size -> per-device numbers (``derived``), with one
ValueError naming the numbers that do not divide (ranks, sampling batches, optimizer steps, SDE
windows, tree layouts). The vocabulary is in ``flowalign/config.py``'s docstring.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

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


WINDOWS = ("all", "fixed", "random", "progressive", "geometric")


def trained_steps(cfg: Config) -> int:
    s = cfg.sample
    if s.window == "all":
        return max(1, int(s.num_steps * s.timestep_fraction))
    return s.window_size


def check_window(s: SampleConfig) -> None:
    """One ValueError for an SDE window that does not fit the step count (or an unknown kind)."""
    if s.window not in WINDOWS:
        raise ValueError(f"sample.window={s.window!r}; choose one of {list(WINDOWS)}.")
    if s.window == "all":
        if not 0 < s.timestep_fraction <= 1:
            raise ValueError(f"sample.timestep_fraction={s.timestep_fraction} must be in (0, 1].")
        return
    lo, hi = (s.window_range + [s.num_steps])[:2] if s.window in ("random", "fixed") else (0, s.num_steps)
    if s.window == "fixed":
        hi = lo + s.window_size
    if not 1 <= s.window_size <= hi - lo or not 0 <= lo < hi <= s.num_steps:
        raise ValueError(
            f"SDE window of {s.window_size} steps in range [{lo}, {hi}) does not fit "
            f"{s.num_steps} steps; need 1 <= sample.window_size <= hi - lo and "
            f"0 <= lo < hi <= sample.num_steps."
        )
    if s.window == "geometric" and not (s.window_size < s.num_steps and 0 < s.window_r < 1):
        raise ValueError(
            f"sample.window=geometric needs sample.window_size={s.window_size} < "
            f"sample.num_steps={s.num_steps} and 0 < sample.window_r={s.window_r} < 1."
        )
    if s.window == "progressive" and not (s.window_stride >= 1 and s.window_every >= 1):
        raise ValueError(
            f"sample.window_stride={s.window_stride} and sample.window_every={s.window_every} must be >= 1."
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
    if s.tree_splits:  # a tree grows from one root per group: whole groups per sampling batch
        leaves = 1
        for k in s.tree_branch * len(s.tree_splits) if len(s.tree_branch) == 1 else s.tree_branch:
            leaves *= k
        if leaves != s.group_size or s.batch_size % s.group_size or per_rank % s.group_size:
            raise ValueError(
                f"tree rollouts: sample.tree_branch={s.tree_branch} over {len(s.tree_splits)} splits "
                f"give {leaves} leaves per tree; need sample.group_size = {leaves} leaves and "
                f"sample.batch_size ({s.batch_size}) and the {per_rank} images per process to be "
                f"multiples of it (each batch holds whole trees)."
            )
    grad_accum = micro // o.steps_per_iteration
    return Derived(world_size, total, per_rank, batches, grad_accum, t, grad_accum * t)
