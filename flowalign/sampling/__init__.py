"""Sampling: pure SDE/ODE steps with log-probs (``sde``), sigma grids and windows (``schedule``),
the one rollout loop (``rollout``) and prefix-sharing trees (``tree``)."""
from .rollout import StepContext, complete, log_prob_at, rollout
from .schedule import flux_sigmas, linear_sigmas, noise_table, shifted_sigmas, window_mask
from .sde import STEPS, get_step
from .tree import TreeSpec, edge_log_prob, tree_rollout

__all__ = ["STEPS", "StepContext", "TreeSpec", "complete", "edge_log_prob", "flux_sigmas", "get_step",
           "linear_sigmas", "log_prob_at", "noise_table", "rollout", "shifted_sigmas", "tree_rollout", "window_mask"]
