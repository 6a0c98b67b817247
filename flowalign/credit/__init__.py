"""Credit assignment: every scheme maps rewards (+ ladders / trees) to ``Advantages`` [B, T] + mask.

``CREDIT`` maps a name to a function; the trainer picks one by ``cfg.credit.name``. Uniform signature:

    fn(rewards [B], group_ids [B], step_mask [T] or [B, T], *, scale="group", eps, unbiased,
       filter_zero_std, <extra inputs>, **method_options) -> Advantages  # advantages/mask [B, T]

``fn.needs`` (absent = nothing) names the extra keyword inputs the trainer must supply:
  * ``ladder``  [B, T+1]: reward of ``latents[:, j]`` completed to an image, ``ladder[:, T]`` the final
    reward (``rewards.ladder.RewardLadder``; ``ladder_steps(step_mask)`` lists the states to request);
    ``dense``, ``turning_point``;
  * ``granular`` [B, J] or [B, J, R]: rewards of each branch per completion stride (and reward model)
    from ``granular.singular_sde_rollout``; ``g2rpo``;
  * ``process`` [B, T]: process-reward scores recorded by ``guided.guided_rollout``; ``euphonium``;
  * ``balance_ids`` [B]: the sampling batch of each row (TP-GRPO balances turning points per batch);
  * ``tree`` (trainer only): per-row advantages / masks of the tree credit (``collect.tree_credit``).
The trainer collects them batch by batch with ``collect.COLLECT`` (same names) and rolls out with
``rollouts.make_rollout`` (shared ODE prefix, trees, guided SDE); see ``collect`` and ``rollouts``.

``TREE_CREDIT`` holds the tree schemes, ``fn(tree: TreeRollout, leaf_rewards [L], *, scale, eps,
unbiased, filter_zero_std, **options) -> tree.TreeAdvantages`` (advantage and mask per edge = per
child node [N]); ``tree.tree_to_batch`` lays them out as [L, T] for ``log_prob_at`` and
``TreeAdvantages.edges()`` lists them for ``sampling.tree.edge_log_prob``.
"""

from .dense import calibrate_noise_table, dense_grpo, ladder_steps, per_step_advantages, step_gains
from .granular import g2rpo, singular_sde_rollout
from .group import group_stats, grpo, normalize
from .guided import euphonium, guided_rollout
from .tree import branch_grpo, tree_grpo, tree_to_batch
from .turning_point import tp_grpo, turning_points

CREDIT = {"grpo": grpo, "dense": dense_grpo, "turning_point": tp_grpo, "g2rpo": g2rpo, "euphonium": euphonium}
TREE_CREDIT = {"branchgrpo": branch_grpo, "treegrpo": tree_grpo}

__all__ = [
    "CREDIT",
    "TREE_CREDIT",
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
