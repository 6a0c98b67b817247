"""The reward registry: ``REWARDS`` (name -> factory, importing its module on first call) and
``load_reward``. Separate from the package ``__init__`` so that ``MultiReward`` can build its parts
without importing the package that imports it."""

from __future__ import annotations

import functools
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


class _Registry(dict):
    """``REWARDS``: name -> factory; a ``remote:URL`` name (a reward served by ``flowalign serve-reward``)
    is in it too and resolves to the HTTP client's factory bound to that URL (``remote.load_remote``)."""

    def __contains__(self, name: object) -> bool:
        return super().__contains__(name) or (isinstance(name, str) and name.startswith(REMOTE))

    def __missing__(self, name: str) -> Callable[..., Reward]:
        if not (isinstance(name, str) and name.startswith(REMOTE)):
            raise KeyError(name)
        return functools.partial(_lazy("remote", "load_remote"), url=name[len(REMOTE) :])


REMOTE = "remote:"
REWARDS: dict[str, Callable[..., Reward]] = {
    "hpsv2": _lazy("hpsv2", "load_hpsv2"),
    "hpsv3": _lazy("hpsv3", "load_hpsv3"),
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
    "ocr": _lazy("ocr", "load_ocr"),
    "vlm_judge": _lazy("judge", "load_vlm_judge"),
    "vlm_pairwise": _lazy("judge", "load_vlm_pairwise"),
    "geneval_testbed": _lazy("geneval", "load_geneval_testbed"),
    "nudenet_safety": _lazy("safety", "load_nudenet_safety"),
}
REWARDS = _Registry(REWARDS)  # + remote:URL names


def load_reward(name: str, path: Any = None, **kwargs: Any) -> Reward:
    """Build reward ``name`` from ``path`` (local file / directory, or a hub id: network)."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; choose one of {sorted(REWARDS)}.")
    if path is not None:
        kwargs["path"] = path
    return REWARDS[name](**kwargs)
