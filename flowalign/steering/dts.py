"""Diffusion Tree Sampling (DTS) and Diffusion Tree Search (DTS*).

Paper: Jain, Sareen, Pedramfar, Ravanbakhsh, "Diffusion Tree Sampling: Scalable inference-time
alignment of diffusion models", arXiv 2506.20701 (NeurIPS 2025), Algorithms 1-2. One tree per
prompt over the denoising chain; each iteration selects a node, adds one child (progressive
widening |C(x)| < C N(x)^alpha), rolls it out to x0 with the base stochastic kernel, scores
r(x0) and backs up the soft value v(x) = (1/lam) log mean_{c in C(x)} exp(lam v(c)) to the root.
DTS selects children with probability prop. to exp(lam v(c)) (a sampler of p exp(lam r) as the
budget grows); DTS* takes argmax v(c) + c_uct sqrt(log N(x) / N(c)).

Departures and implementation choices:
* Branching only at ``branch_steps`` (the paper's App. F: root + 4 depths); the rollout states
  between two branch depths form single-child chains and are not stored (a log-mean-exp over one
  child is that child's value, so the backups are unchanged).
* Iterations run in rounds of ``batch`` per tree: selections within a round see virtual visits and
  pending children (as batched MCTS), then every new rollout of the forest runs through the one
  rollout loop, grouped by start depth, and all leaves are scored in one reward call.
* A selection that ends on a leaf (t = 0) costs no NFE; it only counts a visit (raising the
  widening limits on its path), as in Algorithm 1 where expansion needs t > 0.
* ``final``: ``sample`` (DTS read-out: descend by exp(lam v)), ``greedy`` (DTS* read-out: argmax
  v) or ``max_reward`` (best leaf found; the paper's T2I tables report the max reward found).
* The NFE budget is per prompt; a rollout is started only if it fits in what is left: once a
  rollout from the top no longer fits, selection walks past such nodes to deeper, cheaper ones.
"""

from __future__ import annotations

import random
from typing import Any

import torch
from torch import Tensor

from ..sampling.rollout import rollout
from .common import (
    LatentReward,
    SteerResult,
    check_budget,
    check_lam,
    check_steps_in_grid,
    default_schedule,
    prepare,
    side_generator,
    stochastic_levels,
)
from .dts_tree import Forest, select_node

FINALS = ("sample", "greedy", "max_reward")


def branch_depths(branch_steps: Any, levels: Tensor, t: int, method: str = "dts") -> list[int]:
    """Sorted grid indices of the branching nodes for 0-based ``branch_steps`` (None: the FK
    schedule without the last step, minus depths with only ODE steps below them up to the next
    depth) on a T-step grid with the [T] noise ``levels``. One clear error when a chosen depth's
    children would all be equal (no noisy step before the next depth). Needs no model, so a
    command line can check its flags before loading one."""
    steps = (
        default_schedule(t)[:-1] if branch_steps is None else check_steps_in_grid(branch_steps, t - 1, "branch_steps")
    )
    depths = sorted({j + 1 for j in steps})

    def dead_segments(ds: list[int]) -> list[int]:
        return [g for g, nxt in zip([0, *ds], [*ds, t]) if g > 0 and not bool((levels[g:nxt] > 0).any())]

    if branch_steps is None:  # drop default depths whose children would all be equal (ODE-only tail)
        while dead_segments(depths):
            depths.remove(dead_segments(depths)[0])
    dead = dead_segments(depths)
    if dead:
        last = " (the last step is always noise-free)" if t - 1 in dead else ""
        raise ValueError(
            f"{method}: the steps after grid indices {dead} up to the next branch depth are all "
            f"deterministic (noise level 0), so sibling nodes would be identical; raise the "
            f"noise there or move branch_steps{last}."
        )
    return depths


def _check_options(star: bool, lam: Any, final: str | None, batch: Any, widen_c: float, widen_alpha: float):
    """Checked (lam, final); ``final`` defaults to max_reward for DTS*, sample for DTS."""
    lam = check_lam(lam)
    final = final or ("max_reward" if star else "sample")
    if final not in FINALS:
        raise ValueError(f"unknown final {final!r}; choose one of {list(FINALS)}.")
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch={batch!r} must be an int >= 1 (rollouts per tree and round).")
    if widen_c <= 0 or not 0 < widen_alpha <= 1:
        raise ValueError(
            f"progressive widening needs widen_c > 0 and 0 < widen_alpha <= 1 (the number of "
            f"children C N^alpha must grow with the visits N), got {widen_c}, {widen_alpha}."
        )
    return lam, final


