"""SDE windows: which steps of a training rollout are stochastic (and trained) in an iteration.

``WINDOWS[kind]`` is a ``Window``: ``mask(num_steps, iteration, seed, options) -> [T] bool`` plus the
options dataclass beside it and its check. The config holds ``sample.window.kind`` and
``sample.window.options`` (typed by the kind). ``seed`` is an integer the caller derives from the run
seed and the iteration, so a window is a pure function of its inputs and the same on every rank.

* ``all`` — the first ``int(T * fraction)`` steps (Flow-GRPO: every step but the last);
* ``fixed`` — ``size`` steps from ``start`` (Flow-GRPO-Fast with the window pinned);
* ``random`` — ``size`` steps with a uniform start in ``[range[0], range[1] - size]`` (Flow-GRPO-Fast);
* ``progressive`` — MixGRPO (arXiv 2507.21802): starts at 0 and moves ``stride`` steps later every
  ``every`` iterations, wrapping around;
* ``geometric`` — TreeGRPO (arXiv 2512.08153): start ``i`` drawn with ``P(i) ~ r^i``,
  ``i = 0..T-size-1``;
* ``table`` — an explicit list of trained steps (any pattern, e.g. ``[0, 3, 5]``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..ranges import ranged
from .schedule import progressive_window, random_window, window_mask


@dataclass
class AllOptions:
    fraction: float = ranged(0.99, "(0, 1]")  # train the first int(T * fraction) steps (0.99 of 10 = all but the last)


@dataclass
class FixedOptions:
    size: int = ranged(2, "[1, inf)")  # consecutive SDE (trained) steps; the rest are ODE
    start: int = ranged(0, "[0, inf)")  # first SDE step


@dataclass
class RandomOptions:
    size: int = ranged(2, "[1, inf)")  # consecutive SDE (trained) steps
    range: list[int] = ranged([0], "[0, inf)")  # [lo] or [lo, hi]: start drawn in [lo, hi - size]; hi = T


@dataclass
class ProgressiveOptions:
    size: int = ranged(2, "[1, inf)")  # consecutive SDE (trained) steps
    every: int = ranged(25, "[1, inf)")  # iterations before the window moves
    stride: int = ranged(1, "[1, inf)")  # steps the window moves each time (MixGRPO s)


@dataclass
class GeometricOptions:
    size: int = ranged(2, "[1, inf)")  # consecutive SDE (trained) steps
    r: float = ranged(0.5, "(0, 1)")  # P(start = i) ~ r^i (TreeGRPO r = 0.5)


@dataclass
class TableOptions:
    steps: list[int] = ranged([0, 1], "[0, inf)")  # the trained step indices


def geometric_window_probs(num_steps: int, size: int, r: float = 0.5) -> Tensor:
    """TreeGRPO's SDE-window start distribution Pr[i] = (1 - r) r^i / (1 - r^(T - w)), i = 0..T-w-1."""
    if not 1 <= size < num_steps or not 0 < r < 1:
        raise ValueError(f"geometric window: need 1 <= size={size} < num_steps={num_steps} and 0 < r={r} < 1.")
    i = torch.arange(num_steps - size, dtype=torch.float64)
    return ((1 - r) * r**i / (1 - r ** (num_steps - size))).float()


def geometric_window(num_steps: int, size: int, r: float = 0.5, generator=None) -> Tensor:
    """[T] bool SDE window of ``size`` steps whose start is drawn from ``geometric_window_probs``."""
    start = int(torch.multinomial(geometric_window_probs(num_steps, size, r), 1, generator=generator))
    return window_mask(num_steps, size, start)


def _span(o: RandomOptions, t: int) -> tuple[int, int]:
    lo, hi = (list(o.range) + [t])[:2]
    return lo, hi


def _all(t: int, iteration: int, seed: int, o: AllOptions) -> Tensor:
    return window_mask(t, max(1, int(t * o.fraction)))


def _fixed(t: int, iteration: int, seed: int, o: FixedOptions) -> Tensor:
    return window_mask(t, o.size, o.start)


