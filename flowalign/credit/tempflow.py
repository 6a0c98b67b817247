"""TempFlow-GRPO (arXiv 2508.04324, "When Timing Matters for GRPO in Flow Models"): process rewards
from trajectory branching, and noise-aware per-step weights.

Branching. A group is one tree (``sampling.tree``, the tree rollouts of BranchGRPO / TreeGRPO): the
seed group shares its initial noise and every ODE step, stochasticity is concentrated at the
branching steps (``splits``, offsets from the SDE window start; the window's other steps and every
step after it are ODE or unsplit), each split draws ``branch`` children, and the leaves are completed
to images. The edge into a child ``n`` created at branching step k earns the process reward of that
decision: the mean final reward of the leaves under ``n`` minus that of the leaves under its parent,

    A(n) = (R(n) - R(parent(n))) / (std of the tree's leaf rewards + eps),  R(n) = mean_{leaf l under n} r_l

(``scale="group"``: the tree's std; ``"batch"``: the std of every leaf in the call; ``"none"``: 1).
For the root's children this is Flow-GRPO's group advantage of the branch means; deeper, the parent's
siblings and prefix are held fixed, so only step k's noise separates the compared values.

Noise-aware weights. Each edge's term is scaled by its step's exploration noise, the std of the step
kernel (``tree.std``; ``sigma_k sqrt(dt_k)`` for Flow-GRPO's SDE), normalised to mean 1 over the
branching steps:

    w_k = std_k / mean_{k' in branching steps} std_{k'},   advantage(n) = w_{k(n)} A(n)

so early, high-noise decisions get more weight and the mean step weight (hence the learning rate)
matches unweighted training. ``weighting="none"`` turns the weights off.

Departures: (1) the paper was read through its abstract, its Figure 4 caption (branches switch
from ODE to SDE at selected timesteps, injecting ``sigma_t sqrt(dt) eps``; weights decrease from the
high-noise early steps) and third-party summaries, not its equations: the weight's exact form
(linear in the kernel std, mean 1 over the branching steps) and the process reward (the branch-mean
difference above) are our reading; (2) several branching steps share one tree per group (the tree
rollout's shared prefixes) instead of one branching step per sampled trajectory; (3) the
clipped-ratio loss and its KL are Flow-GRPO's, unchanged (``objective``): the weights enter through
the advantages, so the ratio clip bounds the weighted term as it bounds any advantage.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import Tensor

from ..ranges import ranged
from ..types import TreeRollout
from .group import SCALES, group_stats
from .tree import TreeAdvantages, _check, membership

WEIGHTINGS = ("std", "none")


def branch_means(tree: TreeRollout, leaf_rewards: Tensor) -> Tensor:
    """Leaf rewards [L] -> [N] mean final reward of the leaves under each node (leaves: their own)."""
    m = membership(tree).float()  # [N, L]
    return (m @ leaf_rewards) / m.sum(1).clamp_min(1)


def noise_weights(tree: TreeRollout, edges: Tensor, weighting: str = "std") -> Tensor:
    """[N] w_k = std_k / mean over branching steps of std (the edge into n sits at step ``step[n] - 1``);
    ``edges`` [N] bool marks the branching edges. 1 where there is no edge or ``weighting="none"``."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"TempFlow-GRPO weighting {weighting!r} must be one of {WEIGHTINGS}.")
    w = torch.ones(tree.num_nodes)
    if weighting == "none" or not bool(edges.any()):
        return w
    std = tree.std.float()
    steps = torch.unique(tree.step[edges])
    per_step = torch.stack([std[edges & (tree.step == s)].mean() for s in steps])  # [K] one std per step
    mean = per_step.mean()
    if not bool(mean > 0):
        return w
    return torch.where(edges, std / mean, w)


