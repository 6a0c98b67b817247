"""The search trees of DTS / DTS* (``dts.py``): a flat node store of P trees with soft-value backups,
the DTS read-out probabilities, and the selection walk (progressive widening; softmax(lam v) for
DTS, UCT for DTS*).
"""

from __future__ import annotations

import math
import random

from torch import Tensor


def soft_mean(values: list[float], lam: float) -> float:
    """(1/lam) log mean exp(lam v) (the plain mean at lam = 0), in float64 Python arithmetic."""
    if lam == 0:
        return sum(values) / len(values)
    top = max(values)
    return top + math.log(sum(math.exp(lam * (v - top)) for v in values) / len(values)) / lam


def softmax(values: list[float], lam: float) -> list[float]:
    top = max(values)
    e = [math.exp(lam * (v - top)) for v in values]
    total = sum(e)
    return [x / total for x in e]


class Forest:
    """Flat node store of P trees. Node 0..P-1 are the dummy roots (no state, above the noise)."""

    def __init__(self, p: int):
        self.parent, self.depth, self.tree = [-1] * p, [0] * p, list(range(p))
        self.gidx = [-1] * p  # sigma-grid index of the node's state (-1: dummy root)
        self.children: list[list[int]] = [[] for _ in range(p)]
        self.value, self.visits = [0.0] * p, [0] * p
        self.state: list[Tensor | None] = [None] * p
        self.reward: list[float] = [math.nan] * p
        self.leaf_ids: list[list[int]] = [[] for _ in range(p)]  # leaves (x0 states) of each tree

    def add(self, parent: int, gidx: int, state: Tensor) -> int:
        n = len(self.parent)
        self.parent.append(parent)
        self.depth.append(self.depth[parent] + 1)
        self.tree.append(self.tree[parent])
        self.gidx.append(gidx)
        self.children.append([])
        self.children[parent].append(n)
        self.value.append(0.0)
        self.visits.append(0)
        self.state.append(state)
        self.reward.append(math.nan)
        return n

    def backup(self, leaf: int, r: float | None, lam: float) -> None:
        """v(leaf) = r (None: a revisit), then soft-value log-mean-exp to the root; N += 1."""
        if r is not None:
            self.value[leaf] = self.reward[leaf] = r
        node = leaf
        while node >= 0:
            self.visits[node] += 1
            kids = self.children[node]
            if kids:
                self.value[node] = soft_mean([self.value[c] for c in kids], lam)
            node = self.parent[node]

    def leaves(self, tree: int) -> list[int]:
        return self.leaf_ids[tree]

    def readout_probs(self, tree: int, lam: float) -> dict[int, float]:
        """Exact probability of each leaf under the DTS read-out (descend by softmax(lam v))."""
        out, stack = {}, [(tree, 1.0)]
        while stack:
            node, pr = stack.pop()
            kids = [c for c in self.children[node] if not math.isnan(self.value[c]) and self.visits[c] > 0]
            if not kids:
                out[node] = pr
                continue
            w = softmax([self.value[c] for c in kids], lam)
            stack.extend((c, pr * float(wi)) for c, wi in zip(kids, w))
        return out


def select_node(
    forest: Forest,
    root: int,
    *,
    star: bool,
    lam: float,
    c_pw: float,
    alpha: float,
    c_uct: float,
    last: int,
    virtual: dict[int, int],
    pending: dict[int, int],
    rng: random.Random,
    min_gidx: int = 0,
) -> tuple[int, list[int]]:
    """Walk down from ``root``; returns (node to expand or leaf reached, path). A node above grid
    index ``min_gidx`` (its rollout would not fit in the budget left) is not expanded: the walk
    goes on to a child, so the last NFEs still buy the cheaper, deeper branches."""
    node, path = root, [root]
    while True:
        if forest.gidx[node] == last:
            return node, path
        kids = [c for c in forest.children[node] if forest.visits[c] > 0]
        n_vis = forest.visits[node] + virtual.get(node, 0)
        width = len(forest.children[node]) + pending.get(node, 0)
        wants = width == 0 or width < c_pw * max(n_vis, 1) ** alpha or not kids
        if wants and (max(forest.gidx[node], 0) >= min_gidx or not kids):
            return node, path
        vals = [forest.value[c] for c in kids]
        if star:
            log_n = math.log(max(n_vis, 1))
            score = [v + c_uct * math.sqrt(log_n / (forest.visits[c] + virtual.get(c, 0))) for v, c in zip(vals, kids)]
            node = kids[max(range(len(kids)), key=score.__getitem__)]
        else:
            node = rng.choices(kids, weights=softmax(vals, lam))[0]
        path.append(node)
