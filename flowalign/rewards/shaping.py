"""Reward shaping against reward hacking (issue 23): PAR and reward-model ensembles, as rewards.

* ``PARReward`` — Preference As Reward (Fu et al. 2025, "Reward Shaping to Mitigate Reward Hacking in
  RLHF", arXiv 2502.18770; code ``PorUna-byte/PAR/src/trainers/reward_shaper.py``):
  ``r_PAR = (1/M) sum_m sigmoid(r - r_ref,m)``, bounded in (0, 1), centred (0.5) on a reference,
  steepest near it and saturating far from it. ``r_ref,m`` is the base reward of the m-th reference
  sample (the reference / SFT policy's) for the same prompt.
  Here the reference comes, per row, from the metadata column ``reference_reward`` (a scalar, ``B``
  values, or ``[B, M]`` for M references per prompt — e.g. the base model's ODE samples scored once
  and cached per prompt, the doc's flow adaptation). **Departure**: when no ``reference_reward`` is
  given, ``r_ref`` is the (detached) mean base reward of the rows of the same batch that share the
  prompt (the current policy's group mean, not the reference policy's: a baseline that needs no
  extra sampling; rows of one group split over several scored batches get a per-batch mean).
  A NaN / inf reference is one ValueError naming ``reference_reward``. The paper's LSC variant
  (log sigmoid against the 85th-percentile reference) is not implemented.
* ``EnsembleReward`` — reward-model ensembles (Eisenstein et al. 2023, "Helping or Herding?",
  arXiv 2312.09244; Coste et al. 2023 for the worst-case "min"): every member scores the same batch
  and the scores are aggregated by ``"min"`` (worst case) or ``"mean_minus_std"``:
  ``mean - k * std`` with the **population** std (ddof 0) over members. Members are not rescaled:
  give members on comparable scales (e.g. seeds of one proxy), or a per-member ``scale`` (the
  member's score is multiplied by it before the aggregate: ``{"testbed_artifact": {"scale": 5}}``).
  Coste et al.'s UWO penalises the variance, not the std; only the std form is offered. The per-member
  scores of the last call are kept (detached) in ``last_members`` for logging / reuse.
Both wrap rewards built by the registry (``REWARDS["par"]`` / ``REWARDS["ensemble"]``): options
``{"base": "testbed_aesthetic", "base_options": {...}}`` / ``{"members": [...], "aggregate": "min"}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .base import Reward, unique_prompts

AGGREGATES = ("min", "mean_minus_std")
WHOLE_BATCH = 1 << 30  # the wrappers see the whole batch (group means); members chunk internally


class PARReward(Reward):
    """``sigmoid(r - r_ref)`` (mean over M references) around a base reward; see the module docstring."""

    name = "par"
    batch_size = WHOLE_BATCH

    def __init__(self, base_reward: nn.Module):
        super().__init__()
        self.base = base_reward
        self.differentiable = bool(getattr(base_reward, "differentiable", False))
        self.requires_grad_(False)

    def score(self, images: Tensor, prompts: list[str], **metadata: Any) -> Tensor:
        ref = metadata.pop("reference_reward", None)
        r = self.base(images, prompts, **metadata).float().reshape(-1)
        if ref is None:
            ref = group_mean(r.detach(), prompts)
        ref = reference_matrix(ref, r.shape[0], r.device)
        return torch.sigmoid(r[:, None] - ref).mean(1)


def group_mean(r: Tensor, prompts: list[str]) -> Tensor:
    """Mean of ``r`` over the rows sharing each row's prompt -> [B]."""
    _, inv = unique_prompts(prompts)
    inv = inv.to(r.device)
    n = int(inv.max()) + 1
    sums = torch.zeros(n, dtype=r.dtype, device=r.device).index_add_(0, inv, r)
    counts = torch.bincount(inv, minlength=n).to(r.dtype)
    return (sums / counts)[inv]


def reference_matrix(ref: Any, b: int, device: torch.device) -> Tensor:
    """``reference_reward`` (scalar, [B] or [B, M]) -> float [B, M]; one ValueError if not finite."""
    t = torch.as_tensor(ref, dtype=torch.float32, device=device)
    if t.ndim == 0:
        t = t.expand(b)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2 or t.shape[0] != b or t.shape[1] == 0:
        raise ValueError(f"PAR: reference_reward must be a scalar, [B] or [B, M] with B={b}, got {tuple(t.shape)}.")
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(
            f"PAR: reference_reward holds {bad} NaN/inf value(s); pass the finite reward of the reference "
            f"sample(s) for every prompt, or leave reference_reward out to use the group mean."
        )
    return t


