"""Gaussian-mixture flows with a closed-form velocity field, for exactness tests.

Data ``x0 ~ sum_k w_k N(m_k, diag(s_k^2))`` in D dimensions. Under ``x = (1 - sigma) x0 + sigma eps``
component k has marginal ``N((1 - sigma) m_k, diag(c_k))`` with ``c_k = (1 - sigma)^2 s_k^2 + sigma^2``,
and the exact velocity is the posterior expectation of ``eps - x0``:

    E[x0  | x, k] = m_k + (1 - sigma) s_k^2 / c_k * (x - (1 - sigma) m_k)
    E[eps | x, k] = sigma / c_k * (x - (1 - sigma) m_k)
    v(x, sigma)   = sum_k p(k | x) (E[eps | x, k] - E[x0 | x, k])

A linear reward ``r(x) = c . x`` tilts the mixture in closed form, which the steering tests use:
``N(m, S) exp(lam c.x)`` is proportional to ``N(m + lam S c, S)`` times ``exp(lam c.m + lam^2 c.S c / 2)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..sampling.schedule import linear_sigmas
from ..types import Cond
from .base import FlowModel, check_prompts


class GaussianMixtureFlow(FlowModel):
    default_steps = 100

    def __init__(self, means, stds, weights=None):
        self.means = torch.as_tensor(means, dtype=torch.float64)  # [K, D]
        stds = torch.as_tensor(stds, dtype=torch.float64)  # scalar, [K] or [K, D]
        if stds.ndim == 1:
            stds = stds[:, None]
        self.stds = stds.expand_as(self.means).clone()  # [K, D]
        k = self.means.shape[0]
        w = (
            torch.full((k,), 1.0 / k, dtype=torch.float64)
            if weights is None
            else torch.as_tensor(weights, dtype=torch.float64)
        )
        self.weights = w / w.sum()  # [K]
        self.nfe = 0

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    # --- FlowModel -----------------------------------------------------------------------------
    def encode(self, prompts, guidance_scale=None, negative_prompts=None) -> Cond:
        prompts = check_prompts(prompts)
        return Cond(embeds={"row": torch.zeros(len(prompts), 1)}, prompts=prompts)

    def velocity(self, x: Tensor, sigma, cond: Cond | None = None) -> Tensor:
        self.count(x.shape[0])
        xd = x.double()
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1, 1)  # [B|1, 1, 1]
        m, sd = self.means[None], self.stds[None]  # [1, K, D]
        c = (1 - s) ** 2 * sd**2 + s**2  # [B|1, K, D]
        diff = xd[:, None, :] - (1 - s) * m  # [B, K, D]
        log_n = -0.5 * (diff**2 / c + torch.log(2 * torch.pi * c)).sum(-1)  # [B, K]
        resp = torch.softmax(torch.log(self.weights)[None] + log_n, dim=1)  # [B, K]
        e_x0 = m + (1 - s) * sd**2 / c * diff
        e_eps = s / c * diff
        return (resp[..., None] * (e_eps - e_x0)).sum(1).float()

    def decode(self, x: Tensor, height: int | None = None, width: int | None = None) -> Tensor:
        return x

    def initial_noise(self, batch_size: int, height: int = 0, width: int = 0, generator=None) -> Tensor:
        if isinstance(generator, (list, tuple)):
            return torch.stack([torch.randn(self.dim, generator=g) for g in generator])
        return torch.randn(batch_size, self.dim, generator=generator)

    def sigmas(self, num_steps: int, height: int = 0, width: int = 0) -> Tensor:
        return linear_sigmas(num_steps)

    # --- closed forms ----------------------------------------------------------------------------
    def mean(self) -> Tensor:  # [D]
        return (self.weights[:, None] * self.means).sum(0)

    def cov(self) -> Tensor:  # [D, D]
        mu = self.mean()
        second = sum(w * (torch.diag(s**2) + torch.outer(m, m)) for w, m, s in zip(self.weights, self.means, self.stds))
        return second - torch.outer(mu, mu)

    def sample_data(self, n: int, generator=None) -> Tensor:
        k = torch.multinomial(self.weights.float(), n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.means[k] + self.stds[k] * eps).float()

    def tilt_linear(self, c, lam: float) -> GaussianMixtureFlow:
        """The mixture proportional to p(x) exp(lam * c.x)."""
        c = torch.as_tensor(c, dtype=torch.float64)
        var = self.stds**2
        means = self.means + lam * var * c
        logw = torch.log(self.weights) + lam * self.means @ c + 0.5 * lam**2 * (var * c**2).sum(1)
        return GaussianMixtureFlow(means, self.stds, torch.softmax(logw, 0))
