"""Reward outputs as ``Scores`` records: any reward callable may return a Tensor[B] or Scores."""

from __future__ import annotations

import torch
from torch import Tensor

from ..types import Scores


def as_scores(out: Scores | Tensor, b: int) -> Scores:
    """A reward's output for a batch of ``b`` -> Scores on the CPU with ``valid`` = finite and not
    refused by the reward; one clear error for a wrong shape."""
    scores = out if isinstance(out, Scores) else Scores(total=torch.as_tensor(out).float().reshape(-1))
    total = scores.total.detach().float().cpu()
    if total.shape != (b,):
        raise ValueError(
            f"reward_fn returned shape {tuple(total.shape)} for a batch of {b}; return Tensor[B] or Scores."
        )
    refused = torch.ones(b, dtype=torch.bool) if scores.valid is None else scores.valid.cpu().bool()
    valid = torch.isfinite(total) & refused
    comps = {k: v.detach().float().cpu() for k, v in scores.components.items()}
    return Scores(total=total, components=comps, valid=valid)


def cat_scores(parts: list[Scores]) -> Scores:
    """One Scores of the batches in order; a component missing from a batch (its reward failed) is NaN."""
    keys = list(dict.fromkeys(k for p in parts for k in p.components))

    def column(p: Scores, k: str) -> Tensor:
        return p.components[k] if k in p.components else torch.full_like(p.total, float("nan"))

    return Scores(
        total=torch.cat([p.total for p in parts]),
        valid=torch.cat([p.valid for p in parts]),
        components={k: torch.cat([column(p, k) for p in parts]) for k in keys},
    )
