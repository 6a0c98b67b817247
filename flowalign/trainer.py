"""Flow-GRPO trainer (Liu et al. 2025, arXiv 2505.05470) on accelerate: one explicit loop.

Per iteration: SAMPLE (SDE rollouts with per-step log-probs; K images per prompt spread over ranks)
-> SCORE (decode, reward) -> CREDIT (rewards gathered over ranks, group-relative advantages, each
rank keeps its rows) -> TRAIN (inner epochs over (micro-batch, step): recomputed log-prob, clipped
ratio, closed-form KL to the adapter-off reference; accumulate, clip, step, EMA) -> LOG / EVAL /
CHECKPOINT. The loop takes functions (reward_fn, credit_fn, loss_fn, rollout_fn), not subclasses.

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
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from . import checkpoint as ckpt
from .config import Config, derived, to_dict
from .credit import CREDIT
from .data import PromptSet, group_batch, sample_seed
from .ema import EMA
from .losses import flow_grpo_loss
from .sampling.rollout import log_prob_at, rollout
from .sampling.schedule import noise_table, progressive_window, random_window, window_mask
from .tracking import RunLogger
from .types import Cond, Rollout, Scores


@dataclass
class TrainState:
    iteration: int = 0  # next iteration to run
    optimizer_step: int = 0  # optimizer steps taken
    skipped_steps: int = 0  # optimizer steps skipped for a non-finite loss or gradient
    skipped_iterations: int = 0  # iterations skipped because no reward was finite
    nonfinite_reward_rows: int = 0  # samples whose reward was NaN/inf (masked out of the loss)


@dataclass
class TrainResult:
    run_dir: Path
    state: TrainState
    history: list[dict] = field(default_factory=list)  # per-iteration logged scalars (main process)
    evals: list[dict] = field(default_factory=list)  # per-eval scalars (main process)
    model: Any = None  # the trained FlowModel (its transformer holds the live, non-EMA weights)


class Prepared:
    """The accelerate-wrapped transformer seen as the bare one: gradient-enabled calls go through the
    wrapper (DDP / FSDP / DeepSpeed hooks), no-grad calls (sampling, reference, eval) through the bare
    module unless the wrapper shards parameters; attributes (config, dtype, modules) are the bare ones."""

    def __init__(self, wrapped: Any, bare: torch.nn.Module, always_wrapped: bool):
        self._wrapped, self._bare, self._always = wrapped, bare, always_wrapped

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        use = self._wrapped if self._always or torch.is_grad_enabled() else self._bare
        return use(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bare, name)


def step_mask(cfg: Config, iteration: int) -> Tensor:
    """[T] bool: the stochastic (trained) steps of ``iteration``; the same on every rank."""
    s = cfg.sample
    if s.window == "all":
        return window_mask(s.num_steps, max(1, int(s.num_steps * s.timestep_fraction)))
    if s.window == "random":
        import random
        lo, hi = (list(s.window_range) + [s.num_steps])[:2]
        return random_window(s.num_steps, s.window_size, lo, hi, random.Random(sample_seed(cfg.train.seed, iteration, -1)))
    return progressive_window(s.num_steps, s.window_size, iteration, every=s.window_every)


def as_scores(out: Scores | Tensor, b: int) -> Scores:
    scores = out if isinstance(out, Scores) else Scores(total=torch.as_tensor(out).float().reshape(-1))
    total = scores.total.detach().float().cpu()
    if total.shape != (b,):
        raise ValueError(f"reward_fn returned shape {tuple(total.shape)} for a batch of {b}; return Tensor[B] or Scores.")
    valid = torch.isfinite(total) & (torch.ones(b, dtype=torch.bool) if scores.valid is None else scores.valid.cpu().bool())
    comps = {k: v.detach().float().cpu() for k, v in scores.components.items()}
    return Scores(total=total, components=comps, valid=valid)


def _cat_scores(parts: list[Scores]) -> Scores:
    keys = parts[0].components.keys()
    return Scores(total=torch.cat([p.total for p in parts]), valid=torch.cat([p.valid for p in parts]),
                  components={k: torch.cat([p.components[k] for p in parts]) for k in keys})


def _generators(seed: int, iteration: int, indices: list[int], device: torch.device) -> list[torch.Generator]:
    return [torch.Generator(device).manual_seed(sample_seed(seed, iteration, i)) for i in indices]


@torch.no_grad()
def generate(model, prompts: list[str], cfg: Config, gens: list[torch.Generator], *, num_steps: int,
             guidance_scale: float, noise_levels: Tensor | None, rollout_fn: Callable = rollout,
             step: str = "ode", init_gens: list[torch.Generator] | None = None) -> tuple[Cond, Rollout, Tensor]:
    """encode -> initial noise (from ``init_gens``, default ``gens``) -> rollout (SDE noise from
    ``gens``) -> decode: (cond, rollout, images [B, 3, H, W] in [0, 1])."""
    res = cfg.model.resolution
    neg = cfg.model.negative_prompt or None  # None: the model's default ("" for SD3; Flux has none)
    cond = model.encode(prompts, guidance_scale=guidance_scale, negative_prompts=neg)
    x = model.initial_noise(len(prompts), res, res, generator=init_gens or gens)
    ro = rollout_fn(model, cond, x, model.sigmas(num_steps, res, res), step, noise_levels, generator=gens)
    return cond, ro, model.decode(ro.final)


@torch.no_grad()
def evaluate(model, reward_fn: Callable, prompts: PromptSet, cfg: Config, acc, rollout_fn: Callable = rollout,
             metrics: dict[str, Callable] | None = None) -> tuple[dict[str, float], Tensor | None]:
    """ODE samples of the first ``eval.num_prompts`` held-out prompts with fixed per-prompt noise ->
    mean reward total, components and extra ``metrics`` (name -> reward-like fn) over all ranks,
    and a grid image (main process)."""
    from torchvision.utils import make_grid

    e, world, rank = cfg.eval, acc.num_processes, acc.process_index
    n = min(e.num_prompts, len(prompts))
    per = math.ceil(n / world)  # equal shards (padded) so collective forwards stay in step
    mine = [rank * per + i for i in range(per)]
    sums: dict[str, Tensor] = {}
    shown: list[Tensor] = []
    for s in range(0, per, e.batch_size):
        idx = mine[s:s + e.batch_size]
        real = torch.tensor([i < n for i in idx])
        idx = [min(i, n - 1) for i in idx]
        texts = [prompts.prompts[i] for i in idx]
        gens = _generators(e.seed, 0, idx, model.device)
        _, _, images = generate(model, texts, cfg, gens, num_steps=e.num_steps, guidance_scale=e.guidance_scale,
                                noise_levels=None, rollout_fn=rollout_fn)
        meta = prompts.columns(idx)
        sc = as_scores(reward_fn(images, texts, **meta), len(idx))
        extra = {k: as_scores(fn(images, texts, **meta), len(idx)).total for k, fn in (metrics or {}).items()}
        for k, v in {"reward": sc.total, **sc.components, **extra}.items():
            ok = real & torch.isfinite(v)
            sums[k] = sums.get(k, torch.zeros(2, dtype=torch.float64)) + torch.stack(
                [v[ok].double().sum(), ok.double().sum()])
        shown += [im.cpu() for im, r in zip(images, real) if r][:max(0, e.grid_images - len(shown))]
    keys = sorted(sums)
    flat = torch.stack([sums[k] for k in keys]).to(acc.device) if keys else torch.zeros(0, 2, device=acc.device)
    flat = acc.reduce(flat, "sum").cpu()
    stats = {f"eval/{k}": float(flat[i, 0] / flat[i, 1].clamp_min(1)) for i, k in enumerate(keys)}
    grid = make_grid(torch.stack(shown), nrow=int(math.ceil(math.sqrt(len(shown)))), padding=1) if shown else None
    return stats, grid


def make_accelerator(cfg: Config):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    return Accelerator(cpu=cfg.train.cpu or not torch.cuda.is_available(), mixed_precision=cfg.train.mixed_precision,
                       kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])


def _zero_loss(params: list[torch.nn.Parameter]) -> Tensor:
    """A loss whose gradient is exactly 0 for every parameter (keeps DDP's reducer in step)."""
    return sum(p.sum() for p in params) * 0.0


def train(cfg: Config, model, reward_fn: Callable, prompts: PromptSet, *, eval_prompts: PromptSet | None = None,
          run_dir: str | Path, credit_fn: Callable | None = None, loss_fn: Callable = flow_grpo_loss,
          rollout_fn: Callable = rollout, resume: str | Path | None = None, accelerator=None,
          export_fn: Callable[[Path], None] | None = None, ref_model=None,
          eval_metrics: dict[str, Callable] | None = None) -> TrainResult:
    """Run Flow-GRPO on ``model`` (a FlowModel whose trainable parameters are already set up).

    reward_fn(images [B,3,H,W], prompts, **metadata) -> Scores | Tensor[B]; credit_fn(rewards [N],
    group_ids [N], step_mask [T]) -> Advantages (default: CREDIT[cfg.credit.name] with cfg.credit);
    loss_fn(out, ref, old_log_prob, advantages, mask, dt, **cfg.loss) -> LossOut; rollout_fn as
    ``sampling.rollout.rollout``; export_fn(dir) writes the deployable weights (LoRA) under ``dir``;
    ref_model: the KL reference when ``model.reference()`` cannot provide it (full fine-tuning);
    eval_metrics: extra eval-only scores {log name: fn(images, prompts, **metadata)}."""
    own_acc = accelerator is None
    acc = make_accelerator(cfg) if own_acc else accelerator
    d = derived(cfg, acc.num_processes)
    rank, world, main = acc.process_index, acc.num_processes, acc.is_main_process
    run_dir = Path(run_dir)
    acc.gradient_accumulation_steps = d.backward_per_step
    c = cfg.credit
    credit_fn = credit_fn or partial(CREDIT[c.name], scale=c.scale, eps=c.eps, unbiased=c.unbiased,
                                     filter_zero_std=c.filter_zero_std)
    loss_kw = dataclasses.asdict(cfg.loss)
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
        state = TrainState(**{k: scalars[k] for k in dataclasses.asdict(state)})
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
    log = RunLogger(run_dir, cfg, main)
    result = TrainResult(run_dir, state, model=model)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=1))
        acc.print(f"flowalign train: {cfg.preset} -> {run_dir}\n{d.table()}")
    bar = partial(__import__("tqdm").tqdm, leave=False, disable=not (main and cfg.log.progress), dynamic_ncols=True)
    swap = ema.swapped if ema is not None else contextlib.nullcontext

    def run_eval(it: int) -> None:
        if eval_prompts is None or cfg.eval.every <= 0:
            return
        t = time.time()
        with swap():
            stats, grid = evaluate(model, reward_fn, eval_prompts, cfg, acc, rollout_fn, eval_metrics)
        stats["time/eval"] = time.time() - t
        log.scalars(stats, it)
        if grid is not None:
            log.image("eval/samples", grid, it)
        result.evals.append({"iteration": it, **stats})
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
        path = ckpt.save(run_dir, it, parts, {**dataclasses.asdict(state), "config": to_dict(cfg)}, rank=rank,
                         rank_parts=rank_parts, barrier=acc.wait_for_everyone, keep_last=cfg.train.keep_last,
                         export=export)
        acc.print(f"saved {path}", flush=True)

    t_start, T, bs = time.time(), cfg.sample.num_steps, cfg.sample.batch_size
    try:
        for it in range(state.iteration, cfg.train.iterations):
            if cfg.eval.every > 0 and it % cfg.eval.every == 0:
                run_eval(it)
            # ---------------- SAMPLE + SCORE ----------------
            t0 = time.time()
            mask_t = step_mask(cfg, it)
            levels = noise_table(T, cfg.sample.noise_level, mask_t)
            pidx, gids = group_batch(len(prompts), cfg.sample.group_size, d.images_per_rank, world, rank,
                                     cfg.train.seed, it)
            gidx = [rank * d.images_per_rank + i for i in range(d.images_per_rank)]
            conds, rolls, scores, t_reward = [], [], [], 0.0
            for b in bar(range(d.batches_per_rank), desc=f"it {it + 1}/{cfg.train.iterations} sample"):
                sl = slice(b * bs, (b + 1) * bs)
                texts = [prompts.prompts[i] for i in pidx[sl]]
                gens = _generators(cfg.train.seed, it, gidx[sl], model.device)
                init = _generators(cfg.train.seed, it, [-1 - g for g in gids[sl]], model.device) \
                    if cfg.sample.same_noise else None  # one initial noise per group
                cond, ro, images = generate(model, texts, cfg, gens, num_steps=T, guidance_scale=cfg.sample.guidance_scale,
                                            noise_levels=levels, rollout_fn=rollout_fn, step=cfg.sample.step,
                                            init_gens=init)
                tr = time.time()
                with torch.no_grad():
                    scores.append(as_scores(reward_fn(images, texts, **prompts.columns(pidx[sl])), len(texts)))
                t_reward += time.time() - tr
                conds.append(cond)
                rolls.append(ro)
            cond = Cond.cat(conds)
            ro = dataclasses.replace(rolls[0], latents=torch.cat([r.latents for r in rolls]),
                                     log_probs=torch.cat([r.log_probs for r in rolls]), x0_preds=None)
            sc = _cat_scores(scores)
            t_sample = time.time() - t0 - t_reward
            # ---------------- CREDIT (gathered over ranks) ----------------
            dev = acc.device
            g = {k: acc.gather(torch.as_tensor(v).to(dev)).cpu() for k, v in
                 (("reward", torch.where(sc.valid, sc.total, torch.zeros_like(sc.total))), ("valid", sc.valid.long()),
                  ("group", torch.tensor(gids)), ("index", torch.tensor(gidx)), ("prompt", torch.tensor(pidx)))}
            n_all, valid = g["reward"].shape[0], g["valid"].bool()
            state.nonfinite_reward_rows += int((~valid).sum())
            adv = torch.zeros(n_all, T)
            mask = torch.zeros(n_all, T, dtype=torch.bool)
            credit_stats: dict[str, float] = {}
            if valid.any():
                sub = credit_fn(g["reward"][valid], g["group"][valid], mask_t)
                adv[valid], mask[valid], credit_stats = sub.advantages, sub.mask, sub.stats
            else:
                state.skipped_iterations += 1
            if main and cfg.log.credit_jsonl:
                with open(run_dir / "credit.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps({"iteration": it, **{k: v.tolist() for k, v in g.items()},
                                        "advantages": adv.tolist(), "mask": mask.tolist()}) + "\n")
            mine = slice(rank * d.images_per_rank, (rank + 1) * d.images_per_rank)
            adv, mask = adv[mine], mask[mine]
            # ---------------- TRAIN: inner epochs over (micro-batch, step) ----------------
            t1, sums, count, bad, norms = time.time(), {}, 0, 0, []
            steps = [j for j in range(T) if mask_t[j]] if valid.any() else []
            total_micro = d.batches_per_rank * cfg.train.inner_epochs * len(steps)
            pbar = bar(total=total_micro, desc=f"it {it + 1}/{cfg.train.iterations} train")
            for epoch in range(cfg.train.inner_epochs if steps else 0):
                order = torch.randperm(d.images_per_rank,
                                       generator=torch.Generator().manual_seed(sample_seed(cfg.train.seed, it, -2 - epoch - 1000 * rank)))
                for b in range(d.batches_per_rank):
                    rows = order[b * bs:(b + 1) * bs]
                    c_mb, r_mb, a_mb, m_mb = cond.select(rows), ro.select(rows), adv[rows], mask[rows]
                    for j in steps:
                        with acc.accumulate(wrapped):
                            out = log_prob_at(model, c_mb, r_mb, j)
                            ref = None
                            if cfg.loss.beta > 0:
                                with torch.no_grad(), (model.reference() if ref_model is None else contextlib.nullcontext()):
                                    ref = log_prob_at(ref_model or model, c_mb, r_mb, j)
                            dt = float(ro.sigmas[j + 1] - ro.sigmas[j])
                            lo = loss_fn(out, ref, r_mb.log_probs[:, j], a_mb[:, j], m_mb[:, j], dt, **loss_kw)
                            finite = bool(torch.isfinite(lo.loss))
                            acc.backward(lo.loss if finite else _zero_loss(params))
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
            stats.update({"reward/total_mean": float(r_ok.mean()) if len(r_ok) else float("nan"),
                          "reward/total_std": float(r_ok.std()) if len(r_ok) > 1 else 0.0,
                          **{f"reward/{k}_mean": float(v[torch.isfinite(v)].mean()) for k, v in gsc.items()},
                          **{f"credit/{k}": float(v) for k, v in credit_stats.items()},
                          "credit/adv_mean": float(adv[mask].mean()) if mask.any() else 0.0,
                          "credit/adv_std": float(adv[mask].std()) if mask.sum() > 1 else 0.0,
                          "credit/trained_frac": float(mask.any(1).float().mean()),
                          "optim/lr": optimizer.param_groups[0]["lr"], "optim/step": state.optimizer_step,
                          "skipped/steps": state.skipped_steps, "skipped/iterations": state.skipped_iterations,
                          "skipped/nonfinite_reward_rows": state.nonfinite_reward_rows,
                          "time/sample": t_sample, "time/reward": t_reward, "time/train": t_train})
            result.history.append({"iteration": it, **stats})
            if it % cfg.log.every == 0 or it + 1 == cfg.train.iterations:
                log.scalars(stats, it)
            acc.print(f"it {it + 1}/{cfg.train.iterations}  reward {stats['reward/total_mean']:.4f}"
                      f"±{stats['reward/total_std']:.3f}  clipfrac {stats.get('train/clipfrac', 0):.3f}  "
                      f"kl {stats.get('train/approx_kl', 0):.2e}  sample {t_sample:.1f}s reward {t_reward:.1f}s "
                      f"train {t_train:.1f}s", flush=True)
            out_of_time = cfg.train.max_minutes > 0 and (time.time() - t_start) > 60 * cfg.train.max_minutes
            stop = bool(acc.reduce(torch.tensor([float(out_of_time)], device=dev), "sum") > 0)
            last = it + 1 == cfg.train.iterations or stop
            if (cfg.train.save_every > 0 and state.iteration % cfg.train.save_every == 0) or last:
                save(state.iteration)
            if stop:
                acc.print(f"train.max_minutes={cfg.train.max_minutes} reached after {state.iteration} iterations.")
                break
        if cfg.eval.every > 0:
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


def finish(acc) -> None:
    """Wait for every rank, then tear the process group down (2-process gloo runs otherwise abort
    at exit now and then; environment.md)."""
    import sys

    acc.wait_for_everyone()
    acc.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
