"""The extra inputs of the credit schemes, collected batch by batch in the SAMPLE phase (and the tree
credit, computed per batch of trees in the CREDIT phase).

``COLLECT`` maps each name a credit function lists in ``fn.needs`` to a collector
``fn(ctx, cond, rollout, images, prompts, scores) -> Collected`` (``ctx``: model, reward, config,
iteration, trained-step mask, sampling-batch id, reward ladder). ``Collected.extras`` holds
``[b, ...]`` tensors that the trainer concatenates over batches, gathers over ranks like the rewards
and passes to the credit function as keywords; rows whose extras are not finite are masked like rows
with a non-finite reward (``Collected.ok``).

* ``ladder`` (DenseGRPO, TP-GRPO): ``RewardLadder`` rewards [b, T+1] of the states the trained steps
  read (``dense.ladder_steps``), ODE-completed (``credit.ladder_steps`` / ``ladder_stride``; default
  all remaining steps, the papers' n = t). The ladder reuses each state's sampling velocity, shares
  completions of ODE steps and of identical states (a same-noise group's ODE prefix), and its cache is
  cleared every iteration (the weights change). Its NaN entries are states nobody reads.
* ``balance_ids`` (TP-GRPO): the global sampling-batch id of each row (App. D balances turning points
  within a sampling mini-batch).
* ``granular`` (G^2RPO): [b, J] rewards of the state after the single SDE step completed on each
  stride's grid (``granular.granular_grid``); stride 1 is the sampled image itself.
* ``process`` (Euphonium): [b, T] process scores recorded by the guided rollout.
* ``critic_states`` (AC-Flow): the critic's inputs [b, T+1, F + D + 1], every state pooled, the
  pooled prompt embedding and the state's sigma (``credit.ac_flow.critic_states``).
* ``auxiliary`` / ``features`` (GARDO): the auxiliary rewards' scores [b, K] and the images
  average-pooled to a few pixels a side [b, F] (``credit.gardo``).
* ``tree`` (BranchGRPO / TreeGRPO): the tree credit is local to a tree (per-depth / per-tree
  normalisation), so the CREDIT phase runs it on each batch's trees (``tree_credit_batch``) before
  the rewards are gathered; it comes back as per-row advantages and masks [b, T]
  (``tree.tree_to_batch``: each trained edge once) that ``tree_credit`` passes through. A tree with a
  non-finite leaf reward is masked whole.

``make_credit`` / ``credit_options`` turn ``cfg.credit`` into the credit function and its keywords,
``make_ladder`` builds the ladder and ``calibrate_psi`` runs DenseGRPO's Algorithm 1 for the sampler.
Departure (G^2RPO): one reward total per stride; several reward models are not z-scored separately.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor

from ..credit import CREDIT
from ..credit.dense import calibrate_noise_table, flow_sde_psi, ladder_gain_measure, ladder_steps, psi_to_noise_levels
from ..credit.granular import _ode_on, granular_grid
from ..credit.tree import slide_depths, tree_to_batch
from ..types import Advantages, Cond, Rollout, Scores
from .scores import as_scores


@dataclass
class Collected:
    extras: dict[str, Tensor] = field(default_factory=dict)  # name -> [b, ...] credit-function keyword inputs
    ok: Tensor | None = None  # [b] bool rows whose extras are finite
    stats: dict[str, float] = field(default_factory=dict)  # diagnostics (logged as collect/<name>)

    @staticmethod
    def cat(parts: list[Collected]) -> Collected:
        keys = parts[0].extras.keys()
        stats = {k: sum(p.stats.get(k, 0.0) for p in parts) / len(parts) for k in parts[0].stats}
        return Collected(
            {k: torch.cat([p.extras[k] for p in parts]) for k in keys}, torch.cat([p.ok for p in parts]), stats
        )


@dataclass
class CollectContext:
    cfg: Any  # Config
    model: Any  # FlowModel
    reward_fn: Callable  # (images, prompts, **metadata) -> Scores | Tensor[B]
    iteration: int
    mask: Tensor  # [T] bool trained steps of the iteration
    batch_id: int = 0  # global sampling-batch index (rank * batches_per_rank + b)
    ladder: Any = None  # RewardLadder (``ladder`` need)
    meta: dict[str, list] = field(default_factory=dict)  # the batch's prompt metadata columns


def _reward(ctx: CollectContext, images: Tensor, prompts: list[str]) -> Tensor:
    with torch.no_grad():
        sc = as_scores(ctx.reward_fn(images, prompts, **ctx.meta), len(prompts))
    return torch.where(sc.valid, sc.total, torch.full_like(sc.total, float("nan")))


def collect_ladder(ctx, cond: Cond, ro: Rollout, images: Tensor, prompts: list[str], scores: Scores) -> Collected:
    steps = ladder_steps(ctx.mask)
    out = ctx.ladder(ro, cond, steps=steps, prompts=prompts, **ctx.meta)
    ok = torch.isfinite(out.rewards[:, steps]).all(1)
    return Collected(
        {"ladder": out.rewards},
        ok,
        {"ladder_nfe": float(out.nfe), "ladder_naive_nfe": float(out.naive_nfe), "ladder_scored": float(out.scored)},
    )


def collect_balance_ids(ctx, cond, ro: Rollout, images, prompts, scores) -> Collected:
    b = ro.latents.shape[0]
    return Collected({"balance_ids": torch.full((b,), ctx.batch_id, dtype=torch.long)}, torch.ones(b, dtype=torch.bool))


def collect_granular(ctx, cond: Cond, ro: Rollout, images: Tensor, prompts: list[str], scores: Scores) -> Collected:
    c, t = ctx.cfg.credit.options, ro.num_steps
    trained = torch.nonzero(ctx.mask).flatten().tolist()
    if len(trained) != 1 or bool((ro.noise_levels[trained[0] + 1 :] > 0).any()):
        raise ValueError(
            f"g2rpo needs exactly one SDE (trained) step per iteration, got steps {trained}; "
            f"use sample.window=random|fixed|progressive with sample.window_size=1."
        )
    j, vals = trained[0], []
    for s in c.strides:
        grid = granular_grid(t, j + 1, int(s), c.completion)
        if grid == list(range(j + 1, t + 1)):  # the sampled image is this completion
            vals.append(torch.where(scores.valid, scores.total, torch.full_like(scores.total, float("nan"))))
            continue
        with torch.no_grad():
            x = _ode_on(ctx.model, cond, ro.latents[:, j + 1], ro.sigmas, grid)
            vals.append(_reward(ctx, ctx.model.decode(x), prompts))
    g = torch.stack(vals, 1)
    return Collected({"granular": g}, torch.isfinite(g).all(1))


def collect_process(ctx, cond, ro: Rollout, images, prompts, scores) -> Collected:
    p = getattr(ro, "process", None)
    if p is None:
        raise ValueError("credit 'euphonium' needs the guided rollout (it records the process scores).")
    return Collected({"process": p.float()}, torch.isfinite(p).all(1))


def collect_critic_states(ctx, cond: Cond, ro: Rollout, images, prompts, scores) -> Collected:
    """AC-Flow's critic inputs [b, T+1, F + D + 1]: every state pooled, the pooled prompt, the sigma."""
    from ..credit.ac_flow import critic_states, pool_states, pooled_prompt

    x = critic_states(pool_states(ro.latents), pooled_prompt(cond.embeds), ro.sigmas.cpu())
    return Collected({"critic_states": x}, torch.isfinite(x).flatten(1).all(1))


