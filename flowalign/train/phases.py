"""The phases of one training iteration: SAMPLE (rollouts + rewards + the scheme's extra inputs),
CREDIT (rewards gathered over ranks -> advantages [B, T], each rank keeps its rows) and UPDATE
(inner epochs over (micro-batch, trained step): the objective's unit, accumulate, clip, step, EMA).

All randomness is a function of (seed, iteration, global sample index): the initial and SDE noise of
a sample, the prompts and the SDE window are the same for any number of ranks, and a resumed run
replays exactly. A non-finite reward masks its rows (all rows: the iteration is skipped) and a
non-finite loss or gradient skips the optimizer step on every rank; both are counted.
"""

from __future__ import annotations

import json
import math
import time

import torch
from torch import Tensor

from ..sampling.schedule import noise_table
from ..sampling.windows import window_kind
from ..types import Cond, Rollout
from .collect import CollectContext, Collected, collect, tree_credit_batch
from .data import generators, group_batch, sample_seed
from .distributed import zero_loss
from .evaluation import generate
from .families import batch_sources, with_sources
from .faults import check_weights, score
from .objectives import UnitInputs, objective_kind
from .records import Credit, Run, Samples
from .rollouts import whole_group_batch
from .scores import cat_scores


def progress(run: Run, **kw):
    from tqdm import tqdm

    return tqdm(leave=False, disable=not (run.acc.is_main_process and run.cfg.log.progress), dynamic_ncols=True, **kw)


def step_mask(cfg, iteration: int) -> Tensor:
    """[T] bool: the stochastic (trained) steps of ``iteration``; the same on every rank."""
    w = cfg.sample.window
    seed = sample_seed(cfg.train.seed, iteration, -1)
    return window_kind(w.kind).mask(cfg.sample.num_steps, iteration, seed, w.options)


def layout(run: Run, it: int) -> tuple[list[int], list[int], list[int]]:
    """(prompt index, group id, global sample index) of this rank's rows: trees and shared prefixes
    need whole groups per batch."""
    cfg, d, rank = run.cfg, run.d, run.acc.process_index
    whole = "tree" in run.needs or (cfg.sample.share_prefix and d.images_per_rank % cfg.sample.group_size == 0)
    fn = whole_group_batch if whole else group_batch
    pidx, gids = fn(
        len(run.prompts), cfg.sample.group_size, d.images_per_rank, run.acc.num_processes, rank, cfg.train.seed, it
    )
    return pidx, gids, [rank * d.images_per_rank + i for i in range(d.images_per_rank)]


def sample_batch(run: Run, it: int, b: int, rows: tuple, levels: Tensor, mask_t: Tensor):
    """One sampling batch: rollouts, rewards and the scheme's extra inputs (+ their seconds)."""
    cfg, model = run.cfg, run.model
    bs = cfg.sample.batch_size
    pidx, gids, gidx = (r[b * bs : (b + 1) * bs] for r in rows)
    texts = [run.prompts.prompts[i] for i in pidx]
    gens = generators(cfg.train.seed, it, gidx, model.device)
    init = generators(cfg.train.seed, it, [-1 - g for g in gids], model.device) if cfg.sample.same_noise else None
    sources = batch_sources(model, run.prompts, pidx, cfg)  # None unless the model edits source images
    cond, ro, images = generate(
        model,
        texts,
        cfg,
        gens,
        num_steps=cfg.sample.num_steps,
        guidance_scale=cfg.sample.guidance_scale,
        noise_levels=levels,
        rollout_fn=run.roll,
        step=cfg.sample.step,
        init_gens=init,
        images=sources,
    )
    tr, meta = time.time(), with_sources(run.prompts.columns(pidx), sources)
    scores = score(run, images, texts, meta)
    tc = time.time()
    batch_id = run.acc.process_index * run.d.batches_per_rank + b
    ctx = CollectContext(cfg, model, run.reward_fn, it, mask_t, batch_id, run.ladder, meta)
    col = collect([n for n in run.needs if n != "tree"], ctx, cond, ro, images, texts, scores)
    return cond, ro, scores, col, tc - tr, time.time() - tc


