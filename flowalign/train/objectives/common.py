"""What every objective receives (``UnitInputs``) and returns (a ``Unit``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ...types import Cond, LossOut, Rollout

Unit = Callable[[Tensor, int, Tensor, Tensor], LossOut]  # (rows [b], step j, advantages [b], mask [b]) -> loss


@dataclass
class UnitInputs:
    cfg: Any  # the run's Config
    model: Any  # the FlowModel being trained
    cond: Cond  # [N] this rank's rows of the iteration
    rollout: Rollout  # [N, T+1] their trajectories
    steps: list[int]  # trained step indices of this iteration
    iteration: int  # seeds any per-iteration noise (NFT's forward process)
    sample_index: list[int]  # [N] global sample index of each row
    loss_fn: Callable[..., LossOut] | None = None  # Flow-GRPO's per-step loss (default ``losses.flow_grpo_loss``)
    ref_model: Any = None  # KL reference when the model cannot disable its adapter (full fine-tuning)
    reward_fn: Callable | None = None  # the training reward (reward-gradient / set-level objectives score with it)
    kl_weight: Tensor | None = None  # [N] per-row KL weight from the credit (GARDO's uncertain rows); None = 1
    state: dict | None = None  # the run's ``objective_state``: kept across iterations (GARDO's reference snapshot)


def reference(inp: UnitInputs):
    """The context in which ``inp.ref_model or inp.model`` computes the reference (adapter off)."""
    return inp.model.reference() if inp.ref_model is None else contextlib.nullcontext()


def once_per_rows(fn: Callable[[Tensor], Any]) -> Callable[[Tensor], Any]:
    """``fn(rows)`` computed once per micro-batch (the update phase passes the same ``rows`` tensor
    for all of a micro-batch's steps) and reused for its other steps."""
    last: dict[str, Any] = {}

    def cached(rows: Tensor) -> Any:
        if last.get("rows") is not rows:
            last.update(rows=rows, out=fn(rows))
        return last["out"]

    return cached
