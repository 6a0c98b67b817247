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

from collections.abc import Callable

from ..sampling.rollout import rollout
from .early_stop import keep_best
from .evaluation import eval_due, evals_on, run_eval
from .faults import Interrupted, NonFiniteWeights, RunStopped, StopSignals, restore, snapshot
from .integrity import export_atomic
from .phases import credit, sample, update
from .records import Run, TrainResult
from .report import clock, export_view, log_and_save, save
from .setup import setup, teardown


def finish_run(run: Run) -> None:
    """The last eval and the deployable weights (LoRA) at the top of the run directory."""
    if evals_on(run):
        run_eval(run, run.state.iteration)
    keep_best(run)  # eval.early_stop: the export is the best eval's weights
    if run.hooks.get("export_fn") is not None:
        with export_view(run):  # on every rank (FSDP2: an all-gather per trainable parameter)
            if run.acc.is_main_process:
                export_atomic(run.run_dir, run.hooks["export_fn"])


def rolled_back(run: Run, it: int, snap: dict) -> bool:
    """Non-finite weights after a step: back to the iteration's start, counted; a stop with a
    checkpoint of the last good state after ``train.nonfinite_patience`` in a row."""
    restore(run, snap)
    run.state.iteration, run.state.restored_iterations = it + 1, run.state.restored_iterations + 1
    run.in_a_row["restored"] = run.in_a_row.get("restored", 0) + 1
    run.acc.print(
        f"it {it + 1}: a weight became non-finite after an optimizer step; rolled back to the iteration's start"
    )
    save_every = run.cfg.train.save_every
    if run.in_a_row["restored"] < run.cfg.train.nonfinite_patience:
        if save_every > 0 and run.state.iteration % save_every == 0:
            save(run, run.state.iteration)
        return False
    save(run, run.state.iteration)
    raise RunStopped(
        f"weights became non-finite after an optimizer step in {run.in_a_row['restored']} iterations in a row "
        f"(train.nonfinite_patience); lower optim.lr (now {run.cfg.optim.lr:g}) or optim.max_grad_norm. "
        f"The last good state was saved: resume with `flowalign train --resume {run.run_dir}` after the change."
    )


def iterate(run: Run, it: int) -> bool:
    """One iteration: [eval] -> sample -> credit -> update -> log / save. True when the run stops."""
    if eval_due(run, it):
        run_eval(run, it)
    snap = snapshot(run)
    samples = sample(run, it)
    advantages = credit(run, it, samples)
    try:
        trained = update(run, it, samples, advantages)
    except NonFiniteWeights:
        return rolled_back(run, it, snap)
    run.in_a_row["restored"] = 0
    return log_and_save(run, it, samples, advantages, trained)


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
    with StopSignals() as signals:
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
        run.t_start, run.signals = clock(run.cfg), signals
        try:
            for it in range(run.state.iteration, run.cfg.train.iterations):
                if iterate(run, it):
                    break
            finish_run(run)
            if signals.requested is not None:  # after the last save: resuming re-runs only the finish
                raise Interrupted(run.run_dir, saved=True)
        except Interrupted:
            raise
        except KeyboardInterrupt as err:  # a second Ctrl-C: stop now, the newest checkpoint stands
            raise Interrupted(run.run_dir, saved=False) from err
        finally:
            teardown(run, own_accelerator=accelerator is None)
    return run.result
