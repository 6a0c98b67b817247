"""``flowalign info``: versions, step kinds and the registered components."""

from __future__ import annotations

import argparse
import importlib


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import __version__
    from ..sampling.sde import STEPS

    print(f"flowalign {__version__}  torch {torch.__version__}  cuda={torch.cuda.is_available()}")
    print("step kinds:", ", ".join(sorted(STEPS)))
    for name in ("rewards", "credit"):
        try:
            mod = importlib.import_module(f"flowalign.{name}")
            table = getattr(mod, name.upper(), None)
            if table:
                print(f"{name}:", ", ".join(sorted(table)))
        except ImportError:
            pass
    return 0
