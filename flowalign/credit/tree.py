"""Advantages on tree rollouts: BranchGRPO (arXiv 2509.06040; code Fredreic1849/BranchGRPO,
``train_branchgrpo_flux.py``) and TreeGRPO (arXiv 2512.08153; no public code).

An edge is identified by its child node n (the transition ``latents[parent[n]] -> latents[n]``);
every function returns per-node values ``[N]`` meaning "the edge into n" (roots: 0, never trained).
Leaf rewards come in the order of ``tree.leaves``.

BranchGRPO (``branch_grpo``):
* reward fusion to internal nodes: ``fusion="mean"`` the mean of leaf-descendant rewards (code
  default); ``"path_softmax"`` the paper's w_l = softmax_l(beta log p(l | n)) over the leaves under n,
  log p(l | n) the sum of edge log-probs from n down to l (beta = 0 is the mean; beta = 1 was best);
  ``"edge_softmax"`` the code's ``tree_prob_weighted``: each node the softmax(beta * child-edge
  log-prob)-weighted average of its children's fused rewards, recursively (not the same weights);
* depth-wise advantage: within one tree, z-score of the fused rewards of all nodes at the same
  depth, BranchGRPO's depth being the number of edges from the root (= ``tree.step``); a depth with a
  single node or with std below ``min_std`` (code: 1e-6) gets 0. Code: unbiased std + 1e-8;
* every edge parent -> child takes the child's advantage (split and sequential edges alike);
* depth pruning: edges whose child depth is in ``prune_depths`` are not trained (``slide_depths``
  is the code's sliding window); width pruning over the "last layer" (edges whose parent lies below
  the last split): ``"parent_top"`` keeps, for every parent of the last split, the best
  ``max(1, int(k * ratio))`` of its k branches; ``"extreme"`` keeps the best and worst
  ``max(2, int(n * ratio))`` last-layer edges of the whole call (code mode 2). Departure: the code's
  mode 1 groups by the *child* of the last split, which makes every group a single chain; the
  grouping by the split parent here is what the paper's name "Parent-Top1" describes.
TreeGRPO (``tree_grpo``): the SDE window start is drawn from a truncated geometric distribution
(``geometric_window``, r = 0.5 in the paper); leaf advantages z-scored over the leaves of each tree (per reward model,
then ``reward_weights``-summed), propagated bottom-up: the edge into u gets
sum_c w_u(c) A(c), w_u = softmax(beta * child-edge log-prob). The paper's weights are ratios of
densities pi_old(e); the softmax of log-probs is the stable form of that, and flowalign's log-probs
are means over latent elements (as in BranchGRPO's code), a departure from raw densities.

Pruning and ``filter_zero_std`` only change which edges train; sampling and rewards are unchanged.
``tree_to_batch`` lays the trained edges out as a flat [L, T] batch for ``log_prob_at``; ``edges``
gives the (nodes, advantages) list for ``sampling.tree.edge_log_prob``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..ranges import ranged
from ..types import Advantages, Rollout, TreeRollout
from .group import normalize

FUSIONS = ("mean", "path_softmax", "edge_softmax")
WIDTH_MODES = ("parent_top", "extreme")


@dataclass
class TreeAdvantages:
    advantages: Tensor  # [N] fp32 advantage of the edge into each node (0 for roots / untrained)
    mask: Tensor  # [N] bool edges that enter the loss
    node_rewards: Tensor  # [N] fp32 fused reward of each node (BranchGRPO) or 0 (TreeGRPO)
    stats: dict[str, float] = field(default_factory=dict)

    def edges(self) -> tuple[Tensor, Tensor]:
        """(nodes [E] long, advantages [E]) of the trained edges, for ``edge_log_prob``."""
        nodes = torch.nonzero(self.mask).flatten()
        return nodes, self.advantages[nodes]


def _check(tree: TreeRollout, leaf_rewards: Tensor) -> Tensor:
    r = torch.as_tensor(leaf_rewards, dtype=torch.float32)
    n_leaves = int(tree.is_leaf.sum())
    if r.shape[0] != n_leaves or r.ndim not in (1, 2):
        raise ValueError(
            f"leaf_rewards has shape {tuple(r.shape)}; the tree has {n_leaves} leaves "
            f"(give [L] or [L, R] in the order of tree.leaves)."
        )
    if not bool(torch.isfinite(r).all()):
        raise ValueError("leaf_rewards contain NaN/inf; drop or fix those leaves before credit.")
    return r


def membership(tree: TreeRollout) -> Tensor:
    """[N, L] bool: node n lies on the root->leaf path of leaf l."""
    leaves = tree.leaves
    m = torch.zeros(tree.num_nodes, leaves.numel(), dtype=torch.bool)
    cur = leaves.clone()
    cols = torch.arange(leaves.numel())
    while True:
        ok = cur >= 0
        if not bool(ok.any()):
            return m
        m[cur[ok], cols[ok]] = True
        cur = torch.where(ok, tree.parent[cur.clamp_min(0)], cur)


def _bottom_up(tree: TreeRollout):
    """Internal nodes from the deepest step up, each with its children."""
    children: dict[int, list[int]] = {}
    for c, p in enumerate(tree.parent.tolist()):
        if p >= 0:
            children.setdefault(p, []).append(c)
    order = sorted(children, key=lambda n: -int(tree.step[n]))
    return [(n, torch.tensor(children[n])) for n in order]


def fuse_rewards(tree: TreeRollout, leaf_rewards: Tensor, fusion: str = "mean", beta: float = 1.0) -> Tensor:
    """Leaf rewards [L] -> fused reward of every node [N] (leaves keep their own)."""
    if fusion not in FUSIONS:
        raise ValueError(f"fusion={fusion!r} must be one of {FUSIONS}.")
    r = _check(tree, leaf_rewards)
    if r.ndim != 1:
        raise ValueError("reward fusion takes one reward per leaf [L]; combine reward models first.")
    if fusion == "edge_softmax":
        out = torch.zeros(tree.num_nodes)
        out[tree.leaves] = r
        for n, ch in _bottom_up(tree):
            out[n] = (torch.softmax(beta * tree.log_prob[ch].float(), 0) * out[ch]).sum()
        return out
    m = membership(tree)
    if fusion == "mean":
        return (m.float() @ r) / m.sum(1).clamp_min(1)
    path = (m.float() * tree.log_prob.float()[:, None]).sum(0)  # [L] summed edge log-probs root -> leaf
    logits = torch.where(m, beta * path[None], torch.full_like(m, float("-inf"), dtype=torch.float32))
    return (torch.softmax(logits, 1) * r[None]).sum(1)


def depth_prune_mask(tree: TreeRollout, depths) -> Tensor:
    """[N] bool: False on edges whose child depth (= step index, root 0) is in ``depths``."""
    return ~torch.isin(tree.step, torch.as_tensor(sorted(set(int(d) for d in depths)), dtype=torch.long))


def slide_depths(depths, iteration: int, interval: int = 1, stop_depth: int = 0) -> tuple[int, ...]:
    """BranchGRPO's sliding depth-pruning window: shift the set shallower by one every ``interval``
    iterations while its shallowest depth stays >= ``stop_depth`` (code default: the last split step)."""
    base = sorted(int(d) for d in depths)
    if not base:
        return ()
    shift = min(iteration // max(1, interval), max(0, base[0] - stop_depth))
    return tuple(d - shift for d in base)


def width_prune_mask(
    tree: TreeRollout, advantages: Tensor, mode: str, ratio: float = 0.5, candidates: Tensor | None = None
) -> Tensor:
    """[N] bool: False on last-layer edges dropped by width pruning (see module docstring); only
    ``candidates`` [N] (edges still trained, e.g. after depth pruning) are ranked, as in the code."""
    if mode not in WIDTH_MODES:
        raise ValueError(f"width pruning mode {mode!r} must be one of {WIDTH_MODES}.")
    if not 0 < ratio <= 1:
        raise ValueError(f"width pruning ratio={ratio} must be in (0, 1].")
    keep = torch.ones(tree.num_nodes, dtype=torch.bool)
    n_child = torch.bincount(tree.parent[tree.parent >= 0], minlength=tree.num_nodes)
    split_steps = tree.step[n_child > 1]
    if split_steps.numel() == 0:
        return keep
    last = int(split_steps.max())
    par = tree.parent.clamp_min(0)
    layer = (tree.parent >= 0) & (tree.step[par] > last)  # edges below the last split
    if candidates is not None:
        layer &= candidates.bool()
    if mode == "extreme":
        nodes = torch.nonzero(layer).flatten()
        order = nodes[torch.sort(-advantages[nodes], stable=True).indices]
        n_keep = max(2, int(order.numel() * ratio))
        best = n_keep // 2
        kept = torch.cat([order[:best], order[order.numel() - (n_keep - best) :]])
        keep[nodes] = False
        keep[kept] = True
        return keep
    branch = torch.full((tree.num_nodes,), -1, dtype=torch.long)  # ancestor at step last + 1
    for n in torch.nonzero(tree.step == last + 1).flatten().tolist():
        branch[n] = n
    for s in range(last + 2, int(tree.step.max()) + 1):
        at = tree.step == s
        branch[at] = branch[tree.parent[at]]
    for p in torch.nonzero((tree.step == last) & (n_child > 1)).flatten().tolist():
        heads = torch.nonzero((tree.parent == p) & (tree.step == last + 1)).flatten()
        order = heads[torch.sort(-advantages[heads], stable=True).indices]
        dropped = order[max(1, int(heads.numel() * ratio)) :]
        keep &= ~(layer & torch.isin(branch, dropped))
    return keep


def _train_mask(
    tree: TreeRollout,
    adv: Tensor,
    zero: Tensor,
    filter_zero_std: bool,
    prune_depths,
    width_pruning: str | None,
    width_ratio: float,
) -> Tensor:
    mask = tree.trainable.bool() & (tree.parent >= 0)
    if filter_zero_std:
        mask &= ~zero
    if prune_depths:
        mask &= depth_prune_mask(tree, prune_depths)
    if width_pruning is not None:
        mask &= width_prune_mask(tree, adv, width_pruning, width_ratio, candidates=mask)
    return mask


def branch_grpo(
    tree: TreeRollout,
    leaf_rewards: Tensor,
    *,
    fusion: str = "mean",
    beta: float = 1.0,
    scale: str = "group",
    eps: float = 1e-8,
    unbiased: bool = True,
    min_std: float = 1e-6,
    filter_zero_std: bool = True,
    prune_depths=(),
    width_pruning: str | None = None,
    width_ratio: float = 0.5,
) -> TreeAdvantages:
    """BranchGRPO edge advantages from a tree and its leaf rewards [L] -> TreeAdvantages [N]."""
    fused = fuse_rewards(tree, leaf_rewards, fusion, beta)
    level = tree.root * (int(tree.step.max()) + 1) + tree.step  # (tree, depth) groups
    adv, std = normalize(fused, level, scale, eps, unbiased)
    zero = std <= min_std
    adv = torch.where(zero, torch.zeros_like(adv), adv)
    mask = _train_mask(tree, adv, zero, filter_zero_std, prune_depths, width_pruning, width_ratio)
    adv = torch.where(tree.parent >= 0, adv, torch.zeros_like(adv))
    stats = {
        "trained_edges": float(mask.sum()),
        "edges": float((tree.parent >= 0).sum()),
        "adv_abs_mean": float(adv[mask].abs().mean()) if mask.any() else 0.0,
    }
    return TreeAdvantages(advantages=adv, mask=mask, node_rewards=fused, stats=stats)


def tree_grpo(
    tree: TreeRollout,
    leaf_rewards: Tensor,
    *,
    beta: float = 1.0,
    reward_weights=None,
    scale: str = "group",
    eps: float = 1e-4,
    unbiased: bool = False,
    filter_zero_std: bool = True,
    prune_depths=(),
    width_pruning: str | None = None,
    width_ratio: float = 0.5,
) -> TreeAdvantages:
    """TreeGRPO edge advantages from leaf rewards [L] or [L, R] (+ ``reward_weights`` [R])."""
    r = _check(tree, leaf_rewards)
    r = r[:, None] if r.ndim == 1 else r
    w = torch.ones(r.shape[1]) if reward_weights is None else torch.as_tensor(reward_weights, dtype=torch.float32)
    if w.shape != (r.shape[1],):
        raise ValueError(f"reward_weights has {w.numel()} values for {r.shape[1]} reward models.")
    leaves = tree.leaves
    a_leaf, std = normalize(r, tree.root[leaves], scale, eps, unbiased)
    adv = torch.zeros(tree.num_nodes)
    adv[leaves] = (a_leaf * w).sum(1)
    for n, ch in _bottom_up(tree):
        adv[n] = (torch.softmax(beta * tree.log_prob[ch].float(), 0) * adv[ch]).sum()
    dead_roots = tree.root[leaves][(std == 0).all(1)]
    zero = torch.isin(tree.root, dead_roots)
    mask = _train_mask(tree, adv, zero, filter_zero_std, prune_depths, width_pruning, width_ratio)
    adv = torch.where(tree.parent >= 0, adv, torch.zeros_like(adv))
    stats = {
        "trained_edges": float(mask.sum()),
        "edges": float((tree.parent >= 0).sum()),
        "zero_std_frac": float(zero[leaves].float().mean()),
        "adv_abs_mean": float(adv[mask].abs().mean()) if mask.any() else 0.0,
    }
    return TreeAdvantages(advantages=adv, mask=mask, node_rewards=torch.zeros(tree.num_nodes), stats=stats)


@dataclass
class TreeBatch:
    rollout: Rollout  # [L] root->leaf paths of the tree
    advantages: Advantages  # [L, T]; each trained edge appears once (first leaf through it)
    rows: Tensor  # [L] long root (prompt row of the tree's Cond) of each path
    nodes: Tensor  # [L, T] long child node of each (path, step) edge


def tree_to_batch(tree: TreeRollout, tadv: TreeAdvantages, dedupe: bool = True) -> TreeBatch:
    """Flat layout for ``log_prob_at``: every root->leaf path as a row; the edge at step j of path l
    carries the advantage/mask of its child node. ``dedupe``: a shared edge trains once (first path).
    Needs one noise level per step (no ``depth_noise``); otherwise train with ``edges()``."""
    paths = torch.tensor([tree.path(int(n)) for n in tree.leaves], dtype=torch.long)  # [L, T+1]
    nodes = paths[:, 1:]
    levels = tree.noise_level[nodes]
    if bool((levels != levels[:1]).any()):
        raise ValueError(
            "the tree's noise level varies within a step (depth_noise); a flat Rollout has "
            "one level per step: train with TreeAdvantages.edges() and edge_log_prob instead."
        )
    mask = tadv.mask[nodes]
    if dedupe:
        seen = torch.zeros(tree.num_nodes, dtype=torch.bool)
        for row in range(nodes.shape[0]):
            mask[row] &= ~seen[nodes[row]]
            seen[nodes[row]] = True
    adv = torch.where(mask, tadv.advantages[nodes], torch.zeros(nodes.shape))
    return TreeBatch(
        rollout=tree.to_rollout(),
        advantages=Advantages(adv, mask, dict(tadv.stats)),
        rows=tree.root[tree.leaves],
        nodes=nodes,
    )


@dataclass
class TreeGRPOOptions:
    splits: list[int] = ranged([0, 1, 2], "[0, inf)")  # split steps, increasing (offsets from the window start)
    branch: list[int] = ranged([2], "[1, inf)")  # children per split (one, or one per split)
    # noise level x (1 + this x depth / #splits) (Dynamic-TreeRPO's depth-dependent noise)
    depth_noise: float = ranged(0.0, "[0, inf)")
    # BranchGRPO paper's sibling-noise correlation s; None = independent draws
    branch_corr: float | None = ranged(None, "[0, inf)")
    # softmax temperature beta (BranchGRPO path/edge fusion; TreeGRPO bottom-up weights)
    temperature: float = ranged(1.0, "free")
    prune_depths: list[int] = ranged([], "[1, inf)")  # child depths (= step index + 1) whose edges are not trained
    # move prune_depths one step shallower every this many iterations (0 = fixed)
    prune_slide_every: int = ranged(0, "[0, inf)")
    width_pruning: str = ""  # '' (off) | 'parent_top' | 'extreme' (BranchGRPO width pruning of the last layer)
    width_ratio: float = ranged(0.5, "(0, 1]")  # fraction of last-layer edges width pruning keeps

    def kwargs(self) -> dict:
        prune = {"prune_depths": tuple(self.prune_depths), "width_pruning": self.width_pruning or None}
        return {"beta": self.temperature, **prune, "width_ratio": self.width_ratio}


@dataclass
class BranchGRPOOptions(TreeGRPOOptions):
    splits: list[int] = ranged([0, 2, 4], "[0, inf)")
    fusion: str = "mean"  # internal-node reward fusion 'mean' (code) | 'path_softmax' (paper) | 'edge_softmax'

    def kwargs(self) -> dict:
        return {"fusion": self.fusion, **super().kwargs()}
