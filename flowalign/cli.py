"""``flowalign`` command line: one subcommand per job, each implemented in its own module.

Subcommand modules are imported only when chosen, so ``flowalign --help`` stays fast. A module
provides ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable

SUBCOMMANDS = {
    "train": ("flowalign.train_cli", "Flow-GRPO training (default: the testbed preset on CPU)"),
    "steer": ("flowalign.steer_cli", "inference-time steering / search: FK particles, best-of-N, beam, DTS / DTS*"),
    "gallery": (
        "flowalign.gallery",
        "prompts x seeds x methods (base, LoRA, steering) -> images, reward tables, HTML gallery, plots",
    ),
    "testbed": ("flowalign.testbed.cli", "the shapes-world testbed: sample images, evaluate the base pipeline"),
    "info": ("flowalign.cli", "versions, step kinds and registered components"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:  # for `flowalign info`
    pass


def run(args: argparse.Namespace) -> int:  # `flowalign info`
    import torch

    from . import __version__
    from .sampling.sde import STEPS

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


def guarded(prog: str, job: Callable[[], int], interrupted: str) -> int:
    """Run a subcommand's job: a ValueError (bad input, raised at the boundary) becomes one
    ``flowalign <prog>: error: ...`` line and exit 2 (``FLOWALIGN_DEBUG=1`` re-raises it); Ctrl-C
    prints how to resume (``interrupted``) and exits 130."""
    try:
        return job()
    except ValueError as err:
        if os.environ.get("FLOWALIGN_DEBUG"):
            raise
        print(f"flowalign {prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="flowalign", description="Align flow-matching text-to-image models with rewards."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = (argv if argv is not None else sys.argv[1:])[:1]
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if chosen == [name]:  # import only the module that will run
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(importlib.import_module(SUBCOMMANDS[args.command][0]).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
