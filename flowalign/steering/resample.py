"""Resampling for particle methods: normalised weights, effective sample size, ancestor draws.

Every function works on log-weights grouped per prompt, ``[G, K]`` (G groups of K particles), and
returns ancestor indices *within* each group, ``[G, K]`` long. Weights are kept in log space and
normalised with a log-sum-exp in float64, so λ = 10 rewards never overflow (the FK reference code
exponentiates and clamps to [0, 1e10]; not reproduced).

* ``multinomial``: K i.i.d. draws from the categorical weights (FK steering's default).
* ``stratified``: one uniform per stratum [(i + u_i) / K] (Kitagawa 1996).
* ``systematic``: one shared uniform, points (i + u) / K (Carpenter et al. 1999; lowest variance of
  the three, our default).
All three are unbiased: the expected number of copies of particle i is K w_i.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def normalize(log_w: Tensor) -> Tensor:
    """log-weights [G, K] -> normalised weights [G, K] float64 (rows sum to 1).

    A group whose log-weights are all -inf (every particle impossible) gets uniform weights."""
    lw = log_w.double()
    dead = torch.isneginf(lw).all(-1, keepdim=True)
    lw = torch.where(dead, torch.zeros_like(lw), lw)
    lw = torch.nan_to_num(lw, nan=float("-inf"))
    return torch.softmax(lw, dim=-1)


def ess(log_w: Tensor) -> Tensor:
    """Effective sample size 1 / sum w_i^2 of each group: [G, K] -> [G] float64 in [1, K]."""
    w = normalize(log_w)
    return 1.0 / (w**2).sum(-1)


def _from_points(w: Tensor, points: Tensor) -> Tensor:
    """Inverse-CDF lookup of sorted points [G, K] in [0, 1) under weights [G, K]."""
    cdf = w.cumsum(-1)
    cdf[:, -1] = 1.0  # guard against float64 round-off below 1
    idx = torch.searchsorted(cdf, points.contiguous(), right=True)
    return idx.clamp_max(w.shape[-1] - 1)


def multinomial(log_w: Tensor, generator: torch.Generator | None = None) -> Tensor:
    w = normalize(log_w)
    return torch.multinomial(w, w.shape[-1], replacement=True, generator=generator)


def stratified(log_w: Tensor, generator: torch.Generator | None = None) -> Tensor:
    w = normalize(log_w)
    g, k = w.shape
    u = torch.rand(g, k, generator=generator, dtype=torch.float64)
    return _from_points(w, (torch.arange(k, dtype=torch.float64) + u) / k)


def systematic(log_w: Tensor, generator: torch.Generator | None = None) -> Tensor:
    w = normalize(log_w)
    g, k = w.shape
    u = torch.rand(g, 1, generator=generator, dtype=torch.float64)
    return _from_points(w, (torch.arange(k, dtype=torch.float64) + u) / k)


Resampler = Callable[[Tensor, "torch.Generator | None"], Tensor]

RESAMPLERS: dict[str, Resampler] = {"multinomial": multinomial, "stratified": stratified, "systematic": systematic}


def get_resampler(name: str | Resampler) -> Resampler:
    if callable(name):
        return name
    if name not in RESAMPLERS:
        raise ValueError(f"unknown resampler {name!r}; choose one of {sorted(RESAMPLERS)}.")
    return RESAMPLERS[name]


def flat_index(local: Tensor) -> Tensor:
    """Within-group ancestors [G, K] -> rows of the flat batch [G * K] (groups are contiguous)."""
    g, k = local.shape
    return (local + torch.arange(g, device=local.device)[:, None] * k).reshape(-1)
