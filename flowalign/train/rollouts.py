"""Rollout functions the trainer plugs into ``generate`` for the exploration variants (issue 6).

Every function here has the trainer's ``rollout_fn`` signature
``fn(model, cond, x [B, *S], sigmas [T+1], step, noise_levels [T], *, generator) -> Rollout`` and
returns a flat batch (``latents [B, T+1]``, ``log_probs [B, T]``), so the TRAIN phase
(``log_prob_at`` per (sample, step)) trains every variant unchanged:

* ``shared_prefix_rollout`` — rows with the same initial noise and prompt (``sample.same_noise``
  groups) share every ODE step before the first SDE step: they are computed once per distinct row and
  broadcast (G^2RPO's ODE *anchor*, arXiv 2510.01982; Flow-GRPO-Fast windows). The per-row noise of
  the later SDE steps is drawn from the same per-row generators in the same order, so the result is
  the flat rollout's up to the batch-size dependence of the velocity on the (untrained) prefix.
* ``tree_batch_rollout`` — one tree per group (``sampling.tree.tree_rollout``; BranchGRPO arXiv
  2509.06040, TreeGRPO arXiv 2512.08153): the batch holds whole groups in order, the root of group g
  is its first row's initial noise, and row r comes back as the root->leaf path of leaf r
  (``TreeRollout.to_rollout``). The tree rides along (``TreeBatchRollout.tree``) for the tree credit.
  Every node at a step has the same depth (all frontier nodes split together), so even with
  depth-dependent noise a step has one noise level and the flat layout is exact.
* ``guided_batch_rollout`` — Euphonium's reward-gradient-guided SDE (arXiv 2602.04928,
  ``guided.guided_rollout``): log-probs under the unguided kernel, process scores recorded per step
  (``GuidedBatchRollout.process`` [B, T]).

``whole_group_batch`` is ``data.group_batch`` with the global slot list sorted by group, so a rank
(and each sampling batch) holds whole groups; ``make_rollout`` picks the function for a config.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import partial

import torch
from torch import Tensor

from ..credit.guided import check_process_reward, guided_rollout
from ..sampling.rollout import as_noise_levels, rollout
from ..sampling.sde import step_name
from ..sampling.tree import TreeSpec, tree_rollout
from ..types import Cond, Rollout, TreeRollout
from .data import group_batch


@dataclass
class TreeBatchRollout(Rollout):
    tree: TreeRollout | None = None  # the tree whose root->leaf paths are the rows


@dataclass
class GuidedBatchRollout(Rollout):
    process: Tensor | None = None  # [B, T] fp32 process reward at the start of each guided step, 0 elsewhere


def _as(cls, r: Rollout, **extra):
    return cls(**{f.name: getattr(r, f.name) for f in fields(Rollout)}, **extra)


def whole_group_batch(
    num_prompts: int, k: int, per_rank: int, world: int, rank: int, seed: int, iteration: int
) -> tuple[list[int], list[int]]:
    """(prompt indices, group ids) of this rank's slots, whole groups contiguous (same prompts and
    group ids as ``group_batch`` draws for the iteration, sorted by group)."""
    if per_rank % k:
        raise ValueError(f"{per_rank} images per process do not hold whole groups of {k}.")
    pidx, gids = group_batch(num_prompts, k, per_rank * world, 1, 0, seed, iteration)
    order = sorted(range(len(gids)), key=lambda i: gids[i])
    mine = order[rank * per_rank : (rank + 1) * per_rank]
    return [pidx[i] for i in mine], [gids[i] for i in mine]


def _row_keys(cond: Cond, x: Tensor) -> list[bytes]:
    prompts = cond.prompts or [""] * x.shape[0]
    return [
        hashlib.blake2b(
            x[i].detach().float().contiguous().cpu().numpy().tobytes() + p.encode(), digest_size=16
        ).digest()
        for i, p in enumerate(prompts)
    ]


def shared_prefix_rollout(
    model,
    cond: Cond,
    x: Tensor,
    sigmas: Tensor,
    step="flow_sde",
    noise_levels=None,
    *,
    generator=None,
    keep_x0: bool = False,
    base: Callable = rollout,
) -> Rollout:
    """Flat rollout whose ODE prefix (steps before the first SDE step) runs once per distinct
    (initial noise, prompt) row; see the module docstring."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).cpu()
    levels = as_noise_levels(noise_levels, sigmas.numel() - 1)
    sde = torch.nonzero(levels > 0).flatten()
    a = int(sde[0]) if sde.numel() else levels.numel()
    keys = _row_keys(cond, x)
    first = {k: i for i, k in reversed(list(enumerate(keys)))}
    uniq = sorted(set(first.values()))
    kw = {"keep_x0": True} if keep_x0 else {}  # (a custom base need not know keep_x0)
    if a == 0 or len(uniq) == x.shape[0]:
        return base(model, cond, x, sigmas, step, levels, generator=generator, **kw)
    inv = torch.tensor([uniq.index(first[k]) for k in keys])
    pre = base(model, cond.select(uniq), x[uniq], sigmas[: a + 1], step, levels[:a], **kw)
    if a == levels.numel():
        post = None
    else:
        post = base(model, cond, pre.latents[inv, -1], sigmas[a:], step, levels[a:], generator=generator, **kw)
    lat = pre.latents[inv] if post is None else torch.cat([pre.latents[inv, :-1], post.latents], 1)
    lp = pre.log_probs[inv] if post is None else torch.cat([pre.log_probs[inv], post.log_probs], 1)
    x0 = None
    if keep_x0:
        x0 = pre.x0_preds[inv] if post is None else torch.cat([pre.x0_preds[inv], post.x0_preds], 1)
    return Rollout(
        latents=lat,
        log_probs=lp,
        sigmas=sigmas,
        noise_levels=levels,
        step=step_name(step),
        x0_preds=x0,
        nfe=pre.nfe + (post.nfe if post is not None else 0),
    )


