"""Records the training recipe passes between its phases (sample -> credit -> update -> log)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from ..types import Cond, Rollout, Scores
from .collect import Collected


@dataclass
class TrainState:
    iteration: int = 0  # next iteration to run
    optimizer_step: int = 0  # optimizer steps taken
    skipped_steps: int = 0  # optimizer steps skipped for a non-finite loss or gradient
    skipped_iterations: int = 0  # iterations skipped because no reward was finite
    nonfinite_reward_rows: int = 0  # samples whose reward (or credit extra) was NaN/inf (masked out of the loss)
    nfe: int = 0  # sampler velocity evaluations so far, all ranks (rollouts + completions + calibration)
    reward_retries: int = 0  # reward calls repeated after the reward raised (this rank)
    reward_failures: int = 0  # sampling batches whose reward kept failing: masked (this rank)
    restored_iterations: int = 0  # iterations rolled back after an optimizer step left a weight non-finite


@dataclass
class TrainResult:
    run_dir: Path
    state: TrainState
    history: list[dict] = field(default_factory=list)  # per-iteration logged scalars (main process)
    evals: list[dict] = field(default_factory=list)  # per-eval scalars (main process)
    model: Any = None  # the trained FlowModel (its transformer holds the live, non-EMA weights)
    early_stop: dict | None = None  # {"iteration", "value"} of the restored best eval when eval.early_stop stopped it

    @property
    def nfe(self) -> int:  # sampler NFEs spent, all ranks (= state.nfe)
        return self.state.nfe


@dataclass
class Run:
    """Everything the phases share, set up once (``setup.setup``)."""

    cfg: Any  # Config (with the psi(t) table filled in after calibration)
    model: Any  # FlowModel; its transformer is the accelerate-wrapped view during training
    acc: Any  # accelerate.Accelerator
    d: Any  # batching.Derived
    run_dir: Path
    reward_fn: Callable
    prompts: Any  # PromptSet
    credit_fn: Callable  # (rewards, group_ids, step_mask, **extras) -> Advantages
    needs: tuple[str, ...]  # the credit scheme's extra inputs
    roll: Callable  # the rollout function of the scheme
    bare: Any  # the bare transformer
    wrapped: Any  # the accelerate-wrapped transformer
    params: list  # trainable parameters
    names: list[str]  # their names
    optimizer: Any
    state: TrainState
    result: TrainResult
    log: Any  # tracking.RunLogger
    hooks: dict[str, Any] = field(default_factory=dict)  # loss_fn, rollout_fn, ref_model, export_fn, eval_*
    ema: Any = None  # ema.EMA or None
    ladder: Any = None  # rewards.ladder.RewardLadder when the scheme needs one
    next_eval_nfe: int = 0
    signals: Any = None  # faults.StopSignals: a graceful stop was requested
    in_a_row: dict[str, int] = field(default_factory=dict)  # consecutive dead-reward / restored iterations
    objective_state: dict = field(default_factory=dict)  # what an objective keeps across iterations (GARDO's reference)
    best: Any = None  # early_stop.Best: the best eval of eval.early_stop and its weights
    t_start: float = 0.0

    @property
    def sharded(self) -> bool:  # optimizer state (and FSDP weights) split over ranks
        return self.acc.distributed_type.value in ("FSDP", "DEEPSPEED")


@dataclass
class Samples:
    """This rank's rollouts of one iteration, scored (SAMPLE phase)."""

    mask_t: Tensor  # [T] bool trained steps
    pidx: list[int]  # prompt index per row
    gids: list[int]  # group id per row
    gidx: list[int]  # global sample index per row
    cond: Cond  # [N]
    rollout: Rollout  # [N, T+1]
    batches: list[Rollout]  # per sampling batch (tree rollouts keep their trees here)
    batch_scores: list[Scores]  # per sampling batch
    scores: Scores  # [N]
    collected: Collected  # the scheme's extra inputs [N, ...]
    nfe: int  # sampler NFEs of this iteration, all ranks
    times: dict[str, float]  # sample / reward / collect seconds


@dataclass
class Credit:
    """Advantages of one iteration (CREDIT phase): gathered over ranks, then this rank's rows."""

    gathered: dict[str, Tensor]  # reward / valid / group / index / prompt of every rank's rows
    valid: Tensor  # [N_all] bool
    advantages: Tensor  # [N, T] this rank's rows
    mask: Tensor  # [N, T] bool
    stats: dict[str, float]
    kl_weight: Tensor | None = None  # [N] this rank's rows' KL weight (credit's ``Advantages.kl_weight``)
