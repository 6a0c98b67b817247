"""Tree-structured rollouts: trajectories that share prefixes and branch at chosen steps.

Used by tree-based GRPO (BranchGRPO, arXiv 2509.06040; TreeGRPO, arXiv 2512.08153; Dynamic-TreeRPO,
arXiv 2509.23352) and tree search. At every step each frontier node's velocity is evaluated once;
at a split step the node gets ``k`` children that share the kernel (one NFE) and differ only in
noise, elsewhere it gets one child. So the NFE count is the sum of frontier sizes, and a tree that
never branches is exactly the flat rollout (same random draws in the same order).

Options and departures:
* ``depth_noise``: the noise level of an edge grows linearly with the depth of its parent,
  ``level * (1 + depth_noise * depth / num_splits)`` (the form of Dynamic-TreeRPO's depth-dependent
  noise; their exact Eq. 6 is unpublished in code).
* ``branch_corr``: siblings' noises ``(xi_0 + s * eta_b) / sqrt(1 + s^2)`` with a shared ``xi_0`` and
  per-branch ``eta_b`` (BranchGRPO paper); ``None`` = independent draws. Each edge's noise is still
  standard normal, so its log-prob under the kernel is exact (BranchGRPO's code instead scales the
  noise and scores it with the unscaled std; not reproduced).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..types import Cond, StepOut, TreeRollout
from .rollout import as_noise_levels, check_rollout_args
from .sde import _draw, get_step, ode, step_name


@dataclass(frozen=True)
class TreeSpec:
    """Where and how a tree branches (validated against the step count by ``check``)."""

    split_steps: tuple[int, ...]  # steps j (0-based, increasing) at which every frontier node branches
    branch_factor: int | tuple[int, ...] = 2  # children per split (one value, or one per split)
    depth_noise: float = 0.0  # relative growth of the noise level per unit of normalised depth
    branch_corr: float | None = None  # BranchGRPO's s; None = independent sibling noise

    def factors(self) -> tuple[int, ...]:
        f = self.branch_factor
        return tuple(f) if isinstance(f, (tuple, list)) else (f,) * len(self.split_steps)

    def check(self, num_steps: int, noise_levels: Tensor | None = None) -> None:
        steps, factors = list(self.split_steps), self.factors()
        if any(not isinstance(j, int) or not 0 <= j < num_steps for j in steps):
            raise ValueError(
                f"split_steps={steps} must be step indices in [0, {num_steps - 1}] for a {num_steps}-step grid."
            )
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise ValueError(f"split_steps={steps} must be strictly increasing, e.g. {sorted(set(steps))}.")
        if len(factors) != len(steps):
            raise ValueError(
                f"branch_factor has {len(factors)} values for {len(steps)} split steps; "
                f"give one value or one per split."
            )
        if any(not isinstance(k, int) or k < 1 for k in factors):
            raise ValueError(f"branch_factor={list(factors)} must be ints >= 1.")
        if noise_levels is not None:
            dead = [j for j, k in zip(steps, factors) if k > 1 and float(noise_levels[j]) <= 0]
            if dead:
                raise ValueError(
                    f"split steps {dead} have noise level 0, so their children would be "
                    f"identical; give those steps a noise level > 0."
                )

    def num_leaves(self) -> int:
        n = 1
        for k in self.factors():
            n *= k
        return n


def tree_rollout(
    model,
    cond: Cond,
    x: Tensor,
    sigmas: Tensor,
    spec: TreeSpec,
    step: str | Callable = "flow_sde",
    noise_levels: Tensor | float | None = None,
    *,
    generator=None,
    keep_mean: bool = False,
) -> TreeRollout:
    """Grow one tree per row of x [B, *S] (its root) over the grid ``sigmas`` [T+1]."""
    step_fn = get_step(step)
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).cpu()
    num_steps = sigmas.numel() - 1
    levels = as_noise_levels(noise_levels, num_steps)
    check_rollout_args(sigmas, levels, x.shape[0], generator)
    spec.check(num_steps, levels)
    if isinstance(generator, (list, tuple)) and spec.split_steps:
        raise ValueError("tree rollouts take one torch.Generator (the frontier changes size).")
    split = dict(zip(spec.split_steps, spec.factors()))
    nfe0, b = model.nfe, x.shape[0]
    ids = torch.arange(b)
    nodes = _root_nodes(x, ids, keep_mean)
    front = _Frontier(x.float(), ids, torch.zeros(b, dtype=torch.long), ids, cond)
    for j in range(num_steps):
        front = _grow(model, nodes, front, sigmas, levels, j, split.get(j, 1), spec, step_fn, generator)
    return _as_tree(nodes, sigmas, step_name(step), model.nfe - nfe0)


@dataclass
class _Frontier:
    """The newest node of every branch: states [F, *S], node ids, depths, roots and conditioning."""

    x: Tensor
    ids: Tensor
    depth: Tensor
    root: Tensor
    cond: Cond


def _root_nodes(x: Tensor, ids: Tensor, keep_mean: bool) -> dict[str, list[Tensor]]:
    b = x.shape[0]
    nodes = dict(
        latents=[x.float()],
        parent=[torch.full((b,), -1)],
        step=[torch.zeros(b, dtype=torch.long)],
        depth=[torch.zeros(b, dtype=torch.long)],
        root=[ids],
        log_prob=[torch.zeros(b)],
        std=[torch.zeros(b)],
        noise_level=[torch.zeros(b)],
    )
    if keep_mean:
        nodes["mean"] = [x.float()]
    return nodes


def _sibling_noise(fx: Tensor, rep: Tensor, corr: float, generator) -> Tensor:
    """BranchGRPO's correlated sibling noise (xi_0 + s eta_b) / sqrt(1 + s^2), one row per child."""
    xi0 = _draw(fx.shape, generator, fx.device)[rep]
    eta = _draw((rep.numel(), *fx.shape[1:]), generator, fx.device)
    return (xi0 + corr * eta) / (1 + corr**2) ** 0.5


