"""Weighted multi-reward: total = sum_k w_k * norm_k(r_k), with every component kept for logging.

As Flow-GRPO's ``multi_score({name: weight})`` (reference-flow-grpo.md section 1.6), plus:
* optional per-component normalisation so that weights mean what they say when scales differ
  (HPS ~0.3, PickScore ~21, ImageReward ~N(0,1)):
  - ``"none"``: raw scores;
  - ``"batch"``: z-score over the valid rows of this batch, (r - mean) / (std + eps);
  - ``"running"``: z-score with the running mean / std of every valid score seen so far (Welford;
    the current batch is added before normalising, so the first batch uses its own statistics);
    the statistics are buffers, saved with ``state_dict``;
* NaN / inf handling: a sample whose component is not finite is *masked*, never averaged in:
  ``Scores.valid`` is False there, its ``total`` is NaN (so a consumer that ignores the mask fails
  loudly instead of training on a made-up value), the bad values are excluded from normalisation
  statistics, ``num_invalid[name]`` counts them and a warning names the component.
Components are returned detached (for logging); ``total`` keeps the graph when the inputs have one.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from ..types import Scores
from .base import Reward

NORMALIZE = ("none", "batch", "running")


class MultiReward(nn.Module):
    def __init__(
        self,
        weights: dict[str, float],
        rewards: dict[str, Reward] | None = None,
        normalize: str = "none",
        eps: float = 1e-6,
        **reward_kwargs: dict[str, Any],
    ):
        """``weights`` {name: weight}; ``rewards`` {name: Reward} for names already built, the rest
        are built with ``load_reward(name, **reward_kwargs[name])``."""
        super().__init__()
        if not weights:
            raise ValueError("MultiReward needs at least one {name: weight}, e.g. {'hpsv2': 1.0}.")
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize={normalize!r}; use one of {NORMALIZE}.")
        bad = {k: v for k, v in weights.items() if not isinstance(v, (int, float)) or v != v}
        if bad:
            raise ValueError(f"MultiReward weights must be numbers, got {bad}.")
        rewards = dict(rewards or {})
        unknown = set(rewards) - set(weights)
        if unknown:
            raise ValueError(f"rewards {sorted(unknown)} have no weight; add them to weights={weights}.")
        from .registry import load_reward

        for name in weights:
            if name not in rewards:
                rewards[name] = load_reward(name, **reward_kwargs.get(name, {}))
        self.rewards = nn.ModuleDict(rewards)
        self.weights = {k: float(v) for k, v in weights.items()}
        self.normalize, self.eps = normalize, eps
        self.num_invalid = {k: 0 for k in weights}
        for k in weights:  # running statistics: count, mean, sum of squared deviations
            self.register_buffer(f"count_{k}", torch.zeros((), dtype=torch.float64))
            self.register_buffer(f"mean_{k}", torch.zeros((), dtype=torch.float64))
            self.register_buffer(f"m2_{k}", torch.zeros((), dtype=torch.float64))

    @property
    def differentiable(self) -> bool:
        return all(r.differentiable for r in self.rewards.values())

    def forward(self, images: Tensor, prompts, **metadata: Any) -> Scores:
        raw = {name: r(images, prompts, **metadata).float() for name, r in self.rewards.items()}
        return self.combine(raw)

    def combine(self, raw: dict[str, Tensor]) -> Scores:
        """Scores from precomputed components {name: [B]} (e.g. from background scoring)."""
        missing = set(self.weights) - set(raw)
        if missing:
            raise ValueError(f"combine() is missing components {sorted(missing)}.")
        b = next(iter(raw.values())).shape[0]
        valid = torch.ones(b, dtype=torch.bool, device=next(iter(raw.values())).device)
        for name, r in raw.items():
            finite = torch.isfinite(r)
            n_bad = int((~finite).sum())
            if n_bad:
                self.num_invalid[name] += n_bad
                warnings.warn(
                    f"MultiReward: '{name}' returned {n_bad} NaN/inf score(s) in a batch of {b}; "
                    f"those samples are masked (Scores.valid False, total NaN). "
                    f"Total so far: {self.num_invalid[name]}.",
                    RuntimeWarning,
                    stacklevel=2,
                )
            valid &= finite
        total = torch.zeros(b, device=valid.device)
        for name, r in raw.items():
            safe = torch.where(valid, r, torch.zeros_like(r))
            total = total + self.weights[name] * self._normalize(name, safe, valid)
        total = torch.where(valid, total, torch.full_like(total, float("nan")))
        return Scores(total=total, components={k: v.detach() for k, v in raw.items()}, valid=valid)

    def _normalize(self, name: str, r: Tensor, valid: Tensor) -> Tensor:
        if self.normalize == "none":
            return r
        x = r[valid].detach().double()
        if self.normalize == "batch":
            if x.numel() == 0:
                return r
            mean, std = x.mean(), (x.std(unbiased=False) if x.numel() > 1 else torch.zeros((), dtype=x.dtype))
        else:
            count, mean, m2 = (getattr(self, f"{s}_{name}") for s in ("count", "mean", "m2"))
            n_b = x.numel()
            if n_b:  # Chan et al. parallel update of (count, mean, M2) with this batch
                mean_b, m2_b = x.mean(), ((x - x.mean()) ** 2).sum()
                delta, n = mean_b - mean, count + n_b
                mean.add_(delta * n_b / n)
                m2.add_(m2_b + delta**2 * count * n_b / n)
                count.fill_(n)
            if count == 0:
                return r
            std = (m2 / count).sqrt()
        return (r - mean.to(r.dtype).to(r.device)) / (std.to(r.dtype).to(r.device) + self.eps)

    def log_stats(self, scores: Scores) -> dict[str, float]:
        """Means of every component and the total over valid rows, and invalid counts (for logging)."""
        v = scores.valid if scores.valid is not None else torch.ones_like(scores.total, dtype=torch.bool)
        out = {f"reward/{k}": float(c[v].mean()) if v.any() else float("nan") for k, c in scores.components.items()}
        out["reward/total"] = float(scores.total[v].mean()) if v.any() else float("nan")
        out["reward/invalid"] = float((~v).sum())
        return out