def tree_spec_for(
    splits, branch, levels: Tensor, *, relative: bool, depth_noise: float = 0.0, branch_corr: float | None = None
) -> TreeSpec:
    """The iteration's TreeSpec: ``splits`` absolute, or offsets from the first SDE step (``relative``)."""
    start = int(torch.nonzero(levels > 0).flatten()[0]) if relative and bool((levels > 0).any()) else 0
    steps = tuple(start + int(j) for j in splits)
    factors = tuple(int(k) for k in branch)
    spec = TreeSpec(
        split_steps=steps,
        branch_factor=factors[0] if len(factors) == 1 else factors,
        depth_noise=depth_noise,
        branch_corr=branch_corr,
    )
    spec.check(levels.numel(), levels)
    return spec


def tree_batch_rollout(
    model,
    cond: Cond,
    x: Tensor,
    sigmas: Tensor,
    step="flow_sde",
    noise_levels=None,
    *,
    generator=None,
    splits=(),
    branch=(2,),
    relative: bool = False,
    depth_noise: float = 0.0,
    branch_corr: float | None = None,
    keep_x0: bool = False,
) -> TreeBatchRollout:
    """Rows [B] = whole groups of L = #leaves rows; one tree per group from its first row (see module)."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).cpu()
    levels = as_noise_levels(noise_levels, sigmas.numel() - 1)
    spec = tree_spec_for(splits, branch, levels, relative=relative, depth_noise=depth_noise, branch_corr=branch_corr)
    n_leaves, b = spec.num_leaves(), x.shape[0]
    if b % n_leaves:
        raise ValueError(f"a batch of {b} rows does not hold whole trees of {n_leaves} leaves.")
    roots = list(range(0, b, n_leaves))
    gen = generator[0] if isinstance(generator, (list, tuple)) else generator
    tree = tree_rollout(model, cond.select(roots), x[roots], sigmas, spec, step, levels, generator=gen)
    return _as(TreeBatchRollout, tree.to_rollout(), tree=tree)


def x0_reward_process(reward: Callable, decode: Callable[[Tensor], Tensor]) -> Callable:
    """Image reward -> process reward f(x, ctx) = reward(decode(x - sigma v), prompts) with v held
    fixed (no model Jacobian); a ``Scores`` result gives its total."""

    def process(x: Tensor, ctx) -> Tensor:
        out = reward(decode(x - ctx.sigma * ctx.v.detach()), ctx.cond.prompts)
        return getattr(out, "total", out)

    process.differentiable, process.name = True, f"x0[{getattr(reward, 'name', 'reward')}]"
    return process


def guided_batch_rollout(
    model,
    cond: Cond,
    x: Tensor,
    sigmas: Tensor,
    step="dance_sde",
    noise_levels=None,
    *,
    generator=None,
    process_reward: Callable,
    reward_grad_scale: float,
    steps=None,
    keep_x0: bool = False,
) -> GuidedBatchRollout:
    g = guided_rollout(
        model,
        cond,
        x,
        sigmas,
        process_reward,
        reward_grad_scale,
        step,
        noise_levels,
        generator=generator,
        steps=steps or None,
    )
    return _as(GuidedBatchRollout, g.rollout, process=g.process)


def make_rollout(
    cfg, needs: tuple[str, ...], base: Callable = rollout, *, model=None, process_reward: Callable | None = None
) -> Callable:
    """The trainer's rollout function for ``cfg`` and the credit inputs ``needs``."""
    s, o = cfg.sample, cfg.credit.options
    if "tree" in needs:
        relative = s.window.kind != "all"
        return partial(
            tree_batch_rollout,
            splits=tuple(o.splits),
            branch=tuple(o.branch),
            relative=relative,
            depth_noise=o.depth_noise,
            branch_corr=o.branch_corr,
        )
    if "process" in needs:
        if process_reward is None:
            raise ValueError("credit 'euphonium' needs a process reward (credit.options.process_reward or the reward).")
        check_process_reward(process_reward)
        pr = x0_reward_process(process_reward, model.decode)
        steps = list(o.reward_grad_steps)
        return partial(guided_batch_rollout, process_reward=pr, reward_grad_scale=o.reward_grad_scale, steps=steps)
    fn = partial(shared_prefix_rollout, base=base) if s.share_prefix else base
    # the ladder reuses each state's sampling velocity (x0_preds) for its completion's first step
    return partial(fn, keep_x0=True) if "ladder" in needs and base is rollout else fn