def tempflow_grpo(
    tree: TreeRollout,
    leaf_rewards: Tensor,
    *,
    weighting: str = "std",
    scale: str = "group",
    eps: float = 1e-4,
    unbiased: bool = False,
    filter_zero_std: bool = True,
) -> TreeAdvantages:
    """TempFlow-GRPO edge advantages from a tree and its leaf rewards [L] -> TreeAdvantages [N]."""
    if scale not in SCALES:
        raise ValueError(f"advantage scale {scale!r} must be one of {SCALES}.")
    r = _check(tree, leaf_rewards)
    if r.ndim != 1:
        raise ValueError("TempFlow-GRPO takes one reward per leaf [L]; combine reward models first.")
    leaves = tree.leaves
    _, leaf_std = group_stats(r, tree.root[leaves], unbiased)  # [L] std of each leaf's tree
    tree_std = torch.zeros(tree.num_nodes)
    tree_std[tree.root[leaves]] = leaf_std
    tree_std = tree_std[tree.root]  # [N] the std of the node's tree
    if scale == "batch":
        denom = (r.std(unbiased=unbiased) if r.numel() > 1 else torch.tensor(0.0)).expand(tree.num_nodes) + eps
    else:
        denom = tree_std + eps if scale == "group" else torch.ones(tree.num_nodes)
    means = branch_means(tree, r)
    has_parent = tree.parent >= 0
    gain = torch.where(has_parent, means - means[tree.parent.clamp_min(0)], torch.zeros_like(means))
    n_child = torch.bincount(tree.parent[has_parent], minlength=tree.num_nodes)
    branching = has_parent & (n_child[tree.parent.clamp_min(0)] > 1)  # edges out of a split
    mask = tree.trainable.bool() & branching
    if filter_zero_std:
        mask &= tree_std > 0
    w = noise_weights(tree, branching & tree.trainable.bool(), weighting)
    adv = torch.where(mask, w * gain / denom, torch.zeros_like(gain))
    stats = {
        "trained_edges": float(mask.sum()),
        "edges": float(has_parent.sum()),
        "zero_std_frac": float((leaf_std == 0).float().mean()),
        "adv_abs_mean": float(adv[mask].abs().mean()) if mask.any() else 0.0,
        "weight_max": float(w[mask].max()) if mask.any() else 1.0,
        "weight_min": float(w[mask].min()) if mask.any() else 1.0,
    }
    return TreeAdvantages(advantages=adv, mask=mask, node_rewards=means, stats=stats)


@dataclass
class TempFlowOptions:
    """Branching steps (offsets from the SDE window start, as for the tree schemes), children per
    split, and the noise-aware weighting ``std`` (w_k = std_k / mean std) or ``none``."""

    splits: list[int] = ranged([0, 1], "[0, inf)")  # branching steps, increasing
    branch: list[int] = ranged([4, 2], "[1, inf)")  # children per split (one, or one per split)
    weighting: str = "std"  # 'std' (noise-aware weights) | 'none'
    depth_noise: float = ranged(0.0, "[0, inf)")  # tree rollout: noise level x (1 + this x depth / #splits)
    branch_corr: float | None = ranged(None, "[0, inf)")  # tree rollout: sibling-noise correlation; None = independent

    def kwargs(self) -> dict:
        return {"weighting": self.weighting}


def check_tempflow(o: TempFlowOptions, cfg) -> None:
    """The split schedule fits the SDE window (``checks.check_tree``'s rules), the leaves fill the
    group, and a known weighting."""
    from .checks import check_tree

    if o.weighting not in WEIGHTINGS:
        raise ValueError(f"credit.options.weighting={o.weighting!r}; choose one of {WEIGHTINGS}.")
    leaves = 1
    for k in list(o.branch) * (len(o.splits) if len(o.branch) == 1 else 1):
        leaves *= int(k)
    if leaves != cfg.sample.group_size:
        raise ValueError(
            f"credit.options.branch={o.branch} over splits={o.splits} gives {leaves} leaves per tree; "
            f"sample.group_size={cfg.sample.group_size} must equal it (one tree per group)."
        )
    view = SimpleNamespace(**vars(o), prune_depths=[], width_pruning="", width_ratio=0.5, fusion="mean")
    check_tree(view, cfg)  # the tree-rollout fields, with pruning off
