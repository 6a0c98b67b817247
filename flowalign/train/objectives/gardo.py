"""GARDO's objective (He et al. 2025, arXiv 2512.24138; code ``tinnerhrhe/GARDO``) on Flow-GRPO's
(``flow_grpo.py``): the clipped ratio unchanged, the KL term **gated** and its reference **refreshed**.

* **Gated KL.** The credit (``credit/gardo.py``) marks the uncertain rows (``Advantages.kl_weight``,
  passed to the unit as ``inp.kl_weight``); the KL is averaged over those rows only,
  ``loss = policy + beta * sum_i w_i KL_i / max(sum_i w_i, 1)`` (masked rows excluded), so a
  micro-batch without an uncertain row has no KL term (and no reference forward). With another
  credit (``kl_weight`` None) every row is weighted 1: Flow-GRPO with a refreshed reference.
* **Adaptive reference.** The reference is a snapshot of the policy's trainable weights, retaken at
  the start of an iteration every ``ref_every`` iterations and, with ``ref_kl_threshold > 0``, after
  an iteration whose mean gated KL exceeded it (the code's reset on ``kl_loss > kl_thres``). The
  snapshot lives in the run's ``objective_state`` (``inp.state``); the reference step is computed
  by copying the snapshot into the trainable weights under ``no_grad``, before the current forward
  (which therefore builds its graph on the restored weights), then copying them back.

Departures: the snapshot is not checkpointed (a resumed run re-anchors the reference at its first
iteration); the refresh is checked once per iteration (the code: per epoch, i.e. the same); the
code's per-row policy weight ``std_t / mean(std_t)`` is 1 here (all rows of a unit share step j);
``kl_mode="flow_grpo"`` (KL x |dt|) is what the code's ``(mu - mu_ref)^2 / (2 std_dev_t^2)`` computes,
``std_dev_t`` being the diffusion coefficient; ``inp.loss_fn`` and ``inp.ref_model`` are not used
(the refreshed snapshot replaces the adapter-off / frozen reference).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor

from ...ranges import ranged
from ...sampling.rollout import log_prob_at
from ...types import LossOut
from ..losses import clipped_policy_loss, gaussian_kl, total_loss
from .common import Unit, UnitInputs, once_per_rows


@dataclass
class GARDOObjectiveOptions:
    clip_range: float = ranged(1e-4, "(0, inf)")  # PPO epsilon on the ratio (flow_grpo 1e-4)
    clip_range_high: float | None = ranged(None, "(0, inf)")  # upper epsilon if asymmetric (None = clip_range)
    adv_clip: float = ranged(5.0, "(0, inf)")  # advantages clamped to +-adv_clip
    beta: float = ranged(0.04, "[0, inf)")  # KL weight on the uncertain rows (GARDO configs 0.01-0.07)
    kl_mode: str = "flow_grpo"  # 'flow_grpo' (x|dt|, the code's form) | 'exact' (closed-form per-step KL)
    ref_every: int = ranged(15, "[1, inf)")  # iterations between reference refreshes (code reset_freq 15)
    ref_kl_threshold: float = ranged(0.0, "[0, inf)")  # also refresh after a mean gated KL above this (0 = off)


def check_gardo_objective(o: GARDOObjectiveOptions, cfg) -> None:
    if o.kl_mode not in ("flow_grpo", "exact"):
        raise ValueError(f"objective.options.kl_mode={o.kl_mode!r} must be 'flow_grpo' or 'exact'.")
    if o.ref_every < 1:
        raise ValueError(f"objective.options.ref_every={o.ref_every} must be >= 1 (iterations between refreshes).")


def trainable_params(model) -> list[Tensor]:
    return [p for p in model.transformer.parameters() if p.requires_grad]


def refresh_reference(inp: UnitInputs, o: GARDOObjectiveOptions) -> dict:
    """The reference snapshot for this iteration (retaken when due) -> {"iteration", "weights", ...}."""
    state = inp.state if inp.state is not None else {}
    ref = state.get("gardo_reference")
    kl = ref["kl_sum"] / max(ref["kl_n"], 1) if ref is not None else 0.0
    due = (
        ref is None
        or inp.iteration < ref["iteration"]  # a new run on the same state
        or inp.iteration - ref["iteration"] >= o.ref_every
        or (o.ref_kl_threshold > 0 and kl > o.ref_kl_threshold)
    )
    if due:
        weights = [p.detach().clone() for p in trainable_params(inp.model)]
        ref = {"iteration": inp.iteration, "weights": weights, "refreshes": (ref or {}).get("refreshes", 0) + 1}
        state["gardo_reference"] = ref
    ref["kl_sum"], ref["kl_n"] = 0.0, 0
    return ref


@contextlib.contextmanager
def swapped(params: list[Tensor], weights: list[Tensor]):
    """The trainable weights replaced by ``weights`` inside the block (no grad), restored after."""
    with torch.no_grad():
        saved = [p.detach().clone() for p in params]
        for p, w in zip(params, weights):
            p.copy_(w)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


def gardo_loss(
    out, ref, old_log_prob: Tensor, advantages: Tensor, mask: Tensor | None, dt: float, kl_weight: Tensor, o
) -> LossOut:
    """Flow-GRPO's clipped surrogate + ``beta`` x the KL averaged over the rows weighted by ``kl_weight``
    [b] (masked rows excluded). out / ref: ``StepOut`` (ref None: no KL term)."""
    clip = o.clip_range if o.clip_range_high is None else (o.clip_range, o.clip_range_high)
    policy = clipped_policy_loss(out.log_prob, old_log_prob, advantages, clip, o.adv_clip, mask)
    gate = kl_weight.float() if mask is None else kl_weight.float() * mask.float()
    kl = None if ref is None else gaussian_kl(out.mean, ref.mean, out.std, dt, o.kl_mode)
    lo = total_loss(policy, kl, o.beta, gate)
    lo.stats["kl_rows"] = gate.sum().detach()
    return lo


def gardo_unit(inp: UnitInputs, o: GARDOObjectiveOptions) -> Unit:
    ref = refresh_reference(inp, o) if o.beta > 0 else None
    params = trainable_params(inp.model)
    select = once_per_rows(lambda rows: (inp.cond.select(rows), inp.rollout.select(rows)))

    def unit(rows: Tensor, j: int, adv: Tensor, mask: Tensor) -> LossOut:
        c, r = select(rows)
        w = torch.ones(len(rows)) if inp.kl_weight is None else inp.kl_weight[rows.to(inp.kl_weight.device)]
        ref_out = None
        if ref is not None and bool((w * mask.float().cpu()).sum() > 0):  # before the graph of the current step
            with torch.no_grad(), swapped(params, ref["weights"]):
                ref_out = log_prob_at(inp.model, c, r, j)
        out = log_prob_at(inp.model, c, r, j)
        dt = float(r.sigmas[j + 1] - r.sigmas[j])
        lo = gardo_loss(out, ref_out, r.log_probs[:, j], adv, mask, dt, w.to(adv.device), o)
        if ref is not None and "kl" in lo.stats:
            ref["kl_sum"], ref["kl_n"] = ref["kl_sum"] + float(lo.stats["kl"]), ref["kl_n"] + 1
        return lo

    return unit