def sample(run: Run, it: int) -> Samples:
    """SAMPLE: this rank's rollouts of the iteration, scored, with the scheme's extra inputs."""
    cfg, model = run.cfg, run.model
    t0, nfe0 = time.time(), model.nfe
    mask_t = step_mask(cfg, it)
    table = torch.tensor(cfg.sample.noise_levels) if cfg.sample.noise_levels else cfg.sample.noise_level
    levels = noise_table(cfg.sample.num_steps, table, mask_t)
    rows = layout(run, it)
    if run.ladder is not None:
        run.ladder.clear_cache()  # completions depend on the weights
    out, t_reward, t_collect = [], 0.0, 0.0
    desc = f"it {it + 1}/{cfg.train.iterations} sample"
    for b in progress(run, iterable=range(run.d.batches_per_rank), desc=desc):
        *parts, dt_reward, dt_collect = sample_batch(run, it, b, rows, levels, mask_t)
        out.append(parts)
        t_reward, t_collect = t_reward + dt_reward, t_collect + dt_collect
    conds, rolls, scores, cols = (list(x) for x in zip(*out))
    r0 = rolls[0]
    ro = Rollout(
        latents=torch.cat([r.latents for r in rolls]),
        log_probs=torch.cat([r.log_probs for r in rolls]),
        sigmas=r0.sigmas,
        noise_levels=r0.noise_levels,
        step=r0.step,
    )
    times = {"sample": time.time() - t0 - t_reward - t_collect, "reward": t_reward, "collect": t_collect}
    nfe = int(run.acc.reduce(torch.tensor([float(model.nfe - nfe0)], device=run.acc.device), "sum"))
    run.state.nfe += nfe
    return Samples(
        mask_t, *rows, Cond.cat(conds), ro, rolls, scores, cat_scores(scores), Collected.cat(cols), nfe, times
    )


def gather(run: Run, s: Samples) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Rewards, validity, group / sample / prompt ids and the scheme's extras of every rank's rows."""
    acc, dev, sc = run.acc, run.acc.device, s.scores
    reward = torch.where(sc.valid, sc.total, torch.zeros_like(sc.total))
    items = (
        ("reward", reward),
        ("valid", sc.valid.long()),
        ("group", torch.tensor(s.gids)),
        ("index", torch.tensor(s.gidx)),
        ("prompt", torch.tensor(s.pidx)),
    )
    g = {k: acc.gather(torch.as_tensor(v).to(dev)).cpu() for k, v in items}
    ex = {
        k: acc.gather(v.to(dev).long() if v.dtype == torch.bool else v.to(dev)).cpu()  # (gloo gathers no bool)
        for k, v in s.collected.extras.items()
    }
    return g, ex


def credit(run: Run, it: int, s: Samples) -> Credit:
    """CREDIT: tree credit per batch of trees, then rewards gathered over ranks -> advantages [B, T]."""
    if "tree" in run.needs:  # local to a tree: computed on this rank's trees, then gathered like the rewards
        s.collected = Collected.cat([tree_credit_batch(run.cfg, it, r, sc) for r, sc in zip(s.batches, s.batch_scores)])
    s.scores.valid = s.scores.valid & s.collected.ok  # a non-finite credit extra masks its row like its reward
    g, ex = gather(run, s)
    n_all, valid, t = g["reward"].shape[0], g["valid"].bool(), run.cfg.sample.num_steps
    run.state.nonfinite_reward_rows += int((~valid).sum())
    adv, mask, stats, kl_w = torch.zeros(n_all, t), torch.zeros(n_all, t, dtype=torch.bool), {}, None
    if valid.any():
        sub = run.credit_fn(g["reward"][valid], g["group"][valid], s.mask_t, **{k: v[valid] for k, v in ex.items()})
        adv[valid], mask[valid], stats = sub.advantages, sub.mask, sub.stats
        if sub.kl_weight is not None:  # a per-row KL weight (GARDO's gate): 0 on invalid rows
            kl_w = torch.zeros(n_all)
            kl_w[valid] = sub.kl_weight.float()
    else:
        run.state.skipped_iterations += 1
    if run.acc.is_main_process and run.cfg.log.credit_jsonl:
        row = {"iteration": it, **{k: v.tolist() for k, v in {**g, **ex}.items()}}
        with open(run.run_dir / "credit.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({**row, "advantages": adv.tolist(), "mask": mask.tolist()}) + "\n")
    per = run.d.images_per_rank
    mine = slice(run.acc.process_index * per, (run.acc.process_index + 1) * per)
    return Credit(g, valid, adv[mine], mask[mine], stats, None if kl_w is None else kl_w[mine])


def optimizer_step(run: Run, bad: int, norms: list[float]) -> None:
    """Clip, then step (and update the EMA) unless any rank saw a non-finite loss or gradient."""
    acc, state = run.acc, run.state
    any_bad = float(acc.reduce(torch.tensor([float(bad)], device=acc.device), "sum")) > 0
    norm = acc.clip_grad_norm_(run.params, run.cfg.optim.max_grad_norm or float("inf"))
    norm = float(norm) if norm is not None else 0.0
    if any_bad or not math.isfinite(norm):
        state.skipped_steps += 1
    else:
        run.optimizer.step()
        check_weights(run.params)
        if run.ema is not None:
            run.ema.update(state.optimizer_step)
        state.optimizer_step += 1
        norms.append(norm)
    run.optimizer.zero_grad(set_to_none=True)


def micro_batches(run: Run, it: int, epoch: int):
    """This rank's rows of each micro-batch of an inner epoch, in a seeded shuffled order."""
    d, bs, rank = run.d, run.cfg.sample.batch_size, run.acc.process_index
    gen = torch.Generator().manual_seed(sample_seed(run.cfg.train.seed, it, -2 - epoch - 1000 * rank))
    order = torch.randperm(d.images_per_rank, generator=gen)
    return [order[b * bs : (b + 1) * bs] for b in range(d.batches_per_rank)]


