"""The training side: config -> build -> the recipe (``loop.train``: sample -> credit -> update -> log).

    from flowalign.train import get_preset, train_from_config
    cfg = get_preset("testbed")
    result = train_from_config(cfg)

Names are imported lazily so that ``flowalign.train.losses`` etc. can be imported by the library
(credit schemes use the losses) without loading the whole recipe.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Config": "config",
    "RENAMED": "config",
    "PRESETS": "presets",
    "get_preset": "presets",
    "derived": "batching",
    "train": "loop",
    "TrainResult": "records",
    "TrainState": "records",
    "validate": "checks",
    "build_model": "build",
    "resolve_config": "run",
    "apply_overrides": "config",
}


def __getattr__(name: str):
    if name == "train_from_config":
        return importlib.import_module(".run", __name__).main
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [*_EXPORTS, "train_from_config"]
