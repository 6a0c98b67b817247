"""Pure step functions for rectified-flow sampling with exact per-step log-probabilities.

Every step maps the state ``x`` at flow time ``sigma`` and the velocity ``v`` to a Gaussian kernel
``N(mean, std^2 I)`` over the state at ``sigma_next < sigma`` and returns ``StepOut``. With
``dt = sigma_next - sigma < 0``, ``x0_pred = x - sigma v`` and ``eps_pred = x + (1 - sigma) v``:

* ``ode``        Euler step ``x + dt v`` (std 0).
* ``flow_sde``   Flow-GRPO (Liu et al. 2025, arXiv 2505.05470, Eq. 9): Euler-Maruyama on the reverse
                 SDE with the same marginals, diffusion ``g = a sqrt(sigma / (1 - sigma))``;
                 ``mean = x + dt [v + g^2 / (2 sigma) eps_pred]``, ``std = g sqrt(-dt)``. At
                 ``sigma == 1`` the denominator uses ``sigma_next`` (the reference code uses
                 ``sigmas[1]``, which is ``sigma_next`` at the first step), so the first std is ``a``.
* ``dance_sde``  DanceGRPO (Xue et al. 2025, arXiv 2505.07818): the same family with constant
                 diffusion ``g = eta``, i.e. ``mean = x + dt [v + eta^2 / (2 sigma) eps_pred]``,
                 ``std = eta sqrt(-dt)`` (their ``-0.5 eta^2 score dt`` with score ``-eps_pred / sigma``).
* ``cps``        Coefficients-preserving sampling (Wang & Yu 2025, arXiv 2509.05952):
                 ``std = sigma_next sin(a pi / 2)``,
                 ``mean = (1 - sigma_next) x0_pred + sqrt(sigma_next^2 - std^2) eps_pred``.
* ``cps_flowgrpo`` the CPS kernel with the log-prob of the flow_grpo code, ``-mean((x_next - mean)^2)``
                 (no 1/(2 std^2), no constants): only for reproducing that code's ratio scale.

Log-prob convention (all kinds but ``cps_flowgrpo``): the Gaussian log-density
``-(x_next - mean)^2 / (2 std^2) - log std - log sqrt(2 pi)`` averaged (not summed) over the latent
elements of a sample, constants kept; 0 where the step is deterministic (std == 0). It is always
computed from ``x_next`` (never from the drawn noise), so recomputing a stored transition with the
same velocity reproduces it bit for bit.

Options shared by every kind: ``noise`` (given standard-normal draws), ``x_next`` (score a given
transition instead of sampling), ``generator`` (torch.Generator or one per row), ``drift`` (an extra
displacement added to the mean, e.g. ``dt * guidance``; the returned log-prob is under the drifted
kernel — score the same ``x_next`` without ``drift`` to get the unguided density).
All math is fp32 whatever the input dtype. No state is kept between calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..types import StepOut

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _col(value: Tensor | float, x: Tensor) -> Tensor:
    """Scalar or [B] -> fp32 tensor broadcastable against x [B, *S]."""
    t = torch.as_tensor(value, dtype=torch.float32, device=x.device)
    return t.reshape(-1, *([1] * (x.ndim - 1))) if t.ndim else t


def _draw(shape: torch.Size, generator, device) -> Tensor:
    if isinstance(generator, (list, tuple)):
        return torch.stack([torch.randn(shape[1:], generator=g, device=device) for g in generator])
    return torch.randn(shape, generator=generator, device=device)


def gaussian_log_prob(x_next: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """log N(x_next; mean, std^2 I) per element, averaged over non-batch dims -> [B] (0 if std == 0)."""
    std_b = _col(std, x_next).expand(x_next.shape[0], *([1] * (x_next.ndim - 1)))
    safe = torch.where(std_b > 0, std_b, torch.ones_like(std_b))
    lp = -((x_next - mean) ** 2) / (2 * safe**2) - torch.log(safe) - LOG_SQRT_2PI
    lp = lp.flatten(1).mean(1)
    return torch.where(std_b.flatten() > 0, lp, torch.zeros_like(lp))


def _finish(x, v, sigma, mean, std, *, noise, x_next, generator, drift, log_prob_fn=gaussian_log_prob):
    """Shared tail of every kind: add drift, sample or take x_next, score it."""
    if drift is not None:
        mean = mean + drift.float()
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device).expand(x.shape[0]).clone()
    if x_next is None:
        if bool((std > 0).any()):
            eps = _draw(x.shape, generator, x.device) if noise is None else noise.float()
            x_next = mean + _col(std, x) * eps
        else:
            x_next = mean
    x_next = x_next.float()
    log_prob = log_prob_fn(x_next, mean, std)
    return StepOut(x_next=x_next, mean=mean, std=std, log_prob=log_prob, x0_pred=x - _col(sigma, x) * v)


def _prep(x: Tensor, v: Tensor, sigma, sigma_next):
    x, v = x.float(), v.float()
    return x, v, _col(sigma, x), _col(sigma_next, x)


def ode(x, v, sigma, sigma_next, noise_level=0.0, *, noise=None, x_next=None, generator=None, drift=None):
    """Euler step; ``noise_level`` is ignored (always deterministic, log_prob 0)."""
    x, v, s, s_next = _prep(x, v, sigma, sigma_next)
    mean = x + (s_next - s) * v
    if drift is not None:
        mean = mean + drift.float()
    zeros = x.new_zeros(x.shape[0])
    return StepOut(
        x_next=mean if x_next is None else x_next.float(), mean=mean, std=zeros, log_prob=zeros, x0_pred=x - s * v
    )


def _reverse_sde(x, v, s, s_next, g):
    """Euler-Maruyama on dx = [v + g^2/(2 sigma) eps_pred] dt + g dW with dt < 0."""
    dt = s_next - s
    eps_pred = x + (1 - s) * v
    mean = x + dt * (v + g**2 / (2 * s) * eps_pred)
    std = (g * torch.sqrt(-dt)).flatten()
    return mean, std.expand(x.shape[0])


def flow_sde(x, v, sigma, sigma_next, noise_level, *, noise=None, x_next=None, generator=None, drift=None):
    x, v, s, s_next = _prep(x, v, sigma, sigma_next)
    a = _col(noise_level, x)
    denom = 1 - torch.where(s >= 1, s_next, s)
    g = a * torch.sqrt(s / denom)
    mean, std = _reverse_sde(x, v, s, s_next, g)
    return _finish(x, v, s, mean, std, noise=noise, x_next=x_next, generator=generator, drift=drift)


def dance_sde(x, v, sigma, sigma_next, noise_level, *, noise=None, x_next=None, generator=None, drift=None):
    x, v, s, s_next = _prep(x, v, sigma, sigma_next)
    mean, std = _reverse_sde(x, v, s, s_next, _col(noise_level, x))
    return _finish(x, v, s, mean, std, noise=noise, x_next=x_next, generator=generator, drift=drift)


def _cps_kernel(x, v, s, s_next, noise_level):
    std = s_next * torch.sin(_col(noise_level, x) * (math.pi / 2))
    x0_pred = x - s * v
    eps_pred = x + (1 - s) * v
    mean = (1 - s_next) * x0_pred + torch.sqrt((s_next**2 - std**2).clamp_min(0)) * eps_pred
    return mean, std.flatten().expand(x.shape[0])


def cps(x, v, sigma, sigma_next, noise_level, *, noise=None, x_next=None, generator=None, drift=None):
    x, v, s, s_next = _prep(x, v, sigma, sigma_next)
    mean, std = _cps_kernel(x, v, s, s_next, noise_level)
    return _finish(x, v, s, mean, std, noise=noise, x_next=x_next, generator=generator, drift=drift)


def flowgrpo_cps_log_prob(x_next: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """The flow_grpo code's CPS 'log-prob': -mean((x_next - mean)^2) (0 if std == 0)."""
    lp = -((x_next - mean) ** 2).flatten(1).mean(1)
    return torch.where(std > 0, lp, torch.zeros_like(lp))


