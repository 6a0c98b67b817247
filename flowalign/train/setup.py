"""The recipe's set-up: accelerator, credit scheme, trainable parameters, optimizer, resume, EMA,
psi(t) calibration, reward ladder and run logger, gathered into one ``Run``; and the tear-down."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..overrides import to_dict
from . import checkpoint as ckpt
from .batching import derived
from .checks import check_variants
from .collect import calibrate_psi, make_credit, make_ladder
from .data import sample_seed
from .distributed import Prepared, check_fsdp, finish, is_fsdp, make_accelerator, shard_optimizer_state
from .ema import EMA
from .records import Run, TrainResult, TrainState
from .rollouts import make_rollout
from .tracking import RunLogger


def trainable(model) -> tuple[Any, list[str], list[torch.nn.Parameter]]:
    bare = model.transformer
    names = [n for n, p in bare.named_parameters() if p.requires_grad]
    params = [p for p in bare.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters; enable model.lora or full fine-tuning.")
    return bare, names, params


def load_resume(resume, rank: int, names: list[str], params: list) -> tuple[dict, TrainState]:
    """Weights go into the bare module before wrapping (FSDP then shards them)."""
    parts, scalars = ckpt.load(resume, rank)
    with torch.no_grad():
        for n, p in zip(names, params):
            p.copy_(parts["trainable"][n])
    state = TrainState(**{k: scalars.get(k, v) for k, v in dataclasses.asdict(TrainState()).items()})
    return parts, state


def deepspeed_config(acc, cfg) -> None:
    """No dataloader: tell DeepSpeed the micro-batch and the clipping."""
    ds = acc.state.deepspeed_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = cfg.sample.batch_size
    if ds.get("gradient_clipping", "auto") == "auto":
        ds["gradient_clipping"] = cfg.optim.max_grad_norm


def make_optimizer(cfg, params: list) -> torch.optim.Optimizer:
    o = cfg.optim
    return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps)


def restore(parts: dict, optimizer, ema) -> None:
    """After ``prepare``: a checkpoint's full optimizer state is cut like the (FSDP2) parameters."""
    optimizer.load_state_dict(shard_optimizer_state(parts["optimizer"], optimizer))
    if ema is not None and "ema" in parts:
        ema.load_state_dict(parts["ema"])
    ckpt.set_rng_state(parts["rng"])


def calibrate(run: Run) -> None:
    """DenseGRPO Alg. 1, once before the first iteration; the table is kept in the saved config."""
    cfg, model = run.cfg, run.model
    nfe0 = model.nfe
    gen = torch.Generator().manual_seed(sample_seed(cfg.train.seed, -1, -3))
    levels, cal = calibrate_psi(model, run.reward_fn, run.prompts, cfg, gen)
    run.cfg = cfg = copy.deepcopy(cfg)
    cfg.sample.noise_levels, cfg.credit.options.calibrate_iterations = [float(v) for v in levels], 0
    run.state.nfe += int(run.acc.reduce(torch.tensor([float(model.nfe - nfe0)], device=run.acc.device), "sum"))
    run.acc.print(f"psi(t) calibrated in {cal.imbalance.shape[0]} rounds: noise table {cfg.sample.noise_levels}")


def start_log(run: Run) -> None:
    if run.acc.is_main_process:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        (run.run_dir / "config.json").write_text(json.dumps(to_dict(run.cfg), indent=1))
        run.acc.print(f"flowalign train: {run.cfg.preset} -> {run.run_dir}\n{run.d.table()}")


def setup(cfg, model, reward_fn: Callable, prompts, *, run_dir, credit_fn, resume, accelerator, hooks) -> Run:
    """Everything the phases share; the order of these steps is part of a run's reproducibility."""
    acc = make_accelerator(cfg) if accelerator is None else accelerator
    check_variants(cfg, custom_credit=credit_fn is not None)
    d = derived(cfg, acc.num_processes)
    acc.gradient_accumulation_steps = d.backward_per_step
    credit_fn, needs = make_credit(cfg, credit_fn)
    process_reward = reward_fn if hooks.get("process_reward") is None else hooks["process_reward"]
    roll = make_rollout(cfg, needs, hooks["rollout_fn"], model=model, process_reward=process_reward)
    bare, names, params = trainable(model)
    kind = acc.distributed_type.value
    check_fsdp(acc)
    parts, state = load_resume(resume, acc.process_index, names, params) if resume is not None else ({}, TrainState())
    if kind == "DEEPSPEED":
        deepspeed_config(acc, cfg)
    wrapped, optimizer = acc.prepare(bare, make_optimizer(cfg, params))
    if is_fsdp(acc):  # fully_shard put DTensor parameters in place of the bare ones (same names)
        _, names, params = trainable(model)
        shards = sum(type(p).__name__ == "DTensor" for p in params)
        acc.print(f"FSDP2: {shards} of {len(params)} trainable parameters sharded over {acc.num_processes} processes")
    run = Run(
        cfg,
        model,
        acc,
        d,
        Path(run_dir),
        reward_fn,
        prompts,
        credit_fn,
        needs,
        roll,
        bare,
        wrapped,
        params,
        names,
        optimizer,
        state,
        TrainResult(Path(run_dir), state, model=model),
        None,
        dict(hooks),
    )
    model.transformer = Prepared(wrapped, bare, always_wrapped=run.sharded)
    run.ema = EMA(params, cfg.train.ema_decay, cfg.train.ema_every) if cfg.train.ema else None
    if resume is not None:
        restore(parts, optimizer, run.ema)
    if getattr(cfg.credit.options, "calibrate_iterations", 0) > 0 and resume is None:
        calibrate(run)
    run.ladder = make_ladder(run.cfg, model, reward_fn) if "ladder" in needs else None
    run.log = RunLogger(run.run_dir, run.cfg, acc.is_main_process)
    start_log(run)
    return run


def teardown(run: Run, own_accelerator: bool) -> None:
    run.model.transformer = run.bare
    if run.log is not None:
        run.log.close()
    if own_accelerator:
        finish(run.acc)
