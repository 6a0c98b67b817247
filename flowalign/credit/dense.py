"""Dense step rewards and the reward-aware noise table of DenseGRPO (arXiv 2601.20218, ICLR 2026).

Step gains. A reward ladder ``ladder [B, T+1]`` holds the reward of every state ``latents[:, j]``
finished to a clean image by an ODE completion (``flowalign.rewards.ladder``; ``ladder[:, T]`` is the
final image's reward, ``ladder[:, 0]`` the ODE image of the initial noise). Step ``j`` (the
transition ``latents[:, j] -> latents[:, j+1]``) earns the gain ``d_j = ladder[:, j+1] - ladder[:, j]``
(the paper's ``Delta R_t = R_{t-1} - R_t`` with t counting down). Its advantage is the gain z-scored
per step across the samples of a prompt (``per_step_advantages``) and replaces Flow-GRPO's trajectory
advantage at that step; the loss is unchanged. The completion length n of the paper's ablation
(n = 1, 2, t) and a stride are parameters of the ladder (``RewardLadder(num_steps=, stride=)``);
``reward="level"`` is the paper's "Dense Reward (Baseline)" that uses ``R_{t-1}`` itself.

Noise table psi(t) (Algorithm 1). Flow-GRPO's diffusion ``g = a sqrt(sigma / (1 - sigma))`` is
replaced by a per-step ``g_j = psi_j``, calibrated once before training: sample N trajectories with
the current table, count positive and negative gains at every step, raise ``psi_j`` by ``eps2`` where
``|#pos - #neg| < eps1`` (balanced: room for more exploration), lower it otherwise (eps1 = 2,
eps2 = 0.01 as in the paper). psi is the diffusion coefficient itself, so the sampler uses it with
``step="dance_sde"`` (whose noise level *is* g) or converts it with ``psi_to_noise_levels``.

Departures: the paper gives neither the initial psi nor N nor the iteration count (caller's choice
here); psi is clamped to ``[lo, hi]`` (``lo = 0``: a noise level is never negative); steps outside
``steps`` are left as given. Samples of one prompt must share the trained-step mask (the
per-step statistics would otherwise mix trained and untrained rows): checked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..ranges import ranged
from ..types import Advantages
from .group import group_stats, normalize

REWARD_KINDS = ("gain", "level")


def as_step_mask(step_mask: Tensor, batch: int, num_steps: int) -> Tensor:
    """[T] or [B, T] -> [B, T] bool, with one clear error for a wrong shape."""
    m = torch.as_tensor(step_mask).bool()
    if m.shape not in ((num_steps,), (batch, num_steps)):
        raise ValueError(
            f"step_mask has shape {tuple(m.shape)}; expected ({num_steps},) or "
            f"({batch}, {num_steps}) for {batch} samples of {num_steps} steps."
        )
    return m.expand(batch, num_steps).clone()


def check_ladder(ladder: Tensor, batch: int, need: Tensor | None = None) -> Tensor:
    """ladder [B, T+1] fp32; ``need`` [B, T+1] bool marks entries that must be finite."""
    ladder = torch.as_tensor(ladder).float()
    if ladder.ndim != 2 or ladder.shape[0] != batch or ladder.shape[1] < 2:
        raise ValueError(
            f"ladder has shape {tuple(ladder.shape)}; expected ({batch}, T+1): the reward "
            f"of every state latents[:, j] completed to an image, ladder[:, T] = final reward."
        )
    if need is not None and bool((~torch.isfinite(ladder) & need).any()):
        bad = torch.nonzero(~torch.isfinite(ladder) & need)[0].tolist()
        raise ValueError(
            f"ladder[{bad[0]}, {bad[1]}] is not finite but a trained step needs it; request "
            f"that state from the reward ladder (steps=...)."
        )
    return ladder


def gain_need(mask: Tensor) -> Tensor:
    """[B, T] trained steps -> [B, T+1] ladder entries their gains read (j and j+1)."""
    need = torch.zeros(mask.shape[0], mask.shape[1] + 1, dtype=torch.bool)
    need[:, :-1] |= mask
    need[:, 1:] |= mask
    return need


def ladder_steps(step_mask: Tensor) -> list[int]:
    """States whose ladder rewards the step-reward schemes read (dense, turning points): j and j+1 of
    every trained step j, and T (the final image) -> sorted indices for ``RewardLadder(steps=...)``."""
    m = torch.as_tensor(step_mask).bool()
    m = m.reshape(-1, m.shape[-1]).any(0)
    t = m.numel()
    return sorted(set(torch.nonzero(gain_need(m[None])[0]).flatten().tolist()) | {t})


def step_gains(ladder: Tensor) -> Tensor:
    """ladder [B, T+1] -> gains [B, T]: d_j = ladder[:, j+1] - ladder[:, j]."""
    return ladder[:, 1:] - ladder[:, :-1]


def per_step_advantages(
    values: Tensor,
    group_ids: Tensor,
    mask: Tensor,
    *,
    scale: str = "group",
    eps: float = 1e-4,
    unbiased: bool = False,
    filter_zero_std: bool = True,
    stats: dict[str, float] | None = None,
) -> Advantages:
    """Per-step, per-group normalisation (TP-GRPO, DenseGRPO, Euphonium PRA): values [B, T] z-scored
    column by column within each group; pairs outside ``mask`` [B, T] get 0 and are masked;
    with ``filter_zero_std`` pairs whose (group, step) has zero std are masked too."""
    mask = mask.bool()
    frac, _ = group_stats(mask.float(), group_ids)
    if bool(((frac > 0) & (frac < 1)).any()):
        raise ValueError(
            "samples of one group train different steps; per-step normalisation needs one "
            "trained-step mask per group (draw the SDE window once per prompt group)."
        )
    values = torch.where(mask, values.float(), torch.zeros_like(values, dtype=torch.float32))
    adv, std = normalize(values, group_ids, scale, eps, unbiased)
    zero = (std == 0) & mask
    asked = int(mask.sum())
    if filter_zero_std:
        mask = mask & (std > 0)
    adv = torch.where(mask, adv, torch.zeros_like(adv))
    kept = max(int(mask.sum()), 1)
    out = {
        "zero_std_frac": float(zero.sum()) / max(asked, 1),
        "adv_abs_mean": float(adv.abs().sum()) / kept,
        "trained_pairs": float(mask.sum()),
    }
    out.update(stats or {})
    return Advantages(advantages=adv, mask=mask, stats=out)


def dense_grpo(
    rewards: Tensor,
    group_ids: Tensor,
    step_mask: Tensor,
    *,
    ladder: Tensor,
    reward: str = "gain",
    scale: str = "group",
    eps: float = 1e-4,
    unbiased: bool = False,
    filter_zero_std: bool = True,
) -> Advantages:
    """DenseGRPO advantages. rewards [B] (final rewards, unused: ``ladder[:, T]`` carries them);
    group_ids [B]; step_mask [T] or [B, T]; ladder [B, T+1] -> Advantages [B, T].
    ``reward="gain"``: d_j (the method); ``"level"``: ladder[:, j+1] (the paper's dense baseline)."""
    if reward not in REWARD_KINDS:
        raise ValueError(f"dense reward {reward!r} must be one of {REWARD_KINDS}.")
    b = group_ids.shape[0]
    ladder = check_ladder(ladder, b)
    mask = as_step_mask(step_mask, b, ladder.shape[1] - 1)
    ladder = check_ladder(ladder, b, gain_need(mask))
    clean = torch.nan_to_num(ladder, nan=0.0)
    values = step_gains(clean) if reward == "gain" else clean[:, 1:]
    return per_step_advantages(
        values, group_ids, mask, scale=scale, eps=eps, unbiased=unbiased, filter_zero_std=filter_zero_std
    )


dense_grpo.needs = ("ladder",)


# --- psi(t): reward-aware calibration of the per-step noise table ----------------------------------
def flow_sde_psi(noise_level: float, sigmas: Tensor) -> Tensor:
    """[T] diffusion g_j = a sqrt(sigma_j / (1 - sigma_j)) of Flow-GRPO's SDE at noise level a
    (sigma = 1 uses sigma_{j+1} in the denominator, as ``sde.flow_sde``): a starting psi table."""
    s = torch.as_tensor(sigmas, dtype=torch.float32)
    sig, nxt = s[:-1], s[1:]
    denom = 1 - torch.where(sig >= 1, nxt, sig)
    return noise_level * torch.sqrt(sig / denom)


def psi_to_noise_levels(psi: Tensor, sigmas: Tensor, step: str = "dance_sde") -> Tensor:
    """[T] psi table -> [T] noise levels for ``step``: itself for ``dance_sde`` (g = noise level),
    psi / sqrt(sigma / (1 - sigma)) for ``flow_sde``; other kinds have no diffusion g."""
    psi = torch.as_tensor(psi, dtype=torch.float32)
    if step == "dance_sde":
        return psi.clone()
    if step == "flow_sde":
        return psi / flow_sde_psi(1.0, sigmas)
    raise ValueError(f"psi is the SDE diffusion g; use step='dance_sde' or 'flow_sde', not {step!r}.")


@dataclass
class Calibration:
    psi: Tensor  # [T] fp32 final table
    history: Tensor  # [K+1, T] fp32 table before each iteration and after the last
    imbalance: Tensor  # [K, T] |#pos - #neg| of the gains measured at each iteration


def calibrate_noise_table(
    measure: Callable[[Tensor], Tensor],
    psi: Tensor,
    *,
    iterations: int = 10,
    eps1: float = 2.0,
    eps2: float = 0.01,
    steps: Tensor | None = None,
    lo: float = 0.0,
    hi: float | None = None,
) -> Calibration:
    """DenseGRPO Algorithm 1. ``measure(psi [T]) -> gains [N, T]`` samples N trajectories with the
    table and returns their dense rewards (``ladder_gain_measure`` builds one from a model and a reward
    ladder); ``steps`` [T] bool limits which entries move (default all)."""
    psi = torch.as_tensor(psi, dtype=torch.float32).clone()
    if psi.ndim != 1:
        raise ValueError(f"psi must be a [T] table, got shape {tuple(psi.shape)}.")
    if iterations < 0 or eps2 < 0:
        raise ValueError(f"iterations={iterations} and eps2={eps2} must be >= 0.")
    active = torch.ones_like(psi, dtype=torch.bool) if steps is None else torch.as_tensor(steps).bool()
    history, imbalance = [psi.clone()], []
    for _ in range(iterations):
        gains = torch.as_tensor(measure(psi.clone())).float()
        if gains.ndim != 2 or gains.shape[1] != psi.numel():
            raise ValueError(f"measure returned shape {tuple(gains.shape)}; expected (N, {psi.numel()}).")
        diff = ((gains > 0).sum(0) - (gains < 0).sum(0)).abs().float()
        move = torch.where(diff < eps1, eps2, -eps2)
        psi = torch.where(active, (psi + move).clamp(lo, hi), psi)
        history.append(psi.clone())
        imbalance.append(diff)
    return Calibration(
        psi=psi,
        history=torch.stack(history),
        imbalance=torch.stack(imbalance) if imbalance else torch.zeros(0, psi.numel()),
    )


def ladder_gain_measure(
    model, cond, x: Tensor, sigmas: Tensor, ladder: Callable, *, step: str = "dance_sde", generator=None
) -> Callable[[Tensor], Tensor]:
    """A ``measure`` for ``calibrate_noise_table``: roll out ``x`` [N, *S] with the psi table
    (converted for ``step``), score every state with ``ladder(rollout, cond)`` (a ``RewardLadder`` or
    any callable returning [N, T+1] or an object with ``.rewards``) and return the gains [N, T]."""
    from ..sampling.rollout import rollout

    def measure(psi: Tensor) -> Tensor:
        with torch.no_grad():
            r = rollout(model, cond, x, sigmas, step, psi_to_noise_levels(psi, sigmas, step), generator=generator)
            table = ladder(r, cond)
        return step_gains(getattr(table, "rewards", table).float())

    return measure


@dataclass
class DenseOptions:
    reward: str = "gain"  # 'gain' d_j = R_{j+1} - R_j (DenseGRPO) | 'level' R_{j+1} (its dense baseline)
    # ODE steps of each ladder completion (0 = all remaining: DenseGRPO's n = t)
    ladder_steps: int = ranged(0, "[0, inf)")
    ladder_stride: int = ranged(0, "[0, inf)")  # complete on every stride-th grid point instead (0 = off)
    calibrate_iterations: int = ranged(0, "[0, inf)")  # Alg. 1: rounds of psi(t) calibration before training (0 = off)
    # trajectories per calibration round (prompts drawn from the training set)
    calibrate_samples: int = ranged(16, "[1, inf)")
    calibrate_eps1: float = ranged(2.0, "[0, inf)")  # |#pos - #neg| below this raises psi_j (paper: 2)
    calibrate_eps2: float = ranged(0.01, "[0, inf)")  # psi step per round (paper: 0.01)

    def kwargs(self) -> dict:
        return {"reward": self.reward}


def check_ladder_options(o, cfg) -> None:
    """A reward ladder's completion length or stride (at most one, >= 0)."""
    if o.ladder_steps < 0 or o.ladder_stride < 0 or (o.ladder_steps and o.ladder_stride):
        raise ValueError(
            f"credit.options.ladder_steps={o.ladder_steps} / ladder_stride={o.ladder_stride}: give "
            f"at most one, >= 0 (0 = complete with all remaining steps)."
        )


def check_dense(o: DenseOptions, cfg) -> None:
    check_ladder_options(o, cfg)
    if o.reward not in REWARD_KINDS:
        raise ValueError(f"credit.options.reward={o.reward!r}; choose one of {REWARD_KINDS}.")
    if o.calibrate_iterations > 0 and (
        cfg.sample.step not in ("flow_sde", "dance_sde") or o.calibrate_samples < 1 or o.calibrate_eps2 < 0
    ):
        raise ValueError(
            f"psi(t) calibration needs sample.step flow_sde or dance_sde (got {cfg.sample.step!r}), "
            f"credit.options.calibrate_samples >= 1 ({o.calibrate_samples}) and calibrate_eps2 >= 0."
        )
