"""Sigma grids, SDE windows and per-step noise tables.

* ``shifted_sigmas`` reproduces diffusers' ``FlowMatchEulerDiscreteScheduler.set_timesteps`` for SD3 /
  SD3.5 (static shift; the scheduler's sigma_min is itself shifted, so the last non-zero sigma is
  shifted twice) and ``flux_sigmas`` the Flux pipeline (``linspace(1, 1/N, N)`` with the dynamic,
  resolution-dependent shift ``mu``). Both return fp32 ``[T+1]`` ending at 0.
* Windows say which steps are stochastic (and hence trained): all-but-last (Flow-GRPO), a fixed or
  random window (Flow-GRPO-Fast, arXiv 2505.05470 repo), a progressive sliding window (MixGRPO,
  arXiv 2507.21802). The MixGRPO schedule here slides by ``stride`` every ``every`` iterations and
  wraps around; the paper's roll-back variant is not reproduced.
* A noise table is the per-step noise level ``[T]`` fed to the rollout: 0 means an ODE step.
  ``steps_noise_table`` builds one from a step list such as ``"6-15"`` (``parse_steps``), the form
  the command lines and the steering entry point take.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from torch import Tensor

NUM_TRAIN_TIMESTEPS = 1000


def _check_steps(num_steps: int) -> None:
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps={num_steps!r} must be an int >= 1; use e.g. num_steps=10.")


def shift_sigma(sigma, shift: float):
    """Static time shift s * sigma / (1 + (s - 1) * sigma) (SD3)."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def shifted_sigmas(num_steps: int, shift: float = 3.0) -> Tensor:
    """SD3 grid as diffusers computes it: [T+1] fp32, sigmas[0] = 1, sigmas[-1] = 0."""
    _check_steps(num_steps)
    sigma_min = shift_sigma(torch.tensor(1.0, dtype=torch.float32) / NUM_TRAIN_TIMESTEPS, shift).item()
    t = np.linspace(1.0 * NUM_TRAIN_TIMESTEPS, sigma_min * NUM_TRAIN_TIMESTEPS, num_steps)
    sigmas = shift_sigma(t / NUM_TRAIN_TIMESTEPS, shift)
    return torch.cat([torch.from_numpy(sigmas).float(), torch.zeros(1)])