class EnsembleReward(Reward):
    """Aggregate several rewards scoring the same batch: ``min`` or ``mean - k * std`` (population std)."""

    name = "ensemble"
    batch_size = WHOLE_BATCH

    def __init__(
        self,
        rewards: Sequence[nn.Module] | Mapping[str, nn.Module],
        aggregate: str = "min",
        k: float = 1.0,
        scales: Mapping[str, float] | None = None,
    ):
        super().__init__()
        if aggregate not in AGGREGATES:
            raise ValueError(f"EnsembleReward aggregate={aggregate!r}; use one of {AGGREGATES}.")
        if not isinstance(rewards, Mapping):
            rewards = {f"m{i}": r for i, r in enumerate(rewards)}
        if len(rewards) < 2:
            raise ValueError(f"EnsembleReward needs at least 2 member rewards, got {len(rewards)}.")
        if not (isinstance(k, (int, float)) and k == k and k >= 0):
            raise ValueError(f"EnsembleReward k={k!r}; use a number >= 0.")
        self.members = nn.ModuleDict({str(n): r for n, r in rewards.items()})
        self.scales = {n: float((scales or {}).get(n, 1.0)) for n in self.members}
        bad = {n: v for n, v in self.scales.items() if not (v == v and 0 < v < float("inf"))}
        if bad or set(scales or {}) - set(self.members):
            raise ValueError(f"EnsembleReward scales={dict(scales or {})!r}: give a number > 0 per member name.")
        self.aggregate, self.k = aggregate, float(k)
        self.differentiable = all(bool(getattr(r, "differentiable", False)) for r in rewards.values())
        self.last_members: dict[str, Tensor] = {}
        self.requires_grad_(False)

    def score(self, images: Tensor, prompts: list[str], **metadata: Any) -> Tensor:
        b, outs = images.shape[0], {}
        for n, r in self.members.items():
            out = r(images, prompts, **metadata).float().reshape(-1)
            if out.shape[0] != b:
                raise ValueError(f"EnsembleReward: member {n!r} returned {out.shape[0]} scores for a batch of {b}.")
            outs[n] = out.to(images.device) * self.scales[n]
        self.last_members = {n: v.detach() for n, v in outs.items()}
        return aggregate(torch.stack(list(outs.values()), 1), self.aggregate, self.k)


def aggregate(scores: Tensor, how: str, k: float = 1.0) -> Tensor:
    """[B, K] member scores -> [B]: ``min`` or ``mean - k * std`` (population std, ddof 0)."""
    if how == "min":
        return scores.min(1).values
    if how == "mean_minus_std":
        return scores.mean(1) - k * scores.std(1, unbiased=False)
    raise ValueError(f"aggregate={how!r}; use one of {AGGREGATES}.")


# --- registry factories (REWARDS["par"] / REWARDS["ensemble"]) ---------------------------------------
def load_par(base: str = "testbed_aesthetic", base_options: dict | None = None, device: Any = None) -> PARReward:
    """PAR around the registered reward ``base`` built with ``base_options``."""
    from .registry import load_reward

    return PARReward(load_reward(base, **_with_device(base_options, device)))


def load_ensemble(
    members: Sequence[str] | Mapping[str, dict] = ("testbed_aesthetic", "testbed_artifact"),
    aggregate: str = "min",
    k: float = 1.0,
    device: Any = None,
) -> EnsembleReward:
    """An ensemble of registered rewards: ``members`` a list of names or {name: options}."""
    from .registry import load_reward

    if isinstance(members, str) or not members:
        raise ValueError(f"ensemble members={members!r}; give a list of reward names or {{name: options}}.")
    specs = {n: dict(o or {}) for n, o in members.items()} if isinstance(members, Mapping) else {n: {} for n in members}
    scales = {n: o.pop("scale") for n, o in specs.items() if "scale" in o}
    built = {n: load_reward(n, **_with_device(o, device)) for n, o in specs.items()}
    return EnsembleReward(built, aggregate=aggregate, k=k, scales=scales)


def _with_device(options: dict | None, device: Any) -> dict:
    out = dict(options or {})
    if device is not None:
        out.setdefault("device", device)
    return out