def cps_flowgrpo(x, v, sigma, sigma_next, noise_level, *, noise=None, x_next=None, generator=None, drift=None):
    x, v, s, s_next = _prep(x, v, sigma, sigma_next)
    mean, std = _cps_kernel(x, v, s, s_next, noise_level)
    return _finish(
        x,
        v,
        s,
        mean,
        std,
        noise=noise,
        x_next=x_next,
        generator=generator,
        drift=drift,
        log_prob_fn=flowgrpo_cps_log_prob,
    )


StepFn = Callable[..., StepOut]

STEPS: dict[str, StepFn] = {
    "ode": ode,
    "flow_sde": flow_sde,
    "dance_sde": dance_sde,
    "cps": cps,
    "cps_flowgrpo": cps_flowgrpo,
}


def get_step(kind: str | StepFn) -> StepFn:
    """Name -> step function, with one clear error for an unknown name."""
    if callable(kind):
        return kind
    if kind not in STEPS:
        raise ValueError(
            f"unknown step kind {kind!r}; choose one of {sorted(STEPS)} "
            f"(or add a function to flowalign.sampling.sde.STEPS)."
        )
    return STEPS[kind]


def step_name(kind: str | StepFn) -> str:
    if isinstance(kind, str):
        return kind
    return next((k for k, f in STEPS.items() if f is kind), getattr(kind, "__name__", "custom"))
