"""Flow-GRPO trainer (Liu et al. 2025, arXiv 2505.05470) on accelerate: one explicit loop.

Per iteration: SAMPLE (SDE rollouts with per-step log-probs; K images per prompt spread over ranks)
-> SCORE (decode, reward) -> CREDIT (rewards gathered over ranks, group-relative advantages, each
rank keeps its rows) -> TRAIN (inner epochs over (micro-batch, step): the objective's unit, by default
recomputed log-prob, clipped ratio, closed-form KL to the adapter-off reference, or DiffusionNFT's
forward-process loss (``objectives.OBJECTIVES``); accumulate, clip, step, EMA) -> LOG / EVAL /
CHECKPOINT. The loop takes functions (reward_fn, credit_fn, loss_fn, rollout_fn), not subclasses.

Credit / exploration variants (issue 6; credit/__init__.py): the credit function's ``needs`` pick the
rollout (``credit.rollouts.make_rollout``: shared ODE prefix, one tree per group laid out as root->leaf
rows, Euphonium's guided SDE) and the per-batch extra inputs collected after scoring
(``credit.collect.COLLECT``: reward ladders, stride completions, process scores, per-tree
advantages). Extras are gathered over ranks like the rewards; the TRAIN phase is the same for all.
Sampler NFEs (rollouts, completions and psi(t) calibration; velocity evaluations per row, CFG once;
training and eval forwards excluded) are summed over ranks into ``state.nfe`` (log ``nfe/total``),
and ``train.max_nfe`` stops a run at an NFE budget.

Departures from flow_grpo's ``scripts/train_sd3.py``:
* zero-variance groups are masked, not dropped, so every micro-batch keeps the sampling batch size;
* all randomness is a function of (seed, iteration, global sample index): the initial noise and SDE
  noise of a sample, the prompts and the SDE window are the same for any number of ranks (flow_grpo
  draws the window per device), and a resumed run replays exactly;
* rewards are computed after each batch on the same thread (flow_grpo overlaps them in a pool);
* the whole state (weights, optimizer, EMA, RNG, iteration) is checkpointed for exact resume;
* a non-finite reward masks its rows (all rows: the iteration is skipped) and a non-finite loss or
  gradient skips the optimizer step on every rank; both are counted and logged.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import checkpoint as ckpt
from .config import Config, derived, to_dict
from .credit.checks import check_credit_config
from .credit.collect import CollectContext, Collected, calibrate_psi, collect, make_credit, make_ladder
from .credit.rollouts import make_rollout, whole_group_batch
from .credit.tree import geometric_window
from .data import PromptSet, group_batch, sample_seed
from .ema import EMA
from .losses import flow_grpo_loss
from .objectives import OBJECTIVES, UnitInputs, check_objective
from .sampling.rollout import rollout
from .sampling.schedule import noise_table, progressive_window, random_window, window_mask
from .tracking import RunLogger
from .train_utils import (
    Prepared,
    as_scores,
    cat_scores,
    evaluate,
    finish,
    generate,
    generators,  # noqa: F401
    make_accelerator,
    zero_loss,
)
from .types import Cond, Rollout

_generators = generators  # (old name, used by benchmarks)


@dataclass
class TrainState:
    iteration: int = 0  # next iteration to run
    optimizer_step: int = 0  # optimizer steps taken
    skipped_steps: int = 0  # optimizer steps skipped for a non-finite loss or gradient
    skipped_iterations: int = 0  # iterations skipped because no reward was finite
    nonfinite_reward_rows: int = 0  # samples whose reward (or credit extra) was NaN/inf (masked out of the loss)
    nfe: int = 0  # sampler velocity evaluations so far, all ranks (rollouts + completions + calibration)


@dataclass
class TrainResult:
    run_dir: Path
    state: TrainState
    history: list[dict] = field(default_factory=list)  # per-iteration logged scalars (main process)
    evals: list[dict] = field(default_factory=list)  # per-eval scalars (main process)
    model: Any = None  # the trained FlowModel (its transformer holds the live, non-EMA weights)

    @property
    def nfe(self) -> int:  # sampler NFEs spent, all ranks (= state.nfe)
        return self.state.nfe


def step_mask(cfg: Config, iteration: int) -> Tensor:
    """[T] bool: the stochastic (trained) steps of ``iteration``; the same on every rank."""
    s = cfg.sample
    if s.window == "all":
        return window_mask(s.num_steps, max(1, int(s.num_steps * s.timestep_fraction)))
    if s.window == "fixed":
        return window_mask(s.num_steps, s.window_size, s.window_range[0])
    if s.window == "random":
        import random

        lo, hi = (list(s.window_range) + [s.num_steps])[:2]
        return random_window(
            s.num_steps, s.window_size, lo, hi, random.Random(sample_seed(cfg.train.seed, iteration, -1))
        )
    if s.window == "geometric":  # TreeGRPO: start ~ truncated geometric(r)
        gen = torch.Generator().manual_seed(sample_seed(cfg.train.seed, iteration, -1))
        return geometric_window(s.num_steps, s.window_size, s.window_r, generator=gen)
    return progressive_window(s.num_steps, s.window_size, iteration, every=s.window_every, stride=s.window_stride)


def train(
    cfg: Config,
    model,
    reward_fn: Callable,
    prompts: PromptSet,
    *,
    eval_prompts: PromptSet | None = None,
    run_dir: str | Path,
    credit_fn: Callable | None = None,
    loss_fn: Callable = flow_grpo_loss,
    rollout_fn: Callable = rollout,
    resume: str | Path | None = None,
    accelerator=None,
    export_fn: Callable[[Path], None] | None = None,
    ref_model=None,
    eval_metrics: dict[str, Callable] | None = None,
    process_reward: Callable | None = None,
) -> TrainResult:
    """Run Flow-GRPO on ``model`` (a FlowModel whose trainable parameters are already set up).

    reward_fn(images [B,3,H,W], prompts, **metadata) -> Scores | Tensor[B]; credit_fn(rewards [N],
    group_ids [N], step_mask [T], **extras named in credit_fn.needs) -> Advantages (default: from
    cfg.credit, ``credit.collect.make_credit``);
    loss_fn(out, ref, old_log_prob, advantages, mask, dt, **cfg.loss) -> LossOut; rollout_fn as
    ``sampling.rollout.rollout``; export_fn(dir) writes the deployable weights (LoRA) under ``dir``;
    ref_model: the KL reference when ``model.reference()`` cannot provide it (full fine-tuning);
    eval_metrics: extra eval-only scores {log name: fn(images, prompts, **metadata)};
    process_reward: Euphonium's differentiable process reward (default: reward_fn)."""
    own_acc = accelerator is None
    acc = make_accelerator(cfg) if own_acc else accelerator
    check_credit_config(cfg)
    check_objective(cfg)
    d = derived(cfg, acc.num_processes)
    rank, world, main = acc.process_index, acc.num_processes, acc.is_main_process
    run_dir = Path(run_dir)
    acc.gradient_accumulation_steps = d.backward_per_step
    credit_fn, needs = make_credit(cfg, credit_fn)
    roll = make_rollout(
        cfg, needs, rollout_fn, model=model, process_reward=reward_fn if process_reward is None else process_reward
    )
    bare = model.transformer
    names = [n for n, p in bare.named_parameters() if p.requires_grad]
    params = [p for p in bare.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters; enable model.lora or full fine-tuning.")
    o, kind = cfg.optim, acc.distributed_type.value
    sharded = kind in ("FSDP", "DEEPSPEED")  # optimizer state (and FSDP weights) split over ranks
    if kind == "FSDP" and cfg.train.ema:
        raise ValueError("train.ema=true is not supported with FSDP (sharded parameters); set train.ema=false.")
    state, parts = TrainState(), {}
    if resume is not None:  # weights go into the bare module before wrapping (FSDP then shards them)
        parts, scalars = ckpt.load(resume, rank)
        with torch.no_grad():
            for n, p in zip(names, params):
                p.copy_(parts["trainable"][n])
        state = TrainState(**{k: scalars.get(k, v) for k, v in dataclasses.asdict(state).items()})
    if kind == "DEEPSPEED":  # no dataloader: tell DeepSpeed the micro-batch and the clipping
        ds = acc.state.deepspeed_plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = cfg.sample.batch_size
        if ds.get("gradient_clipping", "auto") == "auto":
            ds["gradient_clipping"] = o.max_grad_norm
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps)
    wrapped, optimizer = acc.prepare(bare, optimizer)
    model.transformer = Prepared(wrapped, bare, always_wrapped=sharded)
    ema = EMA(params, cfg.train.ema_decay, cfg.train.ema_every) if cfg.train.ema else None
    if resume is not None:
        optimizer.load_state_dict(parts["optimizer"])
        if ema is not None and "ema" in parts:
            ema.load_state_dict(parts["ema"])
        ckpt.set_rng_state(parts["rng"])
    if cfg.credit.calibrate_iterations > 0 and resume is None:  # DenseGRPO Alg. 1, once; kept in the saved config
        nfe0 = model.nfe
        levels, cal = calibrate_psi(
            model, reward_fn, prompts, cfg, torch.Generator().manual_seed(sample_seed(cfg.train.seed, -1, -3))
        )
        cfg = copy.deepcopy(cfg)
        cfg.sample.noise_table, cfg.credit.calibrate_iterations = [float(v) for v in levels], 0
        state.nfe += int(acc.reduce(torch.tensor([float(model.nfe - nfe0)], device=acc.device), "sum"))
        acc.print(f"psi(t) calibrated in {cal.imbalance.shape[0]} rounds: noise table {cfg.sample.noise_table}")
    ladder = make_ladder(cfg, model, reward_fn) if "ladder" in needs else None
    log = RunLogger(run_dir, cfg, main)
    result = TrainResult(run_dir, state, model=model)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=1))
        acc.print(f"flowalign train: {cfg.preset} -> {run_dir}\n{d.table()}")
    bar = partial(__import__("tqdm").tqdm, leave=False, disable=not (main and cfg.log.progress), dynamic_ncols=True)
    swap = ema.swapped if ema is not None else contextlib.nullcontext

    evals_on, next_eval_nfe = cfg.eval.every > 0 or cfg.eval.every_nfe > 0, [0]

    def eval_due(it: int) -> bool:  # every eval.every iterations and/or each time eval.every_nfe more NFEs are spent
        by_nfe = cfg.eval.every_nfe > 0 and state.nfe >= next_eval_nfe[0]
        if by_nfe:
            next_eval_nfe[0] = (state.nfe // cfg.eval.every_nfe + 1) * cfg.eval.every_nfe
        return (cfg.eval.every > 0 and it % cfg.eval.every == 0) or by_nfe

    def run_eval(it: int) -> None:
        if eval_prompts is None or not evals_on:
            return
        t = time.time()
        with swap():
            stats, grid = evaluate(model, reward_fn, eval_prompts, cfg, acc, rollout_fn, eval_metrics)
        stats["time/eval"] = time.time() - t
        log.scalars(stats, it)
        if grid is not None:
            log.image("eval/samples", grid, it)
        result.evals.append({"iteration": it, "nfe": state.nfe, **stats})
        acc.print(f"eval @ {it}: " + "  ".join(f"{k[5:]}={v:.4f}" for k, v in stats.items() if k.startswith("eval/")))

    def save(it: int) -> None:
        weights = dict(zip(names, params))
        if kind == "FSDP":  # collective: the full weights on rank 0
            full = acc.get_state_dict(wrapped)
            weights = {n: full[n] for n in names} if main else {}
        parts = {"trainable": weights}
        if not sharded:
            parts["optimizer"] = optimizer.state_dict()
        if ema is not None:
            parts["ema"] = ema.state_dict()
        rank_parts = {"optimizer": optimizer.state_dict()} if sharded else None

        def export(directory: Path) -> None:
            if export_fn is not None:
                with swap():
                    export_fn(directory)

        path = ckpt.save(
            run_dir,
            it,
            parts,
            {**dataclasses.asdict(state), "config": to_dict(cfg)},
            rank=rank,
            rank_parts=rank_parts,
            barrier=acc.wait_for_everyone,
            keep_last=cfg.train.keep_last,
            export=export,
        )
        acc.print(f"saved {path}", flush=True)

    t_start, T, bs = time.time(), cfg.sample.num_steps, cfg.sample.batch_size
    try:
        for it in range(state.iteration, cfg.train.iterations):
            if eval_due(it):
                run_eval(it)
            # ---------------- SAMPLE + SCORE ----------------
            t0, nfe0 = time.time(), model.nfe
            mask_t = step_mask(cfg, it)
            levels = noise_table(
                T, torch.tensor(cfg.sample.noise_table) if cfg.sample.noise_table else cfg.sample.noise_level, mask_t
            )
            whole = "tree" in needs or (cfg.sample.share_prefix and d.images_per_rank % cfg.sample.group_size == 0)
            layout = whole_group_batch if whole else group_batch  # trees / shared prefixes: whole groups per batch
            pidx, gids = layout(len(prompts), cfg.sample.group_size, d.images_per_rank, world, rank, cfg.train.seed, it)
            gidx = [rank * d.images_per_rank + i for i in range(d.images_per_rank)]
            conds, rolls, scores, cols, t_reward, t_collect = [], [], [], [], 0.0, 0.0
            if ladder is not None:
                ladder.clear_cache()  # completions depend on the weights
            for b in bar(range(d.batches_per_rank), desc=f"it {it + 1}/{cfg.train.iterations} sample"):
                sl = slice(b * bs, (b + 1) * bs)
                texts = [prompts.prompts[i] for i in pidx[sl]]
                gens = generators(cfg.train.seed, it, gidx[sl], model.device)
                init = (
                    generators(cfg.train.seed, it, [-1 - g for g in gids[sl]], model.device)
                    if cfg.sample.same_noise
                    else None
                )  # one initial noise per group
                cond, ro, images = generate(
                    model,
                    texts,
                    cfg,
                    gens,
                    num_steps=T,
                    guidance_scale=cfg.sample.guidance_scale,
                    noise_levels=levels,
                    rollout_fn=roll,
                    step=cfg.sample.step,
                    init_gens=init,
                )
                tr, meta = time.time(), prompts.columns(pidx[sl])
                with torch.no_grad():
                    scores.append(as_scores(reward_fn(images, texts, **meta), len(texts)))
                tc = time.time()
                ctx = CollectContext(cfg, model, reward_fn, it, mask_t, rank * d.batches_per_rank + b, ladder, meta)
                cols.append(collect(needs, ctx, cond, ro, images, texts, scores[-1]))
                t_reward, t_collect = t_reward + tc - tr, t_collect + time.time() - tc
                conds.append(cond)
                rolls.append(ro)
            cond, r0 = Cond.cat(conds), rolls[0]
            ro = Rollout(
                latents=torch.cat([r.latents for r in rolls]),
                log_probs=torch.cat([r.log_probs for r in rolls]),
                sigmas=r0.sigmas,
                noise_levels=r0.noise_levels,
                step=r0.step,
            )
            col, sc = Collected.cat(cols), cat_scores(scores)
            sc.valid = sc.valid & col.ok  # a non-finite credit extra masks its row like a non-finite reward
            t_sample = time.time() - t0 - t_reward - t_collect
            nfe_it = int(acc.reduce(torch.tensor([float(model.nfe - nfe0)], device=acc.device), "sum"))
            state.nfe += nfe_it
            # ---------------- CREDIT (gathered over ranks) ----------------
            dev = acc.device
            g = {
                k: acc.gather(torch.as_tensor(v).to(dev)).cpu()
                for k, v in (
                    ("reward", torch.where(sc.valid, sc.total, torch.zeros_like(sc.total))),
                    ("valid", sc.valid.long()),
                    ("group", torch.tensor(gids)),
                    ("index", torch.tensor(gidx)),
                    ("prompt", torch.tensor(pidx)),
                )
            }
            ex = {
                k: acc.gather(v.to(dev).long() if v.dtype == torch.bool else v.to(dev)).cpu()
                for k, v in col.extras.items()
            }  # (gloo gathers no bool)
            n_all, valid = g["reward"].shape[0], g["valid"].bool()
            state.nonfinite_reward_rows += int((~valid).sum())
            adv = torch.zeros(n_all, T)
            mask = torch.zeros(n_all, T, dtype=torch.bool)
            credit_stats: dict[str, float] = {}
            if valid.any():
                sub = credit_fn(g["reward"][valid], g["group"][valid], mask_t, **{k: v[valid] for k, v in ex.items()})
                adv[valid], mask[valid], credit_stats = sub.advantages, sub.mask, sub.stats
            else:
                state.skipped_iterations += 1
            if main and cfg.log.credit_jsonl:
                with open(run_dir / "credit.jsonl", "a", encoding="utf-8") as f:
                    f.write(
                        json.dumps(
                            {
                                "iteration": it,
                                **{k: v.tolist() for k, v in {**g, **ex}.items()},
                                "advantages": adv.tolist(),
                                "mask": mask.tolist(),
                            }
                        )
                        + "\n"
                    )
            mine = slice(rank * d.images_per_rank, (rank + 1) * d.images_per_rank)
            adv, mask = adv[mine], mask[mine]
            # ---------------- TRAIN: inner epochs over (micro-batch, step) ----------------
            t1, sums, count, bad, norms = time.time(), {}, 0, 0, []
            steps = [j for j in range(T) if mask_t[j]] if valid.any() else []
            total_micro = d.batches_per_rank * cfg.train.inner_epochs * len(steps)
            pbar = bar(total=total_micro, desc=f"it {it + 1}/{cfg.train.iterations} train")
            inputs = UnitInputs(cfg, model, cond, ro, steps, it, gidx, loss_fn, ref_model)
            unit = OBJECTIVES[cfg.loss.objective](inputs) if steps else None
            for epoch in range(cfg.train.inner_epochs if steps else 0):
                order = torch.randperm(
                    d.images_per_rank,
                    generator=torch.Generator().manual_seed(sample_seed(cfg.train.seed, it, -2 - epoch - 1000 * rank)),
                )
                for b in range(d.batches_per_rank):
                    rows = order[b * bs : (b + 1) * bs]
                    a_mb, m_mb = adv[rows], mask[rows]
                    for j in steps:
                        with acc.accumulate(wrapped):
                            lo = unit(rows, j, a_mb[:, j], m_mb[:, j])
                            finite = bool(torch.isfinite(lo.loss))
                            acc.backward(lo.loss if finite else zero_loss(params))
                            bad += 0 if finite else 1
                            for k, v in lo.stats.items():
                                sums[k] = sums.get(k, 0.0) + float(v)
                            count += 1
                            if acc.sync_gradients:
                                any_bad = float(acc.reduce(torch.tensor([float(bad)], device=dev), "sum")) > 0
                                norm = acc.clip_grad_norm_(params, o.max_grad_norm or float("inf"))
                                norm, bad = float(norm) if norm is not None else 0.0, 0
                                if any_bad or not math.isfinite(norm):
                                    state.skipped_steps += 1
                                else:
                                    optimizer.step()
                                    if ema is not None:
                                        ema.update(state.optimizer_step)
                                    state.optimizer_step += 1
                                    norms.append(norm)
                                optimizer.zero_grad(set_to_none=True)
                        pbar.update(1)
            pbar.close()
            t_train = time.time() - t1
            # ---------------- LOG / CHECKPOINT ----------------
            state.iteration = it + 1
            stats = {f"train/{k}": v / max(count, 1) for k, v in sums.items()}
            if norms:
                stats["train/grad_norm"] = sum(norms) / len(norms)
            r_ok = g["reward"][valid]
            gsc = {k: acc.gather(v.to(dev)).cpu() for k, v in sc.components.items()}
            stats.update(
                {
                    "reward/total_mean": float(r_ok.mean()) if len(r_ok) else float("nan"),
                    "reward/total_std": float(r_ok.std()) if len(r_ok) > 1 else 0.0,
                    **{f"reward/{k}_mean": float(v[torch.isfinite(v)].mean()) for k, v in gsc.items()},
                    **{f"credit/{k}": float(v) for k, v in credit_stats.items()},
                    **{f"collect/{k}": float(v) for k, v in col.stats.items()},
                    "nfe/total": state.nfe,
                    "nfe/iteration": nfe_it,
                    "time/collect": t_collect,
                    "credit/adv_mean": float(adv[mask].mean()) if mask.any() else 0.0,
                    "credit/adv_std": float(adv[mask].std()) if mask.sum() > 1 else 0.0,
                    "credit/trained_frac": float(mask.any(1).float().mean()),
                    "optim/lr": optimizer.param_groups[0]["lr"],
                    "optim/step": state.optimizer_step,
                    "skipped/steps": state.skipped_steps,
                    "skipped/iterations": state.skipped_iterations,
                    "skipped/nonfinite_reward_rows": state.nonfinite_reward_rows,
                    "time/sample": t_sample,
                    "time/reward": t_reward,
                    "time/train": t_train,
                }
            )
            result.history.append({"iteration": it, **stats})
            if it % cfg.log.every == 0 or it + 1 == cfg.train.iterations:
                log.scalars(stats, it)
            acc.print(
                f"it {it + 1}/{cfg.train.iterations}  reward {stats['reward/total_mean']:.4f}"
                f"±{stats['reward/total_std']:.3f}  clipfrac {stats.get('train/clipfrac', 0):.3f}  "
                f"kl {stats.get('train/approx_kl', 0):.2e}  sample {t_sample:.1f}s reward {t_reward:.1f}s "
                f"train {t_train:.1f}s",
                flush=True,
            )
            out_of_time = cfg.train.max_minutes > 0 and (time.time() - t_start) > 60 * cfg.train.max_minutes
            over_nfe = cfg.train.max_nfe > 0 and state.nfe >= cfg.train.max_nfe  # (state.nfe: same on every rank)
            stop = bool(acc.reduce(torch.tensor([float(out_of_time)], device=dev), "sum") > 0) or over_nfe
            last = it + 1 == cfg.train.iterations or stop
            if (cfg.train.save_every > 0 and state.iteration % cfg.train.save_every == 0) or last:
                save(state.iteration)
            if stop:
                acc.print(
                    f"budget reached after {state.iteration} iterations ({state.nfe} NFE; train.max_minutes="
                    f"{cfg.train.max_minutes}, train.max_nfe={cfg.train.max_nfe})."
                )
                break
        if evals_on:
            run_eval(state.iteration)
        if main and export_fn is not None:
            with swap():
                export_fn(run_dir)
    finally:
        model.transformer = bare
        log.close()
        if own_acc:
            finish(acc)
    return result
