"""Records passed between flowalign's stages.

Conventions used everywhere (see README "Conventions"):
  * flow time ``sigma`` in [0, 1], 1 = pure noise; ``x_sigma = (1 - sigma) * x0 + sigma * eps``;
  * velocity ``v = eps - x0``; ``x0_pred = x - sigma * v``;
  * a step goes from ``sigmas[j]`` to ``sigmas[j + 1] < sigmas[j]``;
  * ``log_prob`` of a step is the Gaussian log-density of ``x_next`` averaged over latent elements.

``B`` is the batch, ``T`` the number of steps, ``*S`` the latent shape of one sample (``C, H, W``
for SD3, ``L, D`` packed tokens for Flux), ``N`` the number of nodes of a tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor


def _index_rows(value: Any, index: Tensor) -> Any:
    return value.index_select(0, index.to(value.device)) if torch.is_tensor(value) else value


@dataclass
class Cond:
    """Conditioning of a batch, produced by ``FlowModel.encode`` and consumed by ``velocity``.

    Only the model adapter reads ``embeds``; every other module treats a ``Cond`` as rows that can
    be selected or repeated (groups, particles, tree branches) without knowing what they hold.
    """

    embeds: dict[str, Tensor]  # each [B, ...]: prompt embeddings, pooled embeddings, negatives
    guidance_scale: float = 1.0  # CFG scale (SD3) or distilled guidance value (Flux)
    static: dict[str, Any] = field(default_factory=dict)  # batch-free tensors, e.g. Flux txt_ids [L,3]
    prompts: list[str] | None = None  # [B] the text the embeddings came from (for rewards)

    @property
    def batch_size(self) -> int:
        return next(iter(self.embeds.values())).shape[0]

    def select(self, index: Tensor | list[int]) -> Cond:
        """Rows ``index`` (any length, repeats allowed): resampling, branching, sub-batches."""
        index = torch.as_tensor(index, dtype=torch.long)
        prompts = None if self.prompts is None else [self.prompts[i] for i in index.tolist()]
        embeds = {k: _index_rows(v, index) for k, v in self.embeds.items()}
        return replace(self, embeds=embeds, prompts=prompts)

    def repeat(self, k: int) -> Cond:
        """Each row repeated ``k`` times in place: [a, b] -> [a, a, b, b] (a group per prompt)."""
        return self.select(torch.arange(self.batch_size).repeat_interleave(k))

    @staticmethod
    def cat(conds: list[Cond]) -> Cond:
        first = conds[0]
        embeds = {k: torch.cat([c.embeds[k] for c in conds]) for k in first.embeds}
        prompts = None if any(c.prompts is None for c in conds) else sum((c.prompts for c in conds), [])
        return replace(first, embeds=embeds, prompts=prompts)


@dataclass
class StepOut:
    """What every step function returns, whatever its kind or flags."""

    x_next: Tensor  # [B, *S] fp32 state at sigma_next
    mean: Tensor  # [B, *S] fp32 mean of the step's Gaussian kernel (= x_next for a deterministic step)
    std: Tensor  # [B] fp32 standard deviation of the kernel (0 for a deterministic step)
    log_prob: Tensor  # [B] fp32 log N(x_next; mean, std^2 I) averaged over elements (0 if std == 0)
    x0_pred: Tensor  # [B, *S] fp32 x - sigma * v, the one-step clean prediction at the start state


@dataclass
class Rollout:
    """A batch of flat trajectories: ``latents[:, j]`` -> ``latents[:, j+1]`` is step ``j``."""

    latents: Tensor  # [B, T+1, *S] fp32 states; latents[:, 0] is the initial noise
    log_probs: Tensor  # [B, T] fp32 sampling-time log-probs (0 where the step is deterministic)
    sigmas: Tensor  # [T+1] fp32 flow times, sigmas[0] ~ 1, sigmas[-1] = 0
    noise_levels: Tensor  # [T] fp32 noise level used at each step (0 = ODE step)
    step: str  # name of the step function in sampling.sde.STEPS
    x0_preds: Tensor | None = None  # [B, T, *S] fp32 one-step predictions, when asked for
    nfe: int = 0  # velocity evaluations spent, counted per batch row (CFG counts once)

    @property
    def noise_mask(self) -> Tensor:  # [T] bool: which steps were stochastic (trainable)
        return self.noise_levels > 0

    @property
    def final(self) -> Tensor:  # [B, *S]
        return self.latents[:, -1]

    @property
    def num_steps(self) -> int:
        return self.log_probs.shape[1]

    def select(self, index: Tensor) -> Rollout:
        index = torch.as_tensor(index, dtype=torch.long, device=self.latents.device)
        x0 = None if self.x0_preds is None else self.x0_preds[index]
        return replace(self, latents=self.latents[index], log_probs=self.log_probs[index], x0_preds=x0)


@dataclass
class TreeRollout:
    """Trajectories that share prefixes. Node ``n`` is the state ``latents[n]`` at ``sigmas[step[n]]``;
    the edge into ``n`` is the transition ``latents[parent[n]] -> latents[n]`` (step ``step[n] - 1``).
    Roots have ``parent == -1``; a flat rollout of B samples is a tree of B chains.
    """

    latents: Tensor  # [N, *S] fp32 node states
    parent: Tensor  # [N] long, -1 for roots
    step: Tensor  # [N] long, index into sigmas of the node's state (roots: 0)
    depth: Tensor  # [N] long, number of branching points above the node (roots: 0)
    root: Tensor  # [N] long, index of the root (the tree/prompt group) the node belongs to
    log_prob: Tensor  # [N] fp32 log-prob of the edge into the node (0 for roots and ODE edges)
    mean: Tensor | None  # [N, *S] fp32 kernel mean of the edge into the node (None unless kept)
    std: Tensor  # [N] fp32 kernel std of the edge into the node (0 for roots and ODE edges)
    noise_level: Tensor  # [N] fp32 noise level used on the edge into the node
    trainable: Tensor  # [N] bool, whether the edge into the node is used for training
    sigmas: Tensor  # [T+1] fp32
    step_kind: str  # name of the step function in sampling.sde.STEPS
    nfe: int = 0  # velocity evaluations, each shared prefix counted once

    @property
    def num_nodes(self) -> int:
        return self.parent.shape[0]

    @property
    def is_leaf(self) -> Tensor:  # [N] bool
        has_child = torch.zeros_like(self.parent, dtype=torch.bool)
        has_child[self.parent[self.parent >= 0]] = True
        return ~has_child

    @property
    def leaves(self) -> Tensor:  # [L] long, in creation order (grouped by root)
        return torch.nonzero(self.is_leaf).flatten()

    def path(self, node: int) -> list[int]:
        """Node indices from the root down to ``node``."""
        out = [node]
        while int(self.parent[out[-1]]) >= 0:
            out.append(int(self.parent[out[-1]]))
        return out[::-1]

    def to_rollout(self) -> Rollout:
        """Leaves as flat trajectories (states along each root->leaf path)."""
        paths = [self.path(int(n)) for n in self.leaves]
        idx = torch.tensor(paths, dtype=torch.long)  # [L, T+1]
        log_probs = self.log_prob[idx[:, 1:]]
        levels = self.noise_level[idx[0, 1:]]
        return Rollout(
            latents=self.latents[idx],
            log_probs=log_probs,
            sigmas=self.sigmas,
            noise_levels=levels,
            step=self.step_kind,
            nfe=self.nfe,
        )


@dataclass
class Scores:
    """Rewards of a batch: the weighted total and each named component."""

    total: Tensor  # [B] fp32 weighted sum of the (optionally normalised) components
    components: dict[str, Tensor] = field(default_factory=dict)  # name -> [B] raw scores
    valid: Tensor | None = None  # [B] bool, False where any component was NaN/inf (masked)


@dataclass
class Advantages:
    """Per-(sample, step) credit; ``mask`` says which (sample, step) pairs enter the loss."""

    advantages: Tensor  # [B, T] fp32
    mask: Tensor  # [B, T] bool
    stats: dict[str, float] = field(default_factory=dict)  # logged diagnostics
    kl_weight: Tensor | None = None  # [B] per-sample weight of the objective's KL term (GARDO's gate); None = 1


@dataclass
class LossOut:
    loss: Tensor  # [] scalar to backpropagate
    stats: dict[str, Tensor] = field(default_factory=dict)  # detached scalars for logging


def record_fields(obj: Any) -> list[str]:
    """Names of a record's fields (for generic logging / saving)."""
    return [f.name for f in fields(obj)]