def collect_auxiliary(ctx, cond, ro: Rollout, images: Tensor, prompts: list[str], scores: Scores) -> Collected:
    """GARDO's uncertainty source: the rewards named in ``credit.options.auxiliary`` [b, K], taken from the
    training reward's components when it computes them, else scored here (``credit.gardo.auxiliary_reward``)."""
    from ..credit.gardo import auxiliary_reward

    cols = []
    for name in ctx.cfg.credit.options.auxiliary:
        if name in scores.components:
            cols.append(scores.components[name].float().cpu())
            continue
        with torch.no_grad():
            r = auxiliary_reward(name, str(images.device))(images, prompts, **ctx.meta)
        cols.append(torch.as_tensor(r).detach().float().reshape(-1).cpu())
    aux = torch.stack(cols, 1)
    return Collected({"auxiliary": aux}, torch.isfinite(aux).all(1))


def collect_features(ctx, cond, ro: Rollout, images: Tensor, prompts, scores) -> Collected:
    """GARDO's diversity features: the images average-pooled to ``credit.options.feature_size`` a side [b, F]."""
    from ..rewards.diversity import pixel_features

    f = pixel_features(images, ctx.cfg.credit.options.feature_size).cpu()
    return Collected({"features": f}, torch.isfinite(f).all(1))