def flux_mu(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """Flux's resolution-dependent shift: linear in the packed image sequence length."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + (base_shift - m * base_seq_len)


def flux_sigmas(num_steps: int, mu: float) -> Tensor:
    """Flux grid: exponential time shift of linspace(1, 1/N, N); [T+1] fp32 ending at 0."""
    _check_steps(num_steps)
    s = np.linspace(1.0, 1.0 / num_steps, num_steps).astype(np.float32)
    s = math.exp(mu) / (math.exp(mu) + (1 / s - 1) ** 1.0)
    return torch.cat([torch.from_numpy(np.asarray(s)).float(), torch.zeros(1)])


def linear_sigmas(num_steps: int) -> Tensor:
    """Unshifted grid linspace(1, 0, T+1) (analytic flows)."""
    _check_steps(num_steps)
    return torch.linspace(1.0, 0.0, num_steps + 1)


# --- which steps are stochastic -----------------------------------------------------------------
def window_mask(num_steps: int, size: int | None = None, start: int = 0) -> Tensor:
    """[T] bool: steps start..start+size-1 stochastic. ``size=None`` = all steps but the last
    (the last step's std is ~0, Flow-GRPO excludes it)."""
    _check_steps(num_steps)
    if size is None:
        mask = torch.ones(num_steps, dtype=torch.bool)
        mask[-1] = num_steps == 1
        return mask
    if not 1 <= size <= num_steps or not 0 <= start <= num_steps - size:
        raise ValueError(
            f"SDE window of size {size} starting at step {start} does not fit in "
            f"{num_steps} steps; need 1 <= size <= {num_steps} and 0 <= start <= "
            f"{num_steps} - size."
        )
    mask = torch.zeros(num_steps, dtype=torch.bool)
    mask[start : start + size] = True
    return mask


def random_window(
    num_steps: int, size: int, lo: int = 0, hi: int | None = None, rng: random.Random | None = None
) -> Tensor:
    """Flow-GRPO-Fast: a window of ``size`` steps with a uniform start in [lo, hi - size]."""
    hi = num_steps if hi is None else hi
    if not 0 <= lo < hi <= num_steps or size > hi - lo:
        raise ValueError(
            f"window range [{lo}, {hi}) with size {size} does not fit in {num_steps} "
            f"steps; need 0 <= lo < hi <= {num_steps} and size <= hi - lo."
        )
    start = (rng or random).randint(lo, hi - size)
    return window_mask(num_steps, size, start)


def progressive_window(
    num_steps: int, size: int, iteration: int, every: int = 25, stride: int = 1, last_start: int | None = None
) -> Tensor:
    """MixGRPO: the window starts at step 0 and moves ``stride`` steps later every ``every``
    iterations, up to ``last_start`` (default ``num_steps - size``), then starts over."""
    last = num_steps - size if last_start is None else last_start
    n_positions = last // stride + 1
    start = ((iteration // every) % n_positions) * stride
    return window_mask(num_steps, size, start)


def noise_table(num_steps: int, noise_level: float | Tensor, mask: Tensor | None = None) -> Tensor:
    """[T] fp32 noise level per step: ``noise_level`` (scalar or a per-step table psi(t)) where the
    mask is on, 0 elsewhere."""
    _check_steps(num_steps)
    levels = torch.as_tensor(noise_level, dtype=torch.float32)
    if levels.ndim == 0:
        levels = levels.expand(num_steps)
    if levels.shape != (num_steps,):
        raise ValueError(f"noise table has shape {tuple(levels.shape)}, expected ({num_steps},).")
    if bool((levels < 0).any()):
        raise ValueError(f"noise_level must be >= 0, got {levels.min().item():g}; use 0 for ODE steps.")
    mask = window_mask(num_steps) if mask is None else mask
    return torch.where(mask, levels, torch.zeros_like(levels)).clone()


def parse_steps(spec, what: str = "steps") -> list[int] | None:
    """0-based step indices from ``"7-14"``, ``"4,8,12"``, ``"2-4,9"`` or a list of ints (sorted,
    unique); ``None`` and ``"all"`` -> None (the caller's default). Only the syntax is checked here;
    the caller checks the range against its grid."""
    if spec is None or spec == "all":
        return None
    if isinstance(spec, int) and not isinstance(spec, bool):
        return [spec]
    if not isinstance(spec, str):
        items = list(spec)
        if all(isinstance(i, int) and not isinstance(i, bool) for i in items):
            return sorted(set(items))
        raise ValueError(f"{what}={spec!r} must be ints, a string such as '6-15' or '4,8,12', or 'all'.")
    out: set[int] = set()
    for part in (p.strip() for p in spec.split(",")):
        lo, dash, hi = part.partition("-")
        if not lo.strip().isdigit() or (dash and not hi.strip().isdigit()) or (dash and int(hi) < int(lo)):
            raise ValueError(
                f"{what}={spec!r}: {part!r} is not a step or a range LO-HI of 0-based steps; "
                f"pass e.g. '6-15', '4,8,12' or 'all'."
            )
        out.update(range(int(lo), int(hi) + 1) if dash else [int(lo)])
    return sorted(out)


def steps_noise_table(num_steps: int, noise_level: float | Tensor, steps) -> Tensor:
    """[T] noise table with ``noise_level`` on the 0-based ``steps`` (``parse_steps`` forms; None or
    'all' = every step but the last, as ``noise_table``) and ODE steps elsewhere."""
    idx = parse_steps(steps, "noise_steps")
    if idx is None:
        return noise_table(num_steps, noise_level)
    _check_steps(num_steps)
    bad = [i for i in idx if not 0 <= i < num_steps]
    if bad:
        raise ValueError(
            f"noise_steps {bad} lie outside the {num_steps} steps (0 .. {num_steps - 1}); "
            f"pass steps in that range, e.g. '{num_steps // 3}-{num_steps - 1}'."
        )
    mask = torch.zeros(num_steps, dtype=torch.bool)
    mask[idx] = True
    return noise_table(num_steps, noise_level, mask)
