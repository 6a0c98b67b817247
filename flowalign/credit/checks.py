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


def check_guidance(process_reward: Callable, reward_grad_scale: float, differentiable: bool | None = None) -> None:
    """Reward-gradient-guided SDE: a differentiable process reward and reward_grad_scale >= 0."""
    if reward_grad_scale < 0:
        raise ValueError(f"reward_grad_scale={reward_grad_scale} must be >= 0 (0 = the unguided SDE).")
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


def check_tree(o, cfg) -> None:
    """Tree credit (BranchGRPO / TreeGRPO): the split schedule fits the window, pruning, fusion."""
    from ..sampling.schedule import noise_table
    from ..sampling.windows import WINDOWS
    from .tree import FUSIONS

    s, t = cfg.sample, cfg.sample.num_steps
    w = s.window
    relative = w.kind != "all"
    size = WINDOWS[w.kind].trained(w.options, t)
    if relative and (not o.splits or max(o.splits) >= size or min(o.splits) < 0):
        raise ValueError(
            f"credit.options.splits={o.splits} are offsets from the SDE window start (window "
            f"{w.kind!r}); each must lie in [0, {size}) (the window's size)."
        )
    first = window_mask(t, size) if relative else window_mask(t, max(1, int(t * w.options.fraction)))
    levels = noise_table(t, s.noise_level, first)
    branch = list(o.branch) if len(o.branch) > 1 else o.branch[0]
    check_tree_spec(
        list(o.splits), branch, t, depth_noise=o.depth_noise, branch_corr=o.branch_corr, noise_levels=levels
    )
    check_pruning(t, o.prune_depths, o.width_pruning or None, o.width_ratio)
    if getattr(o, "fusion", "mean") not in FUSIONS:
        raise ValueError(f"credit.options.fusion={o.fusion!r}; choose one of {FUSIONS}.")