def tree_credit_batch(cfg, iteration: int, ro: Rollout, scores: Scores) -> Collected:
    """The tree credit of one sampling batch's trees (run by the CREDIT phase: it is local to a tree,
    per-depth / per-tree normalisation) as per-row advantages and masks [b, T]."""
    tree, scheme = getattr(ro, "tree", None), CREDIT[cfg.credit.kind]
    if tree is None:
        raise ValueError(f"credit {cfg.credit.kind!r} needs tree rollouts.")
    leaf_root = tree.root[tree.leaves]  # [L] = rows
    bad_roots = torch.unique(leaf_root[~(scores.valid & torch.isfinite(scores.total))])
    ok = ~torch.isin(leaf_root, bad_roots)
    r = torch.where(ok, scores.total, torch.zeros_like(scores.total))
    opts = credit_options(cfg)
    if opts.get("prune_depths") and cfg.credit.options.prune_slide_every > 0:
        n_child = torch.bincount(tree.parent[tree.parent >= 0], minlength=tree.num_nodes)
        last_split = int(tree.step[n_child > 1].max()) if bool((n_child > 1).any()) else 0
        every = cfg.credit.options.prune_slide_every
        opts["prune_depths"] = slide_depths(opts["prune_depths"], iteration, every, last_split + 1)
    tadv = scheme.fn(tree, r, **opts)
    tb = tree_to_batch(tree, tadv)
    mask = tb.advantages.mask & ok[:, None]
    adv = torch.where(mask, tb.advantages.advantages, torch.zeros_like(tb.advantages.advantages))
    return Collected({"tree_advantages": adv, "tree_mask": mask}, ok, {k: float(v) for k, v in tadv.stats.items()})


COLLECT: dict[str, Callable[..., Collected]] = {
    "ladder": collect_ladder,
    "balance_ids": collect_balance_ids,
    "granular": collect_granular,
    "process": collect_process,
    "critic_states": collect_critic_states,
    "auxiliary": collect_auxiliary,
    "features": collect_features,
}


def collect(
    needs, ctx: CollectContext, cond: Cond, ro: Rollout, images: Tensor, prompts: list[str], scores: Scores
) -> Collected:
    """Run every collector in ``needs`` on one sampling batch and merge their outputs."""
    b = ro.latents.shape[0]
    out = Collected({}, torch.ones(b, dtype=torch.bool), {})
    for name in needs:
        if name not in COLLECT:
            raise ValueError(f"no collector for credit input {name!r}; known: {sorted(COLLECT)}.")
        part = COLLECT[name](ctx, cond, ro, images, prompts, scores)
        out.extras.update(part.extras)
        out.stats.update(part.stats)
        out.ok &= part.ok
    return out


def tree_credit(
    rewards: Tensor, group_ids: Tensor, step_mask: Tensor, *, tree_advantages: Tensor, tree_mask: Tensor, **_: Any
) -> Advantages:
    """Pass-through of the per-tree credit computed at sampling time (``collect_tree``) -> [B, T]."""
    mask = tree_mask.bool() & step_mask.bool().expand_as(tree_mask)
    adv = torch.where(mask, tree_advantages.float(), torch.zeros_like(tree_advantages, dtype=torch.float32))
    return Advantages(adv, mask, {"trained_pairs": float(mask.sum())})


