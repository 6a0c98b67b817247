"""Flow-GRPO (Liu et al. 2025, arXiv 2505.05470) on accelerate, as a recipe that reads top to bottom:

    setup -> for each iteration: [eval] -> sample -> credit -> update -> log / save

``train`` takes functions (reward_fn, credit_fn, loss_fn, rollout_fn), not subclasses; the variants
(credit schemes, SDE windows, objectives) are registry entries picked by the config. Sampler NFEs
(rollouts, completions and psi(t) calibration; velocity evaluations per row, CFG once; training and
eval forwards excluded) are summed over ranks into ``state.nfe`` (logged as ``nfe/total``), and
``train.max_nfe`` stops a run at an NFE budget.

Departures from flow_grpo's ``scripts/train_sd3.py``: zero-variance groups are masked, not dropped,
so every micro-batch keeps the sampling batch size; all randomness is a function of (seed,
iteration, global sample index), so the SDE window is the same on every rank (flow_grpo draws it per
device) and a resumed run replays exactly; rewards are computed after each batch on the same thread
(flow_grpo overlaps them in a pool); the whole state (weights, optimizer, EMA, RNG, iteration) is
checkpointed for exact resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..overrides import to_dict
from ..sampling.rollout import rollout
from . import checkpoint as ckpt
from .evaluation import evaluate
from .phases import credit, sample, update
from .records import Credit, Run, Samples, TrainResult
from .setup import setup, teardown


def swap(run: Run):
    """Evaluate and export with the EMA weights when there is an EMA."""
    return run.ema.swapped() if run.ema is not None else contextlib.nullcontext()


def evals_on(run: Run) -> bool:
    return run.cfg.eval.every > 0 or run.cfg.eval.every_nfe > 0


def eval_due(run: Run, it: int) -> bool:
    """Every eval.every iterations and/or each time eval.every_nfe more NFEs are spent."""
    e = run.cfg.eval
    by_nfe = e.every_nfe > 0 and run.state.nfe >= run.next_eval_nfe
    if by_nfe:
        run.next_eval_nfe = (run.state.nfe // e.every_nfe + 1) * e.every_nfe
    return (e.every > 0 and it % e.every == 0) or by_nfe


def run_eval(run: Run, it: int) -> None:
    if run.hooks.get("eval_prompts") is None or not evals_on(run):
        return
    t = time.time()
    with swap(run):
        stats, grid = evaluate(
            run.model,
            run.reward_fn,
            run.hooks["eval_prompts"],
            run.cfg,
            run.acc,
            run.hooks["rollout_fn"],
            run.hooks.get("eval_metrics"),
        )
    stats["time/eval"] = time.time() - t
    run.log.scalars(stats, it)
    if grid is not None:
        run.log.image("eval/samples", grid, it)
    run.result.evals.append({"iteration": it, "nfe": run.state.nfe, **stats})
    shown = "  ".join(f"{k[5:]}={v:.4f}" for k, v in stats.items() if k.startswith("eval/"))
    run.acc.print(f"eval @ {it}: " + shown)


def save(run: Run, it: int) -> None:
    """A full checkpoint (weights, optimizer, EMA, RNG) of iteration ``it``; collective under FSDP."""
    acc, main = run.acc, run.acc.is_main_process
    weights = dict(zip(run.names, run.params))
    if acc.distributed_type.value == "FSDP":  # the full weights on rank 0
        full = acc.get_state_dict(run.wrapped)
        weights = {n: full[n] for n in run.names} if main else {}
    parts = {"trainable": weights}
    if not run.sharded:
        parts["optimizer"] = run.optimizer.state_dict()
    if run.ema is not None:
        parts["ema"] = run.ema.state_dict()
    rank_parts = {"optimizer": run.optimizer.state_dict()} if run.sharded else None

    def export(directory: Path) -> None:
        if run.hooks.get("export_fn") is not None:
            with swap(run):
                run.hooks["export_fn"](directory)

    scalars = {**dataclasses.asdict(run.state), "config": to_dict(run.cfg)}
    path = ckpt.save(
        run.run_dir,
        it,
        parts,
        scalars,
        rank=acc.process_index,
        rank_parts=rank_parts,
        barrier=acc.wait_for_everyone,
        keep_last=run.cfg.train.keep_last,
        export=export,
    )
    acc.print(f"saved {path}", flush=True)


def iteration_stats(run: Run, s: Samples, c: Credit, trained: dict) -> dict:
    """The logged scalars of one iteration (rewards over all ranks, credit, optimizer, NFE, time)."""
    acc, st = run.acc, run.state
    r_ok = c.gathered["reward"][c.valid]
    gsc = {k: acc.gather(v.to(acc.device)).cpu() for k, v in s.scores.components.items()}
    adv, mask = c.advantages, c.mask
    return {
        **{k: v for k, v in trained.items() if k != "time/train"},
        "reward/total_mean": float(r_ok.mean()) if len(r_ok) else float("nan"),
        "reward/total_std": float(r_ok.std()) if len(r_ok) > 1 else 0.0,
        **{f"reward/{k}_mean": float(v[torch.isfinite(v)].mean()) for k, v in gsc.items()},
        **{f"credit/{k}": float(v) for k, v in c.stats.items()},
        **{f"collect/{k}": float(v) for k, v in s.collected.stats.items()},
        "nfe/total": st.nfe,
        "nfe/iteration": s.nfe,
        "time/collect": s.times["collect"],
        "credit/adv_mean": float(adv[mask].mean()) if mask.any() else 0.0,
        "credit/adv_std": float(adv[mask].std()) if mask.sum() > 1 else 0.0,
        "credit/trained_frac": float(mask.any(1).float().mean()),
        "optim/lr": run.optimizer.param_groups[0]["lr"],
        "optim/step": st.optimizer_step,
        "skipped/steps": st.skipped_steps,
        "skipped/iterations": st.skipped_iterations,
        "skipped/nonfinite_reward_rows": st.nonfinite_reward_rows,
        "time/sample": s.times["sample"],
        "time/reward": s.times["reward"],
        "time/train": trained["time/train"],
    }


def log_and_save(run: Run, it: int, s: Samples, c: Credit, trained: dict) -> bool:
    """LOG + SAVE: scalars, the progress line, checkpoints; True when a budget stops the run."""
    cfg, acc, state = run.cfg, run.acc, run.state
    state.iteration = it + 1
    stats = iteration_stats(run, s, c, trained)
    run.result.history.append({"iteration": it, **stats})
    if it % cfg.log.every == 0 or it + 1 == cfg.train.iterations:
        run.log.scalars(stats, it)
    acc.print(
        f"it {it + 1}/{cfg.train.iterations}  reward {stats['reward/total_mean']:.4f}"
        f"±{stats['reward/total_std']:.3f}  clipfrac {stats.get('train/clipfrac', 0):.3f}  "
        f"kl {stats.get('train/approx_kl', 0):.2e}  sample {s.times['sample']:.1f}s "
        f"reward {s.times['reward']:.1f}s train {trained['time/train']:.1f}s",
        flush=True,
    )
    out_of_time = cfg.train.max_minutes > 0 and (time.time() - run.t_start) > 60 * cfg.train.max_minutes
    over_nfe = cfg.train.max_nfe > 0 and state.nfe >= cfg.train.max_nfe  # (state.nfe: same on every rank)
    stop = bool(acc.reduce(torch.tensor([float(out_of_time)], device=acc.device), "sum") > 0) or over_nfe
    if (
        (cfg.train.save_every > 0 and state.iteration % cfg.train.save_every == 0)
        or it + 1 == cfg.train.iterations
        or stop
    ):
        save(run, state.iteration)
    if stop:
        acc.print(
            f"budget reached after {state.iteration} iterations ({state.nfe} NFE; train.max_minutes="
            f"{cfg.train.max_minutes}, train.max_nfe={cfg.train.max_nfe})."
        )
    return stop


def finish_run(run: Run) -> None:
    """The last eval and the deployable weights (LoRA) at the top of the run directory."""
    if evals_on(run):
        run_eval(run, run.state.iteration)
    if run.acc.is_main_process and run.hooks.get("export_fn") is not None:
        with swap(run):
            run.hooks["export_fn"](run.run_dir)


def train(
    cfg,
    model,
    reward_fn: Callable,
    prompts,
    *,
    run_dir,
    eval_prompts=None,
    credit_fn: Callable | None = None,
    loss_fn: Callable | None = None,
    rollout_fn: Callable = rollout,
    resume=None,
    accelerator=None,
    export_fn: Callable | None = None,
    ref_model=None,
    eval_metrics: dict | None = None,
    process_reward: Callable | None = None,
) -> TrainResult:
    """Train ``model`` (a FlowModel whose trainable parameters are set up) with ``reward_fn(images
    [B,3,H,W], prompts, **metadata) -> Scores | Tensor[B]``. Optional: credit_fn (default from
    cfg.credit), loss_fn (Flow-GRPO's per-step loss), rollout_fn, export_fn(dir), ref_model (the KL
    reference under full fine-tuning), eval_metrics {name: fn}, process_reward (Euphonium)."""
    hooks = dict(
        loss_fn=loss_fn,
        rollout_fn=rollout_fn,
        ref_model=ref_model,
        export_fn=export_fn,
        eval_prompts=eval_prompts,
        eval_metrics=eval_metrics,
        process_reward=process_reward,
    )
    run = setup(
        cfg,
        model,
        reward_fn,
        prompts,
        run_dir=run_dir,
        credit_fn=credit_fn,
        resume=resume,
        accelerator=accelerator,
        hooks=hooks,
    )
    run.t_start = time.time()
    try:
        for it in range(run.state.iteration, run.cfg.train.iterations):
            if eval_due(run, it):
                run_eval(run, it)
            samples = sample(run, it)
            advantages = credit(run, it, samples)
            trained = update(run, it, samples, advantages)
            if log_and_save(run, it, samples, advantages, trained):
                break
        finish_run(run)
    finally:
        teardown(run, own_accelerator=accelerator is None)
    return run.result
