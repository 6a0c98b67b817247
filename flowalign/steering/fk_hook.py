"""The per-run state of FK steering (``fk.py``): particle log-weights, potentials, look-ahead rewards
and the two rollout hooks (``guidance``: the gradient proposal's drift; ``on_step``: weight and
resample). ``fk.fk_steer`` builds one ``FKSteering`` per call; the maths is in ``fk.py``'s docstring.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..sampling.rollout import StepContext, complete, completion_grid
from ..sampling.sde import get_step, ode
from .common import LatentReward
from .resample import ess, flat_index, get_resampler
from .velocity_cache import VelocityCache


@dataclass(frozen=True)
class Potential:
    init: float  # starting value of the per-particle carry
    update: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]  # (carry, r) -> (log G / lam, carry)


POTENTIALS: dict[str, Potential] = {
    "diff": Potential(0.0, lambda c, r: (r - c, r)),
    "max": Potential(-math.inf, lambda c, r: (torch.maximum(c, r), torch.maximum(c, r))),
    "sum": Potential(0.0, lambda c, r: (c + r, c + r)),
    "rt": Potential(0.0, lambda c, r: (r, c)),
}
LOOKAHEADS = ("x0", "x0_prev", "ode")


class FKSteering:
    """The per-run particle state and the two rollout hooks (``guidance``, ``on_step``).

    Rows are P groups of K particles, contiguous. State per row (float64): ``log_w`` (reset to 0
    when its group resamples), ``log_prod`` (sum of applied log-potentials: the final correction),
    ``carry`` (the potential's running value), ``ancestor`` (the initial particle it descends from).
    ``reward_grad_scale`` scales the gradient proposal's drift (0: no proposal).
    """

    def __init__(
        self,
        model: VelocityCache,
        reward: LatentReward,
        sigmas: Tensor,
        levels: Tensor,
        step: Any,
        groups: int,
        k: int,
        *,
        lam: float,
        potential: str,
        lookahead: str,
        lookahead_steps: int | None,
        resampler: Any,
        schedule: list[int],
        ess_threshold: float,
        reward_grad_scale: float,
        generator: torch.Generator,
        callback: Callable[[StepContext], None] | None = None,
    ):
        self.model, self.reward, self.sigmas, self.levels = model, reward, sigmas, levels
        self.step_fn, self.groups, self.k = get_step(step), groups, k
        self.lam, self.pot = lam, POTENTIALS[potential]
        self.lookahead, self.lookahead_steps = lookahead, lookahead_steps
        self.resampler, self.schedule = get_resampler(resampler), set(schedule)
        self.ess_threshold, self.reward_grad_scale = ess_threshold, reward_grad_scale
        self.gen, self.callback = generator, callback
        b = groups * k
        self.log_w = torch.zeros(b, dtype=torch.float64)
        self.log_prod = torch.zeros(b, dtype=torch.float64)
        self.carry = torch.full((b,), self.pot.init, dtype=torch.float64)
        self.ancestor = torch.arange(b)
        self.log_z = torch.zeros(groups, dtype=torch.float64)
        self.final_rewards: Tensor | None = None
        self.history: list[tuple[int, Tensor, Tensor]] = []  # (step, ess [P], flat ancestors [B])
        self._drift: Tensor | None = None

    # --- look-ahead rewards --------------------------------------------------------------------
    def value(self, ctx: StepContext) -> Tensor:
        prompts = ctx.cond.prompts
        if self.lookahead == "x0_prev":
            return self.reward(ctx.out.x0_pred, prompts).double()
        x, s = ctx.out.x_next, ctx.sigma_next
        with torch.no_grad():
            v = self.model.inner.velocity(x, s, ctx.cond)
        self.model.remember(x, s, ctx.cond, v)
        if self.lookahead == "x0":
            return self.reward(x - s * v, prompts).double()
        grid = completion_grid(self.sigmas, ctx.j + 1, self.lookahead_steps)
        x1 = ode(x, v, grid[0], grid[1]).x_next
        if grid.numel() > 2:
            x1, _ = complete(self.model.inner, ctx.cond, x1, grid, 1)
        return self.reward(x1, prompts).double()

    # --- hooks ---------------------------------------------------------------------------------
    def guidance(self, ctx: StepContext) -> Tensor | None:
        level = float(self.levels[ctx.j])
        if self.reward_grad_scale == 0 or level <= 0:
            return None
        s = ctx.sigma
        with torch.enable_grad():
            x = ctx.x.detach().requires_grad_(True)
            v = self.model.inner.velocity(x, s, ctx.cond)
            r = self.reward(x - s * v, ctx.cond.prompts, grad=True)
            (grad,) = torch.autograd.grad(r.sum(), x)
        std = self.step_fn(ctx.x, ctx.v, s, ctx.sigma_next, level, x_next=ctx.x).std  # no draw
        self._drift = self.reward_grad_scale * std.reshape(-1, *[1] * (x.ndim - 1)) ** 2 * grad.detach().float()
        return self._drift

    def _proposal_correction(self, ctx: StepContext) -> None:
        """log p(x'|x) - log q(x'|x) for q = p shifted by the drift d: with z = x' - mean_q,
        sum[(z^2 - (z + d)^2)] / (2 std^2) (sums over elements; constants cancel)."""
        out, d = ctx.out, self._drift.double()
        z = out.x_next.double() - out.mean.double()
        var = out.std.double().reshape(-1, *[1] * (z.ndim - 1)) ** 2
        self.log_w += ((z**2 - (z + d) ** 2) / (2 * var)).flatten(1).sum(1).cpu()
        self._drift = None

    def _weigh(self, ctx: StepContext, last: bool) -> None:
        """Multiply the weights by this step's potentials (the final correction at the last step)."""
        if last:
            r = self.reward(ctx.out.x_next, ctx.cond.prompts).double()
            self.final_rewards = r.float()
            log_g = self.lam * r - self.log_prod
        else:
            pot, self.carry = self.pot.update(self.carry, self.value(ctx))
            log_g = self.lam * pot
        self.log_w += log_g
        self.log_prod += log_g

    def _resample(self, j: int) -> Tensor | None:
        """Resample the groups whose ESS fell to the threshold; returns the flat ancestors (or None)."""
        grouped = self.log_w.reshape(self.groups, self.k)
        e = ess(grouped)
        do = e <= self.ess_threshold * self.k * (1 + 1e-9)
        if not bool(do.any()):
            return None
        local = torch.arange(self.k).expand(self.groups, self.k).clone()
        local[do] = self.resampler(grouped[do], self.gen)
        self.log_z[do] += torch.logsumexp(grouped[do], -1) - math.log(self.k)
        self.log_w = torch.where(do.repeat_interleave(self.k), torch.zeros_like(self.log_w), self.log_w)
        index = flat_index(local)
        for name in ("log_w", "log_prod", "carry", "ancestor"):
            setattr(self, name, getattr(self, name)[index])
        self.history.append((j, e.float(), index))
        return index

    def on_step(self, ctx: StepContext) -> Tensor | None:
        if self.callback is not None:
            self.callback(ctx)
        if self._drift is not None:
            self._proposal_correction(ctx)
        j, last = ctx.j, self.sigmas.numel() - 2
        if j not in self.schedule:
            return None
        self._weigh(ctx, j == last)
        if j == last or self.k == 1:
            return None
        return self._resample(j)

    def final_log_z(self) -> Tensor:
        """log of the SMC estimate of Z = E_p[exp(lam r(x0))] per group [P]."""
        grouped = self.log_w.reshape(self.groups, self.k)
        return self.log_z + torch.logsumexp(grouped, -1) - math.log(self.k)
