"""Credit assignment: every scheme maps rewards (+ ladders / trees) to ``Advantages`` [B, T] + mask.

``CREDIT[kind]`` is a ``Scheme``: the advantage function, its options dataclass (``credit.options``
in the config, typed by ``credit.kind``), the extra inputs it needs and its start-up check. Flat
schemes share one signature:

    fn(rewards [B], group_ids [B], step_mask [T] or [B, T], *, scale="group", eps, unbiased,
       filter_zero_std, <inputs named in needs>, **options.kwargs()) -> Advantages  # [B, T]

Tree schemes (``needs`` holds ``tree``) take ``fn(tree: TreeRollout, leaf_rewards [L], *, scale, eps,
unbiased, filter_zero_std, **options.kwargs()) -> tree.TreeAdvantages`` (per edge = per child node
[N]); ``tree.tree_to_batch`` lays them out as [L, T].

What ``needs`` names, and who provides it (``flowalign.train.collect`` / ``flowalign.train.rollouts``):
  * ``ladder`` [B, T+1]: the reward of ``latents[:, j]`` completed to an image (``rewards.ladder``);
  * ``balance_ids`` [B]: the sampling batch of each row (TP-GRPO balances turning points per batch);
  * ``granular`` [B, J]: rewards of each row's state completed at each stride (G^2RPO);
  * ``process`` [B, T]: process scores recorded by the reward-gradient-guided rollout (Euphonium);
  * ``tree``: tree rollouts, one tree per group (BranchGRPO, TreeGRPO, TempFlow-GRPO);
  * ``critic_states``: pooled states, sigmas and pooled prompt embeddings for AC-Flow's critic.
  * ``auxiliary`` [B, K] / ``features`` [B, F]: auxiliary reward components and pooled images (GARDO).
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .ac_flow import ACFlowOptions, ac_flow, build_ac_flow, check_ac_flow
from .checks import check_tree
from .dense import (
    DenseOptions,
    calibrate_noise_table,
    check_dense,
    check_ladder_options,
    dense_grpo,
    ladder_steps,
    per_step_advantages,
    step_gains,
)
from .gardo import GARDOOptions, check_gardo, gardo
from .granular import G2RPOOptions, check_g2rpo, g2rpo, singular_sde_rollout
from .group import GRPOOptions, group_stats, grpo, normalize
from .guided import EuphoniumOptions, check_euphonium, euphonium, guided_rollout
from .pref import PrefGRPOOptions, check_pref, pref_grpo
from .tempflow import TempFlowOptions, check_tempflow, tempflow_grpo
from .tree import BranchGRPOOptions, TreeGRPOOptions, branch_grpo, tree_grpo, tree_to_batch
from .turning_point import TurningPointOptions, tp_grpo, turning_points


@dataclass(frozen=True)
class Scheme:
    fn: Callable[..., Any]  # the advantage function
    options: type  # its options dataclass (``credit.options``)
    needs: tuple[str, ...] = ()  # extra inputs: ladder | balance_ids | granular | process | tree
    check: Callable[[Any, Any], None] | None = None  # (options, config) -> None or one ValueError
    # a scheme with per-run state (AC-Flow's critic): (config, options kwargs) -> the credit function of one run
    build: Callable[[Any, dict], Callable[..., Any]] | None = None


CREDIT: dict[str, Scheme] = {
    "grpo": Scheme(grpo, GRPOOptions),
    "dense": Scheme(dense_grpo, DenseOptions, ("ladder",), check_dense),
    "turning_point": Scheme(tp_grpo, TurningPointOptions, ("ladder", "balance_ids"), check_ladder_options),
    "g2rpo": Scheme(g2rpo, G2RPOOptions, ("granular",), check_g2rpo),
    "euphonium": Scheme(euphonium, EuphoniumOptions, ("process",), check_euphonium),
    "branchgrpo": Scheme(branch_grpo, BranchGRPOOptions, ("tree",), check_tree),
    "treegrpo": Scheme(tree_grpo, TreeGRPOOptions, ("tree",), check_tree),
    "pref_grpo": Scheme(pref_grpo, PrefGRPOOptions, (), check_pref),
    "ac_flow": Scheme(ac_flow, ACFlowOptions, ("critic_states",), check_ac_flow, build_ac_flow),
    "tempflow_grpo": Scheme(tempflow_grpo, TempFlowOptions, ("tree",), check_tempflow),
    "gardo": Scheme(gardo, GARDOOptions, ("auxiliary", "features"), check_gardo),
}


def check_credit(kind: str) -> Scheme:
    """Credit kind -> its ``Scheme``; one clear error for an unknown kind."""
    if kind not in CREDIT:
        raise ValueError(f"unknown credit {kind!r}; choose one of {sorted(CREDIT)}.")
    return CREDIT[kind]


__all__ = [
    "check_credit",
    "CREDIT",
    "Scheme",
    "grpo",
    "group_stats",
    "normalize",
    "dense_grpo",
    "per_step_advantages",
    "step_gains",
    "ladder_steps",
    "calibrate_noise_table",
    "tp_grpo",
    "turning_points",
    "g2rpo",
    "singular_sde_rollout",
    "euphonium",
    "guided_rollout",
    "branch_grpo",
    "tree_grpo",
    "tree_to_batch",
]