def _random(t: int, iteration: int, seed: int, o: RandomOptions) -> Tensor:
    lo, hi = _span(o, t)
    return random_window(t, o.size, lo, hi, random.Random(seed))


def _progressive(t: int, iteration: int, seed: int, o: ProgressiveOptions) -> Tensor:
    return progressive_window(t, o.size, iteration, every=o.every, stride=o.stride)


def _geometric(t: int, iteration: int, seed: int, o: GeometricOptions) -> Tensor:
    return geometric_window(t, o.size, o.r, generator=torch.Generator().manual_seed(seed))


def _table(t: int, iteration: int, seed: int, o: TableOptions) -> Tensor:
    mask = torch.zeros(t, dtype=torch.bool)
    mask[list(o.steps)] = True
    return mask


def _bad(msg: str) -> ValueError:
    return ValueError(f"SDE window: {msg}")


def _check_all(o: AllOptions, t: int) -> None:
    if not 0 < o.fraction <= 1:
        raise _bad(f"sample.window.options.fraction={o.fraction} must be in (0, 1].")


def _check_sized(o: Any, t: int, lo: int = 0, hi: int | None = None) -> None:
    hi = t if hi is None else hi
    if not 1 <= o.size <= hi - lo or not 0 <= lo < hi <= t:
        raise ValueError(
            f"SDE window of {o.size} steps in range [{lo}, {hi}) does not fit {t} steps; need 1 <= "
            f"sample.window.options.size <= hi - lo and 0 <= lo < hi <= sample.num_steps."
        )


def _check_fixed(o: FixedOptions, t: int) -> None:
    _check_sized(o, t, o.start, o.start + o.size)


def _check_random(o: RandomOptions, t: int) -> None:
    _check_sized(o, t, *_span(o, t))


def _check_progressive(o: ProgressiveOptions, t: int) -> None:
    _check_sized(o, t)
    if o.stride < 1 or o.every < 1:
        raise _bad(f"sample.window.options.stride={o.stride} and every={o.every} must be >= 1.")


def _check_geometric(o: GeometricOptions, t: int) -> None:
    if not (1 <= o.size < t and 0 < o.r < 1):
        raise _bad(f"geometric needs 1 <= size={o.size} < sample.num_steps={t} and 0 < r={o.r} < 1.")


def _check_table(o: TableOptions, t: int) -> None:
    if not o.steps or len(set(o.steps)) != len(o.steps) or not all(0 <= int(j) < t for j in o.steps):
        raise _bad(f"sample.window.options.steps={o.steps} must be distinct step indices in [0, {t - 1}].")


@dataclass(frozen=True)
class Window:
    mask: Callable[..., Tensor]  # (num_steps, iteration, seed, options) -> [T] bool
    options: type  # its options dataclass
    check: Callable[[Any, int], None]  # (options, num_steps) -> None or one ValueError
    span: Callable[[Any, int], tuple[int, int]]  # (options, num_steps) -> [lo, hi) the window may cover
    trained: Callable[[Any, int], int]  # (options, num_steps) -> trained steps per sample


def _sized(o: Any, t: int) -> int:
    return o.size


WINDOWS: dict[str, Window] = {
    "all": Window(_all, AllOptions, _check_all, lambda o, t: (0, t), lambda o, t: max(1, int(t * o.fraction))),
    "fixed": Window(_fixed, FixedOptions, _check_fixed, lambda o, t: (o.start, o.start + o.size), _sized),
    "random": Window(_random, RandomOptions, _check_random, _span, _sized),
    "progressive": Window(_progressive, ProgressiveOptions, _check_progressive, lambda o, t: (0, t), _sized),
    "geometric": Window(_geometric, GeometricOptions, _check_geometric, lambda o, t: (0, t), _sized),
    "table": Window(
        _table, TableOptions, _check_table, lambda o, t: (min(o.steps), max(o.steps) + 1), lambda o, t: len(o.steps)
    ),
}


def window_kind(kind: str) -> Window:
    if kind not in WINDOWS:
        raise ValueError(f"sample.window.kind={kind!r} is unknown; choose one of {list(WINDOWS)}.")
    return WINDOWS[kind]