class _Rounds:
    """Selection rounds over the P trees of a forest, each tree with its own NFE budget.

    A round selects up to ``batch`` nodes per tree to expand (``plan``); selections within a round
    see virtual visits and pending children. A tree is done when what is left of its budget no longer
    pays for the cheapest rollout or for the rollout just selected, or after 64 rounds that found
    only free revisits of leaves.
    """

    def __init__(self, forest: Forest, t: int, budget: int, batch: int, cheapest: int, **select_kw: Any):
        p = len(forest.leaf_ids)
        self.forest, self.t, self.budget, self.batch, self.cheapest = forest, t, budget, batch, cheapest
        self.select_kw, self.lam = select_kw, select_kw["lam"]
        self.spent, self.done, self.stalled = [0] * p, [False] * p, [0] * p

    def plan(self) -> list[tuple[int, int]]:
        """One round: the (node to expand, tree) jobs of every tree."""
        jobs: list[tuple[int, int]] = []
        virtual: dict[int, int] = {}
        pending: dict[int, int] = {}
        for tr in range(len(self.spent)):
            n_jobs = self._plan_tree(tr, jobs, virtual, pending)
            self.stalled[tr] = 0 if n_jobs else self.stalled[tr] + 1
            if self.stalled[tr] > 64:  # only free revisits for many rounds: the tree cannot grow any more
                self.done[tr] = True
        return jobs

    def _plan_tree(self, tr: int, jobs: list, virtual: dict[int, int], pending: dict[int, int]) -> int:
        """Append tree ``tr``'s selections of this round to ``jobs``; returns how many."""
        forest, t, n_jobs = self.forest, self.t, 0
        if self.budget - self.spent[tr] < self.cheapest:
            self.done[tr] = True
        for _ in range(4 * self.batch if not self.done[tr] else 0):
            if n_jobs >= self.batch:
                break
            left = self.budget - self.spent[tr]
            node, path = select_node(forest, tr, virtual=virtual, pending=pending, min_gidx=t - left, **self.select_kw)
            if forest.gidx[node] == t:  # reached a leaf: a free revisit
                forest.backup(node, None, self.lam)
                continue
            cost = t - max(forest.gidx[node], 0)
            if self.spent[tr] + cost > self.budget:
                self.done[tr] = True
                break
            self.spent[tr] += cost
            for n in path:
                virtual[n] = virtual.get(n, 0) + 1
            pending[node] = pending.get(node, 0) + 1
            jobs.append((node, tr))
            n_jobs += 1
        return n_jobs