tree_credit.needs = ("tree",)


def credit_options(cfg) -> dict[str, Any]:
    """``cfg.credit`` -> keywords of the configured credit function (normalisation + its own options)."""
    c = cfg.credit
    return dict(scale=c.scale, eps=c.eps, unbiased=c.unbiased, filter_zero_std=c.filter_zero_std, **c.options.kwargs())


def needs_of(fn: Callable) -> tuple[str, ...]:
    return tuple(getattr(getattr(fn, "func", fn), "needs", ()))


def make_credit(cfg, credit_fn: Callable | None = None) -> tuple[Callable, tuple[str, ...]]:
    """(credit function with the config's keywords bound, the inputs it needs). A custom ``credit_fn``
    names its inputs in ``credit_fn.needs``; a tree scheme's credit is computed per batch
    (``tree_credit_batch``) and passed through."""
    if credit_fn is not None:
        return credit_fn, needs_of(credit_fn)
    scheme = CREDIT[cfg.credit.kind]
    if "tree" in scheme.needs:
        return tree_credit, ("tree",)
    if scheme.build is not None:  # a stateful scheme (AC-Flow's critic): one instance per run
        return scheme.build(cfg, credit_options(cfg)), scheme.needs
    return partial(scheme.fn, **credit_options(cfg)), scheme.needs


def make_ladder(cfg, model, reward_fn: Callable):
    from ..rewards.ladder import RewardLadder

    c = cfg.credit.options
    return RewardLadder(
        model,
        reward_fn,
        num_steps=c.ladder_steps or None,
        stride=c.ladder_stride or None,
        max_batch=max(64, cfg.sample.batch_size),
    )


@torch.no_grad()
def calibrate_psi(model, reward_fn: Callable, prompts, cfg, generator: torch.Generator):
    """DenseGRPO Algorithm 1 on ``credit.calibrate_samples`` training prompts: the psi(t) table
    starts at the sampler's noise (``sample.noise_table`` or ``noise_level``), moves by eps2 per
    round on every step but the last, and comes back as noise levels for ``sample.step``
    -> (levels [T], ``dense.Calibration``)."""
    from .families import batch_sources, frames_kw, source_kw, with_sources

    s, c = cfg.sample, cfg.credit.options
    n, res, t = c.calibrate_samples, cfg.model.resolution, s.num_steps
    idx = torch.randint(len(prompts), (n,), generator=generator).tolist()
    texts = [prompts.prompts[i] for i in idx]
    sources = batch_sources(model, prompts, idx, cfg)  # editing models: the prompts' source images
    neg = cfg.model.negative_prompt or None
    cond = model.encode(texts, guidance_scale=s.guidance_scale, negative_prompts=neg, **source_kw(model, sources))
    x = model.initial_noise(n, res, res, generator=generator, **frames_kw(cfg))
    sigmas = model.sigmas(t, res, res)
    meta = with_sources({}, sources)
    levels0 = torch.tensor(s.noise_levels, dtype=torch.float32) if s.noise_levels else torch.full((t,), s.noise_level)
    psi0 = levels0 if s.step == "dance_sde" else levels0 * flow_sde_psi(1.0, sigmas)
    ladder = make_ladder(cfg, model, reward_fn)
    measure = ladder_gain_measure(
        model, cond, x, sigmas, lambda r, cd: ladder(r, cd, prompts=texts, **meta), step=s.step, generator=generator
    )
    active = torch.ones(t, dtype=torch.bool)
    active[-1] = t == 1
    cal = calibrate_noise_table(
        measure, psi0, iterations=c.calibrate_iterations, eps1=c.calibrate_eps1, eps2=c.calibrate_eps2, steps=active
    )
    return psi_to_noise_levels(cal.psi, sigmas, s.step), cal
