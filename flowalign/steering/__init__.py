"""Inference-time steering and search, on the same samplers and rewards as training.

* ``fk_steer`` (``fk.py``): Feynman-Kac particles as an ``on_step`` hook of the one rollout loop
  (``FKSteering`` in ``fk_hook.py``); ``POTENTIALS`` diff / max / sum / rt; ``RESAMPLERS``
  multinomial / stratified / systematic; ``reward_grad_scale`` > 0 adds the gradient proposal.
* ``best_of_n``, ``beam_search`` (``search.py``): the search baselines (beam_width=1 with every step
  selected is SVDD).
* ``tree_search`` (``dts.py``; the trees in ``dts_tree.py``): DTS (``star=False``) and DTS* (``star=True``).
* ``fmtt_steer`` (``fmtt.py``): FMTT, the flow-map look-ahead (weights or search); ``das_steer``
  (``das.py``): DAS, tempered SMC with the reward-gradient proposal; ``noise_search``
  (``noise_search.py``): random / evolutionary search over the initial noise.
* ``steer(method, model, prompts, reward, **kw)``: one entry point over ``SEARCH``.
Every method returns a ``SteerResult`` (chosen latents and rewards per prompt, NFE spent, the
candidates) and accepts ``nfe_budget`` (model evaluations per prompt).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from .common import LatentReward, SteerResult, default_schedule
from .das import das_steer
from .dts import tree_search
from .fk import fk_steer
from .fk_hook import POTENTIALS, FKSteering
from .fmtt import fmtt_steer
from .noise_search import noise_search
from .resample import RESAMPLERS, ess
from .search import beam_search, best_of_n

SEARCH: dict[str, Callable[..., SteerResult]] = {
    "bon": best_of_n,
    "fk": fk_steer,
    "beam": beam_search,
    "svdd": partial(beam_search, beam_width=1, select_steps="all"),
    "dts": partial(tree_search, star=False),
    "dts_star": partial(tree_search, star=True),
    "fmtt": fmtt_steer,
    "das": das_steer,
    "noise_search": noise_search,
}


def steer(method: str, model: Any, prompts: Any, reward: Any, **kwargs: Any) -> SteerResult:
    """Run ``SEARCH[method]``; ``kwargs`` go to that method (see each function)."""
    if method not in SEARCH:
        raise ValueError(f"unknown steering method {method!r}; choose one of {sorted(SEARCH)}.")
    return SEARCH[method](model, prompts, reward, **kwargs)


__all__ = [
    "POTENTIALS",
    "RESAMPLERS",
    "SEARCH",
    "FKSteering",
    "LatentReward",
    "SteerResult",
    "VelocityCache",
    "beam_search",
    "best_of_n",
    "das_steer",
    "default_schedule",
    "ess",
    "fk_steer",
    "fmtt_steer",
    "noise_search",
    "steer",
    "tree_search",
]
