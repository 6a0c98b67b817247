"""``flowalign`` command line: one subcommand per job, each a thin module of this package.

A command module provides ``add_arguments(parser)`` and ``run(args) -> int``: it parses the command
line and makes one call into the library. Modules are imported only when chosen, so ``flowalign
--help`` stays fast. The config commands (train, steer, gallery) read ``[PRESET] key=value ...``
(``flowalign.overrides``); their flags are shorthands applied as overrides after those
(``flag_overrides``), so both forms meet in one config object.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping

SUBCOMMANDS = {
    "train": ("flowalign.cli.train", "Flow-GRPO training (default: the testbed preset on CPU)"),
    "steer": ("flowalign.cli.steer", "inference-time steering / search: FK particles, best-of-N, beam, DTS / DTS*"),
    "gallery": (
        "flowalign.cli.gallery",
        "prompts x seeds x methods (base, LoRA, steering) -> images, reward tables, HTML gallery, plots",
    ),
    "testbed": ("flowalign.cli.testbed", "the shapes-world testbed: sample images, evaluate the base pipeline"),
    "info": ("flowalign.cli.info", "versions, step kinds and registered components"),
}


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


def add_config_arguments(parser: argparse.ArgumentParser, presets: Iterable[str], example: str) -> None:
    """The positional ``[PRESET] key=value ...`` and ``--print-config`` of a config command."""
    parser.add_argument(
        "config",
        nargs="*",
        default=[],
        metavar="[PRESET] KEY=VALUE",
        help=f"a preset (one of {sorted(presets)}; default testbed), then dotted config overrides, e.g. {example}",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")


def flag_overrides(args: argparse.Namespace, keys: Mapping[str, str]) -> list[str]:
    """The flags given on the command line (``keys``: argparse dest -> config key) as ``key=value``
    overrides, in the table's order; lists are written as JSON, booleans as true / false."""
    out = []
    for dest, key in keys.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (list, tuple)):
            value = json.dumps(list(value))
        out.append(f"{key}={value}")
    return out


def print_config(cfg: object) -> int:
    from ..overrides import to_dict

    print(json.dumps(to_dict(cfg), indent=1))
    return 0


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
