"""Rewards: one contract (``base.Reward``), one file per scorer, a weighted ``MultiReward``, reward
ladders of intermediate states (``ladder``) and background scoring (``background``).

``REWARDS`` maps names to factories; ``load_reward(name, path=..., **kwargs)`` builds one. Factories
import their heavy dependencies (open_clip, transformers, timm) only when called, and touch the
network only when given a hub id. Weight files each scorer expects (``path`` may be a directory
holding them; a missing or wrong file is one ``RewardWeightsError`` that lists them):

| name | files | module |
|---|---|---|
| ``hpsv2`` | ``HPS_v2.1_compressed.pt`` (or v2.0 with ``version="v2.0"``) | hpsv2.py |
| ``imagereward`` | ``ImageReward.pt``, ``med_config.json``, ``vocab.txt`` | imagereward.py |
| ``pickscore`` | CLIPModel dir + CLIPProcessor dir (``processor=``) | pickscore.py |
| ``clip`` | open_clip checkpoint (``arch=``, default ViT-L-14) | clip.py |
| ``aesthetic`` | ``sac+logos+ava1-l14-linearMSE.pth`` + ``clip=`` open_clip ViT-L-14 | aesthetic.py |
| ``artifact`` | ``artifact_head.safetensors`` + ``clip=`` backbone weights | artifact.py |
| ``compositional``, ``testbed_aesthetic``, ``testbed_artifact`` | testbed assets (default dir) | testbed.py |
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .base import Reward, RewardWeightsError, preprocess
from .multi import MultiReward


def _lazy(module: str, fn: str) -> Callable[..., Reward]:
    def factory(*args: Any, **kwargs: Any) -> Reward:
        return getattr(importlib.import_module(f"{__name__}.{module}"), fn)(*args, **kwargs)

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
}


def load_reward(name: str, path: Any = None, **kwargs: Any) -> Reward:
    """Build reward ``name`` from ``path`` (local file / directory, or a hub id: network)."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; choose one of {sorted(REWARDS)}.")
    if path is not None:
        kwargs["path"] = path
    return REWARDS[name](**kwargs)


__all__ = ["REWARDS", "MultiReward", "Reward", "RewardWeightsError", "load_reward", "preprocess"]