def tree_search(
    model: Any,
    prompts: Any,
    reward: Any,
    *,
    nfe_budget: int,
    star: bool = True,
    lam: float = 1.0,
    branch_steps: Any = None,
    widen_c: float = 2.0,
    widen_alpha: float = 0.8,
    c_uct: float = 1.0,
    batch: int | None = None,
    final: str | None = None,
    num_steps: int | None = None,
    sigmas: Any = None,
    step: str = "flow_sde",
    noise_level: Any = 0.7,
    noise_steps: Any = None,
    cfg: float | None = None,
    negative_prompts: Any = None,
    height: int | None = None,
    width: int | None = None,
    generator: Any = None,
    cond: Any = None,
) -> SteerResult:
    """DTS (``star=False``) or DTS* (``star=True``) with ``nfe_budget`` model evaluations per prompt.

    ``branch_steps``: 0-based steps after which a node may get several children (default the FK
    schedule without the last step); the initial noise (root) always branches. ``batch``: rollouts
    per tree and round (default: budget / 16 rollouts, 1 to 8)."""
    method = "dts_star" if star else "dts"
    lam, final = _check_options(star, lam, final, batch, widen_c, widen_alpha)
    rew = LatentReward(reward, model)
    enc = dict(num_steps=num_steps, guidance=cfg, negative_prompts=negative_prompts, height=height, width=width)
    setup = prepare(model, prompts, 1, sigmas=sigmas, generator=generator, cond=cond, draw_noise=False, **enc)
    t = setup.sigmas.numel() - 1
    levels = stochastic_levels(step, noise_level, t, method, noise_steps)
    check_budget(nfe_budget, t, method)
    if batch is None:  # at least ~16 rounds of selections, so that early rollouts inform later ones
        batch = max(1, min(8, nfe_budget // (16 * t)))
    depths = branch_depths(branch_steps, levels, t, method)
    p, gen = len(setup.prompts), side_generator(generator, 104729)
    forest, nfe0 = Forest(p), model.nfe
    shape = model.initial_noise(1, setup.height, setup.width, side_generator(generator, 1)).shape[1:]
    rng = random.Random(int(torch.randint(2**62, (1,), generator=gen)))  # selection draws (fast, seeded)
    cheapest = t - max(depths, default=0)  # a rollout from the deepest branch depth
    select_kw = dict(star=star, lam=lam, c_pw=widen_c, alpha=widen_alpha, c_uct=c_uct, last=t, rng=rng)
    rounds = _Rounds(forest, t, nfe_budget, batch, cheapest, **select_kw)
    stops = set(depths) | {t}
    while not all(rounds.done):
        jobs = rounds.plan()
        if jobs:
            _expand(model, forest, jobs, setup, levels, step, stops, shape, generator, rew, lam)
    return _finish(forest, p, lam, final, gen, method, model.nfe - nfe0, rew.calls, rounds.spent, t)


def _expand(model, forest: Forest, jobs, setup, levels, step, stops, shape, generator, rew, lam) -> None:
    t = setup.sigmas.numel() - 1
    by_start: dict[int, list[tuple[int, int]]] = {}
    for node, tr in jobs:
        by_start.setdefault(max(forest.gidx[node], 0), []).append((node, tr))
    new_leaves, leaf_x, leaf_prompts = [], [], []
    for g0, group in sorted(by_start.items()):
        trees = [tr for _, tr in group]
        roots = [node for node, _ in group if forest.gidx[node] < 0]
        x = torch.stack(
            [forest.state[n] if forest.gidx[n] >= 0 else torch.zeros(shape, device=model.device) for n, _ in group]
        )
        if roots:  # fresh initial noise for new root children, drawn as the pipeline draws it
            fresh = model.initial_noise(len(roots), setup.height, setup.width, generator).to(x)
            x[[i for i, (n, _) in enumerate(group) if forest.gidx[n] < 0]] = fresh.float()
        with torch.no_grad():
            ro = rollout(model, setup.cond.select(trees), x, setup.sigmas[g0:], step, levels[g0:], generator=generator)
        for i, (node, tr) in enumerate(group):
            cur = node
            if forest.gidx[node] < 0:
                cur = forest.add(node, 0, ro.latents[i, 0])
            for g in range(g0 + 1, t + 1):
                if g in stops:
                    cur = forest.add(cur, g, ro.latents[i, g - g0])
            new_leaves.append(cur)
            forest.leaf_ids[tr].append(cur)
            leaf_x.append(ro.latents[i, -1])
            leaf_prompts.append(setup.prompts[tr])
    r = rew(torch.stack(leaf_x), leaf_prompts)
    for leaf, val in zip(new_leaves, r.tolist()):
        forest.backup(leaf, val, lam)


def _finish(
    forest: Forest, p: int, lam: float, final: str, gen, method: str, nfe: int, calls: int, spent: list[int], t: int
) -> SteerResult:
    chosen, rewards, leaf_x, leaf_r, probs = [], [], [], [], []
    for tr in range(p):
        leaves = forest.leaves(tr)
        pr = forest.readout_probs(tr, lam)
        if final == "max_reward":
            pick = max(leaves, key=lambda n: forest.reward[n])
        elif final == "greedy":
            pick = tr
            while forest.children[pick]:
                pick = max(forest.children[pick], key=lambda c: forest.value[c])
        else:
            keys = list(pr)
            idx = int(torch.multinomial(torch.tensor([pr[k] for k in keys], dtype=torch.float64), 1, generator=gen))
            pick = keys[idx]
        chosen.append(forest.state[pick])
        rewards.append(forest.reward[pick])
        leaf_x.append(torch.stack([forest.state[n] for n in leaves]))
        leaf_r.append(torch.tensor([forest.reward[n] for n in leaves]))
        probs.append(torch.tensor([pr.get(n, 0.0) for n in leaves], dtype=torch.float64))
    info = dict(
        leaf_latents=leaf_x,
        leaf_rewards=leaf_r,
        readout_probs=probs,
        nfe_per_prompt=spent,
        rollouts=[len(lx) for lx in leaf_x],
        root_children=[len(forest.children[tr]) for tr in range(p)],
        nodes=len(forest.parent),
    )
    return SteerResult(
        latents=torch.stack(chosen),
        rewards=torch.tensor(rewards, dtype=torch.float32),
        nfe=nfe,
        method=method,
        reward_calls=calls,
        info=info,
    )
