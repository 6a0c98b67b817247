"""``flowalign info``: versions and the registered components (what a config's kinds may name)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import __version__
    from ..credit import CREDIT
    from ..models import FAMILIES, MODELS
    from ..rewards import REWARDS
    from ..sampling.sde import STEPS
    from ..sampling.windows import WINDOWS
    from ..steering import SEARCH
    from ..train.objectives import OBJECTIVES
    from ..train.presets import PRESETS

    print(f"flowalign {__version__}  torch {torch.__version__}  cuda={torch.cuda.is_available()}")
    tables = {
        "model families": FAMILIES,
        "models": MODELS,
        "step kinds (sample.step)": STEPS,
        "windows (sample.window.kind)": WINDOWS,
        "rewards": REWARDS,
        "credit (credit.kind)": CREDIT,
        "objectives (objective.kind)": OBJECTIVES,
        "steering methods": SEARCH,
        "train presets": PRESETS,
    }
    for name, table in tables.items():
        print(f"{name}: {', '.join(sorted(table))}")
    return 0
