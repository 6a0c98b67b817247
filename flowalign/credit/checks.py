"""Config-time validation of the credit / exploration options (issue 6, "bad input").

Each helper raises ONE ValueError naming the bad value and the fix, before any sampling happens, and
returns the validated object so a config loader can keep it. They reuse the checks of the modules
that consume the values (``TreeSpec.check``, ``schedule.window_mask``, ``guided.check_process_reward``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor

from ..sampling.schedule import window_mask
from ..sampling.tree import TreeSpec
from .granular import check_strides
from .guided import check_process_reward
from .tree import WIDTH_MODES


def check_tree_spec(
    split_steps: Sequence[int] | str,
    branch_factor: int | Sequence[int],
    num_steps: int,
    *,
    depth_noise: float = 0.0,
    branch_corr: float | None = None,
    noise_levels: Tensor | None = None,
) -> TreeSpec:
    """Split schedule (ints or BranchGRPO's "0,3,6,9") + branch factors -> a checked ``TreeSpec``."""
    if isinstance(split_steps, str):
        try:
            split_steps = [int(p) for p in split_steps.split(",") if p.strip()]
        except ValueError:
            raise ValueError(f"split_steps={split_steps!r} must be comma-separated ints, e.g. '0,3,6,9'.") from None
    if depth_noise < 0:
        raise ValueError(f"depth_noise={depth_noise} must be >= 0 (relative noise growth per depth).")
    if branch_corr is not None and branch_corr < 0:
        raise ValueError(f"branch_corr={branch_corr} must be >= 0 or None (independent sibling noise).")
    bf = tuple(branch_factor) if isinstance(branch_factor, (list, tuple)) else branch_factor
    spec = TreeSpec(split_steps=tuple(split_steps), branch_factor=bf, depth_noise=depth_noise, branch_corr=branch_corr)
    spec.check(num_steps, noise_levels)
    return spec


def check_window(num_steps: int, size: int | None, start: int = 0, hi: int | None = None) -> Tensor:
    """A fixed window (start) or the range [start, hi) a random window is drawn from -> [T] mask of
    the first admissible window."""
    if hi is not None and (not 0 <= start < hi <= num_steps or size is None or size > hi - start):
        raise ValueError(
            f"window range [{start}, {hi}) with size {size} does not fit in {num_steps} steps; "
            f"need 0 <= start < hi <= {num_steps} and size <= hi - start."
        )
    return window_mask(num_steps, size, start)


def check_guidance(process_reward: Callable, kappa: float, differentiable: bool | None = None) -> None:
    """Reward-gradient-guided SDE: a differentiable process reward and kappa >= 0."""
    if kappa < 0:
        raise ValueError(f"guidance kappa={kappa} must be >= 0 (0 = the unguided SDE).")
    check_process_reward(process_reward, differentiable)


def check_pruning(
    num_steps: int, prune_depths: Sequence[int] = (), width_pruning: str | None = None, width_ratio: float = 0.5
) -> None:
    bad = [d for d in prune_depths if not 1 <= int(d) <= num_steps]
    if bad:
        raise ValueError(f"prune_depths {bad} must be child depths in 1..{num_steps} (depth = step index).")
    if width_pruning is not None and width_pruning not in WIDTH_MODES:
        raise ValueError(f"width_pruning={width_pruning!r} must be None or one of {WIDTH_MODES}.")
    if not 0 < width_ratio <= 1:
        raise ValueError(f"width_ratio={width_ratio} must be in (0, 1].")


def check_granular(num_steps: int, steps: Sequence[int], strides: Sequence[int], branches: int) -> None:
    """G^2RPO: optimised steps inside the grid, valid strides, at least 2 branches to compare."""
    bad = [j for j in steps if not 0 <= int(j) < num_steps]
    if bad or not steps:
        raise ValueError(f"G^2RPO steps {list(steps)} must be a non-empty list in [0, {num_steps - 1}].")
    check_strides(strides, num_steps)
    if branches < 2:
        raise ValueError(f"branches={branches}: a group needs >= 2 branches for a z-score.")


def check_credit(name: str, tree: bool = False) -> Callable:
    """Credit name -> function, one clear error for an unknown name."""
    from . import CREDIT, TREE_CREDIT

    table = TREE_CREDIT if tree else CREDIT
    if name not in table:
        raise ValueError(f"unknown {'tree ' if tree else ''}credit {name!r}; choose one of {sorted(table)}.")
    return table[name]


def check_credit_config(cfg) -> None:
    """Every credit / exploration option of a ``Config`` that needs no model: one ValueError naming
    the bad value and the fix (``train_cli.validate`` and ``trainer.train`` call it)."""
    from ..sampling.schedule import noise_table
    from . import CREDIT, TREE_CREDIT
    from .dense import REWARD_KINDS
    from .granular import COMPLETIONS
    from .tree import FUSIONS

    c, s = cfg.credit, cfg.sample
    t, tree = s.num_steps, c.name in TREE_CREDIT
    if c.name not in CREDIT and not tree:
        raise ValueError(f"credit.name={c.name!r} is unknown; choose one of {sorted(CREDIT) + sorted(TREE_CREDIT)}.")
    if s.noise_table and (len(s.noise_table) != t or min(s.noise_table) < 0):
        raise ValueError(
            f"sample.noise_table has {len(s.noise_table)} values (min {min(s.noise_table):g}); give "
            f"{t} levels >= 0 (one per step) or [] for sample.noise_level everywhere."
        )
    if tree != bool(s.tree_splits):
        raise ValueError(
            f"credit.name={c.name!r} with sample.tree_splits={s.tree_splits}: tree credits "
            f"{sorted(TREE_CREDIT)} need tree rollouts (set sample.tree_splits, e.g. [0,2,4]) and tree "
            f"rollouts need a tree credit."
        )
    if tree:
        relative = s.window != "all"
        if relative and (not s.tree_splits or max(s.tree_splits) >= s.window_size or min(s.tree_splits) < 0):
            raise ValueError(
                f"sample.tree_splits={s.tree_splits} are offsets from the SDE window start (window="
                f"{s.window!r}); each must lie in [0, sample.window_size={s.window_size})."
            )
        first = window_mask(t, max(1, int(t * s.timestep_fraction))) if not relative else window_mask(t, s.window_size)
        levels = noise_table(t, s.noise_level, first)
        check_tree_spec(
            list(s.tree_splits),
            list(s.tree_branch) if len(s.tree_branch) > 1 else s.tree_branch[0],
            t,
            depth_noise=s.tree_depth_noise,
            branch_corr=s.tree_branch_corr,
            noise_levels=levels,
        )
        check_pruning(t, c.prune_depths, c.width_pruning or None, c.width_ratio)
        if c.fusion not in FUSIONS:
            raise ValueError(f"credit.fusion={c.fusion!r}; choose one of {FUSIONS}.")
    if c.name in ("dense", "turning_point"):
        if c.ladder_steps < 0 or c.ladder_stride < 0 or (c.ladder_steps and c.ladder_stride):
            raise ValueError(
                f"credit.ladder_steps={c.ladder_steps} / credit.ladder_stride={c.ladder_stride}: give "
                f"at most one, >= 0 (0 = complete with all remaining steps)."
            )
        if c.dense_reward not in REWARD_KINDS:
            raise ValueError(f"credit.dense_reward={c.dense_reward!r}; choose one of {REWARD_KINDS}.")
    if c.name == "g2rpo":
        if s.window == "all" or s.window_size != 1 or not s.same_noise:
            raise ValueError(
                f"credit.name=g2rpo samples singularly: one SDE step per iteration from a shared "
                f"initial noise; set sample.window=random|fixed|progressive, sample.window_size=1 "
                f"and sample.same_noise=true (got window={s.window!r}, size {s.window_size}, "
                f"same_noise={s.same_noise})."
            )
        lo, hi = (s.window_range + [t])[:2] if s.window in ("random", "fixed") else (0, t)
        check_granular(t, list(range(lo, hi)), [int(v) for v in c.strides], s.group_size)
        if c.granular_completion not in COMPLETIONS:
            raise ValueError(f"credit.granular_completion={c.granular_completion!r}; choose one of {COMPLETIONS}.")
    if c.name == "euphonium":
        if c.guidance_kappa < 0 or any(not 0 <= int(j) < t for j in c.guidance_steps):
            raise ValueError(
                f"credit.guidance_kappa={c.guidance_kappa} must be >= 0 and credit.guidance_steps="
                f"{c.guidance_steps} step indices in [0, {t - 1}]."
            )
    if c.calibrate_iterations > 0:
        if s.step not in ("flow_sde", "dance_sde") or c.calibrate_samples < 1 or c.calibrate_eps2 < 0:
            raise ValueError(
                f"psi(t) calibration needs sample.step flow_sde or dance_sde (got {s.step!r}), "
                f"credit.calibrate_samples >= 1 ({c.calibrate_samples}) and calibrate_eps2 >= 0."
            )
