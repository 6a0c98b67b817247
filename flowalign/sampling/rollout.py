"""The one sampling loop, reused by the trainer, steering and the pipelines.

``rollout`` walks a sigma grid with a step function from ``sde.STEPS``, storing every state and
sampling-time log-prob. Steps whose noise level is 0 are plain Euler (ODE) steps, whatever the kind,
and draw no random numbers. Two hooks make it reusable:

* ``guidance(ctx) -> drift | None`` is called before each step (with ``ctx.out`` unset) and returns an
  extra displacement added to the kernel mean (gradient guidance, Euphonium, FK proposals);
* ``on_step(ctx) -> index | None`` is called after each step; returning a LongTensor ``[B]`` of
  ancestor rows reindexes the state, the conditioning and the stored history (FK resampling).

``log_prob_at`` recomputes a stored transition under the current weights (training), and
``complete`` finishes states with ODE steps (reward ladders, FK look-ahead, G^2RPO).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..types import Cond, Rollout, StepOut
from .schedule import noise_table
from .sde import get_step, ode, step_name


@dataclass
class StepContext:
    """What the hooks see at step ``j`` (sigma -> sigma_next)."""

    j: int
    sigma: Tensor  # [] fp32
    sigma_next: Tensor  # [] fp32
    x: Tensor  # [B, *S] state before the step
    v: Tensor  # [B, *S] velocity at x
    cond: Cond
    out: StepOut | None = None  # set for on_step, None for guidance


def check_rollout_args(sigmas: Tensor, noise_levels: Tensor, batch_size: int, generator) -> None:
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D grid of T+1 >= 2 values, got shape {tuple(sigmas.shape)}.")
    if bool((sigmas[1:] >= sigmas[:-1]).any()):
        raise ValueError(f"sigmas must decrease strictly (1 = noise -> 0 = data), got {sigmas.tolist()}.")
    if noise_levels.shape != (sigmas.numel() - 1,):
        raise ValueError(
            f"noise_levels has shape {tuple(noise_levels.shape)}, expected "
            f"({sigmas.numel() - 1},) = one level per step."
        )
    if bool((noise_levels < 0).any()):
        raise ValueError(f"noise_level must be >= 0, got {noise_levels.min().item():g}; 0 = ODE step.")
    if isinstance(generator, (list, tuple)) and len(generator) != batch_size:
        raise ValueError(
            f"got {len(generator)} generators for a batch of {batch_size}; pass one "
            f"torch.Generator or exactly {batch_size}."
        )


def as_noise_levels(noise_levels: Tensor | float | None, num_steps: int) -> Tensor:
    """None -> all ODE; a float -> that level on every step but the last; a [T] table as is."""
    if noise_levels is None:
        return torch.zeros(num_steps)
    t = torch.as_tensor(noise_levels, dtype=torch.float32)
    return noise_table(num_steps, t) if t.ndim == 0 else t.float().cpu()


def rollout(
    model,
    cond: Cond,
    x: Tensor,
    sigmas: Tensor,
    step: str | Callable = "flow_sde",
    noise_levels: Tensor | float | None = None,
    *,
    generator=None,
    on_step: Callable[[StepContext], Tensor | None] | None = None,
    guidance: Callable[[StepContext], Tensor | None] | None = None,
    keep_x0: bool = False,
) -> Rollout:
    """Sample trajectories from ``x`` at ``sigmas[0]`` down to ``sigmas[-1]``.

    x [B, *S]; sigmas [T+1]; noise_levels [T] (see ``as_noise_levels``). Returns a ``Rollout``
    with latents [B, T+1, *S] and log_probs [B, T]."""
    step_fn = get_step(step)
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).cpu()
    levels = as_noise_levels(noise_levels, sigmas.numel() - 1)
    check_rollout_args(sigmas, levels, x.shape[0], generator)
    nfe0 = model.nfe
    x = x.float()
    states, log_probs, x0_preds = [x], [], []
    for j in range(sigmas.numel() - 1):
        s, s_next = sigmas[j], sigmas[j + 1]
        v = model.velocity(x, s, cond)
        ctx = StepContext(j, s, s_next, x, v, cond)
        drift = guidance(ctx) if guidance is not None else None
        fn = step_fn if levels[j] > 0 else ode
        out = fn(x, v, s, s_next, float(levels[j]), generator=generator, drift=drift)
        x = out.x_next
        states.append(x)
        log_probs.append(out.log_prob)
        if keep_x0:
            x0_preds.append(out.x0_pred)
        if on_step is not None:
            ctx.out = out
            index = on_step(ctx)
            if index is not None:
                index = torch.as_tensor(index, dtype=torch.long, device=x.device)
                x, cond = x[index], cond.select(index)
                states = [t[index] for t in states]
                log_probs = [t[index] for t in log_probs]
                x0_preds = [t[index] for t in x0_preds]
    return Rollout(
        latents=torch.stack(states, 1),
        log_probs=torch.stack(log_probs, 1),
        sigmas=sigmas,
        noise_levels=levels,
        step=step_name(step),
        x0_preds=torch.stack(x0_preds, 1) if keep_x0 else None,
        nfe=model.nfe - nfe0,
    )


def log_prob_at(
    model, cond: Cond, rollout: Rollout, j: int, step: str | Callable | None = None, drift: Tensor | None = None
) -> StepOut:
    """Recompute step ``j`` of stored trajectories under the current weights (with gradients if
    enabled): the velocity at ``latents[:, j]`` and the log-prob of the stored ``latents[:, j+1]``."""
    x, x_next = rollout.latents[:, j], rollout.latents[:, j + 1]
    level = float(rollout.noise_levels[j])
    fn = get_step(step or rollout.step) if level > 0 else ode
    v = model.velocity(x, rollout.sigmas[j], cond)
    return fn(x, v, rollout.sigmas[j], rollout.sigmas[j + 1], level, x_next=x_next, drift=drift)


def completion_grid(sigmas: Tensor, start: int, num_steps: int | None = None, stride: int | None = None) -> Tensor:
    """Sub-grid of ``sigmas`` from index ``start`` to the end used for an ODE completion:
    every remaining point (default), every ``stride``-th point, or ``num_steps`` evenly spaced
    steps; always ends at sigmas[-1]."""
    last = sigmas.numel() - 1
    if not 0 <= start <= last:
        raise ValueError(f"start={start} outside the grid of {last} steps.")
    if num_steps is not None and stride is not None:
        raise ValueError("give num_steps or stride for a completion, not both.")
    if stride is not None:
        if stride < 1:
            raise ValueError(f"stride={stride} must be >= 1.")
        idx = list(range(start, last + 1, stride))
    elif num_steps is not None:
        if num_steps < 1:
            raise ValueError(f"num_steps={num_steps} must be >= 1.")
        idx = torch.linspace(start, last, min(num_steps, last - start) + 1).round().long().tolist()
    else:
        idx = list(range(start, last + 1))
    if idx[-1] != last:
        idx.append(last)
    return sigmas[torch.tensor(sorted(set(idx)))]


@torch.no_grad()
def complete(
    model, cond: Cond, x: Tensor, sigmas: Tensor, start: int, *, num_steps: int | None = None, stride: int | None = None
) -> tuple[Tensor, int]:
    """ODE completion of states x [B, *S] at ``sigmas[start]`` down to 0 -> (final [B, *S], nfe)."""
    grid = completion_grid(torch.as_tensor(sigmas, dtype=torch.float32).cpu(), start, num_steps, stride)
    nfe0 = model.nfe
    x = x.float()
    for s, s_next in zip(grid[:-1], grid[1:]):
        x = ode(x, model.velocity(x, s, cond), s, s_next).x_next
    return x, model.nfe - nfe0
