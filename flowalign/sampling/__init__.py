"""Sampling: pure SDE/ODE steps with log-probs (``sde``), sigma grids and windows (``schedule``),
the one rollout loop (``rollout``) and prefix-sharing trees (``tree``)."""

from .rollout import StepContext, complete, log_prob_at, rollout
from .schedule import (
    flux_sigmas,
    linear_sigmas,
    noise_table,
    parse_steps,
    shifted_sigmas,
    steps_noise_table,
    window_mask,
)
from .sde import STEPS, get_step
from .tree import TreeSpec, edge_log_prob, tree_rollout

__all__ = [
    "STEPS",
    "StepContext",
    "TreeSpec",
    "complete",
    "edge_log_prob",
    "flux_sigmas",
    "get_step",
    "linear_sigmas",
    "log_prob_at",
    "noise_table",
    "parse_steps",
    "rollout",
    "shifted_sigmas",
    "steps_noise_table",
    "tree_rollout",
    "window_mask",
]
