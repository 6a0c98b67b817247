"""The reward registry: ``REWARDS`` (name -> factory, importing its module on first call) and
``load_reward``. Separate from the package ``__init__`` so that ``MultiReward`` can build its parts
without importing the package that imports it."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .base import Reward


def _lazy(module: str, fn: str) -> Callable[..., Reward]:
    def factory(*args: Any, **kwargs: Any) -> Reward:
        return getattr(importlib.import_module(f"flowalign.rewards.{module}"), fn)(*args, **kwargs)

    factory.__name__ = factory.__qualname__ = fn
    factory.__doc__ = f"flowalign.rewards.{module}.{fn} (imported on first call)."
    return factory


REWARDS: dict[str, Callable[..., Reward]] = {
    "hpsv2": _lazy("hpsv2", "load_hpsv2"),
    "imagereward": _lazy("imagereward", "load_imagereward"),
    "pickscore": _lazy("pickscore", "load_pickscore"),
    "clip": _lazy("clip", "load_clip_score"),
    "aesthetic": _lazy("aesthetic", "load_aesthetic"),
    "artifact": _lazy("artifact", "load_artifact"),
    "compositional": _lazy("testbed", "load_compositional"),
    "testbed_aesthetic": _lazy("testbed", "load_testbed_aesthetic"),
    "testbed_artifact": _lazy("testbed", "load_testbed_artifact"),
    "video_frames": _lazy("video", "load_video_frames"),
    "temporal_consistency": _lazy("video", "load_temporal_consistency"),
    "par": _lazy("shaping", "load_par"),
    "ensemble": _lazy("shaping", "load_ensemble"),
}


def load_reward(name: str, path: Any = None, **kwargs: Any) -> Reward:
    """Build reward ``name`` from ``path`` (local file / directory, or a hub id: network)."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; choose one of {sorted(REWARDS)}.")
    if path is not None:
        kwargs["path"] = path
    return REWARDS[name](**kwargs)
