"""LOG + SAVE of an iteration: the logged scalars, the progress line, the stop flags agreed by every
rank (budget, SIGINT / SIGTERM, a dead reward) and the checkpoints."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path

import torch

from ..overrides import to_dict
from . import checkpoint as ckpt
from . import early_stop
from .distributed import full, gather_state, gathered, is_fsdp
from .evaluation import swap
from .faults import Interrupted, RunStopped, fault_stats
from .records import Credit, Run, Samples


def parts_of(run: Run) -> tuple[dict, dict | None]:
    """(parts rank 0 writes, per-rank parts). FSDP2: weights, optimizer state and EMA gathered to full
    tensors on every rank (collectives; the layout a 1-process run writes, so any process count
    resumes it); DeepSpeed: each rank's optimizer shard as its own part."""
    if is_fsdp(run.acc):
        parts = {
            "trainable": {n: full(p).detach() for n, p in zip(run.names, run.params)},
            "optimizer": gather_state(run.optimizer.state_dict()),
        }
        if run.ema is not None:
            parts["ema"] = gather_state(run.ema.state_dict())
        return parts, None
    parts = {"trainable": dict(zip(run.names, run.params))}
    if not run.sharded:
        parts["optimizer"] = run.optimizer.state_dict()
    if run.ema is not None:
        parts["ema"] = run.ema.state_dict()
    return parts, ({"optimizer": run.optimizer.state_dict()} if run.sharded else None)


def export_view(run: Run):
    """The weights an export sees, entered on every rank: the EMA's if any, and under FSDP2 the
    full tensors in place of the shards (an all-gather per trainable parameter)."""
    stack = contextlib.ExitStack()
    stack.enter_context(swap(run))
    if is_fsdp(run.acc):
        stack.enter_context(gathered(run.bare, run.names))
    return stack


def save(run: Run, it: int) -> None:
    """A full checkpoint (weights, optimizer, EMA, RNG) of iteration ``it``; call on every rank (every
    gather and the non-finite check run on all of them, rank 0 writes)."""
    acc, fsdp = run.acc, is_fsdp(run.acc)
    parts, rank_parts = parts_of(run)
    for name, obj in parts.items():  # every rank refuses together (rank 0 alone would leave the others waiting)
        ckpt.check_finite(ckpt.flatten(obj)[1], name)

    def export(directory: Path) -> None:
        if run.hooks.get("export_fn") is not None:
            with contextlib.nullcontext() if fsdp else swap(run):  # (FSDP: entered on every rank below)
                run.hooks["export_fn"](directory)

    scalars = {**dataclasses.asdict(run.state), "config": to_dict(run.cfg)}
    with export_view(run) if fsdp and run.hooks.get("export_fn") is not None else contextlib.nullcontext():
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


def clock(cfg) -> float:
    """Seconds on the clock that ``train.max_minutes`` counts: wall time, or this process's CPU time."""
    return time.process_time() if cfg.train.budget_clock == "cpu" else time.time()


def stop_flags(run: Run, dead_reward: bool) -> dict[str, bool]:
    """One reduce over ranks: out of wall time, a stop signal, the reward dead for too long."""
    cfg, acc = run.cfg, run.acc
    out_of_time = cfg.train.max_minutes > 0 and (clock(cfg) - run.t_start) > 60 * cfg.train.max_minutes
    interrupted = run.signals is not None and run.signals.requested is not None
    flags = torch.tensor([float(out_of_time), float(interrupted), float(dead_reward)], device=acc.device)
    any_rank = (acc.reduce(flags, "sum") > 0).tolist()
    run.in_a_row["dead_reward"] = run.in_a_row.get("dead_reward", 0) + 1 if any_rank[2] else 0
    over_nfe = cfg.train.max_nfe > 0 and run.state.nfe >= cfg.train.max_nfe  # (state.nfe: same on every rank)
    return {
        "budget": bool(any_rank[0]) or over_nfe,
        "interrupted": bool(any_rank[1]),
        "reward_dead": run.in_a_row["dead_reward"] >= cfg.train.reward_patience,
    }


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
    """LOG + SAVE: scalars, the progress line, checkpoints; True when a budget stops the run
    (``RunStopped`` for a reward that stays dead, ``Interrupted`` for SIGINT / SIGTERM, both after saving)."""
    cfg, acc, state = run.cfg, run.acc, run.state
    state.iteration = it + 1
    dead_reward = not bool(c.valid.any()) and "last_reward_error" in run.hooks
    stats = {**iteration_stats(run, s, c, trained), **fault_stats(state)}
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
    flags = stop_flags(run, dead_reward)
    if early_stop.due(run):  # (evals are reduced over ranks: the same verdict on every rank)
        early_stop.restore_best(run)
    stop = flags["budget"] or flags["interrupted"] or flags["reward_dead"] or early_stop.due(run)
    periodic = cfg.train.save_every > 0 and state.iteration % cfg.train.save_every == 0
    if periodic or it + 1 == cfg.train.iterations or stop:
        save(run, state.iteration)
    if flags["budget"]:
        acc.print(
            f"budget reached after {state.iteration} iterations ({state.nfe} NFE; train.max_minutes="
            f"{cfg.train.max_minutes}, train.max_nfe={cfg.train.max_nfe})."
        )
    if flags["reward_dead"]:
        raise RunStopped(
            f"the reward gave no usable value in {cfg.train.reward_patience} iterations in a row "
            f"(train.reward_patience); last error: {run.hooks.get('last_reward_error', 'none (non-finite values)')}. "
            f"A checkpoint of iteration {state.iteration} was saved; fix the reward and resume with "
            f"`flowalign train --resume {run.run_dir}`."
        )
    if flags["interrupted"]:
        raise Interrupted(run.run_dir, saved=True)
    return stop