def update(run: Run, it: int, s: Samples, c: Credit) -> dict:
    """UPDATE: inner epochs over (micro-batch, trained step) units of the objective."""
    cfg, acc = run.cfg, run.acc
    t1, sums, count, bad, norms = time.time(), {}, 0, 0, []
    steps = [j for j in range(cfg.sample.num_steps) if s.mask_t[j]] if c.valid.any() else []
    total = run.d.batches_per_rank * cfg.train.inner_epochs * len(steps)
    pbar = progress(run, total=total, desc=f"it {it + 1}/{cfg.train.iterations} train")
    inputs = UnitInputs(
        cfg,
        run.model,
        s.cond,
        s.rollout,
        steps,
        it,
        s.gidx,
        run.hooks["loss_fn"],
        run.hooks["ref_model"],
        reward_fn=run.reward_fn,  # reward-gradient / set-level objectives score with the training reward
        kl_weight=c.kl_weight,  # GARDO's KL gate
        state=run.objective_state,  # what an objective keeps across iterations (GARDO's reference snapshot)
    )
    unit = objective_kind(cfg.objective.kind).build(inputs, cfg.objective.options) if steps else None
    for epoch in range(cfg.train.inner_epochs if steps else 0):
        for rows in micro_batches(run, it, epoch):
            a_mb, m_mb = c.advantages[rows], c.mask[rows]
            for j in steps:
                with acc.accumulate(run.wrapped):
                    lo = unit(rows, j, a_mb[:, j], m_mb[:, j])
                    finite = bool(torch.isfinite(lo.loss))
                    acc.backward(lo.loss if finite else zero_loss(run.params))
                    bad += 0 if finite else 1
                    for k, v in lo.stats.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    count += 1
                    if acc.sync_gradients:
                        optimizer_step(run, bad, norms)
                        bad = 0
                pbar.update(1)
    pbar.close()
    stats = {f"train/{k}": v / max(count, 1) for k, v in sums.items()}
    if norms:
        stats["train/grad_norm"] = sum(norms) / len(norms)
    return {**stats, "time/train": time.time() - t1}