def _grow(
    model,
    nodes: dict[str, list[Tensor]],
    front: _Frontier,
    sigmas: Tensor,
    levels: Tensor,
    j: int,
    k: int,
    spec: TreeSpec,
    step_fn: Callable,
    generator,
) -> _Frontier:
    """Step j: one velocity per frontier node, ``k`` children each (sharing it); appends them to ``nodes``."""
    s, s_next = sigmas[j], sigmas[j + 1]
    fx, fdepth = front.x, front.depth
    v = model.velocity(fx, s, front.cond)
    level = levels[j] * (1 + spec.depth_noise * fdepth.float() / max(len(spec.split_steps), 1))  # [F]
    rep = torch.arange(fx.shape[0]).repeat_interleave(k)
    fn = step_fn if levels[j] > 0 else ode
    noise = _sibling_noise(fx, rep, spec.branch_corr, generator) if k > 1 and spec.branch_corr is not None else None
    out = fn(fx[rep], v[rep], s, s_next, level[rep], noise=noise, generator=generator)
    new_ids = torch.arange(rep.numel()) + sum(t.numel() for t in nodes["parent"])
    fdepth = fdepth[rep] + (1 if k > 1 else 0)
    froot, fcond = front.root[rep], front.cond.select(rep) if k > 1 else front.cond
    _append(nodes, out, front.ids[rep], j + 1, fdepth, froot, level[rep] if levels[j] > 0 else level[rep] * 0)
    return _Frontier(out.x_next, new_ids, fdepth, froot, fcond)


def _as_tree(nodes: dict[str, list[Tensor]], sigmas: Tensor, step_kind: str, nfe: int) -> TreeRollout:
    cat = {key: torch.cat(val) for key, val in nodes.items()}
    std = cat["std"]
    return TreeRollout(
        latents=cat["latents"],
        parent=cat["parent"],
        step=cat["step"],
        depth=cat["depth"],
        root=cat["root"],
        log_prob=cat["log_prob"],
        mean=cat.get("mean"),
        std=std,
        noise_level=cat["noise_level"],
        trainable=std > 0,
        sigmas=sigmas,
        step_kind=step_kind,
        nfe=nfe,
    )


def _append(nodes: dict, out: StepOut, parent: Tensor, step: int, depth: Tensor, root: Tensor, level: Tensor) -> None:
    n = parent.numel()
    nodes["latents"].append(out.x_next)
    nodes["parent"].append(parent)
    nodes["step"].append(torch.full((n,), step, dtype=torch.long))
    nodes["depth"].append(depth.clone())
    nodes["root"].append(root)
    nodes["log_prob"].append(out.log_prob)
    nodes["std"].append(out.std)
    nodes["noise_level"].append(level.float())
    if "mean" in nodes:
        nodes["mean"].append(out.mean)


def edge_log_prob(
    model, cond: Cond, tree: TreeRollout, nodes: Sequence[int] | Tensor, step: str | Callable | None = None
) -> StepOut:
    """Recompute the edges into ``nodes`` under the current weights (batched, mixed steps allowed).
    ``cond`` is the per-root conditioning the tree was grown with."""
    nodes = torch.as_tensor(nodes, dtype=torch.long)
    parent = tree.parent[nodes]
    if bool((parent < 0).any()):
        raise ValueError("roots have no incoming edge; pass non-root nodes.")
    x, x_next = tree.latents[parent], tree.latents[nodes]
    s, s_next = tree.sigmas[tree.step[parent]], tree.sigmas[tree.step[nodes]]
    v = model.velocity(x, s, cond.select(tree.root[nodes]))
    return get_step(step or tree.step_kind)(x, v, s, s_next, tree.noise_level[nodes], x_next=x_next)
